// A live daemon (`run`) on a sandboxed instance, driven by events: a pass is triggered with SIGHUP
// (which also makes it read SSM again) and awaited on its `pass.end` log line, never on a sleep.
import { deepMerge, Instance, LiveLog, terminate, waitFor, type InstanceOptions, type LogLine, type Running, type StatusJson } from './e2e.js';
import { readFile } from 'node:fs/promises';

export class LiveDaemon {
  readonly log: LiveLog;
  private exited = false;

  private constructor(
    readonly i: Instance,
    readonly run: Running,
  ) {
    this.log = new LiveLog(run);
    void run.done.then(() => (this.exited = true));
  }

  /** `run` on `i`, with `env` added to the agent's environment. */
  static start(i: Instance, env: Record<string, string> = {}): LiveDaemon {
    return new LiveDaemon(i, i.start(['run'], env));
  }

  get alive(): boolean {
    return !this.exited;
  }

  passes(): LogLine[] {
    return this.log.of('pass.end');
  }

  /** Waits until more than `count` passes have ended; the last one. */
  async passAfter(count: number, timeoutMs = 90_000): Promise<LogLine> {
    // An exit ends the wait at once (waitFor would read a throwing check as "not yet").
    await waitFor(`pass ${count + 1} to end`, async () => (this.exited || this.passes().length > count ? true : undefined), timeoutMs, 10);
    if (this.passes().length <= count) throw new Error(`the daemon ended:\n${(await this.run.done).stderr.slice(-3000)}`);
    return this.passes().at(-1) as LogLine;
  }

  /** Triggers a pass (SIGHUP) and waits for it to end. */
  async pass(timeoutMs?: number): Promise<LogLine> {
    const n = this.passes().length;
    this.run.child.kill('SIGHUP');
    return this.passAfter(n, timeoutMs);
  }

  async status(): Promise<StatusJson> {
    return JSON.parse(await readFile(this.i.file('run/nixos-ec2-agent/status.json'), 'utf8')) as StatusJson;
  }

  /** Log lines at warn level or above since line `from`. */
  problems(from = 0): LogLine[] {
    return this.log.events.slice(from).filter((e) => typeof e.level === 'number' ? e.level >= 40 : /warn|error|fatal/.test(String(e.level)));
  }

  async stop(): Promise<{ forced: boolean }> {
    return terminate(this.run, 15_000);
  }
}

/** A fresh instance whose daemon has ended its first pass converged; stopped and removed after. */
export async function withDaemon(
  options: InstanceOptions & { beforeStart?: (i: Instance) => Promise<void>; env?: Record<string, string> },
  body: (d: LiveDaemon, i: Instance) => Promise<void>,
): Promise<void> {
  const { beforeStart, env, ...launch } = options;
  const i = await Instance.launch({
    ...launch,
    config: deepMerge({ ssm: { pollIntervalSeconds: 3600 }, watch: { quietPeriodMs: 50 } }, options.config ?? {}),
  });
  await beforeStart?.(i);
  const d = LiveDaemon.start(i, env);
  try {
    const first = await d.passAfter(0);
    if (first.outcome !== 'converged') throw new Error(`the first pass ended ${String(first.outcome)}: ${JSON.stringify(first)}`);
    await body(d, i);
  } finally {
    if (d.alive) await d.stop();
    await i.close();
  }
}
