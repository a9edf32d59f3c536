// Failures after a first good convergence, driven by the stand-in's markers in an SSM module: the
// agent leaves the instance on (or rolls it back to) the last good generation, says why in its
// status, and does not rebuild a desired state that already failed. Also the operator's
// `rollback`, `suspend` and `resume`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Instance, markerModule, processesMentioning, type InstanceOptions } from '../support/e2e.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const BAD_MODULE = '/nixos/fleet/modules/bad';

interface Good {
  readonly configuration: string;
  readonly running: string;
  readonly links: string[];
  readonly hash: string;
}

/** A fresh instance converged once; `body` gets what the good convergence left. */
async function afterGoodConvergence(options: InstanceOptions, body: (i: Instance, good: Good) => Promise<void>): Promise<void> {
  const i = await Instance.launch({ parameters: [FLEET_TZ], ...options });
  try {
    const first = await i.converge();
    assert.equal(first.code, 0, first.stderr);
    await body(i, { configuration: await i.configuration(), running: await i.running(), links: await i.generationLinks(), hash: first.status.desired!.hash });
  } finally {
    await i.close();
  }
}

async function assertOnGood(i: Instance, good: Good): Promise<void> {
  assert.equal(await i.running(), good.running, 'the last good system runs');
  assert.equal(await i.configuration(), good.configuration, 'configuration.nix is the last good one');
}

