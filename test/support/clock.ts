// A Clock whose time moves only when a test moves it, so timeouts, token expiry, backoff and poll
// intervals are exercised in microseconds of real time and never depend on the machine's speed.
import type { Clock } from '../../agent/ports.js';

interface Sleeper {
  readonly deadline: number;
  /** Tie-break for equal deadlines: sleepers wake in the order they went to sleep. */
  readonly seq: number;
  readonly resolve: () => void;
  readonly reject: (reason: unknown) => void;
  readonly detach: () => void;
}

interface Waiter {
  readonly count: number;
  readonly resolve: () => void;
}

/** Lets promise continuations and I/O callbacks that are already due run before we look again. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class ManualClock implements Clock {
  #now: number;
  #seq = 0;
  #sleepers: Sleeper[] = [];
  #waiters: Waiter[] = [];

  /**
   * Starts at `start` (default: the real time at construction, so credentials and timestamps the
   * clock stamps still look current to code that checks them against the real time, such as the SDK).
   */
  constructor(start: number | Date = Date.now()) {
    this.#now = typeof start === 'number' ? start : start.getTime();
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!(ms > 0)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#remove(sleeper);
        reject(signal?.reason);
      };
      const sleeper: Sleeper = {
        deadline: this.#now + ms,
        seq: this.#seq++,
        resolve,
        reject,
        detach: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#sleepers.push(sleeper);
      this.#sleepers.sort((a, b) => a.deadline - b.deadline || a.seq - b.seq);
      this.#notifyWaiters();
    });
  }

  /** How many sleeps are waiting for time to pass. */
  get pendingSleeps(): number {
    return this.#sleepers.length;
  }

  /** The earliest deadline among waiting sleeps, or undefined when nothing sleeps. */
  nextDeadline(): number | undefined {
    return this.#sleepers[0]?.deadline;
  }

  /**
   * Moves time forward by `ms` at once and wakes every sleep whose deadline has passed, in deadline
   * order. Sleeps started by the woken code run against the new time, so use `advanceAsync` when a
   * chain of sleeps inside the window must each fire.
   */
  advance(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`ManualClock.advance: ms must be a finite number >= 0, got ${ms}`);
    this.#now += ms;
    this.#wakeDue();
  }

  /**
   * Moves time forward by `ms` one deadline at a time, letting woken code run (and sleep again)
   * before moving on, as real time would. Resolves once time has reached now + ms.
   */
  async advanceAsync(ms: number): Promise<void> {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`ManualClock.advanceAsync: ms must be a finite number >= 0, got ${ms}`);
    const target = this.#now + ms;
    await settle();
    for (;;) {
      const next = this.#sleepers[0];
      if (next === undefined || next.deadline > target) break;
      this.#now = Math.max(this.#now, next.deadline);
      this.#wakeDue();
      await settle();
    }
    this.#now = target;
    await settle();
  }

  /** Sets the time; it may not go backwards, as no real clock the agent relies on does. */
  set(to: number | Date): void {
    const ms = typeof to === 'number' ? to : to.getTime();
    if (ms < this.#now) throw new RangeError(`ManualClock.set: cannot go back from ${this.#now} to ${ms}`);
    this.advance(ms - this.#now);
  }

  /**
   * Resolves once at least `count` sleeps are waiting: how a test knows the code under test has
   * reached its wait before it advances time.
   */
  whenSleeping(count = 1): Promise<void> {
    if (this.#sleepers.length >= count) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ count, resolve }));
  }

  #wakeDue(): void {
    while (this.#sleepers.length > 0 && this.#sleepers[0]!.deadline <= this.#now) {
      const sleeper = this.#sleepers.shift()!;
      sleeper.detach();
      sleeper.resolve();
    }
  }

  #remove(sleeper: Sleeper): void {
    const i = this.#sleepers.indexOf(sleeper);
    if (i >= 0) this.#sleepers.splice(i, 1);
    sleeper.detach();
  }

  #notifyWaiters(): void {
    const ready = this.#waiters.filter((w) => this.#sleepers.length >= w.count);
    if (ready.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => this.#sleepers.length < w.count);
    for (const w of ready) w.resolve();
  }
}
