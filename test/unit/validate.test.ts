import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, mkdir, readdir, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { TransientError } from '../../agent/errors.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { NixParser, NixUnavailableError } from '../../agent/render/validate.js';
import { ProcessRunner } from '../../agent/runner.js';
import { NIX_MISSING, nixAvailable, withTempDir } from '../support/nix.js';

const nix = nixAvailable() ? {} : { skip: NIX_MISSING };

/** The real runner, counting calls, so tests can see the files are not parsed one call each. */
class CountingRunner implements Runner {
  readonly requests: RunRequest[] = [];
  private readonly inner = new ProcessRunner(process.env);
  run(request: RunRequest): Promise<RunResult> {
    this.requests.push(request);
    return this.inner.run(request);
  }
}

/** Runs every command as `nobody`, as a non-root agent or a developer's sandbox would. */
class NobodyRunner implements Runner {
  private readonly inner = new ProcessRunner(process.env);
  run(request: RunRequest): Promise<RunResult> {
    return this.inner.run({
      ...request,
      command: 'setpriv',
      args: ['--reuid=nobody', '--regid=nogroup', '--clear-groups', '--', request.command, ...request.args],
      env: { HOME: '/nonexistent' },
    });
  }
}

function fakeResult(partial: Partial<RunResult>): RunResult {
  return { code: 0, signal: null, timedOut: false, aborted: false, stdout: '', stderr: '', tail: [], durationMs: 1, ...partial };
}

async function writeFiles(dir: string, files: Record<string, string>): Promise<string[]> {
  const paths: string[] = [];
  for (const [name, text] of Object.entries(files)) {
    const path = join(dir, name);
    await writeFile(path, text);
    paths.push(path);
  }
  return paths;
}

const GOOD = '{ config, lib, ... }:\n{\n  networking.hostName = lib.mkDefault "web-1";\n}\n';
/** The `;` after `=` is at line 3, column 25. */
const BROKEN = '{ ... }:\n{\n  networking.hostName = ;\n}\n';

