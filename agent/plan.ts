// Decide apart from do: given what the agent remembers (the durable state), what the sources want
// (the desired hash), what runs, and the time, what is the next step? Pure functions from plain
// values to plain values you can print; the reconciler carries the step out and journals it. Every
// decision the reconciler makes about a pass, a recovery or a failure is taken here.
import type { DurableState, Phase } from './state.js';

/** What a pass sees once its sources are read. */
export interface PassSituation {
  readonly suspended: boolean;
  /** The operator's rollback holds on this desired hash until the sources change. */
  readonly heldOn: string | undefined;
  /** What the agent switched to and verified last. */
  readonly recorded: { readonly desiredHash: string; readonly storePath: string } | undefined;
  /** /run/current-system. */
  readonly running: string | undefined;
  /** The failure remembered for this desired hash, if any. */
  readonly failed: { readonly stage: string; readonly reason: string; readonly retryAt: number } | undefined;
  /** undefined: the sources have not been read yet. */
  readonly desiredHash: string | undefined;
  /** The desired state names a prebuilt system closure (the `system` source) instead of a configuration. */
  readonly closure: boolean;
  /** `rebuild.mode`: `safe` (build, test, verify, then boot) or `switch` (nixos-rebuild switch, then verify). */
  readonly mode: 'safe' | 'switch';
  readonly now: number;
}

/**
 * How an apply gets its system: `build` (nixos-rebuild build, then the safe order), `substitute` (the
 * prebuilt closure from its binary cache, always in the safe order: nothing about a closure needs
 * amazon-init's order), `switch` (nixos-rebuild switch, amazon-init's order, verified afterwards).
 */
export type Realise = 'build' | 'substitute' | 'switch';

export type PassStep =
  /** Convergence is paused: nothing is read, nothing switched. */
  | { readonly kind: 'suspended' }
  /** Read the sources, then plan again with the desired hash. */
  | { readonly kind: 'fetch' }
  /** The operator rolled back and the sources still say the same: stay. */
  | { readonly kind: 'hold-rollback' }
  /** This desired state failed before; not tried again before retryAt. */
  | { readonly kind: 'hold-failed'; readonly stage: string; readonly reason: string; readonly retryAt: number; readonly releaseHold: boolean }
  /** Already running what is desired: only the secrets (a tmpfs) are written again. */
  | { readonly kind: 'unchanged'; readonly releaseHold: boolean }
  /** Render, build or substitute, activate, verify, commit. */
  | { readonly kind: 'apply'; readonly releaseHold: boolean; readonly realise: Realise };
// releaseHold: the operator's rollback held on another desired state; the sources moved on, so the
// hold ends with this pass.

export function planPass(s: PassSituation): PassStep {
  if (s.suspended) return { kind: 'suspended' };
  if (s.desiredHash === undefined) return { kind: 'fetch' };
  if (s.heldOn === s.desiredHash) return { kind: 'hold-rollback' };
  // The sources changed since the operator's rollback: converge again.
  const releaseHold = s.heldOn !== undefined;
  if (s.recorded?.desiredHash === s.desiredHash && s.running === s.recorded.storePath) return { kind: 'unchanged', releaseHold };
  if (s.failed && s.now < s.failed.retryAt) return { kind: 'hold-failed', stage: s.failed.stage, reason: s.failed.reason, retryAt: s.failed.retryAt, releaseHold };
  return { kind: 'apply', releaseHold, realise: s.closure ? 'substitute' : s.mode === 'switch' ? 'switch' : 'build' };
}

/** The situation of PassSituation, read from the durable state. */
export function passSituation(
  state: DurableState,
  desiredHash: string | undefined,
  running: string | undefined,
  now: number,
  how: { readonly closure: boolean; readonly mode: 'safe' | 'switch' } = { closure: false, mode: 'safe' },
): PassSituation {
  const failed = desiredHash !== undefined ? state.failed[desiredHash] : undefined;
  return {
    suspended: state.suspended !== undefined,
    heldOn: state.held?.desiredHash,
    recorded: state.running ? { desiredHash: state.running.desiredHash, storePath: state.running.storePath } : undefined,
    running,
    failed: failed ? { stage: failed.stage, reason: failed.reason, retryAt: failed.retryAt } : undefined,
    desiredHash,
    closure: how.closure,
    mode: how.mode,
    now,
  };
}

/** What a restarted agent finds in its journal, and what runs. */
export interface RecoverySituation {
  readonly phase: Phase;
  readonly desiredHash: string | undefined;
  readonly storePath: string | undefined;
  readonly running: string | undefined;
}

export type RecoveryStep =
  /** Nothing was under way. */
  | { readonly kind: 'none' }
  /** Nothing was switched: put the last good configuration.nix back. */
  | { readonly kind: 'restore' }
  /** The activated system runs: verify it and make it the boot default, or roll back. */
  | { readonly kind: 'finish'; readonly desiredHash: string; readonly storePath: string }
  /** Activation did not finish, or a rollback was under way: roll back to the last good. */
  | { readonly kind: 'rollback'; readonly failedHash: string | undefined }
  /**
   * Rebooted while the verified system was being made the boot default: the last good one booted.
   * Everything goes back to it, and the next pass applies the desired state again.
   */
  | { readonly kind: 'back-to-last-good' }
  /** A journal entry without what its phase needs: start clean. */
  | { readonly kind: 'reset' };

export function planRecovery(s: RecoverySituation): RecoveryStep {
  switch (s.phase) {
    case 'idle':
      return { kind: 'none' };
    case 'rendered':
    case 'building':
      return { kind: 'restore' };
    case 'activating':
    case 'verifying':
      if (!s.storePath || !s.desiredHash) return { kind: 'reset' };
      if (s.running !== s.storePath) return { kind: 'rollback', failedHash: s.desiredHash };
      return { kind: 'finish', desiredHash: s.desiredHash, storePath: s.storePath };
    case 'committing':
      if (!s.storePath || !s.desiredHash) return { kind: 'reset' };
      // The profile may point at it already, but only `switch-to-configuration boot` makes it what
      // boots: a reboot before that runs the last good system, which is not the one verified.
      if (s.running !== s.storePath) return { kind: 'back-to-last-good' };
      return { kind: 'finish', desiredHash: s.desiredHash, storePath: s.storePath };
    case 'rolling-back':
      return { kind: 'rollback', failedHash: undefined };
  }
}

/** A step of an apply failed: where it failed, and whether the build was cancelled. */
export interface FailureSituation {
  /** The journal's phase when it failed. */
  readonly phase: Phase;
  readonly stage: string;
  readonly cancelled: boolean;
}

export interface FailureStep {
  /** Something was activated: the last good generation goes back. */
  readonly rollback: boolean;
  /** Remembered with a backoff (a cancellation is not a failure of the desired state). */
  readonly remember: boolean;
  readonly outcome: 'cancelled' | 'rolled-back' | 'failed';
}

export function planFailure(s: FailureSituation): FailureStep {
  const rollback = s.phase !== 'building' && s.phase !== 'rendered' && s.stage !== 'build' && s.stage !== 'channels';
  if (s.cancelled) return { rollback, remember: false, outcome: 'cancelled' };
  return { rollback, remember: true, outcome: rollback ? 'rolled-back' : 'failed' };
}

/** When a desired state that failed `attempts` times may be tried again. */
export function retryAt(now: number, attempts: number, retry: { readonly failedBackoffSeconds: number; readonly maxBackoffSeconds: number }): number {
  return now + Math.min(retry.maxBackoffSeconds, retry.failedBackoffSeconds * 2 ** (attempts - 1)) * 1000;
}
