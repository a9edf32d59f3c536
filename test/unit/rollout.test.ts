// The rollout's pure parts: parsing what operators publish, the schedule, cohorts, halts, the bake,
// and the desired state an instance picks from them.
import assert from 'node:assert/strict';
import { InvalidInputError } from '../../agent/errors.js';
import { describe, it } from 'node:test';
import { cohortPosition, currentPercent, decide, describeRollout, scheduleOf, stepCount, stepOf } from '../../agent/rollout/plan.js';
import { runRollout, type RolloutStore } from '../../agent/rollout/commands.js';
import { selectDesired } from '../../agent/rollout/select.js';
import { candidateIdOf, splitSnapshot, type RolloutSpec, type Strategy } from '../../agent/rollout/spec.js';
import type { SsmParameter } from '../../agent/sources/ssm.js';
import { desired, NO_LOCAL, param, ssm, userData } from '../support/desired.js';

const FLEET = '/nixos/fleet';
const START = Date.UTC(2026, 0, 1, 12);
const MIN = 60_000;

function strategy(over: Partial<Strategy> = {}): Strategy {
  return { type: 'linear', stepPercent: 10, intervalSeconds: 600, bakeSeconds: 1800, errorThreshold: 2, startAt: new Date(START).toISOString(), ...over };
}

function spec(over: Partial<RolloutSpec> = {}): RolloutSpec {
  return { prefix: FLEET, candidateId: 'c0ffee', candidate: [], strategy: strategy(), halt: undefined, failures: [], stale: 0, ...over };
}

/** An instance id whose cohort for `candidate` falls in [low, high). */
function instanceIn(low: number, high: number, candidate = 'c0ffee'): string {
  for (let i = 0; i < 100_000; i++) {
    const id = `i-${i.toString(16).padStart(17, '0')}`;
    const p = cohortPosition(id, candidate);
    if (p >= low && p < high) return id;
  }
  throw new Error('no such instance');
}

describe('rollout schedule', () => {
  const table: [Strategy['type'], number, number, number][] = [
    // type, step %, minutes since start, expected %
    ['linear', 10, -1, 0],
    ['linear', 10, 0, 10],
    ['linear', 10, 9.99, 10],
    ['linear', 10, 10, 20],
    ['linear', 10, 85, 90],
    ['linear', 10, 90, 100],
    ['linear', 10, 1000, 100],
    ['linear', 30, 30, 100],
    ['exponential', 1, 0, 1],
    ['exponential', 1, 10, 2],
    ['exponential', 1, 30, 8],
    ['exponential', 1, 60, 64],
    ['exponential', 1, 70, 100],
  ];
  for (const [type, step, minutes, expected] of table) {
    it(`${type} ${step}% after ${minutes} min covers ${expected}%`, () => {
      assert.equal(currentPercent({ type, stepPercent: step, intervalSeconds: 600 }, minutes * MIN), expected);
    });
  }

  it('reaches 100 % at the last step and completes after the bake', () => {
    assert.equal(stepCount({ type: 'linear', stepPercent: 10 }), 10);
    assert.equal(stepCount({ type: 'linear', stepPercent: 30 }), 4);
    assert.equal(stepCount({ type: 'exponential', stepPercent: 1 }), 8);
    const s = scheduleOf(strategy());
    assert.equal(s.fullMs - START, 90 * MIN);
    assert.equal(s.completeMs - START, 120 * MIN);
    assert.equal(stepOf(strategy(), 0.05), 0);
    assert.equal(stepOf(strategy(), 0.15), 1);
    assert.equal(stepOf(strategy(), 0.99), 9);
  });
});

describe('cohorts', () => {
  it('are stable per (instance, candidate), in [0, 1), and reshuffled by a new candidate', () => {
    assert.equal(cohortPosition('i-1', 'a'), cohortPosition('i-1', 'a'));
    assert.notEqual(cohortPosition('i-1', 'a'), cohortPosition('i-1', 'b'));
    const positions = Array.from({ length: 2000 }, (_, i) => cohortPosition(`i-${i}`, 'a'));
    assert.ok(positions.every((p) => p >= 0 && p < 1));
    // Spread evenly enough that a 10 % step is about 10 % of a fleet.
    const first = positions.filter((p) => p < 0.1).length;
    assert.ok(first > 140 && first < 260, `first decile holds ${first} of 2000`);
  });

  it('a candidate id follows its parameters’ names and versions, not their order', () => {
    const a = param(`${FLEET}/rollout/candidate/options/x`, '1', { version: 1 });
    const b = param(`${FLEET}/rollout/candidate/modules/m`, '{}', { version: 3 });
    assert.equal(candidateIdOf([a, b]), candidateIdOf([b, a]));
    assert.notEqual(candidateIdOf([a, b]), candidateIdOf([a, { ...b, version: 4 }]));
  });
});

