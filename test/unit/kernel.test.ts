// The kernel-change policy: the reboot window (including one across midnight, as nixpkgs'
// system.autoUpgrade.rebootWindow), what each policy does, and that it acts once per generation.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inWindow, KernelPolicy, minutesUntilWindow, parseHHMM, type SetInstanceHealth } from '../../agent/apply/kernel.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { ManualClock } from '../support/clock.js';

const at = (hhmm: string) => parseHHMM(hhmm);

test('a daytime window holds its lower bound and excludes its upper', () => {
  const w = { lower: '01:00', upper: '05:00' };
  assert.equal(inWindow(at('00:59'), w), false);
  assert.equal(inWindow(at('01:00'), w), true);
  assert.equal(inWindow(at('04:59'), w), true);
  assert.equal(inWindow(at('05:00'), w), false);
  assert.equal(minutesUntilWindow(at('05:00'), w), 20 * 60);
  assert.equal(minutesUntilWindow(at('00:30'), w), 30);
});

test('a window across midnight holds late evening and early morning', () => {
  const w = { lower: '23:00', upper: '06:00' };
  for (const t of ['23:00', '23:59', '00:00', '03:30', '05:59']) assert.equal(inWindow(at(t), w), true, t);
  for (const t of ['06:00', '12:00', '22:59']) assert.equal(inWindow(at(t), w), false, t);
  assert.equal(minutesUntilWindow(at('22:00'), w), 60);
  assert.equal(minutesUntilWindow(at('06:00'), w), 17 * 60);
});

test('bad times are refused', () => {
  assert.throws(() => parseHHMM('24:00'), RangeError);
  assert.throws(() => parseHHMM('7:00'), RangeError);
  assert.throws(() => new KernelPolicy({ policy: 'reboot', window: { lower: '25:00', upper: '01:00' }, rebootCommand: ['true'], clock: new ManualClock(0), runner: fakeRunner([]).runner }), RangeError);
});

function fakeRunner(codes: number[]) {
  const calls: RunRequest[] = [];
  const runner: Runner = {
    run: async (request) => {
      calls.push(request);
      const code = codes.shift() ?? 0;
      return { code, signal: null, timedOut: false, aborted: false, stdout: '', stderr: '', tail: [], durationMs: 1 } satisfies RunResult;
    },
  };
  return { runner, calls };
}

const required = { storePath: '/nix/store/aaaa-nixos-system-new' };

test('report never acts', () => {
  const policy = new KernelPolicy({ policy: 'report', window: null, rebootCommand: ['systemctl', 'reboot'], clock: new ManualClock(0), runner: fakeRunner([]).runner });
  assert.equal(policy.decide(required, true).kind, 'report');
  assert.equal(policy.decide(undefined, true).kind, 'none');
});

test('reboot outside the window waits for its opening; inside, runs the reboot command once', async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1, 12, 0));
  const minutes = (ms: number) => (ms / 60_000) % 1440; // UTC, so the test does not depend on TZ
  const { runner, calls } = fakeRunner([0]);
  const policy = new KernelPolicy({ policy: 'reboot', window: { lower: '23:00', upper: '06:00' }, rebootCommand: ['systemctl', 'reboot'], clock, runner, localMinutes: minutes });
  const wait = policy.decide(required, false);
  assert.deepEqual(wait, { kind: 'wait', untilMs: Date.UTC(2026, 0, 1, 23, 0) });
  clock.set(Date.UTC(2026, 0, 1, 23, 0));
  const now = policy.decide(required, false);
  assert.equal(now.kind, 'reboot');
  assert.equal(await policy.act(now, required.storePath, 'i-1'), true);
  assert.deepEqual(calls.map((c) => [c.command, ...c.args]), [['systemctl', 'reboot']]);
  assert.equal(policy.decide(required, false).kind, 'none', 'not twice for the same generation');
});

test('a failed reboot command is reported and tried again', async () => {
  const { runner, calls } = fakeRunner([1, 0]);
  const policy = new KernelPolicy({ policy: 'reboot', window: null, rebootCommand: ['reboot'], clock: new ManualClock(0), runner });
  assert.equal(await policy.act(policy.decide(required, false), required.storePath, 'i-1'), false);
  assert.equal(await policy.act(policy.decide(required, false), required.storePath, 'i-1'), true);
  assert.equal(calls.length, 2);
});

test('replace asks Auto Scaling for a fresh instance, respecting the grace period; outside a group it only reports', async () => {
  const asked: Parameters<SetInstanceHealth>[0][] = [];
  const policy = new KernelPolicy({
    policy: 'replace',
    window: null,
    rebootCommand: ['reboot'],
    clock: new ManualClock(0),
    runner: fakeRunner([]).runner,
    setInstanceHealth: async (input) => {
      asked.push(input);
    },
  });
  assert.equal(policy.decide(required, false).kind, 'report');
  const action = policy.decide(required, true);
  assert.equal(action.kind, 'replace');
  assert.equal(await policy.act(action, required.storePath, 'i-0abc'), true);
  assert.deepEqual(asked, [{ InstanceId: 'i-0abc', HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: true }]);
});
