// `run`: the daemon. Converges at start, then keeps converging while sources change: polls on a
// jittered interval, and takes `converge --now`, SIGHUP and local file changes as triggers. One
// pass at a time; triggers that arrive during a pass collapse into one next pass.
import { createAgent } from './agent.js';
import type { Config } from './config.js';
import { RootFs } from './fs.js';
import { createLogger } from './log.js';
import { ControlServer, type ControlOp } from './report/control.js';
import { createNotify } from './report/notify.js';
import { StatusFile } from './report/status-file.js';
import { Watchdog } from './report/watchdog.js';
import { systemClock } from './ports.js';
import { Scheduler } from './schedule.js';
import type { Status } from './status.js';

export async function runDaemon(config: Config): Promise<number> {
  const log = createLogger({ level: config.logLevel });
  const clock = systemClock;
  const fs = new RootFs(config.root);
  const notify = createNotify(process.env, { onError: (err) => log.warn({ event: 'notify.error', err: err.message }, `sd_notify: ${err.message}`) });
  const watchdog = new Watchdog(notify, process.env, clock);
  const statusFile = new StatusFile(fs, (err) => log.warn({ event: 'status.write-failed', err: err.message }, 'cannot write status.json'));
  let lastMessage = '';
  const onStatus = (status: Status) => {
    statusFile.update(status);
    if (status.message !== lastMessage) {
      lastMessage = status.message;
      notify.status(status.message);
    }
  };
  const agent = await createAgent(config, log, { clock, onStatus, onProgress: () => watchdog.alive() });
  const reconciler = agent.reconciler;
  const scheduler = new Scheduler(clock, {
    intervalMs: config.ssm.pollIntervalSeconds * 1000,
    jitter: config.ssm.pollJitter,
    quietPeriodMs: config.watch.quietPeriodMs,
  });

  const control = new ControlServer(fs.resolve(config.controlSocket), async (op: ControlOp) => {
    switch (op) {
      case 'status':
        return { ok: true, status: reconciler.status };
      case 'converge': {
        const result = await scheduler.runNow('converge --now');
        return { ok: result?.outcome !== 'failed' && result?.outcome !== 'invalid-input' && result?.outcome !== 'rolled-back', outcome: result?.outcome, status: reconciler.status };
      }
      case 'rollback': {
        const result = await scheduler.exclusive(() => reconciler.rollback());
        return { ok: result.outcome === 'rolled-back', outcome: result.outcome, status: reconciler.status };
      }
      case 'suspend':
        await scheduler.exclusive(() => reconciler.suspend('control socket'));
        return { ok: true, status: reconciler.status };
      case 'resume':
        await scheduler.exclusive(() => reconciler.resume());
        scheduler.trigger('resume');
        return { ok: true, status: reconciler.status };
    }
  });

  await reconciler.start();
  await control.start();
  watchdog.start();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ event: 'stop', signal }, `stopping on ${signal}`);
    notify.stopping('stopping');
    scheduler.stop();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    notify.reloading();
    scheduler.trigger('SIGHUP');
  });

  let ready = false;
  await scheduler.run(async (reason, signal) => {
    watchdog.alive();
    const result = await reconciler.converge(reason, signal);
    if (!ready) {
      ready = true;
      notify.ready(reconciler.status.message);
    } else if (notify.enabled) {
      // After SIGHUP, READY=1 ends the RELOADING=1 state.
      notify.send({ READY: 1 });
    }
    watchdog.alive();
    return result;
  }, () => watchdog.alive());

  watchdog.stop();
  await control.stop();
  await statusFile.flush();
  log.info({ event: 'stopped' }, 'stopped');
  return 0;
}
