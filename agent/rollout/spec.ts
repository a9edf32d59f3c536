// A progressive rollout, as the operator publishes it in SSM beside the stable desired state. Under
// any prefix the agent already walks (so an idle fleet makes no extra call to see it):
//   <prefix>/rollout/strategy              JSON: how fast, how long to bake, how many failures halt it
//   <prefix>/rollout/candidate/<rest>      the candidate: options/…, modules/…, secrets/…, system,
//                                          laid over the prefix's stable parameters
//   <prefix>/rollout/halt                  present: the operator halted it (its value says why)
//   <prefix>/rollout/failures/<instance>   written by an instance that failed to converge to the candidate,
//                                          or saw one of the strategy's CloudWatch alarms in ALARM
//   <prefix>/rollout/canary                "true": this instance takes candidates with the first cohort
//                                          (usually under the instance's or group's own prefix)
// Each change is followed by a bump of the prefix's revision parameter, so watchers re-read the tree.
// Parsed here, at the edge, with zod: nothing past this module sees raw parameter text.
import { sha256Hex } from '../sha256.js';
import { z } from 'zod/v3';
import type { SsmParameter, SsmSnapshot } from '../sources/ssm.js';

export const ROLLOUT = 'rollout';
const KNOWN = /^(strategy|halt|canary|candidate\/.+|failures\/[^/]+)$/;

const MAX_STAGE_SECONDS = 30 * 86_400;

export const Strategy = z.strictObject({
  type: z.enum(['linear', 'exponential']),
  /** The first cohort's share of the fleet, and the growth unit (linear) or base (exponential). */
  stepPercent: z.number().min(0.01).max(100),
  // At most 30 days a step or a bake: longer is a slip of the keyboard (a rollout that would end
  // centuries from now), not a schedule; AppConfig's deployment and final bake stop at a day.
  intervalSeconds: z.number().int().positive().max(MAX_STAGE_SECONDS, `at most ${MAX_STAGE_SECONDS} seconds (30 days)`),
  bakeSeconds: z.number().int().nonnegative().max(MAX_STAGE_SECONDS, `at most ${MAX_STAGE_SECONDS} seconds (30 days)`).default(0),
  /** Failure records for this candidate that halt the rollout. */
  errorThreshold: z.number().int().positive().default(1),
  startAt: z.string().datetime({ offset: true }),
  /**
   * CloudWatch alarms (names, as DescribeAlarms takes them: at most 100) that halt the rollout when
   * one is in ALARM while it progresses or bakes.
   */
  alarms: z.array(z.string().min(1).max(255)).min(1).max(100).optional(),
  /**
   * About how many instances follow the rollout. With alarms it spreads their reads: each instance
   * reads them at a poll by turns, so that the fleet asks about ALARM_READS_PER_SECOND (alarms.ts)
   * whatever its size. Without it, every instance reads them at every poll.
   */
  fleetSize: z.number().int().positive().optional(),
});
export type Strategy = z.infer<typeof Strategy>;

export const FailureRecord = z.strictObject({
  candidate: z.string().min(1),
  stage: z.string(),
  reason: z.string(),
  at: z.string(),
});
export type FailureRecord = z.infer<typeof FailureRecord>;

/** The stage of a failure record that says "an alarm halted it": one such record halts at once. */
export const ALARM_STAGE = 'alarm';

/** A CloudWatch alarm as DescribeAlarms reports it. */
export interface AlarmState {
  readonly name: string;
  /** OK | ALARM | INSUFFICIENT_DATA */
  readonly state: string;
  readonly reason: string;
}

export interface Failure {
  readonly instanceId: string;
  readonly stage: string;
  readonly reason: string;
  readonly at: string;
  /** When SSM stored the record (its LastModifiedDate: the service's clock, not the writer's). */
  readonly recordedAt?: number;
}

/** One prefix's rollout, parsed. `problem` is set, and the rest unusable, when its strategy is invalid. */
export interface RolloutSpec {
  readonly prefix: string;
  /** Stable over the candidate's parameters (names and versions): seeds every instance's cohort. */
  readonly candidateId: string;
  readonly candidate: readonly SsmParameter[];
  readonly strategy: Strategy | undefined;
  readonly halt: string | undefined;
  /** Failures recorded against this candidate; records for an older candidate are left out. */
  readonly failures: readonly Failure[];
  readonly stale: number;
  readonly problem?: string;
}

export interface SplitSnapshot {
  /** The snapshot without any `rollout/` parameter: what every instance on stable converges to. */
  readonly stable: SsmSnapshot;
  readonly rollouts: readonly RolloutSpec[];
  /** Pinned to the first cohort by configuration (`rollout/canary` = true under any prefix). */
  readonly canary: boolean;
  readonly problems: readonly string[];
}

