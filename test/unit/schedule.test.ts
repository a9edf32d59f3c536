// The scheduler on a ManualClock: poll intervals and their jitter bounds, backoff under throttling,
// coalescing of bursts, single flight, cancellation of a build by a newer state, and the gate that
// holds passes while the instance is leaving.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TransientError } from '../../agent/errors.js';
import type { PassResult } from '../../agent/reconcile.js';
import { nextPollDelay, Scheduler, THROTTLED_RETRY_BASE_MS, throttledRetryDelay, type ScheduleOptions } from '../../agent/schedule.js';
import { ManualClock, settle } from '../support/clock.js';
import { prng } from '../support/prng.js';

test('an unthrottled poll waits uniformly within interval × [1 − j/2, 1 + j/2]', () => {
  assert.equal(nextPollDelay(60_000, 1, () => 0), 30_000);
  assert.equal(nextPollDelay(60_000, 1, () => 0.999999) < 90_000, true);
  assert.equal(nextPollDelay(60_000, 0, () => 0.7), 60_000);
  for (let i = 0; i < 1000; i++) {
    const d = nextPollDelay(60_000, 0.2, Math.random);
    assert.ok(d >= 54_000 && d < 66_000, `${d}`);
  }
});

test('throttled polls back off with full jitter over a window that doubles, capped, never faster than normal', () => {
  const low = 60_000 * 0.5;
  for (const level of [1, 2, 3, 10]) {
    const window = Math.min(900_000, 60_000 * 2 ** level);
    assert.equal(nextPollDelay(60_000, 1, () => 0, level, 900_000), low);
    assert.ok(Math.abs(nextPollDelay(60_000, 1, () => 1, level, 900_000) - window) < 1e-6);
  }
  // Spread: a thousand throttled instances do not retry in step.
  const delays = Array.from({ length: 1000 }, () => nextPollDelay(60_000, 1, Math.random, 4, 900_000));
  const buckets = new Set(delays.map((d) => Math.floor(d / 60_000)));
  assert.ok(buckets.size >= 12, `delays spread over ${buckets.size} minutes`);
  assert.ok(Math.max(...delays) <= 960_000);
});

interface Harness {
  clock: ManualClock;
  scheduler: Scheduler;
  passes: { reason: string; signal: AbortSignal }[];
  release: (result?: Partial<PassResult>) => void;
  running: () => number;
  done: Promise<void>;
}

function harness(options: Partial<ScheduleOptions> = {}, phase: { building: boolean } = { building: false }): Harness {
  const clock = new ManualClock(0);
  const passes: { reason: string; signal: AbortSignal }[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const releases: ((r: PassResult) => void)[] = [];
  const scheduler = new Scheduler(clock, {
    intervalMs: 60_000,
    jitter: 0,
    quietPeriodMs: 2_000,
    random: () => 0.5,
    tickMs: 5_000,
    cancellable: () => phase.building,
    ...options,
  });
  const done = scheduler.run(async (reason, signal) => {
    passes.push({ reason, signal });
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      return await new Promise<PassResult>((resolve) => {
        releases.push(resolve);
        signal.addEventListener('abort', () => resolve({ outcome: 'cancelled' }), { once: true });
      });
    } finally {
      inFlight--;
    }
  });
  return {
    clock,
    scheduler,
    passes,
    release: (result = {}) => releases.shift()?.({ outcome: 'unchanged', ...result }),
    running: () => maxInFlight,
    done,
  };
}

