// Every command, given bad input, ends on its own within seconds with exit 2 (bad input) or 1 (the
// work failed) and one line on stderr naming what was wrong: no stack trace unless --debug, no
// process left behind. And `sandbox --parameters` states what SSM holds: re-running it is a no-op.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanEnv } from '../../sandbox/sandbox.js';
import { CLI, parseJson, type StatusJson } from '../support/e2e.js';

/** Far beyond what any of these needs on a loaded machine; a command still running then hangs. */
const HANG_MS = 60_000;

interface Ended {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly hung: boolean;
}

const SETPRIV = '/usr/bin/setpriv';

/** The CLI with `args`, run through `wrapper` (a command and its arguments) when given. */
function cli(args: readonly string[], wrapper: readonly string[] = []): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const [command, ...rest] = [...wrapper, process.execPath, CLI, ...args] as [string, ...string[]];
    const child = spawn(command, rest, { env: cleanEnv(process.env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, HANG_MS);
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, hung });
    });
  });
}

describe('bad input to every command', { concurrency: 4 }, () => {
  let dir: string;
  let busy: net.Server;
  let busyPort: number;
  const f = (name: string) => path.join(dir, name);

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-errors-'));
    await writeFile(f('not-json.json'), '{ "ssm": ');
    await writeFile(f('bad-field.json'), JSON.stringify({ ssm: { prefix: ['/x'] } }));
    await writeFile(f('duplicate.json'), '{\n  "ssm": {\n    "enabled": true,\n    "enabled": false\n  }\n}\n');
    await writeFile(f('latin1.json'), Buffer.from('{"root": "/caf\xe9"}', 'latin1'));
    await writeFile(f('bad-type.json'), JSON.stringify([{ Name: '/nixos/fleet/options/a', Value: '1', Type: 'Bogus' }]));
    await writeFile(f('not-array.json'), JSON.stringify({ Name: '/a', Value: '1' }));
    await writeFile(f('unknown-member.json'), JSON.stringify([{ Name: '/nixos/fleet/options/a', Value: '1', Type: 'String' }, { Name: '/nixos/fleet/options/b', Value: '1', Type: 'String', Bogus: 1 }]));
    await writeFile(f('unknown-tag-member.json'), JSON.stringify([{ Name: '/nixos/fleet/options/a', Value: '1', Type: 'String', Tags: [{ Key: 'k', Value: 'v', Colour: 'red' }] }]));
    await writeFile(f('bad-instance.json'), JSON.stringify({ instanceId: 'not-an-id' }));
    await mkdir(f('empty-root'));
    await writeFile(f('root-config.json'), JSON.stringify({ root: f('no-root-from-config') }));
    const statusFiles: [string, string][] = [['status-newer', '{"version":99,"condition":"weird"}'], ['status-cut', '{"version":1,"pid":12,"cond'], ['status-array', '[]']];
    for (const [root, text] of statusFiles) {
      await mkdir(f(`${root}/run/nixos-ec2-agent`), { recursive: true });
      await writeFile(f(`${root}/run/nixos-ec2-agent/status.json`), text);
    }
    await mkdir(f('corrupt-sandbox'));
    await writeFile(f('corrupt-sandbox/world.json'), 'garbage');
    busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    busyPort = (busy.address() as net.AddressInfo).port;
  });
  after(async () => {
    await new Promise<void>((resolve) => busy.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  const cases: [string, () => string[], number, RegExp][] = [
    ['run, a missing config file', () => ['run', '--config', f('missing.json')], 2, /missing\.json.*cannot read/],
    ['converge --once, an unknown field', () => ['converge', '--once', '--config', f('bad-field.json')], 2, /ssm\.prefix: unknown field/],
    ['converge --now, no daemon under the root', () => ['converge', '--now', '--root', f('empty-root')], 1, /the daemon is not running/],
    ['render, a config that is not JSON', () => ['render', '--config', f('not-json.json')], 2, /not-json\.json.*not JSON/],
    ['render, --out a file', () => ['render', '--root', f('empty-root'), '--out', f('not-json.json')], 2, /^nixos-ec2-agent render: --out: .*not-json\.json is not a directory$/],
    ['render, --out under a file', () => ['render', '--root', f('empty-root'), '--out', f('not-json.json/out')], 2, /^nixos-ec2-agent render: --out: .*ENOTDIR/],
    ['render, --out empty', () => ['render', '--root', f('empty-root'), '--out', ''], 2, /^nixos-ec2-agent render: --out: an empty path names no directory$/],
    ['render, --out whose parent does not exist', () => ['render', '--root', f('empty-root'), '--out', f('no-such/out')], 2, /^nixos-ec2-agent render: --out: cannot make .*no-such\/out: its parent .*no-such does not exist$/],
    ['render, --out in /proc', () => ['render', '--root', f('empty-root'), '--out', '/proc/nope'], 2, /^nixos-ec2-agent render: --out: cannot write in \/proc: it is on proc, a kernel file system$/],
    ['status, an unknown field', () => ['status', '--config', f('bad-field.json')], 2, /unknown field/],
    ['status, a status.json of a newer agent', () => ['status', '--root', f('status-newer')], 2, /^nixos-ec2-agent status: .*status-newer\/run\/nixos-ec2-agent\/status\.json: was written by a newer agent in format 99, .*this agent reads format 1$/],
    ['status, a status.json cut short', () => ['status', '--root', f('status-cut')], 2, /^nixos-ec2-agent status: .*status-cut\/run\/nixos-ec2-agent\/status\.json: not JSON \(/],
    ['status --json, a status.json that is not an object', () => ['status', '--json', '--root', f('status-array')], 2, /^nixos-ec2-agent status: .*status-array\/run\/nixos-ec2-agent\/status\.json: not a status: \(top level\): expected an object$/],
    ['generations, a missing config', () => ['generations', '--config', f('missing.json')], 2, /cannot read/],
    ['rollback, a config that is not JSON', () => ['rollback', '--config', f('not-json.json')], 2, /not JSON/],
    ['suspend, a config that is not JSON', () => ['suspend', '--config', f('not-json.json')], 2, /not JSON/],
    ['resume, a config that is not JSON', () => ['resume', '--config', f('not-json.json')], 2, /not JSON/],
    ['check-config, an unknown field', () => ['check-config', f('bad-field.json')], 2, /unknown field/],
    ['check-config, a duplicate key', () => ['check-config', f('duplicate.json')], 2, /duplicate\.json: not JSON: line 4, column 5, at ssm\.enabled: the key "enabled" appears twice/],
    ['converge --once, a duplicate key', () => ['converge', '--once', '--config', f('duplicate.json')], 2, /duplicate\.json: .*line 4, column 5/],
    ['check-config, invalid UTF-8', () => ['check-config', f('latin1.json')], 2, /latin1\.json: not valid UTF-8 \(the sequence at byte 14, counting from 0\)/],
    ['emulate, a missing parameters file', () => ['emulate', '--parameters', f('missing.json')], 2, /--parameters .*missing\.json: cannot read: ENOENT/],
    ['emulate, a parameters file that is not JSON', () => ['emulate', '--parameters', f('not-json.json')], 2, /not JSON/],
    ['emulate, parameters that are not an array', () => ['emulate', '--parameters', f('not-array.json')], 2, /a JSON array of PutParameter requests/],
    ['emulate, a parameter with a field PutParameter does not have', () => ['emulate', '--parameters', f('unknown-member.json')], 2, /^nixos-ec2-agent emulate: .*unknown-member\.json: \[1\]\.Bogus: unknown field \(a PutParameter request has Name, Value, Type, Description, KeyId, Overwrite, AllowedPattern, Tags, Tier, Policies, DataType\)$/],
    ['emulate, a parameter tag with a field a tag does not have', () => ['emulate', '--parameters', f('unknown-tag-member.json')], 2, /^nixos-ec2-agent emulate: .*unknown-tag-member\.json: \[0\]\.Tags\[0\]\.Colour: unknown field \(a tag has Key, Value\)$/],
    ['emulate, a parameter SSM refuses', () => ['emulate', '--parameters', f('bad-type.json')], 2, /\/nixos\/fleet\/options\/a: ValidationException/],
    ['emulate, a bad instance file', () => ['emulate', '--instance', f('bad-instance.json')], 2, /instanceId/],
    ['emulate, a port that is not a number', () => ['emulate', '--imds-port', 'abc'], 2, /--imds-port abc is not a port number/],
    ['emulate, a host that is no address', () => ['emulate', '--host', '999.1.1.1'], 2, /^nixos-ec2-agent emulate: --host 999\.1\.1\.1: no such host \(getaddrinfo ENOTFOUND 999\.1\.1\.1\)$/],
    ['sandbox --once, --dir a file', () => ['sandbox', '--once', '--dir', f('not-json.json')], 2, /^nixos-ec2-agent sandbox: --dir .*not-json\.json: not a directory, nor one that can be made \(EEXIST/],
    ['emulate, a port already taken', () => ['emulate', '--ssm-port', String(busyPort)], 1, /EADDRINUSE/],
    ['sandbox --once, a parameter SSM refuses', () => ['sandbox', '--once', '--dir', f('sandbox-bad-type'), '--parameters', f('bad-type.json')], 2, /ValidationException/],
    ['sandbox --once, missing user data', () => ['sandbox', '--once', '--dir', f('sandbox-no-user-data'), '--user-data', f('missing.nix')], 2, /--user-data .*cannot read/],
    ['sandbox, a corrupt saved world', () => ['sandbox', '--dir', f('corrupt-sandbox')], 2, /world\.json: not a sandbox's saved world/],
  ];

  for (const [what, args, code, message] of cases) {
    test(what, async () => {
      const ended = await cli(args());
      assert.equal(ended.hung, false, `still running after ${HANG_MS} ms: ${ended.stderr}`);
      assert.equal(ended.code, code, ended.stderr);
      const lines = ended.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one line on stderr:\n${ended.stderr}`);
      assert.match(lines[0]!, message);
      assert.doesNotMatch(ended.stderr, /^\s+at /m, 'no stack trace');
      if (args()[0] === 'status') assert.equal(ended.stdout, '', 'no status printed from what could not be read');
    });
  }

  // A mistyped root must not become a new tree under which `suspend` reports an instance suspended.
  const ROOTED: readonly (readonly string[])[] = [['run'], ['converge', '--once'], ['converge', '--now'], ['render'], ['status'], ['status', '--wait'], ['generations'], ['rollback'], ['suspend'], ['resume']];
  for (const command of ROOTED) {
    test(`${command.join(' ')}: a root that is not an existing directory is refused, exit 2, and nothing is made`, async () => {
      const givenBy: [string[], string, RegExp][] = [
        [['--root', f('no-root')], f('no-root'), new RegExp(`^nixos-ec2-agent ${command[0]}: --root: ${f('no-root')} does not exist$`)],
        [['--root', f('not-json.json')], f('not-json.json'), new RegExp(`^nixos-ec2-agent ${command[0]}: --root: ${f('not-json.json')} is not a directory$`)],
        [['--config', f('root-config.json')], f('no-root-from-config'), new RegExp(`^nixos-ec2-agent ${command[0]}: ${f('root-config.json')}: root: ${f('no-root-from-config')} does not exist$`)],
      ];
      for (const [flags, root, message] of givenBy) {
        const ended = await cli([...command, ...flags]);
        assert.equal(ended.hung, false, `still running after ${HANG_MS} ms: ${ended.stderr}`);
        assert.equal(ended.code, 2, ended.stderr);
        const lines = ended.stderr.trimEnd().split('\n');
        assert.equal(lines.length, 1, `one line on stderr:\n${ended.stderr}`);
        assert.match(lines[0]!, message);
        assert.equal(ended.stdout, '', 'nothing reported as done');
        if (root !== f('not-json.json')) assert.equal(existsSync(root), false, `${root} was made`);
      }
    });
  }

  test('run by a user who may not take the root: exit 2, one line naming the lock', async (t) => {
    if (process.getuid?.() !== 0 || !existsSync(SETPRIV)) {
      t.skip('needs root and setpriv to switch to nobody');
      return;
    }
    const root = f('root-of-root');
    await mkdir(root, { mode: 0o755 });
    const ended = await cli(['run', '--root', root], [SETPRIV, '--reuid=65534', '--regid=65534', '--clear-groups']);
    assert.equal(ended.code, 2, ended.stderr);
    const lines = ended.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, ended.stderr);
    assert.ok(lines[0]!.startsWith(`nixos-ec2-agent run: ${path.join(root, 'var/lib/nixos-ec2-agent/lock')}: run needs root (EACCES: permission denied, mkdir '${root}`), lines[0]);
  });

  test('--debug adds the stack trace', async () => {
    const ended = await cli(['emulate', '--parameters', f('bad-type.json'), '--debug']);
    assert.equal(ended.code, 2, ended.stderr);
    assert.match(ended.stderr, /ValidationException/);
    assert.match(ended.stderr, /^\s+at /m);
  });
});

describe('a reader that closes its end early', () => {
  // `generations | head -1`, `rollback 2>&1 | head`: the command still does its work and ends with
  // its own exit code, without a stack trace (Node ignores SIGPIPE, so a write there is EPIPE).
  function closed(args: readonly string[], stream: 'stdout' | 'stderr'): Promise<{ code: number | null; other: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, ...args], { env: cleanEnv(process.env), stdio: ['ignore', 'pipe', 'pipe'] });
      child[stream].destroy();
      let other = '';
      child[stream === 'stdout' ? 'stderr' : 'stdout'].on('data', (c: Buffer) => (other += c.toString('utf8')));
      const timer = setTimeout(() => child.kill('SIGKILL'), HANG_MS);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, other });
      });
    });
  }
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-pipe-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('stdout closed: the exit code is the command\'s', async () => {
    const ended = await closed(['generations', '--root', dir], 'stdout');
    assert.equal(ended.code, 0, ended.other);
    assert.doesNotMatch(ended.other, /EPIPE|^\s+at /m);
  });

  test('stderr closed: the exit code is the command\'s', async () => {
    const ended = await closed(['converge', '--root', dir], 'stderr');
    assert.equal(ended.code, 2, 'bad usage');
  });
});