describe('decide', () => {
  const early = instanceIn(0, 0.1);
  const middle = instanceIn(0.45, 0.5);
  const late = instanceIn(0.95, 1);
  const who = (instanceId: string, canary = false) => ({ instanceId, canary });
  const rows: { name: string; spec: RolloutSpec; instance: string; canary?: boolean; at: number; state: string; takes: 'stable' | 'candidate' }[] = [
    { name: 'before the start nobody takes it', spec: spec(), instance: early, at: START - MIN, state: 'staged', takes: 'stable' },
    { name: 'the canary waits for the start too', spec: spec(), instance: late, canary: true, at: START - MIN, state: 'staged', takes: 'stable' },
    { name: 'the first cohort takes it at the start', spec: spec(), instance: early, at: START, state: 'progressing', takes: 'candidate' },
    { name: 'a later cohort stays on stable', spec: spec(), instance: middle, at: START, state: 'progressing', takes: 'stable' },
    { name: 'a canary takes it with the first cohort', spec: spec(), instance: late, canary: true, at: START, state: 'progressing', takes: 'candidate' },
    { name: 'a cohort takes it once covered', spec: spec(), instance: middle, at: START + 40 * MIN, state: 'progressing', takes: 'candidate' },
    { name: 'an instance launched mid-rollout in an uncovered cohort gets stable', spec: spec(), instance: late, at: START + 40 * MIN, state: 'progressing', takes: 'stable' },
    { name: 'at 100 % it bakes', spec: spec(), instance: late, at: START + 95 * MIN, state: 'baking', takes: 'candidate' },
    { name: 'after the bake it is complete', spec: spec(), instance: late, at: START + 120 * MIN, state: 'complete', takes: 'candidate' },
    {
      name: 'failures at the threshold halt it: the first cohort returns to stable',
      spec: spec({ failures: [fail('i-a'), fail('i-b')] }),
      instance: early,
      at: START + 5 * MIN,
      state: 'halted',
      takes: 'stable',
    },
    { name: 'failures under the threshold do not', spec: spec({ failures: [fail('i-a')] }), instance: early, at: START + 5 * MIN, state: 'progressing', takes: 'candidate' },
    { name: 'an operator halt stops even a baked rollout', spec: spec({ halt: 'bad latency' }), instance: early, at: START + 200 * MIN, state: 'halted', takes: 'stable' },
    {
      name: 'failures stored once it was complete do not halt it: complete is final',
      spec: spec({ failures: [fail('i-a', START + 121 * MIN), fail('i-b', START + 130 * MIN)] }),
      instance: early,
      at: START + 200 * MIN,
      state: 'complete',
      takes: 'candidate',
    },
    {
      name: 'failures stored while it baked still halt it after its complete time',
      spec: spec({ failures: [fail('i-a', START + 100 * MIN), fail('i-b', START + 119 * MIN)] }),
      instance: early,
      at: START + 200 * MIN,
      state: 'halted',
      takes: 'stable',
    },
    { name: 'a failure whose storing time is unknown counts after completion too', spec: spec({ failures: [fail('i-a'), fail('i-b', START + 100 * MIN)] }), instance: early, at: START + 200 * MIN, state: 'halted', takes: 'stable' },
    {
      name: 'an alarm record stored once it was complete does not halt it either',
      spec: spec({ failures: [{ ...fail('i-a', START + 125 * MIN), stage: 'alarm', reason: 'CloudWatch alarm p99 is in ALARM' }] }),
      instance: early,
      at: START + 200 * MIN,
      state: 'complete',
      takes: 'candidate',
    },
    { name: 'an invalid strategy keeps everyone on stable', spec: spec({ problem: 'SSM parameter x: type: bad' }), instance: early, at: START, state: 'invalid', takes: 'stable' },
    { name: 'a candidate without a strategy is staged', spec: spec({ strategy: undefined }), instance: early, at: START, state: 'staged', takes: 'stable' },
  ];
  for (const row of rows) {
    it(row.name, () => {
      const status = decide(row.spec, who(row.instance, row.canary), row.at);
      assert.equal(status.state, row.state);
      assert.equal(status.takes, row.takes);
    });
  }

  it('says why it halted, and when an uncovered instance next changes', () => {
    const halted = decide(spec({ failures: [fail('i-a'), fail('i-b')] }), who(early), START + MIN);
    assert.equal(halted.haltedBy, 'failures');
    assert.match(halted.reason ?? '', /2 instance\(s\) failed the candidate \(threshold 2\); e\.g\. i-a: build: boom/);
    assert.match(describeRollout(halted), /HALTED \(failures\)/);
    const waiting = decide(spec(), who(middle), START);
    assert.equal(waiting.nextChangeAt, new Date(START + 40 * MIN).toISOString());
    const complete = decide(spec({ failures: [fail('i-a', START + 100 * MIN), fail('i-b', START + 121 * MIN), fail('i-c', START + 122 * MIN)] }), who(early), START + 200 * MIN);
    assert.equal(complete.state, 'complete');
    assert.equal(complete.failures, 1, 'the one stored while it baked');
    assert.equal(complete.lateFailures, 2);
    assert.match(describeRollout(complete), /complete at 100% \(step 10\/10, 1\/2 failures, .*\); 2 failure\(s\) recorded since it completed, which no longer halt it/);
  });
});