test('the first pass runs at once, then polls every interval (the first one spread over [0, interval])', async () => {
  const h = harness({ jitter: 1, random: () => 0.25 });
  await settle();
  assert.deepEqual(h.passes.map((p) => p.reason), ['start']);
  h.release();
  await h.clock.advanceAsync(44_000);
  assert.equal(h.passes.length, 1);
  await h.clock.advanceAsync(2_000);
  assert.equal(h.passes.length, 2, 'first poll at interval × (1 − 0.25)');
  assert.equal(h.passes[1]!.reason, 'poll');
  h.release();
  await h.clock.advanceAsync(44_000);
  assert.equal(h.passes.length, 2, 'next waits interval × (0.5 + 0.25)');
  await h.clock.advanceAsync(1_000);
  assert.equal(h.passes.length, 3);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('a burst of 20 triggers within the quiet period gives one pass, after the quiet period', async () => {
  const h = harness();
  await settle();
  h.release();
  await settle();
  for (let i = 0; i < 20; i++) {
    h.scheduler.trigger(`change ${i}`);
    await h.clock.advanceAsync(100);
  }
  assert.equal(h.passes.length, 1);
  // The last change came at 1.9 s: the pass waits for 3.9 s.
  await h.clock.advanceAsync(1_800);
  assert.equal(h.passes.length, 1, 'the quiet period restarts with each change');
  await h.clock.advanceAsync(100);
  assert.equal(h.passes.length, 2);
  assert.match(h.passes[1]!.reason, /change 0, .*change 19/);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('changes during a pass collapse into exactly one next pass; never two at once', async () => {
  const h = harness();
  await settle();
  for (let i = 0; i < 5; i++) h.scheduler.trigger(`during ${i}`);
  await h.clock.advanceAsync(10_000);
  assert.equal(h.passes.length, 1, 'no second pass while one runs');
  h.release();
  await h.clock.advanceAsync(2_000);
  assert.equal(h.passes.length, 2);
  h.release();
  await h.clock.advanceAsync(10_000);
  assert.equal(h.passes.length, 2, 'and only one');
  assert.equal(h.running(), 1);
  h.scheduler.stop();
  await h.done;
});

test('a trigger cancels a pass that is building, and the newer state converges next', async () => {
  const phase = { building: true };
  const h = harness({}, phase);
  await settle();
  h.scheduler.trigger('newer state');
  await settle();
  assert.equal(h.passes[0]!.signal.aborted, true);
  assert.match(String((h.passes[0]!.signal.reason as Error).message), /newer state/);
  await h.clock.advanceAsync(2_000);
  assert.equal(h.passes.length, 2);
  assert.equal(h.scheduler.state.cancelled, 1);
  h.scheduler.stop();
  await h.done;
});

test('a pass past its build (activating, verifying) is never cancelled', async () => {
  const phase = { building: false };
  const h = harness({}, phase);
  await settle();
  h.scheduler.trigger('newer state');
  h.scheduler.block('Terminated');
  await h.clock.advanceAsync(5_000);
  assert.equal(h.passes[0]!.signal.aborted, false);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('while building, the cheap check is asked every cancelCheckMs and a change cancels the build', async () => {
  const phase = { building: true };
  let asked = 0;
  let answer: string | undefined;
  const h = harness({ cancelCheckMs: 10_000, changed: async () => (asked++, answer) }, phase);
  await settle();
  await h.clock.advanceAsync(30_000);
  assert.equal(asked, 3);
  assert.equal(h.passes[0]!.signal.aborted, false);
  answer = 'revision parameter changed';
  await h.clock.advanceAsync(10_000);
  assert.equal(h.passes[0]!.signal.aborted, true);
  await h.clock.advanceAsync(1_999);
  assert.equal(h.passes.length, 1, 'the newer state opens a settle window');
  await h.clock.advanceAsync(1);
  assert.equal(h.passes.length, 2, 'and converges once it has been quiet for the quiet period');
  assert.equal(h.passes[1]!.reason, 'revision parameter changed');
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('a pass that failed on throttling is retried within a window that doubles from the base, capped at one interval; success restores the interval', async () => {
  const throttled = new TransientError('Rate exceeded', 'ssm', { code: 'ThrottlingException' });
  const h = harness({ random: () => 1, maxBackoffMs: 600_000 });
  await settle();
  // random() = 1 takes the top of each window: 10 s, 20 s, 40 s, then the 60 s interval.
  for (const [level, window] of [[1, 10_000], [2, 20_000], [3, 40_000], [4, 60_000], [5, 60_000]] as const) {
    const before = h.passes.length;
    h.release({ outcome: 'failed', error: throttled });
    await settle();
    await h.clock.advanceAsync(window - 1_000);
    assert.equal(h.passes.length, before, `level ${level}: not before ${window} ms`);
    await h.clock.advanceAsync(1_000);
    assert.equal(h.passes.length, before + 1, `level ${level}: retried by ${window} ms`);
  }
  h.release();
  await settle();
  await h.clock.advanceAsync(59_000);
  assert.equal(h.passes.length, 6, 'a success restores the poll interval');
  await h.clock.advanceAsync(1_000);
  assert.equal(h.passes.length, 7);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('throttled retries spread over their window: a throttled fleet does not retry in step', () => {
  assert.equal(throttledRetryDelay(600_000, () => 0, 1), 0);
  assert.equal(throttledRetryDelay(600_000, () => 1, 1), THROTTLED_RETRY_BASE_MS);
  assert.equal(throttledRetryDelay(600_000, () => 1, 30), 600_000, 'at most one poll interval');
  assert.equal(throttledRetryDelay(60_000, () => 1, 30), 60_000, 'never longer than one poll interval');
  assert.equal(throttledRetryDelay(600_000, () => 1, 30, 90_000), 90_000);
  const delays = Array.from({ length: 1000 }, () => throttledRetryDelay(600_000, Math.random, 4));
  assert.ok(new Set(delays.map((d) => Math.floor(d / 5_000))).size >= 14);
});

test('while the instance is leaving no pass starts; converge --now answers at once; unblocking resumes', async () => {
  const h = harness();
  await settle();
  h.release();
  await settle();
  h.scheduler.block('Auto Scaling target lifecycle state Terminated');
  assert.equal(await h.scheduler.runNow('converge --now'), undefined);
  h.scheduler.trigger('file changed');
  await h.clock.advanceAsync(600_000);
  assert.equal(h.passes.length, 1);
  assert.equal(h.scheduler.state.blocked?.reason, 'Auto Scaling target lifecycle state Terminated');
  h.scheduler.unblock();
  await h.clock.advanceAsync(5_000);
  assert.equal(h.passes.length, 2);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('stop aborts a build in hand and ends the loop', async () => {
  const h = harness({}, { building: true });
  await settle();
  h.scheduler.stop();
  await h.done;
  assert.equal(h.passes[0]!.signal.aborted, true);
});

test('a stream of changes that never pauses still converges: the settle window is bounded', async () => {
  const h = harness({ maxSettleMs: 60_000 });
  await settle();
  h.release();
  await settle();
  // A change every 1.5 s, always inside the 2 s quiet period, for two and a half minutes.
  for (let i = 0; i < 100; i++) {
    h.scheduler.trigger(`change ${i}`);
    await h.clock.advanceAsync(1_500);
    if (h.passes.length > 1 && h.passes.length % 2 === 0) h.release();
  }
  // Opened at 0; bounded at 60 s, then 120 s (each window opens at its first change).
  assert.ok(h.passes.length >= 3, `${h.passes.length} passes in 150 s of changes`);
  assert.ok(h.passes.length <= 4, `${h.passes.length} passes: the stream is still coalesced`);
  h.scheduler.stop();
  h.release();
  await h.done;
});

/** A probe over a fingerprint the test moves, as an operator's pushes move the sources. */
function probed(options: Partial<ScheduleOptions> = {}) {
  const source = { fingerprint: 'A', probes: 0 };
  const h = harness({
    intervalMs: 2_000,
    probe: async () => {
      source.probes++;
      return source.fingerprint;
    },
    ...options,
  });
  return { h, source };
}

test('a poll that sees pushes 0.6 s apart waits for them to stop, then converges once', async () => {
  const { h, source } = probed();
  await settle();
  h.release({ outcome: 'converged', desiredHash: 'A' });
  await settle();
  // Twenty pushes, 0.6 s apart, as a script calling the AWS CLI does; polls every 2 s.
  for (let i = 1; i <= 20; i++) {
    source.fingerprint = `A${i}`;
    await h.clock.advanceAsync(600);
  }
  assert.equal(h.passes.length, 1, 'no pass while the pushes go on');
  // The last push came at 12 s; the window settles within the quiet period plus one probe.
  await h.clock.advanceAsync(2_000 + 2_000 / 3 + 1);
  assert.equal(h.passes.length, 2);
  assert.equal(h.passes[1]!.reason, 'poll', 'a settled poll is still a poll');
  h.release({ outcome: 'converged', desiredHash: 'A20' });
  await h.clock.advanceAsync(10_000);
  assert.ok(h.passes.length >= 3, 'polls go on');
  assert.ok(h.passes.slice(2).every((p) => p.reason === 'poll'), 'unchanged polls converge at once');
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('a poll whose probe fails converges at once (the pass reports the failure)', async () => {
  const h = harness({ intervalMs: 2_000, probe: async () => Promise.reject(new Error('SSM is down')) });
  await settle();
  h.release({ outcome: 'converged', desiredHash: 'A' });
  await h.clock.advanceAsync(2_000);
  assert.equal(h.passes.length, 2);
  assert.equal(h.passes[1]!.reason, 'poll');
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('a change whose pass failed on throttling is retried at once when its retry is due, not settled again as if new', async () => {
  const throttled = new TransientError('Rate exceeded', 'ssm', { code: 'ThrottlingException' });
  // random() = 0.5: the first throttled retry is due at 5 s (half the 10 s window).
  const { h, source } = probed({ intervalMs: 60_000, random: () => 0.5 });
  await settle();
  h.release({ outcome: 'converged', desiredHash: 'A' });
  await settle();
  source.fingerprint = 'B';
  void h.scheduler.runNow('converge --now');
  await settle();
  assert.equal(h.passes.length, 2);
  // The pass could not read its sources: it reports the desired state it last selected ('A'), not
  // the one it was asked to converge to.
  h.release({ outcome: 'failed', error: throttled, desiredHash: 'A' });
  await settle();
  const probesBefore = source.probes;
  await h.clock.advanceAsync(5_000);
  assert.equal(h.passes.length, 3, 'the retry runs when due, without a quiet period');
  assert.ok(source.probes - probesBefore <= 1, `${source.probes - probesBefore} probes before the retry: each one is an SSM read the throttled account pays for`);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('a pass that failed on SSM failing on its side (5xx) is retried as a throttled one: a window from 10 s, doubling', async () => {
  const failing = new TransientError('SSM GetParametersByPath failed: InternalServerError', 'ssm', { code: 'InternalServerError', status: 500 });
  const h = harness({ random: () => 1, maxBackoffMs: 600_000 });
  await settle();
  h.release({ outcome: 'failed', error: failing });
  await settle();
  await h.clock.advanceAsync(9_000);
  assert.equal(h.passes.length, 1, 'level 1: within 10 s, not at once');
  await h.clock.advanceAsync(1_000);
  assert.equal(h.passes.length, 2);
  h.release({ outcome: 'failed', error: failing });
  await settle();
  await h.clock.advanceAsync(19_000);
  assert.equal(h.passes.length, 2, 'level 2: within 20 s');
  await h.clock.advanceAsync(1_000);
  assert.equal(h.passes.length, 3);
  // A client error is not the service being busy: the interval stays.
  h.release({ outcome: 'failed', error: new TransientError('refused', 'ssm', { code: 'AccessDeniedException', status: 400 }) });
  await h.clock.advanceAsync(60_000);
  assert.equal(h.passes.length, 4);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test("the source's count of busy SSM answers stretches the poll interval too", async () => {
  let level = 3;
  const h = harness({ random: () => 1, maxBackoffMs: 600_000, throttleLevel: () => level });
  await settle();
  h.release();
  await h.clock.advanceAsync(479_000);
  assert.equal(h.passes.length, 1, 'level 3: up to 8 × interval');
  await h.clock.advanceAsync(1_000);
  assert.equal(h.passes.length, 2);
  level = 0;
  h.release();
  await h.clock.advanceAsync(60_000);
  assert.equal(h.passes.length, 3);
  h.scheduler.stop();
  h.release();
  await h.done;
});

test('builds started together (a fleet-wide converge --now) do not look for a newer state in step', async () => {
  const clock = new ManualClock(0);
  const checks: number[] = [];
  const fleet = Array.from({ length: 50 }, (_, i) => new Scheduler(clock, {
    intervalMs: 600_000,
    jitter: 1,
    quietPeriodMs: 2_000,
    random: prng(i + 1),
    cancellable: () => true,
    cancelCheckMs: 10_000,
    changed: async () => (checks.push(clock.now()), undefined),
  }));
  const builds = fleet.map((s) => s.run((_reason, signal) => new Promise<PassResult>((resolve) => signal.addEventListener('abort', () => resolve({ outcome: 'cancelled' }), { once: true }))));
  await clock.advanceAsync(60_000);
  assert.ok(checks.length >= 150, `${checks.length} checks in a minute`);
  const perSecond = new Map<number, number>();
  for (const at of checks) perSecond.set(Math.floor(at / 1_000), (perSecond.get(Math.floor(at / 1_000)) ?? 0) + 1);
  const worst = Math.max(...perSecond.values());
  assert.ok(worst <= 15, `${worst} of 50 instances looked in the same second: each look is an SSM call the account pays for at once`);
  for (const s of fleet) s.stop();
  await Promise.all(builds);
});

test('while SSM is busy, the look for a newer state during a build backs off as the poll does', async () => {
  let level = 3;
  let asked = 0;
  // A look SSM answers ends the source's run of busy answers.
  const changed = async () => ((asked++, (level = 0)), undefined);
  const h = harness({ cancelCheckMs: 10_000, maxBackoffMs: 600_000, random: () => 1, throttleLevel: () => level, changed }, { building: true });
  await settle();
  await h.clock.advanceAsync(79_000);
  assert.equal(asked, 0, 'level 3: up to 8 × cancelCheckMs, not every 10 s into a busy account');
  await h.clock.advanceAsync(1_000);
  assert.equal(asked, 1);
  await h.clock.advanceAsync(10_000);
  assert.equal(asked, 2, 'and every cancelCheckMs again once SSM answers');
  h.scheduler.stop();
  await h.done;
});
