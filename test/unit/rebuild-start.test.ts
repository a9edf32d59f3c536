// Rebuilder.startBuild: resolves once nixos-rebuild has been started, not when it ends, so a pass can
// start the build before the parser's verdict; builds the file it is given; on a first start makes
// the agent's state directory root's alone, whoever gets there first; runs each build in a
// directory of its own, so that a build an earlier agent left running can never hand this one its
// result, and stops such a build.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BUILD_DIR, Rebuilder } from '../../agent/apply/rebuild.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { ProcessRunner } from '../../agent/runner.js';

/** Holds every run until released; records what it was asked. Finds strays as the real runner does. */
class HeldRunner implements Runner {
  readonly requests: RunRequest[] = [];
  private readonly real = new ProcessRunner({}, 60_000);
  readonly stopped: number[] = [];
  async stopWithin(dir: string): Promise<number[]> {
    const groups = await this.real.stopWithin(dir);
    this.stopped.push(...groups);
    return groups;
  }
  private release: (() => void) | undefined;
  run(request: RunRequest): Promise<RunResult> {
    this.requests.push(request);
    return new Promise((resolve) => {
      this.release = () => resolve({ code: 0, signal: null, timedOut: false, aborted: false, stdout: '', stderr: '', tail: [], durationMs: 0 });
    });
  }
  finish(): void {
    this.release?.();
  }
}

interface Bench {
  readonly fs: RootFs;
  readonly runner: HeldRunner;
  readonly rebuilder: Rebuilder;
  /** Where a build started `nth` (from 0) runs, under root: where nixos-rebuild leaves `result`. */
  buildDir(nth: number): string;
}

/** A Rebuilder over a fresh root and a HeldRunner, the root removed afterwards. */
async function withRebuilder(body: (b: Bench) => Promise<void>, before?: (fs: RootFs) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rebuild-start-'));
  try {
    const fs = new RootFs(dir);
    await before?.(fs);
    const runner = new HeldRunner();
    const rebuilder = new Rebuilder(runner, fs, { nixosRebuild: 'nixos-rebuild', nixEnv: 'nix-env', nixChannel: 'nix-channel', extraArgs: [], buildTimeoutMs: 60_000, activateTimeoutMs: 60_000 }, silentLogger());
    await body({ fs, runner, rebuilder, buildDir: (nth) => `/${path.relative(dir, runner.requests[nth]?.cwd ?? '')}` });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('Rebuilder.startBuild', () => {
  it('resolves while nixos-rebuild runs, with the file it was given; done is the store path', { timeout: 60_000 }, () =>
    withRebuilder(async ({ fs, runner, rebuilder, buildDir }) => {
      const { done } = await rebuilder.startBuild(undefined, '/etc/nixos/ec2-agent/abc/configuration.nix');
      assert.equal(runner.requests.length, 1, 'nixos-rebuild was started');
      assert.deepEqual(runner.requests[0]?.args, ['build', '-I', `nixos-config=${fs.resolve('/etc/nixos/ec2-agent/abc/configuration.nix')}`]);
      assert.equal(path.posix.dirname(buildDir(0)), BUILD_DIR, 'a directory of its own under the build directory');
      assert.equal((await stat(fs.resolve(path.dirname(BUILD_DIR)))).mode & 0o777, 0o700, "the state directory is root's alone");

      await fs.symlinkAtomic('/nix/store/00000000000000000000000000000000-nixos-system', `${buildDir(0)}/result`);
      runner.finish();
      assert.equal(await done, '/nix/store/00000000000000000000000000000000-nixos-system');
    }));

  it("reads its own build's result, whatever a build an earlier agent left running writes", { timeout: 60_000 }, () =>
    withRebuilder(async ({ fs, runner, rebuilder, buildDir }) => {
      const { done } = await rebuilder.startBuild();
      await fs.symlinkAtomic('/nix/store/11111111111111111111111111111111-nixos-system-new', `${buildDir(0)}/result`);
      // An earlier agent's build, started where builds ran before each had a directory of its own,
      // ends just after this one and leaves its link.
      await fs.symlinkAtomic('/nix/store/00000000000000000000000000000000-nixos-system-old', `${BUILD_DIR}/result`);
      runner.finish();
      assert.equal(await done, '/nix/store/11111111111111111111111111111111-nixos-system-new');
    }));

  it('stops a build an earlier agent left running, and nothing else, and removes what earlier builds left', { timeout: 60_000 }, async () => {
    const children: ReturnType<typeof spawn>[] = [];
    // A process of its own group (as the runner starts each step), working in `cwd`.
    const start = async (cwd: string, args: string[]) => {
      const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', ...args], { cwd, detached: true, stdio: 'ignore' });
      children.push(child);
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
      return { child, exited: new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal))) };
    };
    let stray: Awaited<ReturnType<typeof start>> | undefined;
    let operator: Awaited<ReturnType<typeof start>> | undefined;
    const earlier = `${BUILD_DIR}/run-earlier`;
    try {
      await withRebuilder(
        async ({ fs, runner, rebuilder, buildDir }) => {
          const { done } = await rebuilder.startBuild();
          assert.deepEqual(runner.stopped, [stray?.child.pid], "the earlier agent's build's group, and not the operator's");
          assert.equal(await stray?.exited, 'SIGTERM', "the earlier agent's build was stopped");
          assert.equal(operator?.child.exitCode ?? operator?.child.signalCode, null);
          assert.deepEqual(await readdir(fs.resolve(BUILD_DIR)), [path.posix.basename(buildDir(0))], 'only the new build is left in the build directory');
          assert.equal(existsSync(fs.resolve(earlier)), false);
          runner.finish();
          await assert.rejects(done, /left no result link/);
        },
        async (fs) => {
          await mkdir(fs.resolve(earlier), { recursive: true });
          await writeFile(fs.resolve(`${earlier}/stamp`), '');
          // The earlier agent's build, as its runner started it, and a shell an operator opened there.
          stray = await start(fs.resolve(earlier), ['build', '-I', `nixos-config=${fs.resolve('/etc/nixos/configuration.nix')}`]);
          operator = await start(fs.resolve(earlier), []);
          await fs.symlinkAtomic('/nix/store/00000000000000000000000000000000-nixos-system-old', `${BUILD_DIR}/result`);
        },
      );
    } finally {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it("a second build removes the first one's directory and stops nothing of its own", { timeout: 60_000 }, () =>
    withRebuilder(async ({ fs, runner, rebuilder, buildDir }) => {
      const first = await rebuilder.startBuild();
      await fs.symlinkAtomic('/nix/store/11111111111111111111111111111111-nixos-system', `${buildDir(0)}/result`);
      runner.finish();
      await first.done;
      const second = await rebuilder.startBuild();
      assert.notEqual(buildDir(1), buildDir(0));
      assert.deepEqual(runner.stopped, []);
      assert.deepEqual(await readdir(fs.resolve(BUILD_DIR)), [path.posix.basename(buildDir(1))]);
      runner.finish();
      await assert.rejects(second.done, /left no result link/);
    }));
});
