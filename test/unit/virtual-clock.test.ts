// The simulated clock a fleet runs on: time moves deadline by deadline, only once woken work has
// settled, and a loop that waits for time to pass cannot spin in place.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VirtualClock } from '../../sandbox/clock.js';

test('sleepers wake in deadline order, each seeing its own time', async () => {
  const clock = new VirtualClock(1_000);
  const woke: [string, number][] = [];
  const sleep = (name: string, ms: number) => clock.sleep(ms).then(() => void woke.push([name, clock.now()]));
  void sleep('b', 200);
  void sleep('a', 100);
  void sleep('c', 300);
  await clock.run(1_250);
  assert.deepEqual(woke, [['a', 1_100], ['b', 1_200]]);
  assert.equal(clock.now(), 1_250);
  await clock.run(2_000);
  assert.deepEqual(woke.at(-1), ['c', 1_300]);
});

test('a chain of sleeps started by woken code runs within the same run', async () => {
  const clock = new VirtualClock(0);
  let ticks = 0;
  void (async () => {
    for (let i = 0; i < 10; i++) {
      await clock.sleep(60_000);
      ticks++;
    }
  })();
  await clock.run(3_600_000);
  assert.equal(ticks, 10);
});

test('time does not move while outside work is in flight', async () => {
  const clock = new VirtualClock(0);
  let busy = true;
  let seenAt: number | undefined;
  void clock.sleep(10).then(() => {
    // Real work (I/O) started by a woken sleeper: the clock must wait for it.
    setTimeout(() => {
      busy = false;
      seenAt = clock.now();
    }, 20);
  });
  void clock.sleep(20);
  await clock.run(100, { idle: () => !busy || clock.now() < 10 });
  assert.equal(seenAt, 10, 'the second deadline waited for the work the first one started');
});

test('sub-millisecond sleeps take a millisecond, as setTimeout: a waiting loop cannot spin in place', async () => {
  const clock = new VirtualClock(Date.now());
  const start = clock.now();
  let rounds = 0;
  void (async () => {
    while (clock.now() - start < 5) {
      rounds++;
      await clock.sleep(1e-9);
    }
  })();
  await clock.run(start + 1_000);
  assert.ok(rounds <= 6, `${rounds} rounds`);
});

test('resolution wakes deadlines close together in one step; an aborted sleep never wakes', async () => {
  const clock = new VirtualClock(0);
  const abort = new AbortController();
  const woke: number[] = [];
  for (const ms of [100, 105, 109, 300]) void clock.sleep(ms).then(() => void woke.push(ms));
  const aborted = clock.sleep(150, abort.signal);
  abort.abort(new Error('stop'));
  await assert.rejects(aborted, /stop/);
  await clock.run(1_000, { resolutionMs: 10 });
  assert.deepEqual(woke, [100, 105, 109, 300]);
  assert.equal(clock.steps, 2);
});

test('run stops early once done() says so', async () => {
  const clock = new VirtualClock(0);
  let n = 0;
  void (async () => {
    for (;;) {
      await clock.sleep(1_000);
      n++;
    }
  })();
  await clock.run(1_000_000, { done: () => n >= 3 });
  assert.equal(n, 3);
  assert.equal(clock.now(), 3_000);
});

test('serial: sleepers due at once wake one at a time, each after the outside work the one before started', async () => {
  const clock = new VirtualClock(0);
  let inFlight = 0;
  const order: string[] = [];
  // Each sleeper starts real work whose length is the reverse of its wake order: run together,
  // they would finish last-woken first.
  for (const [name, ms] of [['a', 30], ['b', 20], ['c', 10]] as const) {
    void clock.sleep(100).then(() => {
      inFlight++;
      setTimeout(() => {
        inFlight--;
        order.push(name);
      }, ms);
    });
  }
  await clock.run(1_000, { serial: true, resolutionMs: 50, idle: () => inFlight === 0 });
  assert.deepEqual(order, ['a', 'b', 'c']);
  assert.equal(clock.steps, 3);
});