describe('NixParser', () => {
  it('reports whether nix-instantiate runs', nix, async () => {
    assert.equal(await new NixParser(new ProcessRunner(process.env)).available(), true);
    assert.equal(await new NixParser(new ProcessRunner(process.env), { command: '/nonexistent/nix-instantiate' }).available(), false);
  });

  it('accepts files that parse, in one call', nix, async () => {
    await withTempDir(async (dir) => {
      const files = await writeFiles(dir, { 'a.nix': GOOD, 'b.nix': '[ 1 2 ]\n', 'c.nix': '# only a comment\n{ }\n' });
      const runner = new CountingRunner();
      assert.deepEqual(await new NixParser(runner).check(files), []);
      assert.equal(runner.requests.length, 1);
      assert.deepEqual(await new NixParser(runner).check([]), []);
    });
  });

  it('names the file, line and column of a syntax error, with the first error line as message', nix, async () => {
    await withTempDir(async (dir) => {
      const [file] = await writeFiles(dir, { 'broken.nix': BROKEN });
      assert.deepEqual(await new NixParser(new ProcessRunner(process.env)).check([file as string]), [
        { file, line: 3, column: 25, message: "syntax error, unexpected ';'" },
      ]);
    });
  });

  it('reports undefined variables, which Nix finds while parsing', nix, async () => {
    await withTempDir(async (dir) => {
      const [file] = await writeFiles(dir, { 'undef.nix': '{ ... }:\n{\n  x = pkgs.hello;\n}\n' });
      const errors = await new NixParser(new ProcessRunner(process.env)).check([file as string]);
      assert.deepEqual(errors, [{ file, line: 3, column: 7, message: "undefined variable 'pkgs'" }]);
    });
  });

  it('finds every broken file among many, resuming after each failure', nix, async () => {
    await withTempDir(async (dir) => {
      const files = await writeFiles(dir, {
        '1.nix': GOOD,
        '2.nix': '{ a = 1; a = 2; }\n',
        '3.nix': GOOD,
        '4.nix': GOOD,
        '5.nix': '"unterminated\n',
        '6.nix': GOOD,
      });
      const runner = new CountingRunner();
      const errors = await new NixParser(runner).check(files);
      assert.deepEqual(
        errors.map((e) => [e.file, e.line, e.column]),
        [
          [files[1], 1, 10],
          [files[4], 1, 2],
        ],
      );
      assert.match(errors[0]?.message ?? '', /^attribute 'a' already defined at /);
      assert.match(errors[1]?.message ?? '', /^syntax error, unexpected end of file/);
      // One call to the first failure, one to the second, one for the rest.
      assert.equal(runner.requests.length, 3);
    });
  });

  it('names files by the name given, through symlinks, and reports unreadable files', nix, async () => {
    await withTempDir(async (dir) => {
      const [good, broken] = await writeFiles(dir, { 'good.nix': GOOD, 'target.nix': BROKEN });
      const link = join(dir, 'link.nix');
      await symlink(broken as string, link);
      const missing = join(dir, 'missing.nix');
      const errors = await new NixParser(new ProcessRunner(process.env)).check([good as string, link, missing, good as string]);
      assert.deepEqual(
        errors.map((e) => [e.file, e.line, e.column]),
        [
          [link, 3, 25],
          [missing, 0, 0],
        ],
      );
      assert.match(errors[1]?.message ?? '', /No such file or directory/);
    });
  });

  it('parses text given to it, naming the error by the label', nix, async () => {
    const parser = new NixParser(new ProcessRunner(process.env));
    assert.equal(await parser.checkText(GOOD, 'user data'), undefined);
    assert.deepEqual(await parser.checkText(BROKEN, 'SSM /nixos/fleet/modules/web (version 4)'), {
      file: 'SSM /nixos/fleet/modules/web (version 4)',
      line: 3,
      column: 25,
      message: "syntax error, unexpected ';'",
    });
    const empty = await parser.checkText('', 'empty');
    assert.equal(empty?.line, 1);
    assert.match(empty?.message ?? '', /unexpected end of file/);
  });

  it('never evaluates what it parses', nix, async () => {
    await withTempDir(async (dir) => {
      const marker = join(dir, 'evaluated');
      const text = `builtins.toFile "x" (builtins.readFile ${JSON.stringify(marker)}) + abort "evaluated"\n`;
      assert.equal(await new NixParser(new ProcessRunner(process.env)).checkText(text, 'hostile'), undefined);
      assert.equal(existsSync(marker), false);
    });
  });

  it('works as a non-root user', nix, async (t) => {
    if (process.getuid?.() !== 0 || !existsSync('/usr/bin/setpriv')) {
      t.skip('needs root and setpriv to switch to nobody');
      return;
    }
    await withTempDir(async (dir) => {
      await chmod(dir, 0o755);
      const files = await writeFiles(dir, { 'good.nix': GOOD, 'broken.nix': BROKEN });
      for (const f of files) await chmod(f, 0o644);
      const parser = new NixParser(new NobodyRunner());
      assert.equal(await parser.available(), true);
      assert.deepEqual(
        (await parser.check(files)).map((e) => [e.file, e.line, e.column]),
        [[files[1], 3, 25]],
      );
      assert.equal(await parser.checkText(GOOD, 'text'), undefined);
    });
  });

  it('throws NixUnavailableError when nix-instantiate cannot be started', async () => {
    const parser = new NixParser(new ProcessRunner(process.env), { command: '/nonexistent/nix-instantiate' });
    await assert.rejects(parser.check(['/etc/nixos/configuration.nix']), (err: unknown) => {
      assert.ok(err instanceof NixUnavailableError);
      assert.equal(err.command, '/nonexistent/nix-instantiate');
      return true;
    });
    await assert.rejects(parser.checkText('{ }', 'x'), NixUnavailableError);
  });

  it('throws a transient error when the parser does not finish in time', async () => {
    await withTempDir(async (dir) => {
      const slow = join(dir, 'slow-nix-instantiate');
      await writeFile(slow, '#!/bin/sh\nexec sleep 30\n');
      await chmod(slow, 0o755);
      const parser = new NixParser(new ProcessRunner(process.env, 100), { command: slow, timeoutMs: 100 });
      await assert.rejects(parser.check([join(dir, 'a.nix')]), TransientError);
    });
  });

  it('reads the location and message through ANSI colours', async () => {
    const stderr =
      "\u001b[31;1merror:\u001b[0m syntax error, unexpected ';'\n\n       at \u001b[35;1m/etc/nixos/x.nix:2:7\u001b[0m:\n\n            1| { a = 1;\n";
    const runner: Runner = { run: async () => fakeResult({ code: 1, stderr }) };
    assert.deepEqual(await new NixParser(runner).check(['/etc/nixos/x.nix']), [
      { file: '/etc/nixos/x.nix', line: 2, column: 7, message: "syntax error, unexpected ';'" },
    ]);
  });

  it('passes --store dummy:// and the files after --', async () => {
    const requests: RunRequest[] = [];
    const runner: Runner = {
      run: async (request) => {
        requests.push(request);
        return fakeResult({});
      },
    };
    await new NixParser(runner).check(['/a.nix', '/b.nix']);
    assert.deepEqual(requests[0]?.args, ['--parse', '--store', 'dummy://', '--', '/a.nix', '/b.nix']);
    assert.equal(requests[0]?.command, 'nix-instantiate');
  });
});

