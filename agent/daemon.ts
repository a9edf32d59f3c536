// `run`: the daemon. Converges at start, then keeps converging while sources change: polls on a
// jittered interval, and takes `converge --now`, SIGHUP and local file changes as triggers. One
// pass at a time; triggers that arrive during a pass collapse into one next pass.
import { createAgent, createLifecycleReporter } from './agent.js';
import { controlSocketPath, type Config } from './config.js';
import { RootFs } from './fs.js';
import { buildDesired } from './desired/desired.js';
import { createLogger } from './log.js';
import { ControlServer, type ControlOp } from './report/control.js';
import { PostConvergeHook } from './report/hook.js';
import { HttpServer } from './report/http.js';
import type { LifecycleReporter } from './report/lifecycle.js';
import { AgentMetrics, PhaseTimer } from './report/metrics.js';
import { createNotify } from './report/notify.js';
import { StatusFile } from './report/status-file.js';
import { Watchdog } from './report/watchdog.js';
import { systemClock, type Runner } from './ports.js';
import type { PassResult } from './reconcile.js';
import { ProcessRunner } from './runner.js';
import { KernelPolicy } from './apply/kernel.js';
import { Scheduler, type ScheduleOptions } from './schedule.js';
import { LifecycleWatch, SpotInterruptionMonitor, TargetLifecycleMonitor } from './sources/lifecycle.js';
import { LocalWatcher } from './sources/watch.js';
import { ASG_TAG } from './sources/index.js';
import type { Status, StatusPhase } from './status.js';

export interface DaemonOptions {
  /** Reads the configuration file again (SIGHUP); by default the `--config`/`--root` of this process. */
  readonly reload?: () => Promise<Config>;
}

