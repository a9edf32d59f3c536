// The reconciler when the machine fails under it: writes that fail with an errno, a state file
// that cannot be read, a kill at every write of an operator's rollback, and state that would grow
// without bound.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { ClosureRealiser } from '../../agent/apply/closure.js';
import { Rebuilder } from '../../agent/apply/rebuild.js';
import { TransientError } from '../../agent/errors.js';
import { silentLogger } from '../../agent/log.js';
import type { Runner } from '../../agent/ports.js';
import { CONFIGURATION_NIX } from '../../agent/render/render.js';
import { LAST_GOOD_CONFIGURATION, MAX_BUILDS, STATE_FILE } from '../../agent/state.js';
import { IMAGE_SYSTEM, Killed, storePathOf, stateOf, worldPerTest } from '../support/reconcile-fakes.js';

const setup = worldPerTest();

describe('write errors under the root', () => {
  for (const code of ['ENOSPC', 'EACCES'] as const) {
    it(`${code} while rendering fails the pass naming the path and errno, switches nothing, and retries after a backoff`, async () => {
      const w = await setup();
      const agent = await w.agent({ retry: { failedBackoffSeconds: 60 } });
      w.sources.set('options/networking.hostName', '"web-1"');
      w.fs.failWrites = code;
      const failed = await agent.converge('test');
      assert.equal(failed.outcome, 'failed');
      assert.equal(failed.error?.kind, 'transient');
      assert.match(failed.error?.message ?? '', new RegExp(`${code}`));
      assert.match(failed.error?.message ?? '', new RegExp(w.dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'the path is named');
      assert.deepEqual(w.machine.calls, [], 'nothing built or switched');
      assert.equal(await w.machine.running(), IMAGE_SYSTEM);
      assert.equal(agent.status.condition, 'degraded');
      assert.equal(agent.status.noGoodGeneration, false);
      assert.equal(agent.status.lastResult?.error?.kind, 'transient');

      // The disk is back, but the backoff holds the same desired state for a while.
      w.fs.failWrites = undefined;
      const held = await agent.converge('poll');
      assert.equal(held.outcome, 'held');
      assert.deepEqual(w.machine.calls, []);
      w.clock.advance(61_000);
      const retried = await agent.converge('poll');
      assert.equal(retried.outcome, 'converged', JSON.stringify(retried.error));
      assert.equal(await w.machine.running(), storePathOf(w.sources.desiredHash()));
    });
  }

  it('ENOSPC replacing configuration.nix after the journal entry: the old one stays, the entry ends, the build begun beside the parser is stopped, nothing switched', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    assert.equal((await agent.converge('test')).outcome, 'converged');
    const good = await w.fs.readText(CONFIGURATION_NIX);
    w.machine.calls.length = 0;
    w.sources.set('options/networking.hostName', '"web-2"');
    w.fs.failWrites = 'ENOSPC';
    w.fs.failWritesTo = CONFIGURATION_NIX;
    w.machine.hangBuild = true;
    const failed = await agent.converge('poll');
    assert.equal(failed.outcome, 'failed');
    assert.match(failed.error?.message ?? '', /ENOSPC/);
    assert.equal((await stateOf(w)).journal.phase, 'idle', 'a restart finds nothing half done');
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), good);
    assert.deepEqual(w.machine.calls, ['build'], 'nothing switched');
    assert.equal(w.machine.builds.at(-1)?.aborted, true, 'the build was stopped before the pass ended');
  });

  it('ENOSPC saving the state once the new system is activated: rolls back at once to the last good generation, unverified nothing kept', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    assert.equal((await agent.converge('test')).outcome, 'converged');
    const good = await w.machine.running();
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);
    w.sources.set('options/networking.hostName', '"web-2"');
    const candidate = storePathOf(w.sources.desiredHash());
    // The disk fills as the new system is activated: the journal's next entry cannot be saved.
    w.machine.onCall = (call) => {
      if (call !== 'activate test:after') return;
      w.fs.failWrites = 'ENOSPC';
      w.fs.failWritesTo = STATE_FILE;
    };
    w.machine.calls.length = 0;
    const failed = await agent.converge('poll');
    assert.equal(failed.outcome, 'failed');
    assert.match(failed.error?.message ?? '', /ENOSPC/);
    assert.equal(await w.machine.running(), good, 'back on the last good generation, not left on the unverified one');
    assert.deepEqual(w.machine.calls.slice(0, 2), ['build', `activate test ${candidate}`]);
    assert.ok(w.machine.calls.includes(`activate switch ${good}`), w.machine.calls.join(', '));
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig);
    assert.equal((await stateOf(w)).journal.phase, 'activating', 'on disk, the entry a restart rolls back from');

    // The disk is back: the failure is remembered and waits its backoff; a restart finds the same.
    w.fs.failWrites = undefined;
    w.machine.onCall = undefined;
    assert.equal((await agent.converge('poll')).outcome, 'held');
    assert.equal(await w.machine.running(), good);
  });

  it('an unreadable state file (EACCES, EIO) is an error, never set aside as corrupt', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    assert.equal((await agent.converge('test')).outcome, 'converged');
    const saved = await w.fs.readText(STATE_FILE);
    for (const code of ['EACCES', 'EIO'] as const) {
      w.fs.failRead = { path: STATE_FILE, code };
      await assert.rejects(w.agent(), (err: Error & { kind?: string }) => err.kind === 'transient' && err.message.includes(code) && err.message.includes('state.json'));
      w.fs.failRead = undefined;
      assert.equal(await w.fs.readText(STATE_FILE), saved, 'state.json is untouched');
      assert.deepEqual((await w.fs.list('/var/lib/nixos-ec2-agent')).filter((f) => f.includes('corrupt')), []);
    }
    // A file that does not parse is still set aside.
    await w.fs.writeAtomic(STATE_FILE, '{ not json');
    const fresh = await w.agent();
    assert.equal(fresh.durable.journal.phase, 'idle');
    assert.equal((await w.fs.list('/var/lib/nixos-ec2-agent')).filter((f) => f.includes('corrupt')).length, 1);
  });
});

