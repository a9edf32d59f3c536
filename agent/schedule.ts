// When to converge, not how: a jittered poll, and triggers (converge --now, SIGHUP, file changes)
// that collapse into one next pass after a quiet period. Single flight: never two passes at once.
import type { Clock } from './ports.js';
import type { PassResult } from './reconcile.js';

export interface ScheduleOptions {
  readonly intervalMs: number;
  /** Each wait is uniform in interval × [1 − jitter/2, 1 + jitter/2]. */
  readonly jitter: number;
  readonly quietPeriodMs: number;
  readonly random?: () => number;
  /** The loop wakes at least this often, so a watchdog can tell idle from wedged. */
  readonly tickMs?: number;
}

export type Pass = (reason: string, signal: AbortSignal) => Promise<PassResult>;

interface Waiter {
  readonly resolve: (result: PassResult | undefined) => void;
}

/** The jittered wait before the next poll. Pure, for tests. */
export function nextPollDelay(intervalMs: number, jitter: number, random: () => number): number {
  return intervalMs * (1 - jitter / 2 + jitter * random());
}

export class Scheduler {
  private readonly random: () => number;
  private stopped = false;
  private wake = new AbortController();
  private pending: { reason: string; at: number; immediate: boolean } | undefined;
  private waiters: Waiter[] = [];
  private running: Promise<unknown> | undefined;
  private passAbort: AbortController | undefined;

  constructor(
    private readonly clock: Clock,
    private readonly options: ScheduleOptions,
  ) {
    this.random = options.random ?? Math.random;
  }

  /** A change was seen: converge after the quiet period. */
  trigger(reason: string): void {
    const immediate = this.pending?.immediate ?? false;
    this.pending = { reason: this.pending ? `${this.pending.reason}, ${reason}` : reason, at: this.clock.now(), immediate };
    this.wake.abort();
  }

  /** Converge at once (no quiet period); resolves with that pass's result. */
  runNow(reason: string): Promise<PassResult | undefined> {
    this.pending = { reason: this.pending ? `${this.pending.reason}, ${reason}` : reason, at: this.clock.now(), immediate: true };
    const done = new Promise<PassResult | undefined>((resolve) => this.waiters.push({ resolve }));
    this.wake.abort();
    return done;
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

  stop(): void {
    this.stopped = true;
    this.passAbort?.abort(new Error('stopping'));
    this.wake.abort();
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** The loop: a first pass at once, then polls and triggers until stop(). */
  async run(pass: Pass, tick: () => void = () => {}): Promise<void> {
    let reason = 'start';
    for (;;) {
      if (this.stopped) break;
      await this.runPass(pass, reason);
      if (this.stopped) break;
      reason = await this.waitForWork(tick);
    }
    for (const w of this.waiters.splice(0)) w.resolve(undefined);
  }

  private async runPass(pass: Pass, reason: string): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
    const waiters = this.waiters.splice(0);
    this.passAbort = new AbortController();
    const work = pass(reason, this.passAbort.signal);
    this.running = work;
    let result: PassResult | undefined;
    try {
      result = await work;
    } finally {
      this.running = undefined;
      this.passAbort = undefined;
      for (const w of waiters) w.resolve(result);
    }
  }

  /** Sleeps until the next poll or a trigger; returns why the next pass runs. */
  private async waitForWork(tick: () => void): Promise<string> {
    const tickMs = this.options.tickMs ?? 5_000;
    const pollAt = this.clock.now() + nextPollDelay(this.options.intervalMs, this.options.jitter, this.random);
    for (;;) {
      if (this.stopped) return 'stop';
      const pending = this.pending;
      if (pending) {
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
