// How a `#!` user-data script is started: by the interpreter its first line names when the machine
// has it; by bash, as nixpkgs' amazon-init runs every `#!` user data
// (nixos/modules/virtualisation/amazon-init.nix), when that names sh or bash at a path NixOS lacks;
// otherwise not at all, with the one line an operator needs to fix it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidInputError } from '../../agent/errors.js';
import { parseShebang, planScriptLaunch, type InterpreterLookup } from '../../agent/userdata-script.js';

const SCRIPT = '/root/var/lib/nixos-ec2-agent/user-data-script';

/** A NixOS machine under `/root`: /bin/sh and /usr/bin/env, and whatever else is listed. */
function nixos(...more: string[]): InterpreterLookup {
  const present = new Set(['/bin/sh', '/usr/bin/env', ...more]);
  return { resolve: (p) => `/root${p}`, isExecutable: async (p) => present.has(p) };
}

const plan = (text: string | Buffer, machine = nixos()) => planScriptLaunch(Buffer.from(text), SCRIPT, machine);

async function refused(text: string, pattern: RegExp): Promise<InvalidInputError> {
  const launch = await plan(text);
  assert.equal(launch.kind, 'refused', JSON.stringify(launch));
  if (launch.kind !== 'refused') throw new Error('unreachable');
  assert.equal(launch.error.where, 'user data');
  assert.match(launch.error.message, pattern);
  assert.doesNotMatch(launch.error.message, /\n/, 'one line');
  return launch.error;
}

describe('parseShebang', () => {
  it('splits as Linux does: the interpreter, then the rest of the line as one argument', () => {
    assert.deepEqual(parseShebang(Buffer.from('#!/bin/bash\necho\n')), { interpreter: '/bin/bash' });
    assert.deepEqual(parseShebang(Buffer.from('#! /bin/bash -xe \n')), { interpreter: '/bin/bash', argument: '-xe' });
    assert.deepEqual(parseShebang(Buffer.from('#!/usr/bin/env -S python3 -u\n')), { interpreter: '/usr/bin/env', argument: '-S python3 -u' });
    assert.deepEqual(parseShebang(Buffer.from('#!/bin/sh')), { interpreter: '/bin/sh' });
  });

  it('has nothing for a line that names no interpreter, or for what is not a script', () => {
    assert.equal(parseShebang(Buffer.from('#!\necho\n')), undefined);
    assert.equal(parseShebang(Buffer.from('#!  \t\n')), undefined);
    assert.equal(parseShebang(Buffer.from('{ }\n')), undefined);
  });
});

describe('planScriptLaunch', () => {
  it('runs the script by its own interpreter, under the root, when the machine has it', async () => {
    assert.deepEqual(await plan('#!/bin/sh\necho\n'), { kind: 'own', command: '/root/bin/sh', args: [SCRIPT] });
    assert.deepEqual(await plan('#!/usr/bin/env python3\nprint(1)\n'), { kind: 'own', command: '/root/usr/bin/env', args: ['python3', SCRIPT] });
    assert.deepEqual(await plan('#!/bin/bash -e\n', nixos('/bin/bash')), { kind: 'own', command: '/root/bin/bash', args: ['-e', SCRIPT] });
    const store = '/nix/store/00000000000000000000000000000000-python3-3.12/bin/python3';
    assert.deepEqual(await plan(`#!${store}\n`, nixos(store)), { kind: 'own', command: `/root${store}`, args: [SCRIPT] });
  });

  it('runs sh and bash scripts whose path NixOS lacks with bash from PATH, its argument kept', async () => {
    assert.deepEqual(await plan('#!/bin/bash\necho\n'), { kind: 'bash', command: 'bash', args: [SCRIPT], absent: '/bin/bash' });
    assert.deepEqual(await plan('#!/bin/bash -xe\n'), { kind: 'bash', command: 'bash', args: ['-xe', SCRIPT], absent: '/bin/bash' });
    assert.deepEqual(await plan('#!/usr/bin/sh\n'), { kind: 'bash', command: 'bash', args: [SCRIPT], absent: '/usr/bin/sh' });
    assert.deepEqual(await plan('#!/usr/local/bin/bash\n'), { kind: 'bash', command: 'bash', args: [SCRIPT], absent: '/usr/local/bin/bash' });
    // The kernel would look for it in the agent's working directory; its author meant bash.
    assert.deepEqual(await plan('#!bash\n'), { kind: 'bash', command: 'bash', args: [SCRIPT], absent: 'bash' });
  });

  it('does not give bash a script for another shell or language: it names the interpreter and what to write', async () => {
    const ruby = await refused('#!/usr/bin/ruby\nputs 1\n', /interpreter \/usr\/bin\/ruby is not on this machine.*#!\/usr\/bin\/env ruby/);
    assert.deepEqual(ruby.context, { where: 'user data', interpreter: '/usr/bin/ruby' });
    await refused('#!/usr/bin/python3\n', /#!\/usr\/bin\/env python3/);
    // dash's echo reads backslashes and bash's does not; zsh and ksh are languages of their own.
    for (const shell of ['/bin/dash', '/bin/zsh', '/bin/ksh']) await refused(`#!${shell}\necho 'a\\nb'\n`, new RegExp(`interpreter ${shell} `));
    await refused('#!python3\n', /interpreter python3 is not on this machine.*#!\/usr\/bin\/env python3/);
    await refused('#!\necho\n', /names no interpreter/);
  });

  it('refuses a script saved with Windows line endings rather than run each line with a CR', async () => {
    await refused('#!/bin/bash\r\necho hi\r\n', /carriage return/);
    await refused('#!/bin/sh -e\r\necho hi\r\n', /carriage return/);
  });
});
