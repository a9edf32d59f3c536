// When to converge, not how: a jittered poll, and triggers (converge --now, SIGHUP, file changes)
// that collapse into one next pass after a quiet period. Single flight: never two passes at once.
// A newer desired state cancels a pass that is still building (as comin does); activation and
// verification never see the signal. Throttled polls back off exponentially with full jitter, so
// a fleet sharing one account's SSM throughput spreads out instead of retrying in step. While the
// instance is leaving (Auto Scaling termination, spot interruption) no new pass starts.
import { TransientError } from './errors.js';
import type { Clock } from './ports.js';
import type { PassResult } from './reconcile.js';
import { isThrottling } from './sources/revision.js';

export interface ScheduleOptions {
  readonly intervalMs: number;
  /** Each wait is uniform in interval × [1 − jitter/2, 1 + jitter/2]. */
  readonly jitter: number;
  readonly quietPeriodMs: number;
  readonly random?: () => number;
  /** The loop wakes at least this often, so a watchdog can tell idle from wedged. */
  readonly tickMs?: number;
  /** The longest wait a throttled poll backs off to. */
  readonly maxBackoffMs?: number;
  /** Consecutive throttled SSM calls seen by the source (0 when the last one succeeded). */
  readonly throttleLevel?: () => number;
  /** True while the running pass may still be cancelled (it is building, nothing activated). */
  readonly cancellable?: () => boolean;
  /** A cheap look for a newer desired state while a pass builds; its reason, or undefined. */
  readonly changed?: (signal: AbortSignal) => Promise<string | undefined>;
  /** How often `changed` is asked while a pass is cancellable. */
  readonly cancelCheckMs?: number;
}

export type Pass = (reason: string, signal: AbortSignal) => Promise<PassResult>;

/** Why a pass's signal was aborted: a newer desired state, the instance leaving, or a stop. */
export class PassCancelledError extends TransientError {
  constructor(reason: string) {
    super(`cancelled: ${reason}`, 'schedule', { reason });
  }
}

export interface ScheduleState {
  readonly running: boolean;
  readonly pending: string | undefined;
  readonly blocked: { readonly reason: string; readonly since: number } | undefined;
  readonly nextPollAt: number | undefined;
  readonly backoffLevel: number;
  readonly cancelled: number;
}

interface Waiter {
  readonly resolve: (result: PassResult | undefined) => void;
}

/**
 * The wait before the next poll. Pure, for tests. Unthrottled: uniform in
 * interval × [1 − jitter/2, 1 + jitter/2]. After `level` throttled polls in a row: uniform between
 * the shortest normal wait and min(max, interval × 2^level) ("full jitter"), so a throttled fleet
 * spreads over a window that doubles each time, and never polls faster than it normally would.
 */
export function nextPollDelay(intervalMs: number, jitter: number, random: () => number, level = 0, maxMs = Number.POSITIVE_INFINITY): number {
  const low = intervalMs * (1 - jitter / 2);
  if (level <= 0) return intervalMs * (1 - jitter / 2 + jitter * random());
  const window = Math.max(low, Math.min(maxMs, intervalMs * 2 ** Math.min(level, 30)));
  return low + random() * (window - low);
}

/** The first window a pass that failed on throttling is retried within (doubling each time). */
export const THROTTLED_RETRY_BASE_MS = 10_000;
/** The widest such window: a retry more than a couple of minutes out leaves the account's reads unused. */
export const THROTTLED_RETRY_MAX_MS = 120_000;

/**
 * The wait before retrying a pass that failed on throttling (`level` in a row): its change is
 * still to be applied, so it is not put off to the next poll. Full jitter over a window that
 * starts at THROTTLED_RETRY_BASE_MS and doubles, capped at THROTTLED_RETRY_MAX_MS, one poll
 * interval and max, so the instances that lost a round spread over the account's throughput and
 * none is starved by a window far wider than the others'.
 */
