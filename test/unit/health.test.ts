// Health verification's reading of systemd: failed units, and services waiting to be restarted
// after a crash, as `systemctl list-units` prints them; retried within the grace window.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { HealthChecker } from '../../agent/verify/health.js';
import { ManualClock } from '../support/clock.js';

/** A systemctl that prints, for each call in turn, the next of `listings` (the last one after). */
function systemctl(listings: readonly string[]): Runner & { readonly requests: RunRequest[] } {
  const requests: RunRequest[] = [];
  return {
    requests,
    async run(request) {
      requests.push(request);
      const stdout = listings[Math.min(requests.length - 1, listings.length - 1)] ?? '';
      const result: RunResult = { code: 0, signal: null, timedOut: false, aborted: false, stdout, stderr: '', tail: [], durationMs: 1 };
      return result;
    },
  };
}

/** `verdict`, with the clock moved on one check interval (5 s) at a time, `steps` times, while it waits. */
async function through<T>(clock: ManualClock, steps: number, verdict: Promise<T>): Promise<T> {
  for (let i = 0; i < steps; i++) {
    await new Promise((r) => setImmediate(r));
    clock.advance(5_000);
  }
  return verdict;
}

const options = { systemctl: 'systemctl', checkFailedUnits: true, graceMs: 60_000, intervalMs: 5_000, probes: [] };
// As systemd 255's `systemctl list-units --state=failed,auto-restart --no-legend --plain` prints them.
const CRASHING = 'app.service loaded activating auto-restart My app\n';
const FAILED = 'db.service loaded failed failed Database\n';

describe('HealthChecker, systemd units', () => {
  it('asks for failed units and services waiting to restart after a crash, and names each', async () => {
    const runner = systemctl([CRASHING + FAILED]);
    const [check] = await new HealthChecker(runner, new ManualClock(0), options).checkOnce();
    assert.deepEqual(runner.requests[0]?.args, ['list-units', '--state=failed,auto-restart', '--no-legend', '--plain', '--no-pager']);
    assert.equal(check?.ok, false);
    assert.equal(check?.detail, 'failed units: db.service; restarting after a failure: app.service');
  });

  it('a service that keeps crashing between restarts is unhealthy at the end of the grace window', async () => {
    const clock = new ManualClock(0);
    const v = await through(clock, 20, new HealthChecker(systemctl([CRASHING]), clock, options).verify());
    assert.equal(v.healthy, false);
    assert.deepEqual(v.reasons, ['systemd: restarting after a failure: app.service']);
  });

  it('one that comes up after a restart is healthy once it has', async () => {
    const clock = new ManualClock(0);
    const v = await through(clock, 5, new HealthChecker(systemctl([CRASHING, CRASHING, '']), clock, options).verify());
    assert.equal(v.healthy, true);
    assert.equal(v.attempts, 3);
  });
});

describe('HealthChecker, the endpoints the instance is managed through', () => {
  /** An endpoint that answers while `up.value`, counting the times it is asked. */
  function endpoint(name: string, up: { value: boolean }) {
    const asked = { count: 0 };
    return {
      asked,
      reachable: {
        name,
        reach: async (timeoutMs: number) => {
          asked.count++;
          assert.equal(timeoutMs, 5_000, 'the default timeout');
          if (!up.value) throw Object.assign(new Error('connect ECONNREFUSED 169.254.169.254:80'), { code: 'ECONNREFUSED' });
        },
      },
    };
  }

  it('retries an endpoint within the grace window, and names it when it never answers', async () => {
    const up = { value: false };
    const imds = endpoint('IMDS', up);
    const clock = new ManualClock(0);
    const v = await through(clock, 20, new HealthChecker(systemctl(['']), clock, { ...options, reach: [imds.reachable] }).verify());
    assert.equal(v.healthy, false);
    assert.deepEqual(v.reasons, ['IMDS: unreachable over a new connection since the switch: connect ECONNREFUSED 169.254.169.254:80']);
    assert.ok(imds.asked.count > 1, 'asked again within the grace window');
  });

  it('asks an endpoint that answered only once while the units are retried', async () => {
    const up = { value: true };
    const ssm = endpoint('SSM', up);
    const clock = new ManualClock(0);
    const v = await through(clock, 20, new HealthChecker(systemctl([FAILED]), clock, { ...options, reach: [ssm.reachable] }).verify());
    assert.equal(v.healthy, false);
    assert.ok(v.attempts > 5);
    assert.deepEqual(v.reasons, ['systemd: failed units: db.service']);
    assert.deepEqual(v.checks.map((c) => [c.name, c.ok]), [['systemd', false], ['SSM', true]], 'its answer stands in every round');
    assert.equal(ssm.asked.count, 1, 'not read again at every interval of the grace window');
  });

  it('is healthy once the endpoint answers, and never asks it for a rollback (reach: false)', async () => {
    const up = { value: true };
    const imds = endpoint('IMDS', up);
    const checker = new HealthChecker(systemctl(['']), new ManualClock(0), { ...options, reach: [imds.reachable] });
    const v = await checker.verify();
    assert.equal(v.healthy, true);
    assert.deepEqual(v.checks.map((c) => c.name), ['systemd', 'IMDS']);
    assert.equal(imds.asked.count, 1);
    up.value = false;
    const back = await checker.verify(undefined, { reach: false });
    assert.equal(back.healthy, true);
    assert.equal(imds.asked.count, 1, 'not asked');
  });
});
