// When to converge, not how: a jittered poll, and triggers (converge --now, SIGHUP, file changes).
// A change starts a settle window: the pass runs once the sources have been quiet for the quiet
// period, or when the window reaches its bound, so a script pushing twenty parameters a second
// apart is one rebuild and a stream that never pauses still converges. A poll sees a change through
// the probe (the desired state's fingerprint), compared with the last pass's. Single flight: never
// two passes at once.
// A newer desired state cancels a pass that is still building (as comin does); activation and
// verification never see the signal. Throttled polls back off exponentially with full jitter, so
// a fleet sharing one account's SSM throughput spreads out instead of retrying in step. While the
// instance is leaving (Auto Scaling termination, spot interruption) no new pass starts.
import type { Config } from './config.js';
import { TransientError } from './errors.js';
import type { Clock } from './ports.js';
import type { PassResult } from './reconcile.js';
import { isBusy } from './sources/revision.js';

export interface ScheduleOptions {
  readonly intervalMs: number;
  /** Each wait is uniform in interval × [1 − jitter/2, 1 + jitter/2]. */
  readonly jitter: number;
  /** A change waits until the sources have been quiet this long… */
  readonly quietPeriodMs: number;
  /** …but never longer than this after the first change of the window. */
  readonly maxSettleMs?: number;
  /**
   * The desired state's fingerprint as the sources hold it now (a pass reports the same value as
   * its desiredHash). Asked at each poll, and while a window settles, to see changes and to tell
   * when they stop. Without it a poll converges at once.
   */
  readonly probe?: (signal: AbortSignal) => Promise<string>;
  readonly random?: () => number;
  /** The loop wakes at least this often, so a watchdog can tell idle from wedged (beatEveryMs). */
  readonly tickMs?: number;
  /** The longest wait a throttled poll backs off to. */
  readonly maxBackoffMs?: number;
  /** Consecutive throttled or failing (5xx) SSM calls seen by the source (0 after a success). */
  readonly throttleLevel?: () => number;
  /** True while the running pass may still be cancelled (it is building, nothing activated). */
  readonly cancellable?: () => boolean;
  /** A cheap look for a newer desired state while a pass builds; its reason, or undefined. */
  readonly changed?: (signal: AbortSignal) => Promise<string | undefined>;
  /** How often `changed` is asked while a pass is cancellable (jittered as the poll interval is). */
  readonly cancelCheckMs?: number;
}

