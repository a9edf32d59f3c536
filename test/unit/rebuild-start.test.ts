// Rebuilder.startBuild: resolves once nixos-rebuild has been started, not when it ends, so a pass can
// start the build before the parser's verdict; builds the file it is given; and on a first start
// makes the agent's state directory root's alone, whoever gets there first.
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BUILD_DIR, Rebuilder } from '../../agent/apply/rebuild.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';

/** Holds every run until released; records what it was asked. */
class HeldRunner implements Runner {
  readonly requests: RunRequest[] = [];
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

describe('Rebuilder.startBuild', () => {
  it('resolves while nixos-rebuild runs, with the file it was given; done is the store path', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'rebuild-start-'));
    try {
      const fs = new RootFs(dir);
      const runner = new HeldRunner();
      const rebuilder = new Rebuilder(runner, fs, { nixosRebuild: 'nixos-rebuild', nixEnv: 'nix-env', nixChannel: 'nix-channel', extraArgs: [], buildTimeoutMs: 60_000, activateTimeoutMs: 60_000 }, silentLogger());
      const { done } = await rebuilder.startBuild(undefined, '/etc/nixos/ec2-agent/abc/configuration.nix');
      assert.equal(runner.requests.length, 1, 'nixos-rebuild was started');
      assert.deepEqual(runner.requests[0]?.args, ['build', '-I', `nixos-config=${fs.resolve('/etc/nixos/ec2-agent/abc/configuration.nix')}`]);
      assert.equal(runner.requests[0]?.cwd, fs.resolve(BUILD_DIR));
      assert.equal((await stat(fs.resolve(path.dirname(BUILD_DIR)))).mode & 0o777, 0o700, "the state directory is root's alone");

      await fs.symlinkAtomic('/nix/store/00000000000000000000000000000000-nixos-system', `${BUILD_DIR}/result`);
      runner.finish();
      assert.equal(await done, '/nix/store/00000000000000000000000000000000-nixos-system');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
