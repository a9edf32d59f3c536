// systemd's watchdog while a pass waits on a long child process: a build that runs longer than
// WatchdogSec is the agent doing its work, not a wedged loop, and must not get the agent killed.
// The pings stop only when the child outlives its own timeout. In this process, against the
// emulators and the stand-in nixos-rebuild, whose build hangs until the agent's build timeout.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import { startDaemon } from '../../agent/loop.js';
import { realClock } from '../../agent/ports.js';
import type { Notify } from '../../agent/report/notify.js';
import { Watchdog } from '../../agent/report/watchdog.js';
import type { Status } from '../../agent/status.js';
import type { StandinPaths } from '../../sandbox/standin/install.js';
import { World } from '../../sandbox/world.js';
import { markerModule, waitUntil } from '../support/e2e.js';
import { sandboxedMachine } from '../support/machine.js';

const MODULE = '/nixos/fleet/modules/app';
const CREDENTIALS = { accessKeyId: 'AKIDWATCHDOG', secretAccessKey: 'watchdog-secret' };
const WATCHDOG_MS = 2_000;
const BUILD_TIMEOUT_S = 7;

describe('the watchdog during a long build', { timeout: 120_000 }, () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /**
   * A daemon in this process on a sandboxed root against `world`, with a WATCHDOG_MS watchdog whose
   * pings are recorded, and `settings` over the test's configuration.
   */
  async function start(world: World, settings: (tools: StandinPaths) => Record<string, unknown>, onStatus?: (s: Status) => void) {
    const { root, tools, remove } = await sandboxedMachine('nea-watchdog');
    cleanups.push(remove);
    const config = parseConfig({
      root,
      logLevel: 'error',
      imds: { retries: 2, timeoutMs: 5_000 },
      ssm: { pollIntervalSeconds: 3_600, pollJitter: 0 },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      lifecycle: { enabled: false },
      termination: { enabled: false },
      ...settings(tools),
    });
    const clock = realClock();
    const pings: number[] = [];
    const notify: Notify = {
      enabled: false,
      send() {},
      ready() {},
      status() {},
      watchdog: () => pings.push(Date.now()),
      extendTimeout() {},
      stopping() {},
      reloading() {},
    };
    const daemon = await startDaemon(config, {
      log: silentLogger(),
      clock,
      env: world.env(),
      notify,
      watchdog: new Watchdog(notify, { WATCHDOG_USEC: String(WATCHDOG_MS * 1000) }, clock),
      edges: { credentials: async () => async () => CREDENTIALS },
      ...(onStatus ? { onStatus } : {}),
    });
    cleanups.push(async () => {
      daemon.signal('SIGTERM');
      await daemon.done;
    });
    return { daemon, pings };
  }

  /** The longest gap between pings from `from` to `to`, both included as ends. */
  function longestGap(pings: readonly number[], from: number, to: number): { longest: number; gaps: number[] } {
    const during = [from, ...pings.filter((t) => t > from && t < to), to];
    const gaps = during.slice(1).map((t, i) => t - during[i]!);
    return { longest: Math.max(...gaps), gaps };
  }

  it('is pinged within every WATCHDOG_USEC while the build runs under its timeout', async () => {
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null } });
    cleanups.push(() => world.close());
    world.ssm.load([{ Name: MODULE, Value: markerModule('sandbox-hang'), Type: 'String' }]);
    let buildingAt: number | undefined;
    let endedAt: number | undefined;
    const { daemon, pings } = await start(
      world,
      (tools) => ({
        rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available', buildTimeoutSeconds: BUILD_TIMEOUT_S, activateTimeoutSeconds: 60 },
        health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
        retry: { failedBackoffSeconds: 3_600 },
      }),
      (s) => {
        if (s.phase === 'building') buildingAt ??= Date.now();
        if (buildingAt !== undefined && s.lastResult) endedAt ??= Date.now();
      },
    );

    await waitUntil('the hung build to reach its timeout', () => endedAt !== undefined);
    assert.equal(daemon.status.lastResult?.outcome, 'failed', JSON.stringify(daemon.status.lastResult));
    assert.ok(endedAt! - buildingAt! >= (BUILD_TIMEOUT_S - 1) * 1000, 'the build ran until its timeout');
    const { longest, gaps } = longestGap(pings, buildingAt!, endedAt!);
    assert.ok(longest < WATCHDOG_MS, `a gap of ${longest} ms between pings would have had systemd kill the agent mid-build: ${gaps.join(', ')}`);
  });

  it('is pinged within every WATCHDOG_USEC while idle between polls an hour apart', async () => {
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null } });
    cleanups.push(() => world.close());
    const { daemon, pings } = await start(world, (tools) => ({
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available' },
      health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
    }));
    await waitUntil('the first pass to end', () => daemon.status.lastResult !== undefined);
    // Nothing but the loop's own beat keeps the watchdog fed now: no pass, no child, no poll.
    const from = Date.now();
    await waitUntil('three watchdog intervals of idling', () => Date.now() - from > 3 * WATCHDOG_MS);
    const { longest, gaps } = longestGap(pings, from, Date.now());
    assert.ok(longest < WATCHDOG_MS, `a gap of ${longest} ms between pings would have had systemd kill an idle agent: ${gaps.join(', ')}`);
  });

  it('is pinged while the first pass waits out a throttling SSM account', async () => {
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null } });
    cleanups.push(() => world.close());
    // Every SSM call is refused as throttled: the fetch waits on the account, a wait that grows
    // to minutes at a fleet's scale, with no step of the loop in between.
    world.ssm.injectFault({ code: 'ThrottlingException', message: 'Rate exceeded', times: Infinity });
    const { daemon, pings } = await start(world, (tools) => ({
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available' },
    }));

    // Three watchdog intervals of refusals, the pass still fetching all along.
    const refusals = () => world.ssm.requests.filter((r) => r.errorCode === 'ThrottlingException').length;
    await waitUntil('the first refusal', () => refusals() > 0);
    const from = Date.now();
    await waitUntil('three watchdog intervals of refusals', () => Date.now() - from > 3 * WATCHDOG_MS && refusals() > 3);
    assert.equal(daemon.status.lastResult, undefined, 'the first pass is still waiting on SSM');
    const { longest, gaps } = longestGap(pings, from, Date.now());
    assert.ok(longest < WATCHDOG_MS, `a gap of ${longest} ms between pings would have had systemd kill the agent while it waited on SSM: ${gaps.join(', ')}`);
  });
});
