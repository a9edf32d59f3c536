// CloudWatch alarms that halt a rollout: read only while a rollout naming them progresses or bakes,
// at most once per interval; one in ALARM halts with a reason naming it, is recorded once for the
// fleet, and the recorded halt holds after the alarm clears. The SDK path is the real client
// against the CloudWatch emulator.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { RootFs } from '../../agent/fs.js';
import { ALARM_READS_PER_SECOND, AlarmWatcher, alarmsDue, readsAlarmsNow, sdkDescribeAlarms } from '../../agent/rollout/alarms.js';
import { describeRollout } from '../../agent/rollout/plan.js';
import { selectDesired } from '../../agent/rollout/select.js';
import { candidateIdOf, type AlarmState } from '../../agent/rollout/spec.js';
import { SourceReader } from '../../agent/sources/index.js';
import type { SsmSnapshot } from '../../agent/sources/ssm.js';
import { CloudWatchEmulator } from '../../sandbox/emulators/cloudwatch.js';
import { TokenBucket } from '../../sandbox/emulators/token-bucket.js';
import { ManualClock } from '../support/clock.js';
import { prng } from '../support/prng.js';
import { NO_LOCAL, param, ssm, userData } from '../support/desired.js';

const FLEET = '/nixos/fleet';
const START = Date.UTC(2026, 0, 1, 12);
const MIN = 60_000;
const candidate = param(`${FLEET}/rollout/candidate/options/services.demo.version`, '"2"', { version: 4 });
const candidateId = candidateIdOf([candidate]);
const strategy = (over: Record<string, unknown> = {}) =>
  param(`${FLEET}/rollout/strategy`, JSON.stringify({ type: 'linear', stepPercent: 100, intervalSeconds: 600, bakeSeconds: 600, errorThreshold: 3, startAt: new Date(START).toISOString(), alarms: ['web-5xx'], ...over }));
