// The one place the desired-state step meets the rollout: snapshots in, the desired state this
// instance converges to out (stable, or with the candidates it takes laid over), plus the rollout
// status. Pure: the clock's reading is an argument.
import { buildDesired, type DesiredState, type LocalSnapshot } from '../desired/desired.js';
import { InvalidInputError } from '../errors.js';
import type { SsmSnapshot } from '../sources/ssm.js';
import type { UserData } from '../sources/userdata.js';
import { alarmReason, decide, firingAlarm, type RolloutStatus } from './plan.js';
import { ALARM_STAGE, ROLLOUT, splitSnapshot, type AlarmState } from './spec.js';

export interface Selection {
  readonly desired: DesiredState;
  readonly rollouts: readonly RolloutStatus[];
  /** The candidates this instance takes: a failed pass is recorded against each. */
  readonly taken: readonly TakenCandidate[];
  /**
   * The candidates taken did not even make a desired state (a bad option value, a bad name): this
   * instance stays on stable, and the failure is recorded against them like a failed build.
   */
  readonly rejected?: { readonly taken: readonly TakenCandidate[]; readonly reason: string };
  /**
   * This instance read one of a strategy's alarms in ALARM and no instance has recorded it yet:
   * recorded like a failure (stage `alarm`), so the whole fleet halts at its next poll.
   */
  readonly alarmed?: { readonly taken: readonly TakenCandidate[]; readonly reason: string };
}

export interface TakenCandidate {
  readonly prefix: string;
  readonly candidate: string;
  /**
   * Whether a failure here should be written: not when this instance's record is already there,
   * nor once the records seen reach the threshold (the rollout is halted; more records would only
   * cost writes, and every instance's reads).
   */
  readonly record: boolean;
}

export interface Who {
  readonly instanceId: string;
  /** Pinned to the first cohort by something other than SSM (the canary instance tag). */
  readonly canary?: boolean;
  /** The CloudWatch alarms the sources read for the rollouts under way. */
  readonly alarms?: readonly AlarmState[];
}

/** Who this instance is to a rollout, from what the sources read. */
export function whoOf(snapshots: { readonly identity: { readonly instanceId: string }; readonly canary?: boolean; readonly alarms?: readonly AlarmState[] }): Who {
  return { instanceId: snapshots.identity.instanceId, canary: snapshots.canary === true, ...(snapshots.alarms ? { alarms: snapshots.alarms } : {}) };
}

export function selectDesired(
  input: { userData: UserData; ssm: SsmSnapshot | undefined; local: LocalSnapshot },
  who: Who,
  nowMs: number,
): Selection {
  if (!input.ssm) return { desired: buildDesired(input), rollouts: [], taken: [] };
  const split = splitSnapshot(input.ssm);
  const canary = Boolean(who.canary) || split.canary;
  const rollouts = split.rollouts.map((spec) => decide(spec, { instanceId: who.instanceId, canary, alarms: who.alarms }, nowMs));
  const alarmed = split.rollouts.flatMap((spec, i) => {
    const firing = rollouts[i]?.haltedBy === 'alarm' && !spec.failures.some((f) => f.stage === ALARM_STAGE) ? firingAlarm(spec.strategy, who.alarms) : undefined;
    return firing ? [{ taken: { prefix: spec.prefix, candidate: spec.candidateId, record: true }, reason: alarmReason(firing) }] : [];
  });
  const alarmedPart = alarmed.length ? { alarmed: { taken: alarmed.map((a) => a.taken), reason: alarmed.map((a) => a.reason).join('; ') } } : {};
  const taking = new Set(rollouts.filter((r) => r.takes === 'candidate').map((r) => r.prefix));
  // Each candidate sits right after its own prefix: it wins over that prefix's stable values, and
  // later (more specific) prefixes still win over it, as they win over the stable values.
  const prefixes = split.stable.prefixes.flatMap((p) => {
    const spec = taking.has(p.prefix) ? split.rollouts.find((r) => r.prefix === p.prefix) : undefined;
    return spec ? [p, { prefix: `${p.prefix}/${ROLLOUT}/candidate`, parameters: spec.candidate }] : [p];
  });
  const taken = split.rollouts
    .filter((spec) => taking.has(spec.prefix))
    .map((spec) => ({
      prefix: spec.prefix,
      candidate: spec.candidateId,
      record: !spec.failures.some((f) => f.instanceId === who.instanceId) && spec.failures.length < (spec.strategy?.errorThreshold ?? 1),
    }));
  const withNotes = (desired: DesiredState) => (split.problems.length ? { ...desired, notes: [...desired.notes, ...split.problems] } : desired);
  try {
    return { desired: withNotes(buildDesired({ ...input, ssm: { ...split.stable, prefixes } })), rollouts, taken, ...alarmedPart };
  } catch (err) {
    // Stable alone is what an invalid stable state throws on: that is the operator's error as before.
    if (!(err instanceof InvalidInputError) || taken.length === 0) throw err;
    const desired = withNotes(buildDesired({ ...input, ssm: split.stable }));
    const stable = rollouts.map((r) => (taking.has(r.prefix) ? { ...r, takes: 'stable' as const } : r));
    return { desired, rollouts: stable, taken: [], rejected: { taken, reason: err.message }, ...alarmedPart };
  }
}