/** Whether any prefix carries a rollout parameter: the sources read the canary tag only then. */
export function carriesRollout(snapshot: SsmSnapshot): boolean {
  return snapshot.prefixes.some(({ prefix, parameters }) => parameters.some((p) => p.name.startsWith(`${prefix}/${ROLLOUT}/`)));
}

/** Splits the walked tree into the stable state and the rollouts it carries. Never throws. */
export function splitSnapshot(snapshot: SsmSnapshot): SplitSnapshot {
  const rollouts: RolloutSpec[] = [];
  const problems: string[] = [];
  let canary = false;
  const prefixes = snapshot.prefixes.map(({ prefix, parameters }) => {
    const base = `${prefix}/${ROLLOUT}/`;
    const mine = parameters.filter((p) => p.name.startsWith(base));
    if (mine.length === 0) return { prefix, parameters };
    const byRel = new Map(mine.map((p) => [p.name.slice(base.length), p]));
    const pin = byRel.get('canary');
    if (pin) {
      const value = text(pin);
      if (value === 'true') canary = true;
      else if (value !== 'false') problems.push(`SSM parameter ${pin.name}: must be "true" or "false", not ${JSON.stringify(value)}`);
    }
    for (const rel of byRel.keys()) {
      if (!KNOWN.test(rel)) problems.push(`SSM parameter ${base}${rel}: not a rollout parameter (strategy, halt, canary, candidate/…, failures/…); ignored`);
    }
    const spec = parseRollout(prefix, mine, byRel);
    if (spec) {
      rollouts.push(spec);
      if (spec.problem) problems.push(spec.problem);
    }
    return { prefix, parameters: parameters.filter((p) => !p.name.startsWith(base)) };
  });
  return { stable: { ...snapshot, prefixes }, rollouts, canary, problems };
}

function parseRollout(prefix: string, mine: readonly SsmParameter[], byRel: Map<string, SsmParameter>): RolloutSpec | undefined {
  const candidateBase = `${prefix}/${ROLLOUT}/candidate/`;
  const candidate = mine.filter((p) => p.name.startsWith(candidateBase));
  const strategyParam = byRel.get('strategy');
  if (candidate.length === 0 && !strategyParam) return undefined;
  const candidateId = candidateIdOf(candidate);
  let strategy: Strategy | undefined;
  let problem: string | undefined;
  if (strategyParam) {
    const parsed = parseJson(strategyParam, Strategy);
    if (typeof parsed === 'string') problem = parsed;
    else strategy = parsed;
  }
  if (!problem && strategy && candidate.length === 0) problem = `SSM parameter ${strategyParam?.name}: a strategy without a candidate (nothing under ${candidateBase})`;
  const haltParam = byRel.get('halt');
  const halt = haltParam ? text(haltParam).trim() || 'halted by the operator' : undefined;
  const failures: Failure[] = [];
  let stale = 0;
  const failureBase = 'failures/';
  for (const [rel, p] of byRel) {
    if (!rel.startsWith(failureBase)) continue;
    const record = parseJson(p, FailureRecord);
    // A record that cannot be read still counts: an instance failed, and halting is the safe side.
    const recordedAt = p.lastModified !== undefined ? { recordedAt: p.lastModified } : {};
    if (typeof record === 'string') failures.push({ instanceId: rel.slice(failureBase.length), stage: 'unknown', reason: record, at: '', ...recordedAt });
    else if (record.candidate !== candidateId) stale++;
    else failures.push({ instanceId: rel.slice(failureBase.length), stage: record.stage, reason: record.reason, at: record.at, ...recordedAt });
  }
  return { prefix, candidateId, candidate, strategy, halt, failures, stale, ...(problem ? { problem } : {}) };
}

/** Names and versions only: a new version of any candidate parameter is a new candidate. */
export function candidateIdOf(candidate: readonly SsmParameter[]): string {
  const lines = candidate.map((p) => `${p.name} ${p.version}`).sort();
  return sha256Hex(lines.join('\n')).slice(0, 16);
}

function text(p: SsmParameter): string {
  return typeof p.value === 'string' ? p.value : '';
}

/** The value parsed by `schema`, or one line naming the parameter and what is wrong. */
export function parseJson<T extends z.ZodTypeAny>(p: { name: string; value: unknown }, schema: T): z.output<T> | string {
  if (typeof p.value !== 'string') return `SSM parameter ${p.name}: must be a String, not a SecureString`;
  let raw: unknown;
  try {
    raw = JSON.parse(p.value);
  } catch (err) {
    return `SSM parameter ${p.name}: not JSON (${(err as Error).message})`;
  }
  const result = schema.safeParse(raw);
  if (result.success) return result.data as z.output<T>;
  const issue = result.error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : '(value)';
  return `SSM parameter ${p.name}: ${where}: ${issue?.message ?? 'invalid'}`;
}