/**
 * A runner whose standby process (the request with `-` among its args) waits for its stdin and
 * answers with `answer`, called with what it was given and what its slots pointed to then.
 */
class StandbyRunner implements Runner {
  readonly requests: RunRequest[] = [];
  readonly given: { stdin: string; links: (string | undefined)[] }[] = [];
  constructor(private readonly answer: (stdin: string, links: (string | undefined)[], slots: string[]) => Partial<RunResult> = () => ({})) {}
  async run(request: RunRequest): Promise<RunResult> {
    this.requests.push(request);
    if (!request.args.includes('-') || typeof request.stdin === 'string' || request.stdin === undefined) return fakeResult({});
    const stdin = await request.stdin;
    const slots = request.args.slice(request.args.indexOf('--') + 1);
    const links = await Promise.all(slots.map((s) => readlink(s).catch(() => undefined)));
    this.given.push({ stdin, links });
    return fakeResult(this.answer(stdin, links, slots));
  }
}

/** Waits until `check` holds, yielding to the event loop between looks; fails after a minute. */
async function until(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the standby parser');
    await new Promise((r) => setImmediate(r));
  }
}

describe('NixParser on standby', () => {
  it('starts the parser at standby(), before the files exist, and gives it the files at check()', async () => {
    await withTempDir(async (dir) => {
      const runner = new StandbyRunner();
      const parser = new NixParser(runner, { standbyDir: join(dir, 'run'), standbySlots: 4 });
      parser.standby();
      await until(() => runner.requests.length === 1);
      const started = runner.requests[0] as RunRequest;
      assert.deepEqual(started.args.slice(0, 5), ['--parse', '--store', 'dummy://', '-', '--']);
      const slots = started.args.slice(5);
      assert.equal(slots.length, 4);
      const [slotDir] = await readdir(join(dir, 'run'));
      assert.match(slotDir ?? '', /^\.parser\.tmp-\d+-[0-9a-f]{12}$/);
      assert.equal((await stat(join(dir, 'run', slotDir as string))).mode & 0o777, 0o700);
      // Nothing to parse yet: stdin is still open and no slot points anywhere.
      assert.equal(runner.given.length, 0);

      const files = await writeFiles(dir, { 'a.nix': GOOD, 'b.nix': GOOD });
      assert.deepEqual(await parser.check(files), []);
      assert.equal(runner.requests.length, 1, 'the standby answered for both files: no other parser');
      assert.equal(runner.given[0]?.stdin, 'null\n');
      const [first, second, ...rest] = runner.given[0]?.links ?? [];
      assert.deepEqual([first, second], files);
      for (const other of rest) assert.equal(other, join(dir, 'run', slotDir as string, 'empty.nix'));
      // Used once: the next check starts its own.
      assert.deepEqual(await parser.check(files), []);
      assert.deepEqual(runner.requests[1]?.args, ['--parse', '--store', 'dummy://', '--', ...files]);
      await until(() => existsSync(join(dir, 'run', slotDir as string)) === false);
    });
  });

  it('names a file from the path Nix read through its slot, and parses the files after it itself', async () => {
    await withTempDir(async (dir) => {
      const files = ['/etc/nixos/a.nix', '/etc/nixos/b.nix', '/etc/nixos/c.nix'];
      const runner = new StandbyRunner(() => ({ code: 1, stderr: "error: syntax error, unexpected ';'\n\n       at /etc/nixos/b.nix:3:25:\n" }));
      const parser = new NixParser(runner, { standbyDir: dir });
      parser.standby();
      assert.deepEqual(await parser.check(files), [{ file: '/etc/nixos/b.nix', line: 3, column: 25, message: "syntax error, unexpected ';'" }]);
      assert.equal(runner.requests.length, 2);
      assert.deepEqual(runner.requests[1]?.args, ['--parse', '--store', 'dummy://', '--', '/etc/nixos/c.nix']);

      // A Nix that named the slot rather than the file behind it: the slot says which file.
      const bySlot = new StandbyRunner((_stdin, _links, slots) => ({ code: 1, stderr: `error: syntax error, unexpected ';'\n\n       at ${slots[0]}:1:3:\n` }));
      const second = new NixParser(bySlot, { standbyDir: dir });
      second.standby();
      assert.deepEqual(await second.check(files), [{ file: '/etc/nixos/a.nix', line: 1, column: 3, message: "syntax error, unexpected ';'" }]);
      assert.deepEqual(bySlot.requests.slice(1).map((r) => r.args.slice(4)), [['/etc/nixos/b.nix', '/etc/nixos/c.nix']]);
    });
  });

  it('parses the files past its slots itself', async () => {
    await withTempDir(async (dir) => {
      const files = ['/a.nix', '/b.nix', '/c.nix', '/d.nix', '/e.nix'];
      const runner = new StandbyRunner();
      const parser = new NixParser(runner, { standbyDir: dir, standbySlots: 2 });
      parser.standby();
      assert.deepEqual(await parser.check(files), []);
      assert.deepEqual(runner.given[0]?.links, ['/a.nix', '/b.nix']);
      assert.deepEqual(runner.requests.slice(1).map((r) => r.args.slice(4)), [['/c.nix', '/d.nix', '/e.nix']]);
    });
  });

  it('parses the files itself when the standby process gave no verdict', async () => {
    // Nix answers SIGTERM with `error: interrupted by the user` and exit 1: not a verdict.
    for (const ended of [{ timedOut: true, code: null, signal: 'SIGKILL' }, { timedOut: true, code: 1, stderr: 'error: interrupted by the user\n' }, { code: 127, stderr: 'nix-instantiate: spawn ENOENT\n' }, { code: null, signal: 'SIGSEGV' }] satisfies Partial<RunResult>[]) {
      await withTempDir(async (dir) => {
        const runner = new StandbyRunner(() => ended);
        const parser = new NixParser(runner, { standbyDir: dir });
        parser.standby();
        assert.deepEqual(await parser.check(['/a.nix']), []);
        assert.deepEqual(runner.requests[1]?.args, ['--parse', '--store', 'dummy://', '--', '/a.nix'], JSON.stringify(ended));
      });
    }
  });

  it('parses the files itself when the slots cannot be made', async () => {
    await withTempDir(async (dir) => {
      const runner = new StandbyRunner();
      const parser = new NixParser(runner, { standbyDir: join(dir, 'run') });
      parser.standby();
      await until(() => runner.requests.length === 1);
      const slots = (runner.requests[0] as RunRequest).args.slice(5);
      // A slot taken already: the symlink cannot be made.
      await writeFile(slots[0] as string, 'null\n');
      assert.deepEqual(await parser.check(['/a.nix']), []);
      await until(() => runner.given.length === 1);
      assert.equal(runner.given[0]?.stdin, '', 'the standby is ended with an empty stdin');
      assert.deepEqual(runner.requests[1]?.args, ['--parse', '--store', 'dummy://', '--', '/a.nix']);
    });
  });

  it('release() ends a standby no check took; without a directory there is none', async () => {
    await withTempDir(async (dir) => {
      const runner = new StandbyRunner(() => ({ code: 1, stderr: 'error: syntax error, unexpected end of file\n' }));
      const parser = new NixParser(runner, { standbyDir: join(dir, 'run') });
      parser.standby();
      parser.standby();
      parser.release();
      await until(() => runner.given.length === 1);
      assert.equal(runner.requests.length, 1, 'one standby at a time');
      assert.deepEqual(runner.given[0], { stdin: '', links: Array(8).fill(undefined) });
      await until(() => existsSync(join(dir, 'run')) && readdirSync(join(dir, 'run')).length === 0);
      // A check after the release starts its own parser.
      assert.deepEqual(await new NixParser(runner).check([]), []);
      const none = new StandbyRunner();
      const without = new NixParser(none);
      without.standby();
      assert.deepEqual(await without.check(['/a.nix']), []);
      assert.deepEqual(none.requests.map((r) => r.args.includes('-')), [false]);
    });
  });

  it('gives the verdicts a cold check gives, with the real parser started before the files were written', nix, async () => {
    await withTempDir(async (dir) => {
      const run = join(dir, 'run');
      await mkdir(run);
      const parser = new NixParser(new CountingRunner(), { standbyDir: run, standbySlots: 4 });
      parser.standby();
      const files = await writeFiles(dir, {
        '1.nix': GOOD,
        '2.nix': '{ a = 1; a = 2; }\n',
        '3.nix': GOOD,
        'target.nix': BROKEN,
        '5.nix': '"unterminated\n',
        '6.nix': GOOD,
      });
      const link = join(dir, 'link.nix');
      await symlink(files[3] as string, link);
      const checked = [files[0], files[1], files[2], link, join(dir, 'missing.nix'), files[4], files[5]] as string[];
      const cold = await new NixParser(new ProcessRunner(process.env)).check(checked);
      assert.deepEqual(
        cold.map((e) => [e.file, e.line, e.column]),
        [
          [files[1], 1, 10],
          [link, 3, 25],
          [join(dir, 'missing.nix'), 0, 0],
          [files[4], 1, 2],
        ],
      );
      assert.deepEqual(await parser.check(checked), cold);
      await until(() => readdirSync(run).length === 0);
    });
  });
});