/** The scheduler's timings from the agent's configuration (the daemon's, and the fleet simulation's). */
export function scheduleTimings(c: Config): Pick<ScheduleOptions, 'intervalMs' | 'jitter' | 'quietPeriodMs' | 'maxSettleMs' | 'maxBackoffMs' | 'cancelCheckMs'> {
  return {
    intervalMs: c.ssm.pollIntervalSeconds * 1000,
    jitter: c.ssm.pollJitter,
    quietPeriodMs: c.watch.quietPeriodMs,
    maxSettleMs: c.watch.maxSettleSeconds * 1000,
    maxBackoffMs: c.ssm.maxBackoffSeconds * 1000,
    cancelCheckMs: c.watch.cancelCheckSeconds * 1000,
  };
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

interface Pending {
  readonly reason: string;
  /** When the window opened: it settles by first + maxSettleMs at the latest. */
  readonly first: number;
  /** The last change seen: it settles at last + quietPeriodMs. */
  readonly last: number;
  readonly immediate: boolean;
}

/** The settle window's default bound: a continuous stream of changes still converges each minute. */
export const DEFAULT_MAX_SETTLE_MS = 60_000;

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

/**
 * The wait before retrying a pass that failed on throttling (`level` in a row): its change is
 * still to be applied, so it is not put off to the next poll. Full jitter over a window that
 * starts at THROTTLED_RETRY_BASE_MS and doubles, capped at one poll interval and max. The window
 * grows until the fleet's retries fit the account's throughput: a fixed cap narrower than that
 * (two minutes held ten thousand instances at 80 passes a second, each retried up to ten times by
 * the SDK, against 40 reads a second) turns the fleet's wait into throttled calls.
 */
export function throttledRetryDelay(intervalMs: number, random: () => number, level: number, maxMs = Number.POSITIVE_INFINITY): number {
  return random() * Math.min(maxMs, intervalMs, THROTTLED_RETRY_BASE_MS * 2 ** Math.min(Math.max(0, level - 1), 30));
}

export class Scheduler {
  private readonly random: () => number;
  private stopped = false;
  private wake = new AbortController();
  private pending: Pending | undefined;
  /** The last pass's desired state: a poll whose probe differs has seen a change. */
  private baseline: string | undefined;
  /** What the last probe saw, so a probe in a window can tell whether the sources moved again. */
  private lastProbe: string | undefined;
  private probeAbort = new AbortController();
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
    this.note(reason, false);
    this.supersede(reason);
    this.wake.abort();
  }

  /**
   * Converge at once (no quiet period); resolves with that pass's result, or undefined when no pass
   * will run (stopping, or the instance is leaving).
   */
  runNow(reason: string): Promise<PassResult | undefined> {
    if (this.stopped || this.blockedBy) return Promise.resolve(undefined);
    this.note(reason, true);
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
    this.probeAbort.abort(new PassCancelledError('stopping'));
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

  /** A change (or a request) joins the open window, or opens one; `immediate` runs it at once. */
  private note(reason: string, immediate: boolean): void {
    const now = this.clock.now();
    const p = this.pending;
    this.pending = p
      ? { reason: `${p.reason}, ${reason}`, first: p.first, last: now, immediate: p.immediate || immediate }
      : { reason, first: now, last: now, immediate };
  }

  private backoffLevel(): number {
    return Math.max(this.throttledPasses, this.options.throttleLevel?.() ?? 0);
  }

  /**
   * Cancels the pass in hand while it may still be cancelled (building, nothing activated), as a
   * newer desired state does, without asking for another: an operator's suspend. True when it was.
   */
  cancelBuild(reason: string): boolean {
    return this.supersede(reason);
  }

  private supersede(reason: string): boolean {
    const abort = this.passAbort;
    if (!abort || abort.signal.aborted) return false;
    if (!(this.options.cancellable?.() ?? false)) return false;
    this.cancelledCount++;
    abort.abort(new PassCancelledError(reason));
    return true;
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
      this.throttledPasses = result?.error && isBusy(result.error) ? this.throttledPasses + 1 : 0;
      // A failed pass may not have read its sources: the desired state it reports is then the one
      // it selected before, and a probe differing from it is the very change still to apply. Its
      // retry converges at once instead of settling that change again (more probes, each an SSM
      // read a throttled account pays for).
      this.baseline = result?.outcome === 'failed' ? undefined : result?.desiredHash;
      this.lastProbe = undefined;
      for (const w of waiters) w.resolve(result);
    }
  }

  /** While the pass may be cancelled, looks for a newer desired state every cancelCheckMs. */
  private async watchPass(abort: AbortController, ended: AbortSignal): Promise<void> {
    const { changed, cancelCheckMs } = this.options;
    if (!changed || !cancelCheckMs) return;
    for (;;) {
      try {
        // Jittered as a poll is: passes a fleet-wide converge --now started together would
        // otherwise look (one SSM call each) in the same instant, every time. And backed off as a
        // poll is while SSM is busy: a build can last an hour, and throttled looks see nothing.
        await this.clock.sleep(nextPollDelay(cancelCheckMs, this.options.jitter, this.random, this.backoffLevel(), this.options.maxBackoffMs), ended);
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
      // The newer state opens a settle window: the next pass waits for the pushes to stop.
      this.note(why, false);
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
    let probeAt = this.clock.now();
    try {
      for (;;) {
        if (this.stopped) return 'stop';
        const pending = this.pending;
        if (this.blockedBy) {
          // Leaving: nothing starts; what was asked waits, in case the instance stays after all.
          await this.sleep(tickMs);
        } else if (pending) {
          const { quietPeriodMs, maxSettleMs = DEFAULT_MAX_SETTLE_MS } = this.options;
          const due = pending.immediate ? pending.first : Math.min(pending.last + quietPeriodMs, pending.first + maxSettleMs);
          const now = this.clock.now();
          if (now >= due) {
            this.pending = undefined;
            return pending.reason;
          }
          if (this.options.probe && now >= probeAt) {
            // The window stays open while the sources keep moving.
            const seen = await this.look();
            if (seen.changed && this.pending) this.pending = { ...this.pending, last: this.clock.now() };
            probeAt = this.clock.now() + this.probeEveryMs();
            continue;
          }
          await this.sleep(Math.min(tickMs, due - now, this.options.probe ? probeAt - now : tickMs));
        } else {
          const now = this.clock.now();
          if (now >= pollAt) {
            if (!this.options.probe || this.baseline === undefined) return 'poll';
            const seen = await this.look();
            if (seen.fingerprint === undefined || seen.fingerprint === this.baseline) return 'poll';
            this.note('poll', false);
            probeAt = this.clock.now() + this.probeEveryMs();
            continue;
          }
          await this.sleep(Math.min(tickMs, pollAt - now));
        }
        tick();
      }
    } finally {
      this.nextPollAt = undefined;
    }
  }

  /** Probes in a window: often enough to see the sources stop well within the quiet period. */
  private probeEveryMs(): number {
    return Math.max(100, this.options.quietPeriodMs / 3);
  }

  /** The probe's fingerprint now, and whether it moved since the last look; undefined when it failed. */
  private async look(): Promise<{ fingerprint: string | undefined; changed: boolean }> {
    const probe = this.options.probe;
    if (!probe || this.stopped) return { fingerprint: undefined, changed: false };
    let fingerprint: string;
    try {
      fingerprint = await probe(this.probeAbort.signal);
    } catch {
      // No evidence either way: a poll converges (and reports what failed); a window keeps its timing.
      return { fingerprint: undefined, changed: false };
    }
    const changed = this.lastProbe !== undefined && fingerprint !== this.lastProbe;
    this.lastProbe = fingerprint;
    return { fingerprint, changed };
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