export function throttledRetryDelay(intervalMs: number, random: () => number, level: number, maxMs = Number.POSITIVE_INFINITY): number {
  return random() * Math.min(maxMs, intervalMs, THROTTLED_RETRY_MAX_MS, THROTTLED_RETRY_BASE_MS * 2 ** Math.min(Math.max(0, level - 1), 30));
}

export class Scheduler {
  private readonly random: () => number;
  private stopped = false;
  private wake = new AbortController();
  private pending: { reason: string; at: number; immediate: boolean } | undefined;
  private waiters: Waiter[] = [];
  private running: Promise<unknown> | undefined;
  private passAbort: AbortController | undefined;
  private blockedBy: { reason: string; since: number } | undefined;
  private throttledPasses = 0;
  private nextPollAt: number | undefined;
  private cancelledCount = 0;
  private polled = false;

  constructor(
    private readonly clock: Clock,
    private options: ScheduleOptions,
  ) {
    this.random = options.random ?? Math.random;
  }

  /** New timings (SIGHUP); they apply from the next wait. */
  reconfigure(options: Partial<ScheduleOptions>): void {
    this.options = { ...this.options, ...options };
    this.wake.abort();
  }

  /** A change was seen: converge after the quiet period. A pass still building is cancelled. */
  trigger(reason: string): void {
    const immediate = this.pending?.immediate ?? false;
    this.pending = { reason: this.pending ? `${this.pending.reason}, ${reason}` : reason, at: this.clock.now(), immediate };
    this.supersede(reason);
    this.wake.abort();
  }

  /**
   * Converge at once (no quiet period); resolves with that pass's result, or undefined when no pass
   * will run (stopping, or the instance is leaving).
   */
  runNow(reason: string): Promise<PassResult | undefined> {
    if (this.stopped || this.blockedBy) return Promise.resolve(undefined);
    this.pending = { reason: this.pending ? `${this.pending.reason}, ${reason}` : reason, at: this.clock.now(), immediate: true };
    const done = new Promise<PassResult | undefined>((resolve) => this.waiters.push({ resolve }));
    this.supersede(reason);
    this.wake.abort();
    return done;
  }

  /** No new pass starts until unblock(); a pass still building is cancelled. */
  block(reason: string): void {
    if (this.blockedBy?.reason === reason) return;
    this.blockedBy = { reason, since: this.blockedBy?.since ?? this.clock.now() };
    this.supersede(reason);
    for (const w of this.waiters.splice(0)) w.resolve(undefined);
    this.wake.abort();
  }

  unblock(): void {
    if (!this.blockedBy) return;
    this.blockedBy = undefined;
    this.wake.abort();
  }

  get state(): ScheduleState {
    return {
      running: this.running !== undefined,
      pending: this.pending?.reason,
      blocked: this.blockedBy,
      nextPollAt: this.nextPollAt,
      backoffLevel: this.backoffLevel(),
      cancelled: this.cancelledCount,
    };
  }

