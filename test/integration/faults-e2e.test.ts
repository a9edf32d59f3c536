// The fault matrix, end to end: each fault injected around a live daemon (the emulators' fault
// hooks, a wrapped nixos-rebuild, health probes), then a pass. In every case: nothing unvalidated
// is switched, the instance stays on a good generation, the error is in the log and in status,
// and the daemon is alive; once the fault is gone, the next pass converges.
import assert from 'node:assert/strict';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { ImdsEmulator } from '../../sandbox/emulators/imds.js';
import { markerModule, waitFor, type Instance } from '../support/e2e.js';
import { LiveDaemon, withDaemon } from '../support/daemon.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const TZ = '/nixos/fleet/options/time.timeZone';

/** What must hold after any fault: alive, on the last good generation, nothing else switched. */
async function assertSafe(d: LiveDaemon, i: Instance, good: string): Promise<void> {
  assert.ok(d.alive, 'the daemon is alive');
  // Between passes (a retry may have begun since the pass that was awaited).
  const state = await waitFor('the journal to be closed', async () => {
    const s = await i.durableState();
    return s.journal.phase === 'idle' ? s : undefined;
  }, 60_000, 20);
  assert.ok(state.lastGood, 'a last good generation is recorded');
  const running = await i.running();
  const boot = await i.profileSystem();
  assert.equal(running, state.lastGood.storePath, 'the last good system runs');
  assert.equal(boot, state.lastGood.storePath, 'the boot default is the last good system');
  // Either the one before the fault or one the agent verified since: nothing unvalidated.
  assert.ok(running === good || state.lastGood.desiredHash !== undefined, 'the running system was verified');
}

/** A pass under the fault ended without converging, and says why in the log and in status. */
async function assertFailedClearly(d: LiveDaemon, from: number, what: RegExp): Promise<void> {
  const end = d.passes().at(-1);
  assert.notEqual(end?.outcome, 'converged', `a pass under the fault cannot converge: ${JSON.stringify(end)}`);
  // Any level: a pass that fails on a bad rebuild logs it at info (the step's exit, the outcome).
  const lines = d.log.events.slice(from).filter((e) => e.event !== 'step.output');
  assert.ok(lines.some((p) => what.test(JSON.stringify(p))), `the log names the failure (${what}): ${JSON.stringify(d.problems(from)).slice(0, 2000)}`);
  // A retry may already be under way when this reads status.json: wait for a moment it names it.
  let said = '';
  await waitFor('status to name the failure', async () => {
    const status = await d.status();
    said = JSON.stringify({ lastResult: status.lastResult, reasons: status.reasons, message: status.message });
    return what.test(said) ? true : undefined;
  }, 60_000, 20).catch(() => assert.fail(`status names the failure (${what}): ${said}`));
}

/** Runs `body` with a daemon on a converged instance, then checks that a fault-free pass converges. */
async function faultCase(
  options: { config?: Record<string, unknown>; beforeStart?: (i: Instance) => Promise<void> },
  inject: (i: Instance, d: LiveDaemon) => Promise<void> | void,
  what: RegExp,
  heal: (i: Instance, d: LiveDaemon) => Promise<void> | void,
): Promise<void> {
  await withDaemon({ parameters: [FLEET_TZ], ...options }, async (d, i) => {
    const good = await i.running();
    await inject(i, d);
    i.put(TZ, '"Europe/Paris"');
    const from = d.log.events.length;
    await d.pass();
    await assertFailedClearly(d, from, what);
    await assertSafe(d, i, good);
    await heal(i, d);
    // A failed desired state may be held back; a new change is always tried.
    i.put(TZ, '"Europe/Berlin"');
    const end = await d.pass();
    assert.equal(end.outcome, 'converged', `after the fault is gone: ${JSON.stringify(end)}`);
    await assertSafe(d, i, good);
  });
}