describe('sandbox --parameters states what SSM holds', () => {
  test('the same file again changes nothing; a new value is a new version', { timeout: 180_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-seed-'));
    try {
      const file = path.join(dir, 'parameters.json');
      const write = (value: string) =>
        writeFile(file, JSON.stringify([{ Name: '/nixos/fleet/options/time.timeZone', Value: value, Type: 'String', Tags: [{ Key: 'team', Value: 'web' }] }]));
      const once = async () => {
        const ended = await cli(['sandbox', '--once', '--json', '--dir', path.join(dir, 'sb'), '--parameters', file]);
        assert.equal(ended.hung, false);
        assert.equal(ended.code, 0, ended.stderr);
        return parseJson(ended.stdout, 'sandbox --once --json') as StatusJson;
      };
      const version = (s: StatusJson) => s.desired?.sources.parameters.find((p) => p.name === '/nixos/fleet/options/time.timeZone')?.version;
      await write('"UTC"');
      const first = await once();
      assert.equal(first.lastResult?.outcome, 'converged');
      assert.equal(version(first), 1);
      const second = await once();
      assert.equal(second.lastResult?.outcome, 'unchanged', 'the same file again: no change');
      assert.equal(version(second), 1);
      await write('"CET"');
      const third = await once();
      assert.equal(third.lastResult?.outcome, 'converged');
      assert.equal(version(third), 2, 'a new value overwrites: a new version');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
