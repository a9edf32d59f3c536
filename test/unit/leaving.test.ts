// The watch for the instance leaving (spot interruption, Auto Scaling termination): what it tells
// the daemon at its first look, when it takes over a notice from the watch it replaces (SIGHUP).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Imds } from '../../agent/aws/imds.js';
import { LeavingWatch, SpotInterruptionMonitor, TargetLifecycleMonitor, type LeavingNotice, type Monitor } from '../../agent/sources/leaving.js';
import { ManualClock } from '../support/clock.js';

const SPOT: LeavingNotice = { kind: 'spot', detail: 'spot interruption: terminate at 2026-11-30T12:02:00Z' };

function monitor(kind: LeavingNotice['kind'], answer: () => LeavingNotice | undefined): Monitor {
  return { kind, check: async () => answer() };
}

describe('LeavingWatch', () => {
  it('a watch taking over a notice that is gone says so at its first look', async () => {
    const changes: (LeavingNotice | undefined)[] = [];
    const watch = new LeavingWatch([{ monitor: monitor('spot', () => undefined), intervalMs: 5_000 }], {
      clock: new ManualClock(0),
      initial: SPOT,
      onChange: (n) => changes.push(n),
    });
    assert.equal(watch.leaving, SPOT);
    await watch.start();
    await watch.stop();
    assert.deepEqual(changes, [undefined]);
    assert.equal(watch.leaving, undefined);
  });

  it('one taking over a notice still there says nothing new', async () => {
    const changes: (LeavingNotice | undefined)[] = [];
    const watch = new LeavingWatch([{ monitor: monitor('spot', () => ({ ...SPOT })), intervalMs: 5_000 }], {
      clock: new ManualClock(0),
      initial: SPOT,
      onChange: (n) => changes.push(n),
    });
    await watch.start();
    await watch.stop();
    assert.deepEqual(changes, []);
    assert.equal(watch.leaving?.detail, SPOT.detail);
  });

  it('a fresh one says nothing while the instance stays, and tells of a notice at once', async () => {
    const changes: (LeavingNotice | undefined)[] = [];
    let notice: LeavingNotice | undefined;
    const clock = new ManualClock(0);
    const watch = new LeavingWatch([{ monitor: monitor('spot', () => notice), intervalMs: 5_000 }], { clock, onChange: (n) => changes.push(n) });
    await watch.start();
    assert.deepEqual(changes, []);
    notice = SPOT;
    clock.advance(5_000);
    for (let i = 0; i < 5 && changes.length === 0; i++) await new Promise((r) => setImmediate(r));
    await watch.stop();
    assert.deepEqual(changes, [SPOT]);
  });

  it('the target state monitor tells every state it reads, a warm pool\'s too, and a notice only for a termination', async () => {
    const answers: (string | undefined)[] = ['InService\n', 'Warmed:Stopped', undefined, 'Terminated'];
    const imds = { get: async (p: string) => (assert.equal(p, 'latest/meta-data/autoscaling/target-lifecycle-state'), answers.shift()) } as unknown as Imds;
    const seen: string[] = [];
    const target = new TargetLifecycleMonitor(imds, (s) => seen.push(s));
    const notices = [await target.check(), await target.check(), await target.check(), await target.check()];
    assert.deepEqual(seen, ['InService', 'Warmed:Stopped', 'Terminated']);
    assert.deepEqual(notices.map((n) => n?.detail), [undefined, undefined, undefined, 'Auto Scaling target lifecycle state Terminated']);
  });

  it('the spot monitor applies unless IMDS says the instance is on-demand', async () => {
    const answers: Record<string, () => Promise<string | undefined>> = {
      'on-demand': async () => 'on-demand',
      spot: async () => 'spot\n',
      'not found': async () => undefined,
      'IMDS failing': async () => {
        throw new Error('connect ECONNREFUSED');
      },
    };
    const applies: Record<string, boolean> = {};
    for (const [name, answer] of Object.entries(answers)) {
      const imds = { get: async (p: string) => (assert.equal(p, 'latest/meta-data/instance-life-cycle'), answer()) } as unknown as Imds;
      applies[name] = await new SpotInterruptionMonitor(imds).applies();
    }
    assert.deepEqual(applies, { 'on-demand': false, spot: true, 'not found': true, 'IMDS failing': true });
  });

  it('a monitor that does not apply is never looked at, and a notice taken over from it ends', async () => {
    const clock = new ManualClock(0);
    const looked: string[] = [];
    const spot: Monitor = { kind: 'spot', applies: async () => false, check: async () => (looked.push('spot'), SPOT) };
    const target: Monitor = { kind: 'autoscaling', check: async () => (looked.push('autoscaling'), undefined) };
    const changes: (LeavingNotice | undefined)[] = [];
    const watch = new LeavingWatch(
      [
        { monitor: spot, intervalMs: 5_000 },
        { monitor: target, intervalMs: 5_000 },
      ],
      { clock, initial: SPOT, onChange: (n) => changes.push(n) },
    );
    await watch.start();
    for (let i = 0; i < 3; i++) {
      clock.advance(5_000);
      for (let j = 0; j < 5 && looked.length < i + 2; j++) await new Promise((r) => setImmediate(r));
    }
    await watch.stop();
    assert.deepEqual(looked, ['autoscaling', 'autoscaling', 'autoscaling', 'autoscaling']);
    assert.deepEqual(changes, [undefined]);
  });
});