describe('IMDS faults', { concurrency: true }, () => {
  test('refusing connections', async () => {
    let port = 0;
    let replacement: ImdsEmulator | undefined;
    try {
      await faultCase(
        {},
        async (i) => {
          port = i.world.imds.port;
          await i.world.imds.close();
        },
        /IMDS|ECONNREFUSED|metadata|user.data/i,
        async (i) => {
          replacement = await ImdsEmulator.start({ instance: { ...i.world.instance }, port });
        },
      );
    } finally {
      await replacement?.close();
    }
  });

  test('5xx on every request', async () => {
    await faultCase({}, (i) => void i.world.imds.injectFault({ status: 500, times: Infinity }), /IMDS|500|metadata/i, (i) => i.world.imds.clearFaults());
  });

  test('slower than the request timeout', async () => {
    // The delay is five times the timeout: load can only make the answer later, never earlier.
    await faultCase({ config: { imds: { timeoutMs: 1_000 } } }, (i) => void i.world.imds.injectFault({ delayMs: 5_000, times: Infinity }), /IMDS|time|metadata/i, (i) => i.world.imds.clearFaults());
  });

  test('a 401 on a token that expired mid-pass: refreshed, and the pass converges', async () => {
    await withDaemon({ parameters: [FLEET_TZ] }, async (d, i) => {
      i.world.imds.injectFault({ path: '/latest/user-data', expireTokens: true, times: 1 });
      i.put(TZ, '"Europe/Paris"');
      const from = d.log.events.length;
      const end = await d.pass();
      assert.equal(end.outcome, 'converged', `${JSON.stringify(end)}; ${JSON.stringify(d.problems(from)).slice(0, 3000)}; IMDS answered ${JSON.stringify(i.world.imds.requests.map((r) => `${r.method} ${r.path} ${r.status}`).slice(-30))}`);
      assert.ok(i.world.imds.requests.some((r) => r.status === 401), 'a 401 was answered');
      await assertSafe(d, i, await i.running());
    });
  });
});

describe('SSM faults', { concurrency: true }, () => {
  const many = Array.from({ length: 25 }, (_, k) => ({ Name: `/nixos/fleet/options/environment.etc.f${k}.text`, Value: `"${k}"`, Type: 'String' as const }));

  test('throttling on every call', async () => {
    await faultCase({}, (i) => void i.world.ssm.injectFault({ operation: 'GetParametersByPath', code: 'ThrottlingException', message: 'Rate exceeded', times: Infinity }), /Throttl|Rate exceeded|ssm/i, (i) => i.world.ssm.clearFaults());
  });

  test('5xx on every call', async () => {
    await faultCase({}, (i) => void i.world.ssm.injectFault({ operation: 'GetParametersByPath', code: 'InternalServerError', times: Infinity }), /InternalServerError|ssm|500/i, (i) => i.world.ssm.clearFaults());
  });

  test('AccessDenied', async () => {
    await faultCase({}, (i) => void i.world.ssm.injectFault({ operation: 'GetParametersByPath', code: 'AccessDeniedException', message: 'not authorized to perform: ssm:GetParametersByPath', times: Infinity }), /AccessDenied|not authorized/i, (i) => i.world.ssm.clearFaults());
  });

  test('InvalidNextToken in the middle of a walk', async () => {
    await faultCase(
      { beforeStart: async (i) => i.world.ssm.load(many) },
      (i) => void i.world.ssm.injectFault({ operation: 'GetParametersByPath', continuation: true, code: 'InvalidNextToken', message: "The specified token isn't valid.", times: Infinity }),
      /InvalidNextToken|token/i,
      (i) => i.world.ssm.clearFaults(),
    );
  });

  test('a parameter deleted between two pages: the pass renders one consistent tree or none', async () => {
    await withDaemon({ parameters: [FLEET_TZ, ...many] }, async (d, i) => {
      const good = await i.running();
      i.world.ssm.injectFault({ operation: 'GetParametersByPath', continuation: true, before: () => i.world.ssm.delete(many[0]!.Name), times: 1 });
      i.put(TZ, '"Europe/Paris"');
      await d.pass();
      assert.equal(i.world.ssm.get(many[0]!.Name), undefined, 'the parameter went away between two pages of the walk');
      await assertSafe(d, i, good);
      // The next pass sees the tree without it, whatever the interrupted one did.
      i.put(TZ, '"Europe/Berlin"');
      const end = await d.pass();
      assert.equal(end.outcome, 'converged', JSON.stringify(end));
      const options = await readFile(path.join(i.root, 'etc/nixos/configuration.nix'), 'utf8');
      assert.ok(options.length > 0);
      await assertSafe(d, i, good);
    });
  });
});

