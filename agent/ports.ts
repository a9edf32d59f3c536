// The edges through which every side effect enters the agent. Each is passed in through a
// constructor, never imported as a singleton, so the reconcile logic runs on plain values in
// tests and a fleet simulation can run many agents in one process.

/** Time, injectable so tests and simulations advance it by hand. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/**
 * Real time. With `unref`, a pending sleep does not keep the process alive by itself (a reporter's
 * waits must not hold a one-shot command or a stopping daemon open).
 */
export function realClock(options: { unref?: boolean } = {}): Clock {
  return {
    now: () => Date.now(),
    sleep: (ms, signal) =>
      new Promise<void>((resolve, reject) => {
        if (signal?.aborted) {
          reject(signal.reason);
          return;
        }
        const onAbort = () => {
          clearTimeout(timer);
          reject(signal?.reason);
        };
        const timer = setTimeout(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }, Math.max(0, ms));
        if (options.unref) timer.unref();
        signal?.addEventListener('abort', onAbort, { once: true });
      }),
  };
}

export const systemClock: Clock = realClock();

export type OutputStream = 'stdout' | 'stderr';

export interface RunRequest {
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd?: string;
  /** Added to (not replacing) the agent's environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** Kill the whole process group after this long. */
  readonly timeoutMs?: number;
  /** Aborting kills the whole process group. */
  readonly signal?: AbortSignal;
  /** Called for each complete line of output, as it arrives. */
  readonly onLine?: (stream: OutputStream, line: string) => void;
  readonly stdin?: string;
}

export interface RunResult {
  /** Exit code, or null when the process was ended by a signal. */
  readonly code: number | null;
  readonly signal: string | null;
  readonly timedOut: boolean;
  readonly aborted: boolean;
  readonly stdout: string;
  readonly stderr: string;
  /** The last lines of combined output, for state and error messages. */
  readonly tail: readonly string[];
  readonly durationMs: number;
}

/** Runs programs. The only way the agent starts a process. */
export interface Runner {
  run(request: RunRequest): Promise<RunResult>;
  /**
   * Stops every build an earlier agent started in `dir` or below and left running: its whole
   * process group, SIGTERM, then SIGKILL after a grace. Resolves with those groups' ids. Absent
   * where no process outlives its agent (a simulation's runner).
   */
  stopWithin?(dir: string): Promise<number[]>;
}
