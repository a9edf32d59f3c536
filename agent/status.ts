// The agent's status: one plain value that every report sink reads (status.json, systemd STATUS=,
// HTTP, metrics, the ASG), derived whole by deriveStatus from the durable state and the facts the
// reconciler records. Nothing in it is a secret.
import type { RolloutStatus } from './rollout/plan.js';
import { shortHash } from './desired/desired.js';
import type { DurableState, Phase } from './state.js';

export type StatusPhase = Phase | 'starting' | 'fetching' | 'rendering' | 'held' | 'suspended' | 'stopping';

const BEFORE_REBUILD: ReadonlySet<StatusPhase> = new Set(['starting', 'fetching', 'rendering']);

/** How long what waits for the first rebuild waits at most, when a pass stalls before it. */
export const FIRST_REBUILD_WAIT_MS = 5_000;

/**
 * Whether the first rebuild is still ahead: the phases of a first pass before it launches
 * nixos-rebuild. What is not needed to get there (the Auto Scaling reporter's first look, the
 * local files' watch) waits until it is past, so that it is never on the way from boot to the
 * first rebuild.
 */
export function beforeFirstRebuild(status: Pick<Status, 'phase' | 'firstConvergenceDone'>): boolean {
  return !status.firstConvergenceDone && BEFORE_REBUILD.has(status.phase);
}

/** cloud-init's lesson: these exit codes are an API. */
export type Condition = 'converging' | 'converged' | 'degraded' | 'failed';

export type Outcome = 'converged' | 'unchanged' | 'rolled-back' | 'failed' | 'invalid-input' | 'held' | 'suspended' | 'cancelled';

export interface ErrorSummary {
  readonly kind: string;
  readonly message: string;
  readonly stage?: string;
  readonly where?: string;
  readonly exitCode?: number | null;
  readonly tail?: readonly string[];
}

export interface Status {
  readonly version: 1;
  readonly pid: number;
  readonly updatedAt: string;
  readonly phase: StatusPhase;
  readonly condition: Condition;
  /** Ends when the first pass ends (converged, held or left on a good generation). */
  readonly firstConvergenceDone: boolean;
  /** One line for people: systemd's STATUS=. */
  readonly message: string;
  readonly instanceId?: string;
  readonly desired?: {
    readonly hash: string;
    readonly sources: { readonly userData: string; readonly parameters: readonly { name: string; version: number }[] };
    readonly notes: readonly string[];
    /** Which path the desired state takes: a prebuilt closure (the `system` source) wins over building the configuration. */
    readonly runs?: 'configuration' | 'closure';
    readonly closure?: { readonly storePath: string; readonly substituter: string };
  };
  readonly running?: { readonly storePath: string; readonly desiredHash?: string; readonly generation?: number };
  readonly lastGood?: { readonly storePath: string; readonly desiredHash?: string };
  /** True when no good generation runs: the only state in which the ASG is told Unhealthy. */
  readonly noGoodGeneration: boolean;
  readonly lastResult?: {
    readonly outcome: Outcome;
    readonly at: string;
    readonly durationMs: number;
    readonly desiredHash?: string;
    readonly error?: ErrorSummary;
  };
  readonly reasons: readonly string[];
  readonly suspended?: { readonly since: string };
  readonly held?: { readonly since: string; readonly desiredHash: string };
  readonly rebootRequired: boolean;
  readonly lastSuccessAt?: string;
  /** Each progressive rollout the sources carry, and where this instance stands in it. */
  readonly rollout?: readonly RolloutStatus[];
}

/** What the pass in flight is doing, with what it works on: each names one phase and one message. */
export type PassProgress =
  | { readonly step: 'fetching' }
  | { readonly step: 'user-data-script' }
  | { readonly step: 'rendering'; readonly desiredHash: string }
  | { readonly step: 'updating-channels'; readonly desiredHash: string }
  | { readonly step: 'switching'; readonly desiredHash: string }
  | { readonly step: 'building'; readonly desiredHash: string; readonly generation: number }
  | { readonly step: 'substituting'; readonly storePath: string; readonly substituter: string }
  | { readonly step: 'activating'; readonly desiredHash: string; readonly storePath: string }
  | { readonly step: 'verifying'; readonly storePath: string }
  | { readonly step: 'committing'; readonly storePath: string }
  | { readonly step: 'rolling-back'; readonly storePath: string; readonly reason: string }
  | { readonly step: 'verifying-rollback'; readonly storePath: string };

/** The latest thing the agent did: it decides the phase and the message. */
export type Activity =
  | { readonly kind: 'starting' }
  | { readonly kind: 'pass'; readonly step: PassProgress }
  /** A pass (or the operator's rollback) ended: `StatusFacts.lastPass` says how. */
  | { readonly kind: 'ended' }
  | { readonly kind: 'suspended' }
  | { readonly kind: 'resumed' }
  | { readonly kind: 'leaving'; readonly reason: string }
  | { readonly kind: 'staying' };

