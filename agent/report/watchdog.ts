// systemd's watchdog, fed only while the agent's loop is making progress.
//
// A timer that pinged unconditionally would keep a wedged loop (a hung await, a lost promise)
// looking healthy forever. Instead the loop calls alive() as it goes, and the timer pings only
// when that heartbeat is younger than the watchdog interval, so a stuck loop stops the pings and
// systemd's WatchdogSec= restarts the agent.
import type { Clock, Runner } from '../ports.js';
import type { Notify } from './notify.js';

export interface IntervalScheduler {
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
}

export interface WatchdogOptions {
  /** Defaults to Node's timers, unref'd so the watchdog never keeps the process alive by itself. */
  readonly setInterval?: IntervalScheduler['setInterval'];
  readonly clearInterval?: IntervalScheduler['clearInterval'];
}

/**
 * The watchdog interval systemd asked this process for, in microseconds, or undefined when there
 * is none: WATCHDOG_USEC unset or not a positive integer, or WATCHDOG_PID naming another process
 * (the variables were inherited from a parent that systemd watches), as sd_watchdog_enabled(3) reads them.
 */
export function watchdogIntervalUsec(env: NodeJS.ProcessEnv, pid: number = process.pid): number | undefined {
  const usecText = env['WATCHDOG_USEC'];
  if (usecText === undefined || !/^[0-9]+$/.test(usecText)) return undefined;
  const usec = Number(usecText);
  if (!(usec > 0) || !Number.isSafeInteger(usec)) return undefined;
  const pidText = env['WATCHDOG_PID'];
  if (pidText !== undefined && pidText !== '') {
    if (!/^[0-9]+$/.test(pidText) || Number(pidText) !== pid) return undefined;
  }
  return usec;
}

/** The longest an idle loop goes without a beat, with or without a watchdog. */
const MAX_BEAT_MS = 60_000;

/**
 * How often an idle loop beats: a quarter of the watchdog interval, so each ping (every half)
 * finds a beat well inside the interval even after a late timer (30 s under the unit's
 * WatchdogSec=120s); a minute where no watchdog reads it. At a fixed 5 s it was a wake-up the idle
 * daemon did not need.
 */
export function beatEveryMs(intervalUsec: number | undefined): number {
  return intervalUsec === undefined ? MAX_BEAT_MS : Math.max(1, Math.min(MAX_BEAT_MS, Math.floor(intervalUsec / 4_000)));
}

const realScheduler: IntervalScheduler = {
  setInterval(fn, ms) {
    const handle = setInterval(fn, ms);
    handle.unref();
    return handle;
  },
  clearInterval(handle) {
    clearInterval(handle as NodeJS.Timeout);
  },
};

export class Watchdog {
  readonly intervalUsec: number | undefined;
  readonly #notify: Notify;
  readonly #clock: Clock;
  readonly #scheduler: IntervalScheduler;
  #lastBeat: number | undefined;
  /** The deadlines of work that ends on its own (see busyUntil). */
  readonly #busy = new Set<{ readonly deadline: number }>();
  #handle: unknown;
  #running = false;

  constructor(notify: Notify, env: NodeJS.ProcessEnv, clock: Clock, options: WatchdogOptions = {}) {
    this.#notify = notify;
    this.#clock = clock;
    this.intervalUsec = watchdogIntervalUsec(env);
    this.#scheduler = {
      setInterval: options.setInterval ?? realScheduler.setInterval,
      clearInterval: options.clearInterval ?? realScheduler.clearInterval,
    };
  }

  /** The loop's heartbeat: call it whenever the loop makes progress. */
  alive(): void {
    this.#lastBeat = this.#clock.now();
  }

  /**
   * Work the loop waits on that ends on its own by `deadline` (a child process under its timeout):
   * a build may run for an hour without a step of the loop in between, and is progress all along.
   * Past the deadline it no longer counts, so a wait that outlives its own bound stops the pings.
   * Returns the release, to call when the work has ended.
   */
  busyUntil(deadline: number): () => void {
    const token = { deadline };
    this.#busy.add(token);
    return () => {
      // The loop has its answer and goes on: that is progress too.
      if (this.#busy.delete(token)) this.alive();
    };
  }

  /** Starts pinging (a no-op when systemd asked for no watchdog, or when already started). */
  start(): void {
    if (this.intervalUsec === undefined || this.#running) return;
    this.#running = true;
    // Starting is progress: the loop has not had a chance to beat yet.
    this.alive();
    this.#tick();
    // Half the interval, as sd_watchdog_enabled(3) advises, so one late timer does not miss it.
    const periodMs = Math.max(1, Math.floor(this.intervalUsec / 2000));
    this.#handle = this.#scheduler.setInterval(() => this.#tick(), periodMs);
  }

  stop(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#scheduler.clearInterval(this.#handle);
    this.#handle = undefined;
  }

  #tick(): void {
    if (this.intervalUsec === undefined || this.#lastBeat === undefined) return;
    const now = this.#clock.now();
    const sinceBeatMs = now - this.#lastBeat;
    const busy = [...this.#busy].some((b) => now < b.deadline);
    if (sinceBeatMs * 1000 < this.intervalUsec || busy) this.#notify.watchdog();
  }
}

/**
 * After its timeout a child's process group is sent SIGTERM, and SIGKILL a few seconds later
 * (runner.ts): the run ends within this margin of its timeout.
 */
const CHILD_EXIT_GRACE_MS = 15_000;

/**
 * The runner the loop's work uses, each child counted as progress while it runs within its
 * timeout (every command the agent runs has one; one without a timeout is not counted).
 */
export function watchedRunner(runner: Runner, watchdog: Watchdog, clock: Clock): Runner {
  return {
    async run(request) {
      const release = request.timeoutMs !== undefined ? watchdog.busyUntil(clock.now() + request.timeoutMs + CHILD_EXIT_GRACE_MS) : undefined;
      try {
        return await runner.run(request);
      } finally {
        release?.();
      }
    },
    ...(runner.stopWithin ? { stopWithin: (dir: string) => runner.stopWithin!(dir) } : {}),
  };
}

/** Timers run late on a loaded machine: a sleep counts as progress for this long past its end. */
const SLEEP_LATE_MS = 5_000;

/**
 * A clock whose sleeps count as progress until they are due. For the waits a pass makes on a busy
 * SSM account (the client's patience, agent/aws/ssm-sdk.ts): each up to five minutes, minutes in
 * all, without a step of the loop in between. Only for waits that a pass or a call makes and that
 * end: a background loop's sleeps through it would keep the pings going for a wedged daemon.
 */
export function watchedClock(clock: Clock, watchdog: Watchdog): Clock {
  return {
    now: () => clock.now(),
    async sleep(ms, signal) {
      const release = watchdog.busyUntil(clock.now() + Math.max(0, ms) + SLEEP_LATE_MS);
      try {
        await clock.sleep(ms, signal);
      } finally {
        release();
      }
    },
  };
}
