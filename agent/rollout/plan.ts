// Pure: where an instance stands in a rollout, and whether it takes the candidate. Every instance
// computes the same schedule from the same strategy and clock, so the fleet needs no coordinator:
// only the failure records are shared, and they are written only on failure.
import { sha256Hash } from '../sha256.js';
import { ALARM_STAGE, type AlarmState, type RolloutSpec, type Strategy } from './spec.js';

export type RolloutState = 'invalid' | 'staged' | 'progressing' | 'baking' | 'complete' | 'halted';
export type HaltedBy = 'operator' | 'alarm' | 'failures';

/** A plain value, for status, /status, /metrics and `rollout status`. */
export interface RolloutStatus {
  readonly prefix: string;
  readonly candidate: string;
  readonly state: RolloutState;
  /** Why it is halted or invalid. */
  readonly reason?: string;
  readonly haltedBy?: HaltedBy;
  /** What this instance converges to for this prefix. */
  readonly takes: 'stable' | 'candidate';
  /** This instance's place in [0, 1) for this candidate. */
  readonly cohort: number;
  readonly canary: boolean;
  readonly percent: number;
  readonly step: number;
  readonly steps: number;
  /** Failure records that count against the rollout: those stored before it completed. */
  readonly failures: number;
  /** Records stored once it was complete: shown, never halting it. */
  readonly lateFailures?: number;
  readonly threshold: number;
  readonly startAt?: string;
  readonly fullAt?: string;
  readonly completeAt?: string;
  /** When this instance's answer could next change with no change in SSM. */
  readonly nextChangeAt?: string;
}

/** A stable place in [0, 1) for (instance, candidate): a new candidate reshuffles the fleet. */
export function cohortPosition(instanceId: string, candidateId: string): number {
  const digest = sha256Hash().update(`${instanceId}\n${candidateId}`).digest();
  // 48 bits fit a double exactly.
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).readUIntBE(0, 6) / 2 ** 48;
}

/** The percentage covered after `step` intervals (step 0 is the first cohort). */
export function percentAtStep(strategy: Pick<Strategy, 'type' | 'stepPercent'>, step: number): number {
  const raw = strategy.type === 'linear' ? strategy.stepPercent * (step + 1) : strategy.stepPercent * 2 ** step;
  return Math.min(100, raw);
}

/** How many steps until 100 % (the last one included). */
export function stepCount(strategy: Pick<Strategy, 'type' | 'stepPercent'>): number {
  let step = 0;
  while (percentAtStep(strategy, step) < 100) step++;
  return step + 1;
}

/** The percentage of the fleet covered `elapsedMs` after the start: 0 before it. */
export function currentPercent(strategy: Pick<Strategy, 'type' | 'stepPercent' | 'intervalSeconds'>, elapsedMs: number): number {
  if (elapsedMs < 0) return 0;
  return percentAtStep(strategy, Math.floor(elapsedMs / (strategy.intervalSeconds * 1000)));
}

export interface Schedule {
  readonly startMs: number;
  /** When the last cohort is covered. */
  readonly fullMs: number;
  /** When the bake ends: the candidate is the fleet's stable state from then on. */
  readonly completeMs: number;
  readonly steps: number;
}

export function scheduleOf(strategy: Strategy): Schedule {
  const startMs = Date.parse(strategy.startAt);
  const steps = stepCount(strategy);
  const fullMs = startMs + (steps - 1) * strategy.intervalSeconds * 1000;
  return { startMs, fullMs, completeMs: fullMs + strategy.bakeSeconds * 1000, steps };
}

/**
 * The step at which a cohort position is first covered (0-based), so `rollout status` can place a
 * failure or an instance in its cohort.
 */
export function stepOf(strategy: Strategy, position: number): number {
  const steps = stepCount(strategy);
  for (let step = 0; step < steps; step++) if (position < percentAtStep(strategy, step) / 100) return step;
  return steps - 1;
}

/**
 * Whether this instance takes the candidate now. Halted (by the operator or past the failure
 * threshold): nobody does, and those on it return to stable. Otherwise: the canary from the start,
 * a covered cohort while it progresses, everyone once the bake ended. An instance launched during
 * the rollout gets the same answer as any other in its cohort: stable unless its cohort is covered.
 */
