import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ApplyFailedError } from '../../agent/errors.js';
import { silentLogger } from '../../agent/log.js';
import { hookEnv, hookShouldRun, PostConvergeHook, type HookRun } from '../../agent/report/hook.js';
import { ProcessRunner } from '../../agent/runner.js';
import type { Outcome, Status } from '../../agent/status.js';

const HASH = 'f'.repeat(64);
const STORE = '/nix/store/dddddddddddddddddddddddddddddddd-nixos-system-d';

function status(patch: Partial<Status> = {}): Status {
  return {
    version: 1,
    pid: 1,
    updatedAt: '2025-01-01T00:00:00.000Z',
    phase: 'idle',
    condition: 'converged',
    firstConvergenceDone: true,
    message: 'converged',
    noGoodGeneration: false,
    reasons: [],
    rebootRequired: false,
    instanceId: 'i-0123456789abcdef0',
    desired: { hash: HASH, sources: { userData: '', parameters: [] }, notes: [] },
    running: { storePath: STORE, desiredHash: HASH, generation: 4 },
    ...patch,
  };
}

describe('hookShouldRun', () => {
  it('runs after passes that changed something or failed, not after quiet ones', () => {
    const runs: Outcome[] = ['converged', 'rolled-back', 'failed', 'invalid-input'];
    const quiet: Outcome[] = ['unchanged', 'held', 'suspended', 'cancelled'];
    for (const o of runs) assert.equal(hookShouldRun(o), true, o);
    for (const o of quiet) assert.equal(hookShouldRun(o), false, o);
  });
});

describe('hookEnv', () => {
  it('sets every variable, the error on one line', () => {
    const env = hookEnv({ outcome: 'rolled-back', desiredHash: HASH, error: new ApplyFailedError('health verification failed:\n  nginx.service failed\r\n', 'verify') }, status({ condition: 'degraded' }));
    assert.deepEqual(env, {
      NIXOS_EC2_AGENT_OUTCOME: 'rolled-back',
      NIXOS_EC2_AGENT_GENERATION: '4',
      NIXOS_EC2_AGENT_STORE_PATH: STORE,
      NIXOS_EC2_AGENT_DESIRED_HASH: HASH,
      NIXOS_EC2_AGENT_ERROR: 'health verification failed: nginx.service failed',
      NIXOS_EC2_AGENT_INSTANCE_ID: 'i-0123456789abcdef0',
    });
    const bare = hookEnv({ outcome: 'failed' }, status({ running: undefined, desired: undefined, instanceId: undefined }));
    assert.deepEqual(Object.values(bare), ['failed', '', '', '', '', '']);
  });
});

describe('PostConvergeHook with the real ProcessRunner', () => {
  let dir = '';
  let script = '';
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'hook-test-'));
    script = path.join(dir, 'hook.sh');
    // Writes its environment to a file, then exits as told by its first argument.
    await writeFile(
      script,
      `#!/bin/sh
out="$1"; shift
env | grep '^NIXOS_EC2_AGENT_' | sort > "$out"
case "$1" in
  hang) sleep 30 ;;
  fail) echo "hook went wrong" >&2; exit 3 ;;
esac
exit 0
`,
      { mode: 0o755 },
    );
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const envFile = async (file: string) => Object.fromEntries((await readFile(file, 'utf8')).trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));

  it('runs the command with NIXOS_EC2_AGENT_* after a convergence', async () => {
    const out = path.join(dir, 'converged.env');
    const runs: HookRun[] = [];
    const hook = new PostConvergeHook(new ProcessRunner(process.env), { argv: [script, out, 'ok'], timeoutSeconds: 10 }, silentLogger(), (r) => runs.push(r));
    const run = await hook.run({ outcome: 'converged', desiredHash: HASH }, status());
    assert.equal(run?.outcome, 'ok');
    assert.equal(run?.exitCode, 0);
    assert.deepEqual(runs, [run]);
    assert.deepEqual(await envFile(out), {
      NIXOS_EC2_AGENT_DESIRED_HASH: HASH,
      NIXOS_EC2_AGENT_ERROR: '',
      NIXOS_EC2_AGENT_GENERATION: '4',
      NIXOS_EC2_AGENT_INSTANCE_ID: 'i-0123456789abcdef0',
      NIXOS_EC2_AGENT_OUTCOME: 'converged',
      NIXOS_EC2_AGENT_STORE_PATH: STORE,
    });
  });

  it('a failing command is reported, not thrown', async () => {
    const out = path.join(dir, 'failed.env');
    const hook = new PostConvergeHook(new ProcessRunner(process.env), { argv: [script, out, 'fail'], timeoutSeconds: 10 }, silentLogger());
    const run = await hook.run({ outcome: 'failed', error: new ApplyFailedError('nixos-rebuild build exited with 1', 'build') }, status({ condition: 'degraded' }));
    assert.equal(run?.outcome, 'failed');
    assert.equal(run?.exitCode, 3);
    assert.ok(run?.tail.includes('hook went wrong'));
    const env = await envFile(out);
    assert.equal(env.NIXOS_EC2_AGENT_OUTCOME, 'failed');
    assert.equal(env.NIXOS_EC2_AGENT_ERROR, 'nixos-rebuild build exited with 1');
  });

  it('a command that outlives its timeout is killed and reported as timed out', async () => {
    const out = path.join(dir, 'hang.env');
    const hook = new PostConvergeHook(new ProcessRunner(process.env, 100), { argv: [script, out, 'hang'], timeoutSeconds: 0.3 }, silentLogger());
    const run = await hook.run({ outcome: 'rolled-back', desiredHash: HASH }, status());
    assert.equal(run?.outcome, 'timed-out');
    assert.notEqual(run?.exitCode, 0);
  });

  it('a command that cannot start is a failed run', async () => {
    const hook = new PostConvergeHook(new ProcessRunner(process.env), { argv: [path.join(dir, 'missing')], timeoutSeconds: 5 }, silentLogger());
    const run = await hook.run({ outcome: 'converged' }, status());
    assert.equal(run?.outcome, 'failed');
  });

  it('runs nothing after a quiet pass, or when no command is configured', async () => {
    const out = path.join(dir, 'quiet.env');
    const hook = new PostConvergeHook(new ProcessRunner(process.env), { argv: [script, out], timeoutSeconds: 5 }, silentLogger());
    assert.equal(await hook.run({ outcome: 'unchanged', desiredHash: HASH }, status()), undefined);
    assert.equal(await hook.run({ outcome: 'held', desiredHash: HASH }, status()), undefined);
    await assert.rejects(readFile(out), { code: 'ENOENT' });
    const off = new PostConvergeHook(new ProcessRunner(process.env), null, silentLogger());
    assert.equal(off.enabled, false);
    assert.equal(await off.run({ outcome: 'converged' }, status()), undefined);
  });
});
