// systemd's watchdog, fed only while the agent's loop is making progress.
//
// A timer that pinged unconditionally would keep a wedged loop (a hung await, a lost promise)
// looking healthy forever. Instead the loop calls alive() as it goes, and the timer pings only
// when that heartbeat is younger than the watchdog interval, so a stuck loop stops the pings and
// systemd's WatchdogSec= restarts the agent.
import type { Clock } from '../ports.js';
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
    const sinceBeatMs = this.#clock.now() - this.#lastBeat;
    if (sinceBeatMs * 1000 < this.intervalUsec) this.#notify.watchdog();
  }
}
