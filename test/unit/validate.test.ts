import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, symlink, writeFile } from 'node:fs/promises';
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