/** How the last pass ended, as plain values. */
export interface PassEnd {
  readonly outcome: Outcome;
  readonly at: number;
  readonly durationMs: number;
  readonly desiredHash?: string;
  readonly error?: ErrorSummary;
  /** The reasons a failed health verification gave, after the error's own message. */
  readonly errorReasons?: readonly string[];
  /** What the state file said was wrong when the agent started, reported by the first pass. */
  readonly startProblem?: string;
  /** The current generation's number when the pass ended. */
  readonly generation?: number;
}

/** Everything the status is made of besides the durable state: recorded by the reconciler, never derived. */
export interface StatusFacts {
  readonly pid: number;
  readonly activity: Activity;
  readonly instanceId?: string;
  readonly desired?: Status['desired'];
  readonly rollout?: readonly RolloutStatus[];
  readonly lastPass?: PassEnd;
  /** The system running when a pass last ended (kept when it could not be read). */
  readonly running?: string;
  /**
   * No healthy generation is known to run: set when a pass ends off the last good generation or a
   * rollback finds none healthy, cleared by a convergence or a healthy rollback.
   */
  readonly noGoodGeneration: boolean;
  readonly lastSuccessAt?: number;
  /** Why the instance is leaving (Auto Scaling termination, spot interruption), while it is. */
  readonly leaving?: string;
  /**
   * Every pass that ended so far was cancelled (a newer desired state, the instance leaving, a
   * stop): nothing was tried to its end, so the first convergence goes on with the next pass.
   */
  readonly firstConvergencePending?: boolean;
}

/** The part of the durable state the status shows. */
export type StatusDurable = Pick<DurableState, 'suspended' | 'held' | 'rebootRequired' | 'lastGood' | 'builds'>;

/** The status of an agent that has not finished anything yet. */
export function startingStatus(now: number, pid: number): Status {
  return deriveStatus(undefined, { pid, activity: { kind: 'starting' }, noGoodGeneration: false }, now);
}

/**
 * The whole status, from plain values: the durable state (undefined before it is loaded), what the
 * reconciler recorded, and the time. The one place any field of the status is decided.
 */
export function deriveStatus(durable: StatusDurable | undefined, facts: StatusFacts, now: number): Status {
  const last = facts.lastPass;
  const { phase, message } = describe(durable, facts);
  const running = facts.running;
  const build = running !== undefined ? durable?.builds[running] : undefined;
  const lastGood = durable?.lastGood;
  return {
    version: 1,
    pid: facts.pid,
    updatedAt: iso(now),
    phase,
    condition: condition(facts),
    firstConvergenceDone: last !== undefined && facts.firstConvergencePending !== true,
    message,
    ...(facts.instanceId !== undefined ? { instanceId: facts.instanceId } : {}),
    ...(facts.desired ? { desired: facts.desired } : {}),
    ...(running !== undefined ? { running: { storePath: running, ...(build ? { desiredHash: build.desiredHash } : {}), ...(last?.generation !== undefined ? { generation: last.generation } : {}) } } : {}),
    ...(lastGood ? { lastGood: { storePath: lastGood.storePath, ...(lastGood.desiredHash ? { desiredHash: lastGood.desiredHash } : {}) } } : {}),
    noGoodGeneration: facts.noGoodGeneration,
    ...(last ? { lastResult: { outcome: last.outcome, at: iso(last.at), durationMs: last.durationMs, ...(last.desiredHash ? { desiredHash: last.desiredHash } : {}), ...(last.error ? { error: last.error } : {}) } } : {}),
    reasons: last?.error ? [last.error.message, ...(last.errorReasons ?? [])] : last?.startProblem ? [last.startProblem] : [],
    ...(durable?.suspended ? { suspended: { since: iso(durable.suspended.since) } } : {}),
    ...(durable?.held ? { held: { since: iso(durable.held.since), desiredHash: durable.held.desiredHash } } : {}),
    rebootRequired: durable?.rebootRequired !== undefined,
    ...(facts.lastSuccessAt !== undefined ? { lastSuccessAt: iso(facts.lastSuccessAt) } : {}),
    ...(facts.rollout?.length ? { rollout: facts.rollout } : {}),
  };
}

/**
 * Reading the sources changes nothing: a poll that finds no change leaves the condition (and
 * `status`'s exit code, and /readyz) as they were. Converging starts with the first change.
 */
function condition(facts: StatusFacts): Condition {
  const { activity, lastPass } = facts;
  if (activity.kind === 'pass' && activity.step.step !== 'fetching' && activity.step.step !== 'user-data-script') return 'converging';
  if (!lastPass || facts.firstConvergencePending) return 'converging';
  if (lastPass.outcome === 'converged' || lastPass.outcome === 'unchanged') return 'converged';
  return facts.noGoodGeneration ? 'failed' : 'degraded';
}