const snapshot = (extra: ReturnType<typeof param>[] = [], over: Record<string, unknown> = {}): SsmSnapshot =>
  ssm([FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"'), strategy(over), candidate, ...extra]]);
const firing: AlarmState[] = [{ name: 'web-5xx', state: 'ALARM', reason: 'Threshold Crossed: 12 errors' }];
const quiet: AlarmState[] = [{ name: 'web-5xx', state: 'OK', reason: 'fine' }];
const select = (s: SsmSnapshot, alarms: AlarmState[] | undefined, at = START + MIN) =>
  selectDesired({ userData: userData(undefined), ssm: s, local: NO_LOCAL }, { instanceId: 'i-0aaaaaaaaaaaaaaa1', ...(alarms ? { alarms } : {}) }, at);

describe('rollout alarms', () => {
  it('are due only while a rollout naming them progresses or bakes', () => {
    const due = (s: SsmSnapshot, at: number) => alarmsDue(s, at).names;
    assert.deepEqual(due(snapshot(), START - MIN), [], 'staged');
    assert.deepEqual(due(snapshot(), START + MIN), ['web-5xx'], 'progressing (100 % at once: baking)');
    assert.deepEqual(due(snapshot(), START + 11 * MIN), [], 'complete');
    assert.deepEqual(due(snapshot([param(`${FLEET}/rollout/halt`, 'stop')]), START + MIN), [], 'halted');
    assert.deepEqual(due(snapshot([], { alarms: undefined }), START + MIN), [], 'no alarms named');
    assert.deepEqual(due(ssm([FLEET, [param(`${FLEET}/options/x`, '"1"')]]), START + MIN), [], 'no rollout');
  });

  it("carry the largest fleet size the rollouts under way give, and none when none gives one", () => {
    assert.deepEqual(alarmsDue(snapshot(), START + MIN), { names: ['web-5xx'], fleetSize: undefined });
    assert.deepEqual(alarmsDue(snapshot([], { fleetSize: 10_000 }), START + MIN), { names: ['web-5xx'], fleetSize: 10_000 });
    const ASG = '/nixos/asg/web';
    const other = [param(`${ASG}/rollout/candidate/options/x`, '"2"'), param(`${ASG}/rollout/strategy`, JSON.stringify({ type: 'linear', stepPercent: 100, intervalSeconds: 600, bakeSeconds: 600, startAt: new Date(START).toISOString(), alarms: ['asg-latency'], fleetSize: 25_000 }))];
    const two = ssm([FLEET, [strategy({ fleetSize: 10_000 }), candidate]], [ASG, other]);
    assert.deepEqual(alarmsDue(two, START + MIN), { names: ['asg-latency', 'web-5xx'], fleetSize: 25_000 });
    assert.deepEqual(alarmsDue(snapshot([], { fleetSize: 10_000 }), START + 11 * MIN), { names: [], fleetSize: undefined }, 'complete: nothing to read');
  });

  it('go by turns in a fleet that gives its size: about ALARM_READS_PER_SECOND across it, other readers each interval', () => {
    const interval = 600_000;
    const ids = Array.from({ length: 10_000 }, (_, i) => `i-${i.toString(16).padStart(17, '0')}`);
    const readers = (at: number) => new Set(ids.filter((id) => readsAlarmsNow(id, 10_000, at, interval)));
    const first = readers(START);
    const second = readers(START + interval);
    // 1 a second over 600 s among 10,000: a share of 0.06, 600 readers an interval.
    for (const r of [first, second]) assert.ok(r.size > 500 && r.size < 700, `${r.size} readers in an interval`);
    assert.deepEqual(readers(START + interval - 1), first, 'the same readers all through one interval');
    const both = [...first].filter((id) => second.has(id)).length;
    assert.ok(both < 80, `${both} instances read in both intervals: each interval draws again`);
    assert.equal(ALARM_READS_PER_SECOND, 1);
    // A fleet that asks less than that anyway: every instance reads at every interval, as without a size.
    assert.ok(ids.slice(0, 600).every((id) => readsAlarmsNow(id, 600, START, interval)));
    assert.ok(ids.slice(0, 50).every((id) => readsAlarmsNow(id, 50, START, 60_000)));
  });

  it('one in ALARM halts the rollout, naming it, and is to be recorded for the fleet', () => {
    const s = select(snapshot(), firing);
    assert.equal(s.rollouts[0]?.state, 'halted');
    assert.equal(s.rollouts[0]?.haltedBy, 'alarm');
    assert.equal(s.rollouts[0]?.takes, 'stable');
    assert.equal(s.rollouts[0]?.reason, 'CloudWatch alarm web-5xx is in ALARM: Threshold Crossed: 12 errors');
    assert.match(describeRollout(s.rollouts[0] as never), /HALTED \(alarm\): CloudWatch alarm web-5xx is in ALARM/);
    assert.deepEqual(s.alarmed, { taken: [{ prefix: FLEET, candidate: candidateId, record: true }], reason: 'CloudWatch alarm web-5xx is in ALARM: Threshold Crossed: 12 errors' });
  });

  it('OK, INSUFFICIENT_DATA, or an alarm the strategy does not name, halt nothing', () => {
    for (const alarms of [quiet, [{ name: 'web-5xx', state: 'INSUFFICIENT_DATA', reason: '' }], [{ name: 'other', state: 'ALARM', reason: '' }]]) {
      const s = select(snapshot(), alarms);
      assert.equal(s.rollouts[0]?.takes, 'candidate', JSON.stringify(alarms));
      assert.equal(s.alarmed, undefined);
    }
  });

  it('a recorded alarm halts every instance, even after the alarm clears, and is not recorded again', () => {
    const record = param(`${FLEET}/rollout/failures/i-0bbbbbbbbbbbbbbb2`, JSON.stringify({ candidate: candidateId, stage: 'alarm', reason: 'CloudWatch alarm web-5xx is in ALARM: x', at: '' }));
    for (const alarms of [quiet, firing, undefined]) {
      const s = select(snapshot([record]), alarms);
      assert.equal(s.rollouts[0]?.state, 'halted');
      assert.equal(s.rollouts[0]?.haltedBy, 'alarm');
      assert.equal(s.rollouts[0]?.reason, 'CloudWatch alarm web-5xx is in ALARM: x');
      assert.equal(s.alarmed, undefined);
    }
  });

  it('the watcher asks at most once per interval, errors included', async () => {
    const clock = new ManualClock(START);
    let calls = 0;
    let fail = false;
    const watcher = new AlarmWatcher(async () => async (names) => {
      calls++;
      if (fail) throw new Error('Throttling: Rate exceeded');
      return names.map((name) => ({ name, state: 'OK', reason: '' }));
    }, { clock, minIntervalMs: 600_000 });
    await watcher.read(['a']);
    await watcher.read(['a']);
    clock.advance(599_999);
    await watcher.read(['a']);
    assert.equal(calls, 1);
    await watcher.read(['a', 'b']);
    assert.equal(calls, 2, 'other names are another question');
    clock.advance(600_000);
    fail = true;
    assert.deepEqual(await watcher.read(['a', 'b']), { error: 'cannot read CloudWatch alarms a, b: Throttling: Rate exceeded' });
    await watcher.read(['a', 'b']);
    assert.equal(calls, 3);
  });
});

describe('the watcher on a busy CloudWatch', () => {
  const answers = (clock: ManualClock, script: (string | undefined)[]) => {
    let call = 0;
    const watcher = new AlarmWatcher(async () => async (names) => {
      const error = script[call++];
      if (error) throw Object.assign(new Error(error === 'Throttling' ? 'Rate exceeded' : error), { name: error, $metadata: { httpStatusCode: error === 'InternalFailure' ? 500 : 400 } });
      return names.map((name) => ({ name, state: 'OK', reason: '' }));
    }, { clock, minIntervalMs: 600_000 });
    /** Reads until the watcher asks CloudWatch; returns how long that took. */
    const nextCall = async () => {
      const before = watcher.calls;
      const t0 = clock.now();
      while (watcher.calls === before) {
        clock.advance(60_000);
        await watcher.read(['web-5xx']);
      }
      return clock.now() - t0;
    };
    return { watcher, nextCall };
  };

  it('each busy answer doubles the wait before it asks again, up to 16 intervals; each answer halves it', async () => {
    const clock = new ManualClock(START);
    const { watcher, nextCall } = answers(clock, ['Throttling', 'Throttling', 'InternalFailure', 'Throttling', 'Throttling', 'Throttling', undefined, undefined]);
    await watcher.read(['web-5xx']);
    assert.equal(watcher.calls, 1);
    const waits = [];
    for (let i = 0; i < 7; i++) waits.push((await nextCall()) / 600_000);
    assert.deepEqual(waits, [2, 4, 8, 16, 16, 16, 8]);
    assert.equal(watcher.intervalMs, 4 * 600_000);
  });

  it('an error that is not CloudWatch being busy (refused, not found) does not widen it', async () => {
    const clock = new ManualClock(START);
    const { watcher, nextCall } = answers(clock, ['AccessDenied', 'AccessDenied']);
    await watcher.read(['web-5xx']);
    assert.deepEqual([await nextCall(), await nextCall()], [600_000, 600_000]);
  });

  /**
   * 2,000 instances polling every 60 s (jittered) against a DescribeAlarms limit of 9 a second,
   * simulated over two hours on one clock, every instance a watcher; `fleetSize`: the strategy gives
   * it, and each reads at its turns. The last hour's calls a second, asked and answered, and the
   * longest the fleet went without an answer in it.
   */
  async function fleetOfWatchers(fleetSize?: number) {
    const clock = new ManualClock(START);
    const random = prng(18);
    const bucket = new TokenBucket({ ratePerSecond: 9, clock });
    const interval = 60_000;
    const watchers = Array.from({ length: 2_000 }, () => new AlarmWatcher(async () => async (names) => {
      if (!bucket.tryTake()) throw Object.assign(new Error('Rate exceeded'), { name: 'Throttling' });
      return names.map((name) => ({ name, state: 'ALARM', reason: '' }));
    }, { clock, minIntervalMs: interval }));
    const ids = watchers.map((_, i) => `i-${i.toString(16).padStart(17, '0')}`);
    const next = watchers.map(() => START + random() * interval);
    const lastHour = { asked: 0, answered: 0, longestSilenceMs: 0 };
    const end = START + 2 * 3_600_000;
    let lastAnswer = end - 3_600_000;
    for (let t = START; t < end; t += 1_000) {
      clock.advance(t - clock.now());
      for (const [i, w] of watchers.entries()) {
        if ((next[i] as number) > t) continue;
        next[i] = t + interval * (0.5 + random());
        const before = w.calls;
        const reading = await w.read(['web-5xx'], fleetSize ? { instanceId: ids[i] as string, fleetSize } : undefined);
        if (w.calls === before || t < end - 3_600_000) continue;
        lastHour.asked++;
        if (reading && 'alarms' in reading) {
          lastHour.answered++;
          lastHour.longestSilenceMs = Math.max(lastHour.longestSilenceMs, t - lastAnswer);
          lastAnswer = t;
        }
      }
    }
    return { askedPerSecond: lastHour.asked / 3_600, answeredPerSecond: lastHour.answered / 3_600, ...lastHour };
  }

  it("a fleet asking more than the account's limit settles near it, and keeps reading alarms", async () => {
    // Without the backoff they ask ~22 a second over the last hour, 60 % of it refused.
    const fleet = await fleetOfWatchers();
    // Seed 18: ~10.2 asked a second and ~8.2 answered.
    assert.ok(fleet.askedPerSecond < 13, `asked ${fleet.askedPerSecond.toFixed(1)}/s over the last hour`);
    assert.ok(fleet.answered / fleet.asked > 0.7, `${fleet.answered} of ${fleet.asked} answered over the last hour`);
    assert.ok(fleet.answeredPerSecond > 7, `answered ${fleet.answeredPerSecond.toFixed(1)}/s over the last hour: the alarm is still seen`);
  });

  it('a fleet whose strategy gives its size asks about one a second by turns, none refused, and an alarm is seen within seconds', async () => {
    const fleet = await fleetOfWatchers(2_000);
    assert.ok(fleet.askedPerSecond > 0.7 && fleet.askedPerSecond < 1.3, `asked ${fleet.askedPerSecond.toFixed(2)}/s over the last hour`);
    assert.equal(fleet.answered, fleet.asked, 'the account keeps most of its limit: nothing refused');
    assert.ok(fleet.longestSilenceMs <= 20_000, `the longest the fleet went without an answer: ${fleet.longestSilenceMs / 1000} s`);
  });
});

describe('the sources read alarms', () => {
  async function read(snap: SsmSnapshot, at: number, answer: AlarmState[] | Error | undefined) {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-alarms-'));
    const asked: (readonly string[])[] = [];
    const turns: unknown[] = [];
    const imds = {
      get: async () => undefined,
      getBytes: async () => undefined,
      identity: async () => ({ instanceId: 'i-0aaaaaaaaaaaaaaa1', region: 'eu-west-1', accountId: '123456789012', availabilityZone: 'eu-west-1a', instanceType: 't3.micro', amiId: 'ami-1' }),
    };
    try {
      const sources = new SourceReader(imds as never, async () => ({ fetch: async () => snap }), new RootFs(dir), {
        userData: false,
        ssmPrefixes: [FLEET],
        baseConfiguration: '/etc/nixos/base.nix',
        modulesDir: '/etc/nixos-ec2-agent/local.d',
        now: () => at,
        alarms: {
          read: async (names, turn) => {
            asked.push(names);
            turns.push(turn);
            if (answer === undefined) return undefined;
            return answer instanceof Error ? { error: answer.message } : { alarms: answer };
          },
        },
      });
      return { snapshots: await sources.read(), asked, turns };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it('only while a rollout naming them is under way', async () => {
    const idle = await read(ssm([FLEET, [param(`${FLEET}/options/x`, '"1"')]]), START + MIN, firing);
    assert.deepEqual(idle.asked, []);
    assert.equal(idle.snapshots.alarms, undefined);
    const rolling = await read(snapshot(), START + MIN, firing);
    assert.deepEqual(rolling.asked, [['web-5xx']]);
    assert.deepEqual(rolling.snapshots.alarms, firing);
  });

  it("with the fleet's size, at this instance's turns: between them no states and no note", async () => {
    const sized = await read(snapshot([], { fleetSize: 5_000 }), START + MIN, undefined);
    assert.deepEqual(sized.turns, [{ instanceId: 'i-0aaaaaaaaaaaaaaa1', fleetSize: 5_000 }]);
    assert.equal(sized.snapshots.alarms, undefined);
    assert.deepEqual(sized.snapshots.notes, []);
    assert.deepEqual((await read(snapshot(), START + MIN, firing)).turns, [undefined], 'without a size, every time');
  });

  it('a failed read or a missing alarm is a note, and halts nothing', async () => {
    const failed = await read(snapshot(), START + MIN, new Error('cannot read CloudWatch alarms web-5xx: AccessDenied'));
    assert.deepEqual(failed.snapshots.alarms, []);
    assert.deepEqual(failed.snapshots.notes, ['cannot read CloudWatch alarms web-5xx: AccessDenied']);
    const missing = await read(snapshot(), START + MIN, []);
    assert.deepEqual(missing.snapshots.notes, ['CloudWatch alarm web-5xx, named by a rollout strategy, does not exist']);
  });
});

describe('DescribeAlarms through the SDK client', () => {
  let emulator: CloudWatchEmulator;
  before(async () => {
    emulator = await CloudWatchEmulator.start({ region: 'eu-west-1' });
  });
  after(async () => {
    await emulator?.close();
  });

  it('reads the named alarms at the endpoint AWS_ENDPOINT_URL_CLOUDWATCH names', async () => {
    emulator.putAlarm('web-5xx');
    emulator.putAlarm('web-latency');
    emulator.setState('web-5xx', 'ALARM', 'Threshold Crossed');
    const describe = await sdkDescribeAlarms({
      env: { AWS_ENDPOINT_URL_CLOUDWATCH: emulator.url, AWS_REGION: 'eu-west-1' },
      region: async () => assert.fail('the region is in the environment'),
      credentials: async () => async () => ({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }),
    });
    assert.deepEqual(await describe(['web-5xx', 'web-latency', 'none']), [
      { name: 'web-5xx', state: 'ALARM', reason: 'Threshold Crossed' },
      { name: 'web-latency', state: 'INSUFFICIENT_DATA', reason: 'Unchecked: Initial alarm creation' },
    ]);
    assert.equal(emulator.callCounts().DescribeAlarms, 1);
  });

  it('a throttled call is one request, not retried, and CloudWatch counts as busy to the watcher', async () => {
    const clock = new ManualClock(START);
    // One call's worth, refilled only when the clock moves: the second call is refused.
    const throttled = await CloudWatchEmulator.start({ region: 'eu-west-1', clock, describeThroughput: { ratePerSecond: 1, burst: 1 } });
    try {
      throttled.putAlarm('web-5xx');
      const describe = await sdkDescribeAlarms({
        env: { AWS_ENDPOINT_URL_CLOUDWATCH: throttled.url, AWS_REGION: 'eu-west-1' },
        region: async () => 'eu-west-1',
        credentials: async () => async () => ({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }),
      });
      const watcher = new AlarmWatcher(async () => describe, { clock, minIntervalMs: 600_000 });
      assert.ok('alarms' in ((await watcher.read(['web-5xx'])) ?? {}));
      clock.advance(600_000);
      // The bucket refilled one token over those 600 s; take it, so the watcher's call is refused.
      assert.deepEqual(await describe(['web-5xx']), [{ name: 'web-5xx', state: 'INSUFFICIENT_DATA', reason: 'Unchecked: Initial alarm creation' }]);
      const refused = await watcher.read(['web-5xx']);
      assert.match(refused && 'error' in refused ? refused.error : '', /Rate exceeded/);
      assert.equal(throttled.callCounts().DescribeAlarms, 3, 'the refused call was sent once');
      assert.equal(watcher.intervalMs, 1_200_000);
    } finally {
      await throttled.close();
    }
  });
});

describe('the bundle', () => {
  const dir = fileURLToPath(new URL('../../agent/', import.meta.url));
  const CLOUDWATCH = 'GraniteServiceVersion20100801';

  it('keeps the CloudWatch client in a chunk of its own, outside what the daemon loads at start', async () => {
    const entry = await readFile(path.join(dir, 'nixos-ec2-agent.js'), 'utf8');
    const daemon = /run:\{[^}]*?import\("\.\/(chunk-[A-Z0-9]+\.js)"[^;]*?\.runDaemon/.exec(entry)?.[1];
    assert.ok(daemon, 'the run command imports the daemon from a chunk');
    // Everything the daemon's chunk imports statically, transitively: what its start reads.
    const loaded = new Set<string>(['nixos-ec2-agent.js']);
    const queue = [daemon];
    for (let file = queue.pop(); file; file = queue.pop()) {
      if (loaded.has(file)) continue;
      loaded.add(file);
      const text = await readFile(path.join(dir, file), 'utf8');
      for (const m of text.matchAll(/(?:from|import)\s*"\.\/(chunk-[A-Z0-9]+\.js)"/g)) queue.push(m[1] as string);
    }
    for (const file of loaded) assert.ok(!(await readFile(path.join(dir, file), 'utf8')).includes(CLOUDWATCH), `${file} is read at the daemon's start and holds the CloudWatch client`);
    const chunks = (await readdir(dir)).filter((f) => /^chunk-[A-Z0-9]+\.js$/.test(f));
    const holding = [];
    for (const f of chunks) if ((await readFile(path.join(dir, f), 'utf8')).includes(CLOUDWATCH)) holding.push(f);
    assert.equal(holding.length, 1, `the CloudWatch client is in exactly one chunk: ${holding.join(' ')}`);
  });
});
