// Simulated time for many agents in one process. Every agent, emulator and token bucket reads this
// one clock; time moves only when the driver moves it, and only once everything woken so far has
// run to its next sleep (or its I/O has finished). So ten thousand instances polling for an hour
// take as much real time as their work needs, not an hour.
import type { Clock } from '../agent/ports.js';

interface Sleeper {
  readonly deadline: number;
  /** Tie-break for equal deadlines: sleepers wake in the order they went to sleep. */
  readonly seq: number;
  resolve: (() => void) | undefined;
}

export interface RunOptions {
  /**
   * Sleepers due within this many ms of the earliest are woken together: the simulation's time
   * resolution, traded for fewer steps. 0 wakes each deadline on its own.
   */
  readonly resolutionMs?: number;
  /** True when no work outside this clock (file I/O, sockets) is in flight. Default: always. */
  readonly idle?: () => boolean;
  /** Stops early, before time passes `until`, once this returns true (checked between steps). */
  readonly done?: () => boolean;
  /**
   * Wakes one sleeper per step (resolution ignored) and lets everything it sets off settle before
   * the next: outside work (file I/O) cannot interleave two sleepers' continuations in an order the
   * machine chooses, so a run driven by seeded choices is the same each time. Slower: for small runs.
   */
  readonly serial?: boolean;
}

/** Lets promise continuations and I/O callbacks that are already due run. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class VirtualClock implements Clock {
  #now: number;
  #seq = 0;
  /** A binary min-heap on (deadline, seq): a fleet keeps tens of thousands of sleeps pending. */
  #heap: Sleeper[] = [];
  #steps = 0;

  constructor(start: number) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (!(ms > 0)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      // As setTimeout, nothing sleeps less than 1 ms: a sub-millisecond wait added to an epoch
      // time can round to no time at all, and a loop that waits for time to pass would spin.
      const sleeper: Sleeper = { deadline: this.#now + Math.max(1, ms), seq: this.#seq++, resolve: undefined };
      const onAbort = () => {
        // Left in the heap, inert: removing from the middle of a heap costs more than skipping it.
        sleeper.resolve = undefined;
        reject(signal?.reason);
      };
      sleeper.resolve = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#push(sleeper);
    });
  }

  /** Steps taken by run() so far (each one a moment at which something woke). */
  get steps(): number {
    return this.#steps;
  }

  /** Sleeps still waiting for their time (cancelled ones not counted). */
  get pending(): number {
    return this.#heap.filter((s) => s.resolve !== undefined).length;
  }

  /**
   * Moves time to `until`, one deadline at a time, waking each due sleep and letting everything it
   * sets off run before moving on. Resolves at `until`, or earlier once `done()` says so.
   */
  async run(until: number, options: RunOptions = {}): Promise<void> {
    const resolution = options.resolutionMs ?? 0;
    const idle = options.idle ?? (() => true);
    for (;;) {
      await this.#quiesce(idle);
      if (options.done?.()) return;
      const next = this.#peek();
      if (next === undefined || next.deadline > until) break;
      this.#steps++;
      this.#now = Math.max(this.#now, next.deadline);
      if (options.serial) {
        this.#pop().resolve?.();
        continue;
      }
      const horizon = this.#now + resolution;
      while (this.#heap.length > 0 && (this.#heap[0] as Sleeper).deadline <= horizon) {
        this.#pop().resolve?.();
      }
    }
    this.#now = Math.max(this.#now, until);
  }

  /** Waits until woken code has settled: no continuation due and no outside I/O in flight. */
  async #quiesce(idle: () => boolean): Promise<void> {
    // Two quiet turns in a row: a continuation can schedule another turn's worth of work.
    let quiet = 0;
    while (quiet < 2) {
      await turn();
      quiet = idle() ? quiet + 1 : 0;
    }
  }

  #peek(): Sleeper | undefined {
    while (this.#heap.length > 0 && (this.#heap[0] as Sleeper).resolve === undefined) this.#pop();
    return this.#heap[0];
  }

  #less(a: Sleeper, b: Sleeper): boolean {
    return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq);
  }

  #push(s: Sleeper): void {
    const h = this.#heap;
    h.push(s);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#less(h[i] as Sleeper, h[parent] as Sleeper)) break;
      [h[i], h[parent]] = [h[parent] as Sleeper, h[i] as Sleeper];
      i = parent;
    }
  }

  #pop(): Sleeper {
    const h = this.#heap;
    const top = h[0] as Sleeper;
    const last = h.pop() as Sleeper;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l] as Sleeper, h[m] as Sleeper)) m = l;
        if (r < h.length && this.#less(h[r] as Sleeper, h[m] as Sleeper)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m] as Sleeper, h[i] as Sleeper];
        i = m;
      }
    }
    return top;
  }
}
