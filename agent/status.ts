// The agent's status: one plain value, rebuilt at each step, that every report sink reads
// (status.json, systemd STATUS=, HTTP, metrics, the ASG). Nothing in it is a secret.
import type { RolloutStatus } from './rollout/plan.js';
import type { DurableState, Phase } from './state.js';

export type StatusPhase = Phase | 'starting' | 'fetching' | 'rendering' | 'held' | 'suspended' | 'stopping';

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

export type DurableStatus = Pick<Status, 'suspended' | 'held' | 'rebootRequired'>;

/** The part of the status the durable state decides: always read from it, never patched by hand. */
export function durableStatus(state: Pick<DurableState, 'suspended' | 'held' | 'rebootRequired'>): { [K in keyof DurableStatus]: DurableStatus[K] | undefined } {
  return {
    suspended: state.suspended ? { since: new Date(state.suspended.since).toISOString() } : undefined,
    held: state.held ? { since: new Date(state.held.since).toISOString(), desiredHash: state.held.desiredHash } : undefined,
    rebootRequired: state.rebootRequired !== undefined,
  };
}

/** The status of an agent that has not finished anything yet. */
export function startingStatus(now: number, pid: number): Status {
  return {
    version: 1,
    pid,
    updatedAt: new Date(now).toISOString(),
    phase: 'starting',
    condition: 'converging',
    firstConvergenceDone: false,
    message: 'starting',
    noGoodGeneration: false,
    reasons: [],
    rebootRequired: false,
  };
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
