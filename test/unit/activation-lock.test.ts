// An activation still running when the agent activates: with KillMode=process (systemd/, nix/)
// a stopped or restarted agent leaves its switch-to-configuration running, and the real one
// refuses to start while another holds /run/nixos/switch-to-configuration.lock. The agent waits
// for the lock instead of failing (and rolling back under the running switch). Real processes and
// real flock(1); the stand-in switch-to-configuration refuses a held lock as the real one does.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Rebuilder, SWITCH_LOCK } from '../../agent/apply/rebuild.js';
import { ApplyFailedError } from '../../agent/errors.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import { ProcessRunner } from '../../agent/runner.js';
import type { RunRequest, Runner } from '../../agent/ports.js';

const hasFlock = spawnSync('flock', ['--version'], { stdio: 'ignore' }).status === 0;
const skip = hasFlock ? false : 'flock(1) is not on PATH (Debian: util-linux)';

interface Setup {
  readonly dir: string;
  readonly lock: string;
  readonly log: string;
  readonly system: string;
  readonly runner: Runner & { readonly started: (command: string) => Promise<void> };
}

function setup(): Setup {
  const dir = mkdtempSync(join(tmpdir(), 'activation-lock-'));
  const fs = new RootFs(dir);
  const lock = fs.resolve(SWITCH_LOCK);
  const log = join(dir, 'log');
  const system = join(dir, 'system');
  mkdirSync(join(system, 'bin'), { recursive: true });
  // Like switch-to-configuration: take the lock without waiting, or refuse.
  writeFileSync(
    join(system, 'bin', 'switch-to-configuration'),
    `#!/bin/sh\nexec flock --nonblock ${JSON.stringify(lock)} sh -c 'echo "switch $1" >> ${JSON.stringify(log)}' sh "$1" || { echo "Could not acquire lock" >&2; exit 1; }\n`,
  );
  chmodSync(join(system, 'bin', 'switch-to-configuration'), 0o755);
  // The real runner, reporting when a command has been started.
  const inner = new ProcessRunner(process.env, 1_000);
  const waiters = new Map<string, () => void>();
  const seen = new Set<string>();
  const runner = {
    run(request: RunRequest) {
      const result = inner.run(request);
      seen.add(request.command);
      waiters.get(request.command)?.();
      return result;
    },
    started: (command: string) => (seen.has(command) ? Promise.resolve() : new Promise<void>((resolve) => waiters.set(command, resolve))),
  };
  return { dir, lock, log, system, runner };
}

function rebuilder(s: Setup, activateTimeoutMs: number): Rebuilder {
  return new Rebuilder(s.runner, new RootFs(s.dir), { nixosRebuild: 'nixos-rebuild', nixEnv: 'nix-env', nixChannel: 'nix-channel', extraArgs: [], buildTimeoutMs: 60_000, activateTimeoutMs }, silentLogger());
}

/** A process holding the lock, as a switch left running by the previous agent; released on demand. */
async function holdLock(s: Setup): Promise<{ release: () => Promise<void> }> {
  mkdirSync(join(s.dir, 'run/nixos'), { recursive: true });
  const holder = spawn('flock', [s.lock, 'sh', '-c', `echo held; read _; echo "previous switch ended" >> ${JSON.stringify(s.log)}`], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [line] = (await once(holder.stdout, 'data')) as [Buffer];
  assert.equal(line.toString().trim(), 'held');
  return {
    release: async () => {
      const exited = once(holder, 'exit');
      holder.stdin.end('\n');
      await exited;
    },
  };
}

describe('activating while a previous switch-to-configuration still runs', { skip }, () => {
  it('waits for it to end, then activates', async () => {
    const s = setup();
    try {
      const holder = await holdLock(s);
      const activation = rebuilder(s, 600_000).activate(s.system, 'test');
      // The agent is now waiting on the lock: only then does the previous switch end.
      await s.runner.started('flock');
      await holder.release();
      await activation;
      assert.deepEqual(readFileSync(s.log, 'utf8').trim().split('\n'), ['previous switch ended', 'switch test']);
    } finally {
      rmSync(s.dir, { recursive: true, force: true });
    }
  });

  it('activates at once when nothing holds the lock', async () => {
    const s = setup();
    try {
      await rebuilder(s, 600_000).activate(s.system, 'switch');
      assert.equal(readFileSync(s.log, 'utf8'), 'switch switch\n');
    } finally {
      rmSync(s.dir, { recursive: true, force: true });
    }
  });

  it('gives up after the activation timeout, naming the lock, without starting a switch', async () => {
    const s = setup();
    try {
      const holder = await holdLock(s);
      await assert.rejects(
        rebuilder(s, 1_000).activate(s.system, 'test'),
        (err: Error) => err instanceof ApplyFailedError && err.stage === 'activate' && err.message.includes(SWITCH_LOCK),
      );
      await holder.release();
      assert.equal(readFileSync(s.log, 'utf8'), 'previous switch ended\n', 'no switch ran');
    } finally {
      rmSync(s.dir, { recursive: true, force: true });
    }
  });
});