/** A nixos-rebuild that misbehaves on `build` while a flag file exists, else the stand-in. */
async function wrapRebuild(i: Instance, behaviour: string): Promise<string> {
  const config = JSON.parse(await readFile(i.sandbox.layout.config, 'utf8')) as { rebuild: { nixosRebuild: string } };
  const flag = path.join(i.dir, 'rebuild-fault');
  const wrapper = path.join(i.dir, 'nixos-rebuild-wrapper');
  await writeFile(wrapper, `#!/bin/sh\nif [ "$1" = build ] && [ -e '${flag}' ]; then\n${behaviour}\nfi\nexec '${config.rebuild.nixosRebuild}' "$@"\n`);
  await chmod(wrapper, 0o755);
  await i.setConfig(['rebuild', 'nixosRebuild'], wrapper);
  return flag;
}

describe('rebuild faults', { concurrency: true }, () => {
  test('the build fails', async () => {
    await faultCase({}, (i) => i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-build')), /build exited with 1|"exitCode":1/, (i) => i.world.ssm.delete('/nixos/fleet/modules/bad'));
  });

  for (const [name, behaviour, what] of [
    ['killed by a signal', 'kill -KILL $$', /SIGKILL|signal/],
    ['printing megabytes, then failing', "head -c 8000000 /dev/zero | tr '\\\\0' x | fold -w 200\nexit 1", /build exited with 1|"exitCode":1/],
  ] as const) {
    test(`the build is ${name}`, async () => {
      let flag = '';
      await faultCase(
        { beforeStart: async (i) => void (flag = await wrapRebuild(i, behaviour)) },
        async () => writeFile(flag, ''),
        what,
        async () => rm(flag),
      );
    });
  }
});

describe('health faults', { concurrency: true }, () => {
  test('a probe failing: rolled back', async () => {
    let flag = '';
    await faultCase(
      {
        beforeStart: async (i) => {
          flag = path.join(i.dir, 'unhealthy');
          await i.setConfig(['health', 'probes'], [{ name: 'app', command: { argv: ['sh', '-c', `test ! -e '${flag}'`], timeoutMs: 10_000 } }]);
        },
      },
      async () => writeFile(flag, ''),
      /\bapp\b/,
      async () => rm(flag),
    );
  });

  test('a probe flapping: never switched unless verified', async () => {
    await withDaemon(
      {
        parameters: [FLEET_TZ],
        beforeStart: async (i) => {
          const counter = path.join(i.dir, 'probe-count');
          const script = `n=$(cat '${counter}' 2>/dev/null || echo 0); echo $((n+1)) > '${counter}'; [ $((n % 2)) = 0 ]`;
          await i.setConfig(['health', 'probes'], [{ name: 'flappy', command: { argv: ['sh', '-c', script], timeoutMs: 10_000 } }]);
        },
      },
      async (d, i) => {
        const good = await i.running();
        for (const tz of ['"Europe/Paris"', '"Europe/Berlin"', '"Europe/Rome"']) {
          i.put(TZ, tz);
          const end = await d.pass();
          const state = await i.durableState();
          if (end.outcome === 'converged') assert.equal(state.running?.desiredHash, end.desiredHash, 'what converged was verified');
          await assertSafe(d, i, good);
        }
        assert.ok(Number(await readFile(path.join(i.dir, 'probe-count'), 'utf8')) >= 3, 'the probe was asked at every pass');
      },
    );
  });
});

describe('Auto Scaling faults', () => {
  test('CompleteLifecycleAction failing: the daemon lives, stays on its good generation, and completes the hook once it can', async () => {
    await withDaemon(
      {
        parameters: [FLEET_TZ],
        config: { lifecycle: { enabled: true, heartbeatSeconds: 1, budgetSeconds: 300 } },
        beforeStart: async (i) => i.world.autoscaling.injectFault({ action: 'CompleteLifecycleAction', code: 'InternalFailure', times: 8 }),
      },
      async (d, i) => {
        await waitFor('the hook to be completed', async () => (i.world.autoscaling.instance(i.instanceId)?.lifecycleState === 'InService' ? true : undefined), 60_000, 50);
        assert.equal(i.world.autoscaling.pendingFaults, 0, 'every fault was answered');
        assert.ok(d.problems().some((p) => /lifecycle|InternalFailure/i.test(JSON.stringify(p))), 'the failure is logged');
        await assertSafe(d, i, await i.running());
      },
    );
  });
});