  /** Runs `fn` when no pass is running (rollback, suspend, resume). */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.running) await this.running.catch(() => undefined);
    const work = fn();
    this.running = work;
    try {
      return await work;
    } finally {
      if (this.running === work) this.running = undefined;
    }
  }

  /** Ends the loop after the pass in hand; a build is aborted, activation and verification finish. */
  stop(): void {
    this.stopped = true;
    this.passAbort?.abort(new PassCancelledError('stopping'));
    this.wake.abort();
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** The loop: a first pass at once, then polls and triggers until stop(). */
  async run(pass: Pass, tick: () => void = () => {}): Promise<void> {
    let reason: string | undefined = 'start';
    for (;;) {
      if (this.stopped) break;
      if (reason !== undefined && !this.blockedBy) await this.runPass(pass, reason);
      if (this.stopped) break;
      reason = await this.waitForWork(tick);
    }
    for (const w of this.waiters.splice(0)) w.resolve(undefined);
  }

  private backoffLevel(): number {
    return Math.max(this.throttledPasses, this.options.throttleLevel?.() ?? 0);
  }

  private supersede(reason: string): void {
    const abort = this.passAbort;
    if (!abort || abort.signal.aborted) return;
    if (!(this.options.cancellable?.() ?? false)) return;
    this.cancelledCount++;
    abort.abort(new PassCancelledError(reason));
  }

  private async runPass(pass: Pass, reason: string): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
    const waiters = this.waiters.splice(0);
    const abort = new AbortController();
    this.passAbort = abort;
    const ended = new AbortController();
    const watching = this.watchPass(abort, ended.signal);
    const work = pass(reason, abort.signal);
    this.running = work;
    let result: PassResult | undefined;
    try {
      result = await work;
    } finally {
      ended.abort();
      await watching;
      this.running = undefined;
      this.passAbort = undefined;
      this.throttledPasses = result?.error && isThrottling(result.error) ? this.throttledPasses + 1 : 0;
      for (const w of waiters) w.resolve(result);
    }
  }

  /** While the pass may be cancelled, looks for a newer desired state every cancelCheckMs. */
  private async watchPass(abort: AbortController, ended: AbortSignal): Promise<void> {
    const { changed, cancelCheckMs } = this.options;
    if (!changed || !cancelCheckMs) return;
    for (;;) {
      try {
        await this.clock.sleep(cancelCheckMs, ended);
      } catch {
        return;
      }
      if (ended.aborted || abort.signal.aborted) return;
      if (!(this.options.cancellable?.() ?? false)) continue;
      let why: string | undefined;
      try {
        why = await changed(ended);
      } catch {
        // A failed look is no evidence of change; the build goes on.
        why = undefined;
      }
      if (why === undefined || ended.aborted || abort.signal.aborted) continue;
      // Converge to the newer state right after this pass ends.
      this.pending = { reason: this.pending ? `${this.pending.reason}, ${why}` : why, at: this.clock.now(), immediate: true };
      this.supersede(why);
    }
  }

  /** Sleeps until the next poll or a trigger; returns why the next pass runs. */
  private async waitForWork(tick: () => void): Promise<string> {
    const tickMs = this.options.tickMs ?? 5_000;
    // The first poll is spread over interval × [1 − jitter, 1] ([0, interval] at full jitter), so
    // a fleet launched at once does not poll SSM in step from then on.
    const delay = this.throttledPasses > 0
      ? throttledRetryDelay(this.options.intervalMs, this.random, this.throttledPasses, this.options.maxBackoffMs)
      : this.polled || this.backoffLevel() > 0
      ? nextPollDelay(this.options.intervalMs, this.options.jitter, this.random, this.backoffLevel(), this.options.maxBackoffMs)
      : this.options.intervalMs * (1 - this.options.jitter * this.random());
    this.polled = true;
    const pollAt = this.clock.now() + delay;
    this.nextPollAt = pollAt;
    try {
      for (;;) {
        if (this.stopped) return 'stop';
        const pending = this.pending;
        if (this.blockedBy) {
          // Leaving: nothing starts; what was asked waits, in case the instance stays after all.
          await this.sleep(tickMs);
        } else if (pending) {
          const quietUntil = pending.at + (pending.immediate ? 0 : this.options.quietPeriodMs);
          if (this.clock.now() >= quietUntil) {
            this.pending = undefined;
            return pending.reason;
          }
          await this.sleep(Math.min(tickMs, quietUntil - this.clock.now()));
        } else {
          if (this.clock.now() >= pollAt) return 'poll';
          await this.sleep(Math.min(tickMs, pollAt - this.clock.now()));
        }
        tick();
      }
    } finally {
      this.nextPollAt = undefined;
    }
  }

  private async sleep(ms: number): Promise<void> {
    if (this.wake.signal.aborted) this.wake = new AbortController();
    try {
      await this.clock.sleep(Math.max(0, ms), this.wake.signal);
    } catch {
      // Woken by a trigger or stop.
    }
    if (this.wake.signal.aborted) this.wake = new AbortController();
  }
}
