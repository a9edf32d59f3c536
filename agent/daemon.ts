// `run`: the daemon's composition root. The one place below cli.ts that touches the process: it
// reads the environment, builds systemd's notify and watchdog from it, turns SIGTERM, SIGINT and
// SIGHUP into the loop's signals, and removes its handlers when the loop has stopped. Everything
// else (the loop, the parts built from the configuration) lives in loop.ts and takes these in.
import type { Config } from './config.js';
import path from 'node:path';
import { InvalidInputError } from './errors.js';
import { LOCK_FILE, lockRoot } from './lock.js';
import { createLogger, type Logger } from './log.js';
import { startDaemon, type DaemonSignal } from './loop.js';
import { realClock, type Clock } from './ports.js';
import { createNotify, type Notify } from './report/notify.js';
import { Watchdog } from './report/watchdog.js';

export interface DaemonOptions {
  /** Reads the configuration file again (SIGHUP); by default the `--config`/`--root` of this process. */
  readonly reload?: () => Promise<Config>;
}

const SIGNALS: readonly DaemonSignal[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

export async function runDaemon(config: Config, options: DaemonOptions = {}): Promise<number> {
  const env = process.env;
  const log = createLogger({ level: config.logLevel });
  const clock = realClock();
  const notify = createNotify(env, { onError: (err) => log.warn({ event: 'notify.error', err: err.message }, `sd_notify: ${err.message}`) });
  const lock = await lockRoot(config.root, process.pid).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EACCES' && err.code !== 'EPERM') throw err;
    throw new InvalidInputError(`run needs root (${err.message})`, path.join(config.root, LOCK_FILE), { errno: err.code }, { cause: err });
  });
  if (lock.unheld) log.warn({ event: 'lock.unheld', reason: lock.unheld }, `no lock on the root: ${lock.unheld}`);
  try {
    return await supervise(config, options, { log, clock, env, notify, rootLocked: lock.unheld === undefined });
  } finally {
    await lock.release();
  }
}

async function supervise(config: Config, options: DaemonOptions, edges: { log: Logger; clock: Clock; env: NodeJS.ProcessEnv; notify: Notify; rootLocked: boolean }): Promise<number> {
  const { log, clock, env, notify, rootLocked } = edges;
  const daemon = await startDaemon(config, {
    log,
    clock,
    env,
    notify,
    rootLocked,
    watchdog: new Watchdog(notify, env, clock),
    // The reporter's waits must never hold a stopping process open by themselves.
    reporterClock: realClock({ unref: true }),
    ...(options.reload ? { reload: options.reload } : {}),
  });
  const handlers = SIGNALS.map((signal) => {
    const handler = () => daemon.signal(signal);
    process.on(signal, handler);
    return () => process.off(signal, handler);
  });
  try {
    return await daemon.done;
  } finally {
    for (const remove of handlers) remove();
  }
}