describe("an operator's rollback killed at any write", () => {
  it('leaves last-good-configuration.nix matching the recorded last good generation', async () => {
    let writes = 0;
    for (let at = 1; ; at++) {
      const w = await setup();
      const agent = await w.agent();
      w.sources.set('options/networking.hostName', '"one"');
      assert.equal((await agent.converge('test')).outcome, 'converged');
      w.sources.set('options/networking.hostName', '"two"');
      assert.equal((await agent.converge('test')).outcome, 'converged');
      w.fs.writes = 0;
      w.fs.killAtWrite = at;
      let killed = false;
      try {
        await agent.rollback();
      } catch (err) {
        if (!(err instanceof Killed)) throw err;
        killed = true;
      }
      w.fs.killAtWrite = undefined;
      const restarted = await w.agent();
      const state = await stateOf(w);
      const lastGood = state.lastGood;
      assert.ok(lastGood?.desiredHash, JSON.stringify(lastGood));
      const file = (await w.fs.readText(LAST_GOOD_CONFIGURATION)) ?? '';
      assert.match(file, new RegExp(`Desired state ${lastGood.desiredHash}`), `killed at write ${at}: last-good-configuration.nix is of another generation`);
      assert.equal(file, lastGood.configuration);
      assert.equal(restarted.durable.journal.phase, 'idle');
      assert.equal(await w.machine.running(), lastGood.storePath, `killed at write ${at}: the last good generation runs`);
      assert.equal(await w.fs.readText(CONFIGURATION_NIX), file, `killed at write ${at}: configuration.nix is the last good one`);
      await rm(w.dir, { recursive: true, force: true });
      if (!killed) {
        writes = at - 1;
        break;
      }
    }
    assert.ok(writes >= 3, `the rollback wrote ${writes} files`);
  });
});

describe('state that would grow without bound', () => {
  it(`keeps at most ${MAX_BUILDS} builds, always those of the good and running generations`, async () => {
    const w = await setup();
    const agent = await w.agent();
    for (let i = 0; i < MAX_BUILDS + 8; i++) {
      w.sources.set('options/networking.hostName', JSON.stringify(`host-${i}`));
      assert.equal((await agent.converge('test')).outcome, 'converged');
      w.clock.advance(1_000);
    }
    const state = await stateOf(w);
    const builds = Object.keys(state.builds);
    assert.equal(builds.length, MAX_BUILDS);
    for (const named of [state.lastGood.storePath, state.previousGood.storePath, state.running.storePath]) assert.ok(builds.includes(named), named);
  });
});