describe('stand-in failures after a good convergence', { concurrency: true }, () => {
  test('sandbox-fail-build: nothing switched, the reason in status, and the same desired state is held', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-fail-build'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'failed');
      assert.equal(bad.status.lastResult?.error?.stage, 'build');
      await assertOnGood(i, good);
      assert.deepEqual(await i.generationLinks(), good.links, 'no new generation');

      const { code, status } = await i.status();
      assert.equal(status.lastResult?.outcome, 'failed');
      assert.ok(status.reasons.some((r) => /nixos-rebuild build exited with 1/.test(r)), JSON.stringify(status.reasons));
      assert.equal(code, 2, 'degraded: a good generation runs, not the desired one');

      const builds = await i.steps('build');
      const again = await i.converge();
      assert.equal(again.status.lastResult?.outcome, 'held');
      assert.equal(again.code, 1);
      assert.equal(await i.steps('build'), builds, 'a desired state that failed is not rebuilt before its retry time');
      await assertOnGood(i, good);
    });
  });

  test('sandbox-fail-switch: rolled back to the last good generation', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-fail-switch'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'rolled-back');
      assert.equal(bad.status.lastResult?.error?.stage, 'activate');
      assert.equal(bad.status.condition, 'degraded');
      assert.equal(bad.status.noGoodGeneration, false);
      await assertOnGood(i, good);
      assert.equal(await i.profileGeneration(), 2, 'the boot default is still the last good generation');
    });
  });

  test('sandbox-unit-fails-in-switch: switch-to-configuration exits 4 naming the failed unit, and the agent rolls back', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-unit-fails-in-switch'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'rolled-back');
      assert.equal(bad.status.lastResult?.error?.stage, 'activate');
      assert.match(bad.status.lastResult?.error?.message ?? '', /switch-to-configuration test exited with 4 \(units failed: sandbox-demo\.service\)/);
      await assertOnGood(i, good);
      assert.equal(await i.profileGeneration(), 2);
      const failedUnits = await i.read('run/standin/failed-units');
      assert.equal(failedUnits.trim(), '', 'the rolled-back system has no failed unit');
    });
  });

  test('sandbox-fail-unit: health verification catches a unit that fails after the switch, and rolls back', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-fail-unit'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'rolled-back');
      assert.equal(bad.status.lastResult?.error?.stage, 'verify');
      assert.ok(bad.status.reasons.some((r) => r.includes('sandbox-demo.service')), JSON.stringify(bad.status.reasons));
      await assertOnGood(i, good);
      assert.equal(await i.profileGeneration(), 2);
      const failedUnits = await i.read('run/standin/failed-units');
      assert.equal(failedUnits.trim(), '', 'the rolled-back system has no failed unit');
    });
  });

  test('sandbox-cut-network: a switch that cuts the instance off from IMDS and SSM is rolled back before it is the boot default', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-cut-network'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'rolled-back');
      assert.equal(bad.status.lastResult?.error?.stage, 'verify');
      const reasons = JSON.stringify(bad.status.reasons);
      assert.match(reasons, /IMDS: unreachable over a new connection since the switch/);
      assert.match(reasons, /SSM: unreachable over a new connection since the switch/);
      assert.doesNotMatch(reasons, /systemd:/, 'the units themselves were healthy');
      // The rollback's own verdict never asks the endpoints: the last good generation stays good.
      assert.equal(bad.status.noGoodGeneration, false);
      assert.equal(bad.status.condition, 'degraded');
      await assertOnGood(i, good);
      assert.equal(await i.profileGeneration(), 2, 'the boot default is still the last good generation');
      // Back on the last good system, the instance reaches SSM again: the same desired state is held, not rebuilt.
      const builds = await i.steps('build');
      const again = await i.converge();
      assert.equal(again.status.lastResult?.outcome, 'held', again.stderr);
      assert.equal(await i.steps('build'), builds);
    });
  });

  test('health.checkReachable false: the same switch is kept (what the check prevents)', async () => {
    await afterGoodConvergence({ config: { health: { checkReachable: false } } }, async (i) => {
      i.put(BAD_MODULE, markerModule('sandbox-cut-network'));
      const bad = await i.converge();
      assert.equal(bad.status.lastResult?.outcome, 'converged', bad.stderr);
      assert.equal(await i.profileGeneration(), 3, 'the generation that cut the instance off is the boot default');
    });
  });

  test('sandbox-hang: the build times out, its process group is killed, nothing switched', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      // Short only for the build that hangs: the good one before it may be slow on a loaded machine.
      await i.configure({ rebuild: { buildTimeoutSeconds: 3 } });
      i.put(BAD_MODULE, markerModule('sandbox-hang'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'failed');
      assert.equal(bad.status.lastResult?.error?.stage, 'build');
      assert.match(bad.status.lastResult?.error?.message ?? '', /timed out/);
      await assertOnGood(i, good);
      assert.deepEqual(await i.generationLinks(), good.links);
      const left = await processesMentioning(i.root);
      assert.deepEqual(left.map((p) => p.cmdline), [], 'no stand-in process is left');
    });
  });

  test("rebuild.mode = 'switch' with sandbox-fail-switch: back to the last good generation by its store path", async () => {
    await afterGoodConvergence({ config: { rebuild: { mode: 'switch' } } }, async (i, good) => {
      i.put(BAD_MODULE, markerModule('sandbox-fail-switch'));
      const bad = await i.converge();
      assert.equal(bad.code, 1, bad.stderr);
      assert.equal(bad.status.lastResult?.outcome, 'rolled-back');
      await assertOnGood(i, good);
      // `nixos-rebuild switch` moved the profile to a generation 3 before activation failed.
      const gens = await i.generations();
      assert.ok(gens.some((g) => g.number === 3), JSON.stringify(gens.map((g) => g.number)));
      assert.equal(await i.profileGeneration(), 2, 'the profile points at the last good generation again');
      assert.equal(gens.find((g) => g.current)?.storePath, good.running);
    });
  });

  test('rollback: the previous good generation runs, held until the sources change', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      const second = await i.converge();
      assert.equal(second.code, 0, second.stderr);
      const newer = await i.running();
      assert.notEqual(newer, good.running);

      const rolled = await i.run(['rollback', '--json']);
      assert.equal(rolled.code, 0, rolled.stderr);
      assert.equal(await i.running(), good.running, 'the previous good generation runs');
      assert.equal(await i.configuration(), good.configuration);
      const { status } = await i.status();
      assert.ok(status.held, JSON.stringify(status));

      // Unchanged sources: held, nothing rebuilt or switched.
      const steps = await i.steps();
      const held = await i.converge();
      assert.equal(held.status.lastResult?.outcome, 'held', held.stdout);
      assert.equal(await i.steps(), steps);
      assert.equal(await i.running(), good.running);

      // A change of the sources ends the hold.
      i.put('/nixos/fleet/options/time.timeZone', '"Asia/Tokyo"');
      const after = await i.converge();
      assert.equal(after.code, 0, after.stderr);
      assert.equal(after.status.lastResult?.outcome, 'converged');
      assert.equal(after.status.held, undefined);
      assert.notEqual(await i.running(), good.running);
      assert.notEqual(await i.running(), newer);
    });
  });

  test('suspend and resume act on the state and show in status', async () => {
    await afterGoodConvergence({}, async (i, good) => {
      const suspended = await i.run(['suspend', '--json']);
      assert.equal(suspended.code, 0, suspended.stderr);
      let { status } = await i.status();
      assert.ok(status.suspended, JSON.stringify(status));
      assert.equal(status.phase, 'suspended');

      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      const steps = await i.steps();
      const pass = await i.converge();
      assert.equal(pass.status.lastResult?.outcome, 'suspended');
      assert.equal(await i.steps(), steps, 'a suspended agent switches nothing');
      assert.equal(await i.running(), good.running);

      const resumed = await i.run(['resume', '--json']);
      assert.equal(resumed.code, 0, resumed.stderr);
      ({ status } = await i.status());
      assert.equal(status.suspended, undefined);
      const after = await i.converge();
      assert.equal(after.code, 0, after.stderr);
      assert.equal(after.status.lastResult?.outcome, 'converged');
      assert.notEqual(await i.running(), good.running);
    });
  });
});