function fail(instanceId: string, recordedAt?: number) {
  return { instanceId, stage: 'build', reason: 'boom', at: new Date(START).toISOString(), ...(recordedAt !== undefined ? { recordedAt } : {}) };
}

describe('splitSnapshot', () => {
  const strategyJson = JSON.stringify(strategy());
  it('takes every rollout/ parameter out of the stable state, so failure records never change it', () => {
    const base = [param(`${FLEET}/options/a`, '1')];
    const withRollout = ssm([
      FLEET,
      [
        ...base,
        param(`${FLEET}/rollout/strategy`, strategyJson),
        param(`${FLEET}/rollout/candidate/options/a`, '2'),
        param(`${FLEET}/rollout/failures/i-1`, JSON.stringify({ candidate: 'other', stage: 'build', reason: 'x', at: '' })),
      ],
    ]);
    const split = splitSnapshot(withRollout);
    assert.deepEqual(split.stable, ssm([FLEET, base]));
    assert.equal(split.rollouts.length, 1);
    assert.equal(split.rollouts[0]?.stale, 1, 'a record for another candidate is not counted');
    assert.equal(split.rollouts[0]?.failures.length, 0);
  });

  const bad: [string, string, RegExp][] = [
    ['not JSON', '{', /SSM parameter \/nixos\/fleet\/rollout\/strategy: not JSON/],
    ['unknown type', JSON.stringify({ ...strategy(), type: 'random' }), /rollout\/strategy: type: Invalid enum value/],
    ['zero step', JSON.stringify({ ...strategy(), stepPercent: 0 }), /rollout\/strategy: stepPercent:/],
    ['unknown field', JSON.stringify({ ...strategy(), speed: 'fast' }), /rollout\/strategy: \(value\): Unrecognized key/],
    ['bad start', JSON.stringify({ ...strategy(), startAt: 'tomorrow' }), /rollout\/strategy: startAt: Invalid datetime/],
  ];
  for (const [name, value, pattern] of bad) {
    it(`rejects a strategy with ${name} in one line naming the parameter`, () => {
      const split = splitSnapshot(ssm([FLEET, [param(`${FLEET}/rollout/strategy`, value), param(`${FLEET}/rollout/candidate/options/a`, '2')]]));
      assert.match(split.rollouts[0]?.problem ?? '', pattern);
      assert.doesNotMatch(split.rollouts[0]?.problem ?? '', /\n/);
    });
  }

  it('notes a parameter under rollout/ that means nothing, naming it', () => {
    const split = splitSnapshot(ssm([FLEET, [param(`${FLEET}/rollout/stratgey`, strategyJson)]]));
    assert.deepEqual(split.problems, [`SSM parameter ${FLEET}/rollout/stratgey: not a rollout parameter (strategy, halt, canary, candidate/…, failures/…); ignored`]);
    assert.deepEqual(split.stable, ssm([FLEET, []]));
  });

  it('reads the canary pin from any prefix', () => {
    const split = splitSnapshot(ssm([FLEET, []], ['/nixos/instance/i-1', [param('/nixos/instance/i-1/rollout/canary', 'true')]]));
    assert.equal(split.canary, true);
    assert.equal(split.rollouts.length, 0);
  });
});