export function decide(spec: RolloutSpec, who: { instanceId: string; canary: boolean; alarms?: readonly AlarmState[] | undefined }, nowMs: number): RolloutStatus {
  const cohort = cohortPosition(who.instanceId, spec.candidateId);
  const base = {
    prefix: spec.prefix,
    candidate: spec.candidateId,
    cohort: Math.round(cohort * 1e6) / 1e6,
    canary: who.canary,
    failures: spec.failures.length,
  };
  const strategy = spec.strategy;
  if (spec.problem || !strategy) {
    return {
      ...base,
      state: spec.problem ? 'invalid' : 'staged',
      ...(spec.problem ? { reason: spec.problem } : {}),
      takes: 'stable',
      percent: 0,
      step: 0,
      steps: 0,
      threshold: 0,
    };
  }
  const schedule = scheduleOf(strategy);
  const elapsed = nowMs - schedule.startMs;
  const percent = currentPercent(strategy, elapsed);
  const step = elapsed < 0 ? 0 : Math.min(schedule.steps, Math.floor(elapsed / (strategy.intervalSeconds * 1000)) + 1);
  const times = {
    startAt: new Date(schedule.startMs).toISOString(),
    fullAt: new Date(schedule.fullMs).toISOString(),
    completeAt: new Date(schedule.completeMs).toISOString(),
    steps: schedule.steps,
    step,
    percent,
    threshold: strategy.errorThreshold,
  };
  // Complete is final, as an AWS AppConfig deployment is once its bake time has ended: the
  // candidate is then the fleet's, and an instance that fails it afterwards (a scale-out, a cache
  // that is down) rolls back on its own and records it, but no longer sends the whole fleet back
  // to stable days later. Records stored before completion still halt it, and so does the operator.
  const late = spec.failures.filter((f) => f.recordedAt !== undefined && f.recordedAt >= schedule.completeMs);
  const counted = late.length ? spec.failures.filter((f) => !late.includes(f)) : spec.failures;
  const halt = haltOf({ ...spec, failures: counted }, strategy, who.alarms);
  const tally = { failures: counted.length, ...(late.length ? { lateFailures: late.length } : {}) };
  if (halt) return { ...base, ...times, ...tally, state: 'halted', ...halt, takes: 'stable' };
  const state: RolloutState = elapsed < 0 ? 'staged' : nowMs >= schedule.completeMs ? 'complete' : nowMs >= schedule.fullMs ? 'baking' : 'progressing';
  const covered = cohort < percent / 100;
  const takes = state === 'complete' || (state !== 'staged' && (covered || who.canary));
  const next = nextChange(strategy, schedule, cohort, who.canary, nowMs, takes);
  return { ...base, ...times, ...tally, state, takes: takes ? 'candidate' : 'stable', ...(next !== undefined ? { nextChangeAt: new Date(next).toISOString() } : {}) };
}

/** The reason a halt by this alarm gives. */
export function alarmReason(alarm: AlarmState): string {
  return `CloudWatch alarm ${alarm.name} is in ALARM${alarm.reason ? `: ${alarm.reason}` : ''}`;
}

/** The strategy's alarm this instance read in ALARM, if any. */
export function firingAlarm(strategy: Strategy | undefined, alarms: readonly AlarmState[] | undefined): AlarmState | undefined {
  const named = strategy?.alarms;
  return named ? alarms?.find((a) => a.state === 'ALARM' && named.includes(a.name)) : undefined;
}

function haltOf(spec: RolloutSpec, strategy: Strategy, alarms: readonly AlarmState[] | undefined): { reason: string; haltedBy: HaltedBy } | undefined {
  if (spec.halt !== undefined) return { reason: spec.halt, haltedBy: 'operator' };
  // An alarm another instance recorded holds after it clears: the halt is the fleet's.
  const recorded = spec.failures.find((f) => f.stage === ALARM_STAGE);
  if (recorded) return { reason: recorded.reason, haltedBy: 'alarm' };
  const firing = firingAlarm(strategy, alarms);
  if (firing) return { reason: alarmReason(firing), haltedBy: 'alarm' };
  if (spec.failures.length >= strategy.errorThreshold) {
    const first = spec.failures[0];
    const example = first ? `; e.g. ${first.instanceId}: ${first.stage}: ${first.reason}` : '';
    return { reason: `${spec.failures.length} instance(s) failed the candidate (threshold ${strategy.errorThreshold})${example}`, haltedBy: 'failures' };
  }
  return undefined;
}

/** The next time this instance's answer changes on its own: when its cohort opens. */
function nextChange(strategy: Strategy, schedule: Schedule, cohort: number, canary: boolean, nowMs: number, takes: boolean): number | undefined {
  if (takes) return undefined;
  if (nowMs < schedule.startMs) return schedule.startMs;
  const opens = canary ? 0 : stepOf(strategy, cohort);
  const at = schedule.startMs + opens * strategy.intervalSeconds * 1000;
  return at > nowMs ? at : schedule.completeMs;
}

/** One line for people: `status`, and the daemon's log. */
export function describeRollout(r: Omit<RolloutStatus, 'takes' | 'cohort' | 'canary'> & Partial<RolloutStatus>): string {
  const where = `${r.prefix} candidate ${r.candidate}`;
  const mine = r.takes === undefined ? '' : `; this instance (cohort ${(r.cohort ?? 0).toFixed(4)}${r.canary ? ', canary' : ''}) takes ${r.takes}`;
  switch (r.state) {
    case 'halted':
      return `${where}: HALTED (${r.haltedBy}): ${r.reason}${mine}`;
    case 'invalid':
      return `${where}: invalid: ${r.reason}${mine}`;
    case 'staged':
      return `${where}: staged${r.startAt ? `, starts ${r.startAt}` : ' (no strategy yet)'}${mine}`;
    default: {
      const late = r.lateFailures ? `; ${r.lateFailures} failure(s) recorded since it completed, which no longer halt it` : '';
      return `${where}: ${r.state} at ${r.percent}% (step ${r.step}/${r.steps}, ${r.failures}/${r.threshold} failures, complete ${r.completeAt})${late}${mine}`;
    }
  }
}