describe('a poll that changes nothing', () => {
  it('leaves the condition (and the exit code of status) as it was, throughout the pass', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    assert.equal((await agent.converge('start')).outcome, 'converged');
    const seen = w.statuses.length;
    assert.equal((await agent.converge('poll')).outcome, 'unchanged');
    const during = w.statuses.slice(seen);
    assert.ok(during.some((s) => s.phase === 'fetching'), 'the pass was seen');
    assert.deepEqual([...new Set(during.map((s) => s.condition))], ['converged']);

    // A change does converge again, and says so.
    w.sources.set('options/networking.hostName', '"web-2"');
    const before = w.statuses.length;
    assert.equal((await agent.converge('poll')).outcome, 'converged');
    assert.ok(w.statuses.slice(before).some((s) => s.condition === 'converging'));
  });
});

describe('cancellation', () => {
  it("is the pass signal's reason end to end: outcome cancelled, nothing switched, nothing remembered as failed", async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    assert.equal((await agent.converge('start')).outcome, 'converged');
    const configuration = await w.fs.readText(CONFIGURATION_NIX);
    const running = await w.machine.running();

    w.machine.hangBuild = true;
    w.sources.set('options/networking.hostName', '"web-2"');
    const abort = new AbortController();
    const pass = agent.converge('poll', abort.signal);
    while (agent.status.phase !== 'building') await new Promise((r) => setImmediate(r));
    abort.abort(new TransientError('cancelled: a newer desired state', 'schedule'));
    const result = await pass;
    assert.equal(result.outcome, 'cancelled');
    assert.equal(result.error, undefined);
    assert.deepEqual(agent.durable.failed, {}, 'a cancellation is not a failure of the desired state');
    assert.equal(await w.machine.running(), running);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), configuration, 'configuration.nix is the last good one again');
    assert.equal(agent.durable.journal.phase, 'idle');
    assert.equal(agent.status.message, 'build cancelled by a newer desired state');
  });

  it('the Rebuilder throws the signal reason itself when its step was aborted', async () => {
    const w = await setup();
    const reason = new TransientError('cancelled: stopping', 'schedule');
    const abort = new AbortController();
    abort.abort(reason);
    const aborted: Runner = { run: async () => ({ code: null, signal: 'SIGTERM', timedOut: false, aborted: true, stdout: '', stderr: '', tail: [], durationMs: 1 }) };
    const rebuilder = new Rebuilder(aborted, w.fs, { nixosRebuild: 'nixos-rebuild', nixEnv: 'nix-env', nixChannel: 'nix-channel', extraArgs: [], buildTimeoutMs: 1_000, activateTimeoutMs: 1_000 }, silentLogger());
    await assert.rejects(rebuilder.build(abort.signal), (err) => err === reason);
  });

  it('so does the ClosureRealiser, at each of its steps', async () => {
    const w = await setup();
    const reason = new TransientError('cancelled: stopping', 'schedule');
    const abort = new AbortController();
    abort.abort(reason);
    const closure = {
      storePath: '/nix/store/bkgy8w862c7biafa6hv6ikiz1qqp1rba-nixos-system-test',
      substituter: 'https://cache.example.org',
      trustedPublicKeys: ['ci-1:FPxFZ1JZyohdbqGffdLqJQSjrRgXHYEP4jLDDMfAXvg='],
      from: 'user-data' as const,
    };
    // Each step in turn answers (all paths missing, none signed) until the one that is aborted.
    for (let abortedAt = 0; abortedAt < 2; abortedAt++) {
      let calls = 0;
      const runner: Runner = {
        run: async (request) => {
          if (calls++ === abortedAt) return { code: null, signal: 'SIGTERM', timedOut: false, aborted: true, stdout: '', stderr: '', tail: [], durationMs: 1 };
          const stdout = request.command === 'nix-store' ? `${closure.storePath}\n` : JSON.stringify([{ path: closure.storePath, narHash: 'sha256:0', narSize: 1, references: [], signatures: [] }]);
          return { code: 0, signal: null, timedOut: false, aborted: false, stdout, stderr: '', tail: [], durationMs: 1 };
        },
      };
      const realiser = new ClosureRealiser(runner, w.fs, { nix: 'nix', nixStore: 'nix-store', timeoutMs: 1_000, reserveBytes: 0, gcWhenShort: false }, silentLogger());
      await assert.rejects(realiser.realise(closure, abort.signal), (err) => err === reason, `step ${abortedAt}`);
    }
  });
});