describe('selectDesired', () => {
  const candidateOption = param(`${FLEET}/rollout/candidate/options/services.demo.version`, '"2"', { version: 5 });
  const candidateId = candidateIdOf([candidateOption]);
  const covered = instanceIn(0, 0.1, candidateId);
  const uncovered = instanceIn(0.95, 1, candidateId);
  const snapshot = (extra: ReturnType<typeof param>[] = []) =>
    ssm(
      [FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"'), param(`${FLEET}/rollout/strategy`, JSON.stringify(strategy())), candidateOption, ...extra]],
      ['/nixos/instance/x', [param('/nixos/instance/x/options/networking.hostName', '"web"')]],
    );
  const input = (s = snapshot()) => ({ userData: userData(undefined), ssm: s, local: NO_LOCAL });
  const stable = desired({
    ssm: ssm([FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"')]], ['/nixos/instance/x', [param('/nixos/instance/x/options/networking.hostName', '"web"')]]),
  });

  it('an uncovered instance converges to exactly the stable desired state', () => {
    const s = selectDesired(input(), { instanceId: uncovered }, START);
    assert.equal(s.desired.hash, stable.hash);
    assert.deepEqual(s.taken, []);
    assert.equal(s.rollouts[0]?.takes, 'stable');
  });

  it('a covered instance lays the candidate over its prefix; later prefixes still win', () => {
    const s = selectDesired(input(), { instanceId: covered }, START);
    assert.notEqual(s.desired.hash, stable.hash);
    const version = s.desired.options.find((o) => o.path.join('.') === 'services.demo.version');
    assert.equal(version?.value, '2');
    assert.equal(version?.from.name, candidateOption.name);
    assert.ok(s.desired.options.some((o) => o.path.join('.') === 'networking.hostName'));
    assert.deepEqual(s.taken, [{ prefix: FLEET, candidate: candidateId, record: true }]);
  });

  it('a failure record changes neither desired state, until the threshold halts the rollout', () => {
    const record = (id: string) => param(`${FLEET}/rollout/failures/${id}`, JSON.stringify({ candidate: candidateId, stage: 'verify', reason: 'unit failed', at: '' }));
    const before = selectDesired(input(), { instanceId: covered }, START);
    const one = selectDesired(input(snapshot([record(covered)])), { instanceId: covered }, START);
    assert.equal(one.desired.hash, before.desired.hash);
    assert.equal(one.taken[0]?.record, false, 'its own record is already there');
    const halted = selectDesired(input(snapshot([record(covered), record('i-other')])), { instanceId: covered }, START);
    assert.equal(halted.desired.hash, stable.hash);
    assert.equal(halted.rollouts[0]?.state, 'halted');
  });

  it('an invalid strategy is a note, and the stable state still converges', () => {
    const s = selectDesired(input(ssm([FLEET, [param(`${FLEET}/rollout/strategy`, '{"type":"linear"}'), candidateOption]])), { instanceId: covered }, START);
    assert.equal(s.rollouts[0]?.state, 'invalid');
    assert.ok(s.desired.notes.some((n) => /rollout\/strategy: stepPercent: Required/.test(n)), s.desired.notes.join('\n'));
  });

  it('a candidate that makes no desired state leaves the instance on stable, to be recorded as a failure', () => {
    const bad = param(`${FLEET}/rollout/candidate/options/services.demo.version`, 'not json', { version: 5 });
    const s = selectDesired(input(ssm([FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"'), param(`${FLEET}/rollout/strategy`, JSON.stringify(strategy())), bad]], ['/nixos/instance/x', [param('/nixos/instance/x/options/networking.hostName', '"web"')]])), { instanceId: covered }, START);
    assert.equal(s.desired.hash, stable.hash);
    assert.deepEqual(s.taken, []);
    assert.equal(s.rollouts[0]?.takes, 'stable');
    assert.deepEqual(s.rejected?.taken, [{ prefix: FLEET, candidate: candidateId, record: true }]);
    assert.match(s.rejected?.reason ?? '', /rollout\/candidate\/options\/services\.demo\.version \(version 5\): value is not JSON/);
  });

  it('an invalid stable state is still the operator\'s error, rollout or not', () => {
    assert.throws(() => selectDesired(input(ssm([FLEET, [param(`${FLEET}/options/x`, 'not json'), param(`${FLEET}/rollout/strategy`, JSON.stringify(strategy())), candidateOption]])), { instanceId: uncovered }, START), /value is not JSON/);
  });

  it('the canary pin by configuration takes the candidate at the start', () => {
    const s = selectDesired(input(snapshot([])), { instanceId: uncovered, canary: true }, START);
    assert.equal(s.rollouts[0]?.takes, 'candidate');
  });
});

describe('rollout commands', () => {
  /** SSM as the commands see it: a map, each write a new version at the clock's time. */
  function store(clock: { now: number }) {
    const params = new Map<string, SsmParameter>();
    const s: RolloutStore = {
      list: async (prefix) => [...params.values()].filter((p) => p.name.startsWith(`${prefix}/`)),
      put: async (name, value, type) => void params.set(name, param(name, value, { type, version: (params.get(name)?.version ?? 0) + 1, lastModified: clock.now })),
      delete: async (names) => void names.forEach((n) => params.delete(n)),
    };
    return { params, store: s };
  }
  const settings = { prefix: FLEET, revisionParameter: 'revision' };
  const quiet = () => undefined;
  /** SSM with a candidate published, as an operator leaves it before `rollout start`. */
  async function withCandidate(clock: { now: number }) {
    const made = store(clock);
    await made.store.put(`${FLEET}/rollout/candidate/options/services.demo.version`, '"2"', 'String');
    return made;
  }
  /** The rollout the parameters hold, as an instance reads it. */
  function rolloutIn(params: Map<string, SsmParameter>) {
    const rollout = splitSnapshot({ prefixes: [{ prefix: FLEET, parameters: [...params.values()] }], skipped: [], calls: 0 }).rollouts[0];
    assert.ok(rollout, 'a rollout under the prefix');
    return rollout;
  }
  const stateAt = (params: Map<string, SsmParameter>, now: number) => decide(rolloutIn(params), { instanceId: '', canary: false }, now);

  it('resume continues where the halt stopped the schedule, instead of jumping ahead by the time halted', async () => {
    const clock = { now: START };
    const { params, store: s } = await withCandidate(clock);
    assert.equal(await runRollout('start', { step: '10', interval: '600', bake: '1800' }, settings, s, clock.now, quiet), 0);
    clock.now = START + 15 * MIN;
    assert.equal(await runRollout('halt', { reason: 'p99 latency' }, settings, s, clock.now, quiet), 0);
    // Overnight, far past when the schedule would have completed.
    clock.now = START + 12 * 60 * MIN;
    assert.equal(await runRollout('resume', {}, settings, s, clock.now, quiet), 0);
    const state = stateAt(params, clock.now);
    assert.equal(state.state, 'progressing');
    assert.equal(state.percent, 20, 'the share it had reached when halted');
  });

  it('start refuses a rollout already under way, unless forced to begin it again', async () => {
    const clock = { now: START };
    const { params, store: s } = await withCandidate(clock);
    assert.equal(await runRollout('start', { step: '10', interval: '600', bake: '1800' }, settings, s, clock.now, quiet), 0);
    clock.now = START + 25 * MIN;
    const before = JSON.stringify([...params.values()].map((p) => [p.name, p.version]));
    await assert.rejects(runRollout('start', { step: '10', interval: '600', bake: '1800' }, settings, s, clock.now, quiet), (err: Error) => {
      assert.ok(err instanceof InvalidInputError);
      assert.match(err.message, /^rollout start: a rollout is already progressing \(at 30%\).*--force/);
      return true;
    });
    assert.equal(JSON.stringify([...params.values()].map((p) => [p.name, p.version])), before, 'nothing written');
    assert.equal(await runRollout('start', { step: '10', interval: '600', bake: '1800', force: true }, settings, s, clock.now, quiet), 0);
    assert.equal(stateAt(params, clock.now).percent, 10, 'begun again');
  });

  it('a halt by failure records counts from the record that reached the threshold', async () => {
    const clock = { now: START };
    const { params, store: s } = await withCandidate(clock);
    await runRollout('start', { step: '10', interval: '600', bake: '1800', threshold: '2' }, settings, s, clock.now, quiet);
    const candidate = rolloutIn(params).candidateId;
    const fail = (id: string, at: number) => s.put(`${FLEET}/rollout/failures/${id}`, JSON.stringify({ candidate, stage: 'verify', reason: 'unit failed', at: new Date(at).toISOString() }), 'String');
    await fail('i-a', START + 5 * MIN);
    await fail('i-b', START + 25 * MIN);
    clock.now = START + 24 * 60 * MIN;
    await runRollout('resume', {}, settings, s, clock.now, quiet);
    const state = stateAt(params, clock.now);
    assert.equal(state.state, 'progressing');
    assert.equal(state.percent, 30);
    assert.equal(state.failures, 0, 'the records are gone');
  });
});