function describe(durable: StatusDurable | undefined, facts: StatusFacts): { phase: StatusPhase; message: string } {
  const { activity } = facts;
  switch (activity.kind) {
    case 'starting':
      return { phase: 'starting', message: 'starting' };
    case 'pass':
      return describeStep(activity.step);
    case 'ended':
      // Nothing ended before the first pass: an agent that has not finished anything is starting.
      return facts.lastPass ? describeEnd(durable, facts.lastPass, facts.leaving) : { phase: 'starting', message: 'starting' };
    case 'suspended':
      return { phase: 'suspended', message: 'suspended: convergence paused' };
    case 'resumed':
      return { phase: 'idle', message: 'resumed' };
    case 'leaving':
      return { phase: 'stopping', message: `the instance is leaving (${activity.reason}); no new rebuild starts` };
    case 'staying':
      return { phase: durable?.suspended ? 'suspended' : 'idle', message: 'the instance is staying; convergence resumes' };
  }
}

function describeStep(step: PassProgress): { phase: StatusPhase; message: string } {
  switch (step.step) {
    case 'fetching':
      return { phase: 'fetching', message: 'reading user data and SSM parameters' };
    case 'user-data-script':
      return { phase: 'fetching', message: 'running the user-data script' };
    case 'rendering':
      return { phase: 'rendering', message: `rendering desired ${shortHash(step.desiredHash)}` };
    case 'updating-channels':
      return { phase: 'building', message: `updating channels for desired ${shortHash(step.desiredHash)}` };
    case 'switching':
      return { phase: 'activating', message: `nixos-rebuild switch for desired ${shortHash(step.desiredHash)}` };
    case 'building':
      return { phase: 'building', message: `building generation ${step.generation} (desired ${shortHash(step.desiredHash)})` };
    case 'substituting':
      return { phase: 'building', message: `substituting ${step.storePath} from ${step.substituter}` };
    case 'activating':
      return { phase: 'activating', message: `activating ${step.storePath} (test, desired ${shortHash(step.desiredHash)})` };
    case 'verifying':
      return { phase: 'verifying', message: `verifying ${step.storePath}` };
    case 'committing':
      return { phase: 'committing', message: `making ${step.storePath} the boot default` };
    case 'rolling-back':
      return { phase: 'rolling-back', message: `rolling back to ${step.storePath}: ${step.reason}` };
    case 'verifying-rollback':
      return { phase: 'verifying', message: `verifying rolled-back ${step.storePath}` };
  }
}

function describeEnd(durable: StatusDurable | undefined, last: PassEnd, leaving: string | undefined): { phase: StatusPhase; message: string } {
  const error = last.error;
  const short = last.desiredHash ? shortHash(last.desiredHash) : '';
  const message = {
    converged: `converged to desired ${short}${last.generation ? ` (generation ${last.generation})` : ''}`,
    unchanged: `converged to desired ${short}; nothing changed`,
    'rolled-back': `rolled back to the last good generation${error ? `: ${error.message}` : ''}`,
    failed: `failed${error ? `: ${error.message}` : ''}`,
    'invalid-input': `desired state rejected, nothing switched${error ? `: ${error.message}` : ''}`,
    held: durable?.held ? "held on the operator's rollback until the sources change" : `desired ${short} failed before; waiting for a change or the retry time`,
    suspended: 'suspended: convergence paused',
    cancelled: leaving ? `build cancelled: the instance is leaving (${leaving})` : 'build cancelled by a newer desired state',
  }[last.outcome];
  const phase: StatusPhase = leaving ? 'stopping' : durable?.suspended ? 'suspended' : last.outcome === 'held' ? 'held' : 'idle';
  // A pass that began before the notice and ended after it: the leaving is still the news.
  if (leaving && last.outcome !== 'cancelled') return { phase, message: `the instance is leaving (${leaving}); no new rebuild starts (the last pass: ${message})` };
  return { phase, message };
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * A pass's exit code, the same for `converge --once` and `converge --now`: 0 only when the instance
 * runs the desired state (converged now, or already). A pass that ended any other way left the
 * instance on the generation it ran, or rolled it back to a good one: held on an earlier failure or
 * an operator's rollback, suspended, cancelled, failed, rolled back; 1. Input that was rejected: 2.
 * A fleet-wide `converge --now` through SSM then reports success on exactly the instances that
 * converged.
 */
export function passExitCode(outcome: Outcome): 0 | 1 | 2 {
  switch (outcome) {
    case 'converged':
    case 'unchanged':
      return 0;
    case 'invalid-input':
      return 2;
    default:
      return 1;
  }
}

const OUTCOMES: ReadonlySet<string> = new Set<Outcome>(['converged', 'unchanged', 'rolled-back', 'failed', 'invalid-input', 'held', 'suspended', 'cancelled']);

export function isOutcome(v: unknown): v is Outcome {
  return typeof v === 'string' && OUTCOMES.has(v);
}

/** `status` exit codes: 0 converged, 1 failed with no good generation, 2 degraded. */
export function statusExitCode(status: Pick<Status, 'condition'>): 0 | 1 | 2 {
  switch (status.condition) {
    case 'converged':
      return 0;
    case 'failed':
      return 1;
    default:
      return 2;
  }
}