export async function runDaemon(config: Config, options: DaemonOptions = {}): Promise<number> {
  const log = createLogger({ level: config.logLevel });
  const clock = systemClock;
  const fs = new RootFs(config.root);
  const notify = createNotify(process.env, { onError: (err) => log.warn({ event: 'notify.error', err: err.message }, `sd_notify: ${err.message}`) });
  const watchdog = new Watchdog(notify, process.env, clock);
  const statusFile = new StatusFile(fs, (err) => log.warn({ event: 'status.write-failed', err: err.message }, 'cannot write status.json'));
  // Metrics are only worth their cost when something can scrape them.
  const metrics = config.http.listen !== null ? new AgentMetrics({ clock }) : undefined;
  const loadMetrics = () => {
    metrics?.load().catch((err: unknown) => log.error({ event: 'metrics.load-failed', err: (err as Error).message }, `cannot load metrics: ${(err as Error).message}`));
  };
  const phases = new PhaseTimer(clock);
  let phase: StatusPhase = 'starting';
  let lastMessage = '';
  let lifecycle: LifecycleReporter | undefined;
  /** READY=1 sent: the first convergence has ended. */
  let ready = false;
  // A first rebuild can outlast any fixed TimeoutStartSec: until READY=1, ask systemd for more
  // time when it starts and then a little at a time, so a start that stops making progress still
  // times out (and the watchdog catches a wedged loop meanwhile).
  const EXTEND_EVERY_MS = 30_000;
  const extendStart = () => notify.extendTimeout(EXTEND_EVERY_MS * 3 * 1_000);
  const onStatus = (status: Status) => {
    if (!ready && status.phase === 'building' && phase !== 'building') extendStart();
    lifecycle?.update(status);
    statusFile.update(status);
    if (status.message !== lastMessage) {
      lastMessage = status.message;
      notify.status(status.message);
    }
    phase = status.phase;
    const ended = phases.observe(status);
    if (ended) log.info({ event: 'phase', phase: ended.phase, durationMs: ended.durationMs, desiredHash: ended.desiredHash, next: ended.next }, `${ended.phase} ended after ${ended.durationMs} ms`);
    metrics?.observe(status);
  };
  // prom-client loads once the first rebuild has been launched: from then on the main thread
  // only waits on the child, so the import (see report/metrics.ts) costs the boot path nothing.
  const processRunner = new ProcessRunner();
  const runner: Runner = {
    run: (request) => {
      const running = processRunner.run(request);
      if (metrics && !metrics.loaded && (phase === 'building' || phase === 'activating')) loadMetrics();
      return running;
    },
  };
  const edges = { clock, runner, onStatus, onProgress: () => watchdog.alive() };
  // Replaced whole on SIGHUP (between passes), so every closure below reads them, never a copy.
  let agent = await createAgent(config, log, edges);
  let reconciler = agent.reconciler;
  // Hooks run one after another, off the loop: a slow command never delays the next pass. The
  // command is read from the agent's config at each pass, so SIGHUP changes it.
  let hooks: Promise<unknown> = Promise.resolve();
  const afterPass = (result: PassResult, durationMs: number | undefined) => {
    if (durationMs !== undefined) metrics?.recordPass(result, durationMs);
    const status = reconciler.status;
    const hook = new PostConvergeHook(runner, agent.config.postConvergeCommand, log, (run) => metrics?.recordHook(run.outcome, run.durationMs));
    hooks = hooks.then(() => hook.run(result, status));
  };
  const timings = (c: Config): Partial<ScheduleOptions> => ({
    intervalMs: c.ssm.pollIntervalSeconds * 1000,
    jitter: c.ssm.pollJitter,
    quietPeriodMs: c.watch.quietPeriodMs,
    maxSettleMs: c.watch.maxSettleSeconds * 1000,
    maxBackoffMs: c.ssm.maxBackoffSeconds * 1000,
    cancelCheckMs: c.watch.cancelCheckSeconds * 1000,
  });
  const scheduler = new Scheduler(clock, {
    ...(timings(config) as Pick<ScheduleOptions, 'intervalMs' | 'jitter' | 'quietPeriodMs'>),
    throttleLevel: () => agent.ssm.throttleLevel,
    // What a pass would converge to, read as the pass reads it: polls see pushes through it.
    probe: async (signal) => {
      const s = await agent.sources.peek(signal);
      return buildDesired({ userData: s.userData, ssm: s.ssm, local: s.local }).hash;
    },
    // Only a build can be cancelled: nothing has been activated yet.
    cancellable: () => reconciler.status.phase === 'building',
    changed: async (signal) => (agent.config.ssm.enabled ? agent.ssm.changed(signal) : undefined),
  });

  const control = new ControlServer(controlSocketPath(config), async (op: ControlOp) => {
    switch (op) {
      case 'status':
        return { ok: true, status: reconciler.status };
      case 'converge': {
        // An operator asking means: read everything again, whatever the revision says.
        agent.ssm.invalidate('converge --now');
        agent.sources.forget();
        const result = await scheduler.runNow('converge --now');
        if (result === undefined) {
          const why = scheduler.state.blocked ? `the instance is leaving (${scheduler.state.blocked.reason})` : 'the agent is stopping';
          return { ok: false, error: `not converging: ${why}`, status: reconciler.status };
        }
        return { ok: result?.outcome !== 'failed' && result?.outcome !== 'invalid-input' && result?.outcome !== 'rolled-back', outcome: result?.outcome, status: reconciler.status };
      }
      case 'rollback': {
        const result = await scheduler.exclusive(() => reconciler.rollback());
        afterPass(result, undefined);
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
  const kernel = (c: Config) =>
    new KernelPolicy({
      policy: c.kernel.policy,
      window: c.kernel.rebootWindow,
      rebootCommand: c.kernel.rebootCommand,
      clock,
      runner,
      setInstanceHealth: (input) => agent.autoscaling.setInstanceHealth(input.InstanceId, input.HealthStatus, input.ShouldRespectGracePeriod),
      log: (level, event, message, fields) => log[level]({ event, ...fields }, message),
    });
  let kernelPolicy = kernel(config);
  const kernelTimer = new AbortController();
  let kernelWait: number | undefined;
  // After each pass: a committed generation that changed the kernel is acted on by policy.
  const kernelCheck = async (): Promise<void> => {
    const required = reconciler.rebootRequired;
    if (!required) return;
    const instanceId = reconciler.status.instanceId;
    const group = agent.config.kernel.policy === 'replace' ? await agent.imds.get(`latest/meta-data/tags/instance/${ASG_TAG}`).catch(() => undefined) ?? (instanceId ? (await agent.autoscaling.describeInstance(instanceId).catch(() => undefined))?.group : undefined) : undefined;
    const action = kernelPolicy.decide(required, group !== undefined);
    if (action.kind === 'wait') {
      if (kernelWait === action.untilMs) return;
      kernelWait = action.untilMs;
      log.info({ event: 'kernel.reboot-wait', until: new Date(action.untilMs).toISOString() }, `reboot required; waiting for the reboot window (${new Date(action.untilMs).toISOString()})`);
      clock.sleep(action.untilMs - clock.now(), kernelTimer.signal).then(
        () => {
          kernelWait = undefined;
          void scheduler.exclusive(kernelCheck);
        },
        () => undefined,
      );
      return;
    }
    if (action.kind === 'reboot' || action.kind === 'replace') {
      if (scheduler.state.blocked) return;
      await kernelPolicy.act(action, required.storePath, instanceId);
    }
  };
  const lifecycleWatch = config.termination.enabled
    ? new LifecycleWatch([new TargetLifecycleMonitor(agent.imds), new SpotInterruptionMonitor(agent.imds)], {
        clock,
        intervalMs: config.termination.checkSeconds * 1000,
        onChange: (notice) => {
          if (notice) {
            log.warn({ event: 'leaving', kind: notice.kind, detail: notice.detail }, `${notice.detail}: no new rebuild starts`);
            scheduler.block(notice.detail);
            reconciler.setLeaving(notice.detail);
            notify.stopping(`leaving: ${notice.detail}`);
          } else {
            log.info({ event: 'leaving.ended' }, 'the instance is no longer leaving; convergence resumes');
            reconciler.setLeaving(undefined);
            scheduler.unblock();
            if (notify.enabled) notify.send({ READY: 1 });
          }
        },
        onError: (kind, err, inARow) => {
          if (inARow === 1 || inARow % 20 === 0) log.warn({ event: 'leaving.check-failed', kind, err: err.message, inARow }, `cannot read the ${kind} notice from IMDS: ${err.message}`);
        },
      })
    : undefined;
  await lifecycleWatch?.start();
  const localWatcher = config.local.watch
    ? new LocalWatcher({
        baseConfiguration: fs.resolve(config.local.baseConfiguration),
        modulesDir: fs.resolve(config.local.modulesDir),
        onChange: (reason) => {
          log.info({ event: 'local.changed', reason }, `local input ${reason}`);
          scheduler.trigger(reason);
        },
        onError: (err) => log.warn({ event: 'local.watch-error', err: err.message }, `watching local inputs: ${err.message}`),
      })
    : undefined;
  // Watching starts before the first pass reads the inputs, so no change falls between the two.
  // (The image's configuration.nix was adopted as the base file in reconciler.start(), before.)
  await localWatcher?.start().catch((err: unknown) => log.warn({ event: 'local.watch-failed', err: (err as Error).message }, `cannot watch local inputs: ${(err as Error).message}`));
  lifecycle = createLifecycleReporter(agent, log, { onCompleted: (result) => metrics?.lifecycleCompleted(result), onHeartbeat: () => metrics?.heartbeat() });
  lifecycle?.update(reconciler.status);
  lifecycle?.start();
  // Health checks must answer during the first rebuild: /healthz while the image's good
  // generation runs, /readyz 503 until the first convergence.
  const http =
    config.http.listen !== null
      ? new HttpServer({
          listen: config.http.listen,
          status: () => reconciler.status,
          hasGoodGeneration: () => reconciler.status.lastGood !== undefined || reconciler.durable?.lastGood !== undefined,
          ...(metrics ? { metrics: () => metrics.render() } : {}),
          log,
        })
      : undefined;
  // Convergence matters more than its report: a port already taken is logged, not fatal.
  await http?.start().catch((err: unknown) => log.error({ event: 'http.listen-failed', listen: config.http.listen, err: (err as Error).message }, `cannot serve HTTP on ${config.http.listen}: ${(err as Error).message}`));
  await control.start();
  watchdog.start();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ event: 'stop', signal }, `stopping on ${signal}`);
    notify.stopping('stopping');
    kernelTimer.abort();
    // Watching ends first, so nothing queues a pass while the one in hand finishes.
    void localWatcher?.stop();
    void lifecycleWatch?.stop();
    scheduler.stop();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Without a file to read again (an embedding caller), SIGHUP keeps the configuration and converges.
  const reloadConfig = options.reload ?? (async () => agent.config);
  let reloading: Promise<void> | undefined;
  process.on('SIGHUP', () => {
    if (stopping || reloading) return;
    notify.reloading();
    reloading = scheduler
      .exclusive(async () => {
        let next: Config;
        try {
          next = await reloadConfig();
        } catch (err) {
          // A bad file keeps the running configuration: a typo must not stop convergence.
          log.error({ event: 'reload.failed', err: (err as Error).message }, `SIGHUP: the configuration was not reloaded: ${(err as Error).message}`);
          return;
        }
        const nextAgent = await createAgent(next, log, edges);
        await nextAgent.reconciler.start();
        if (scheduler.state.blocked) nextAgent.reconciler.setLeaving(scheduler.state.blocked.reason);
        agent = nextAgent;
        reconciler = nextAgent.reconciler;
        kernelPolicy = kernel(next);
        log.level = next.logLevel;
        scheduler.reconfigure(timings(next));
        log.info({ event: 'reload', root: next.root }, 'SIGHUP: configuration reloaded (http.listen, controlSocket, local.watch and termination apply at restart)');
      })
      .finally(() => {
        reloading = undefined;
        agent.ssm.invalidate('SIGHUP');
        // The pass that follows ends RELOADING=1 with READY=1; while leaving, READY=1 is sent now.
        if (scheduler.state.blocked || scheduler.isStopped) notify.send({ READY: 1 });
        else void scheduler.runNow('SIGHUP');
      });
  });

  const extending = notify.enabled
    ? setInterval(() => {
        if (!ready) extendStart();
      }, EXTEND_EVERY_MS)
    : undefined;
  extending?.unref();
  await scheduler.run(async (reason, signal) => {
    watchdog.alive();
    const started = clock.now();
    const result = await reconciler.converge(reason, signal);
    afterPass(result, clock.now() - started);
    await kernelCheck().catch((err: unknown) => log.error({ event: 'kernel.policy-failed', err: (err as Error).message }, `kernel policy: ${(err as Error).message}`));
    if (metrics && !metrics.loaded) loadMetrics();
    if (!ready) {
      ready = true;
      clearInterval(extending);
      notify.ready(reconciler.status.message);
    } else if (notify.enabled) {
      // After SIGHUP, READY=1 ends the RELOADING=1 state.
      notify.send({ READY: 1 });
    }
    watchdog.alive();
    return result;
  }, () => watchdog.alive());

  watchdog.stop();
  kernelTimer.abort();
  await localWatcher?.stop();
  await lifecycleWatch?.stop();
  await lifecycle?.stop();
  await http?.stop();
  await hooks;
  await control.stop();
  await statusFile.flush();
  log.info({ event: 'stopped' }, 'stopped');
  return 0;
}
