// systemd's watchdog while a pass waits on a long child process: a build that runs longer than
// WatchdogSec is the agent doing its work, not a wedged loop, and must not get the agent killed.
// The pings stop only when the child outlives its own timeout. In this process, against the
// emulators and the stand-in nixos-rebuild, whose build hangs until the agent's build timeout.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import { startDaemon } from '../../agent/loop.js';
import { realClock } from '../../agent/ports.js';
import type { Notify } from '../../agent/report/notify.js';
import { Watchdog } from '../../agent/report/watchdog.js';
import type { Status } from '../../agent/status.js';
import { bootMachine, installStandins } from '../../sandbox/standin/install.js';
import { World } from '../../sandbox/world.js';
import { markerModule } from '../support/e2e.js';

const MODULE = '/nixos/fleet/modules/app';
const CREDENTIALS = { accessKeyId: 'AKIDWATCHDOG', secretAccessKey: 'watchdog-secret' };
const WATCHDOG_MS = 2_000;
const BUILD_TIMEOUT_S = 7;

async function waitFor(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 90_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the watchdog during a long build', { timeout: 120_000 }, () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('is pinged within every WATCHDOG_USEC while the build runs under its timeout', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-watchdog-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null } });
    cleanups.push(() => world.close());
    world.ssm.load([{ Name: MODULE, Value: markerModule('sandbox-hang'), Type: 'String' }]);
    const root = path.join(dir, 'root');
    const tools = await installStandins({ binDir: path.join(dir, 'bin'), root });
    await bootMachine(root);
    const config = parseConfig({
      root,
      logLevel: 'error',
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available', buildTimeoutSeconds: BUILD_TIMEOUT_S, activateTimeoutSeconds: 60 },
      health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
      imds: { retries: 2, timeoutMs: 5_000 },
      ssm: { pollIntervalSeconds: 3_600, pollJitter: 0 },
      retry: { failedBackoffSeconds: 3_600 },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      lifecycle: { enabled: false },
      termination: { enabled: false },
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
    let buildingAt: number | undefined;
    let endedAt: number | undefined;
    const daemon = await startDaemon(config, {
      log: silentLogger(),
      clock,
      env: world.env(),
      notify,
      watchdog: new Watchdog(notify, { WATCHDOG_USEC: String(WATCHDOG_MS * 1000) }, clock),
      edges: { credentials: async () => async () => CREDENTIALS },
      onStatus: (s: Status) => {
        if (s.phase === 'building') buildingAt ??= Date.now();
        if (buildingAt !== undefined && s.lastResult) endedAt ??= Date.now();
      },
    });
    cleanups.push(async () => {
      daemon.signal('SIGTERM');
      await daemon.done;
    });

    await waitFor('the hung build to reach its timeout', () => endedAt !== undefined);
    assert.equal(daemon.status.lastResult?.outcome, 'failed', JSON.stringify(daemon.status.lastResult));
    const during = [buildingAt!, ...pings.filter((t) => t > buildingAt! && t < endedAt!), endedAt!];
    const gaps = during.slice(1).map((t, i) => t - during[i]!);
    assert.ok(endedAt! - buildingAt! >= (BUILD_TIMEOUT_S - 1) * 1000, 'the build ran until its timeout');
    assert.ok(Math.max(...gaps) < WATCHDOG_MS, `a gap of ${Math.max(...gaps)} ms between pings would have had systemd kill the agent mid-build: ${gaps.join(', ')}`);
  });
  it('is pinged while the first pass waits out a throttling SSM account', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-watchdog-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null } });
    cleanups.push(() => world.close());
    // Every SSM call is refused as throttled: the fetch waits on the account, a wait that grows
    // to minutes at a fleet's scale, with no step of the loop in between.
    world.ssm.injectFault({ code: 'ThrottlingException', message: 'Rate exceeded', times: Infinity });
    const root = path.join(dir, 'root');
    const tools = await installStandins({ binDir: path.join(dir, 'bin'), root });
    await bootMachine(root);
    const config = parseConfig({
      root,
      logLevel: 'error',
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available' },
      imds: { retries: 2, timeoutMs: 5_000 },
      ssm: { pollIntervalSeconds: 3_600, pollJitter: 0 },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      lifecycle: { enabled: false },
      termination: { enabled: false },
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
    });
    cleanups.push(async () => {
      daemon.signal('SIGTERM');
      await daemon.done;
    });

    // Three watchdog intervals of refusals, the pass still fetching all along.
    const refusals = () => world.ssm.requests.filter((r) => r.errorCode === 'ThrottlingException').length;
    await waitFor('the first refusal', () => refusals() > 0);
    const from = Date.now();
    await waitFor('three watchdog intervals of refusals', () => Date.now() - from > 3 * WATCHDOG_MS && refusals() > 3);
    assert.equal(daemon.status.lastResult, undefined, 'the first pass is still waiting on SSM');
    const during = [from, ...pings.filter((t) => t > from), Date.now()];
    const gaps = during.slice(1).map((t, i) => t - during[i]!);
    assert.ok(Math.max(...gaps) < WATCHDOG_MS, `a gap of ${Math.max(...gaps)} ms between pings would have had systemd kill the agent while it waited on SSM: ${gaps.join(', ')}`);
  });
});
