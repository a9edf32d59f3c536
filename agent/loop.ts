// The daemon as one event loop, after comin's manager.Run(): events come in (a pass started or
// finished, a status from the reconciler, a local file change, the instance leaving or staying, a
// control command, a signal, a reload done, the kernel's reboot window), each has one small handler
// in `handle`, and every piece of the loop's state is changed there and nowhere else. Long work (a
// pass, a reload, a kernel check) runs beside the loop and comes back as an event.
//
// Nothing here touches the process: no signal handler, no environment read, no global timer. The
// composition root (daemon.ts) hands in the environment, a clock and the signals, so a simulation
// runs many of these in one process and stops each on its own.
import path from 'node:path';
import { createAgent, createLifecycleReporter, type Agent, type AgentEdges } from './agent.js';
import { KernelPolicy } from './apply/kernel.js';
import { controlSocketPath, type Config } from './config.js';
import { TransientError } from './errors.js';
import { RootFs } from './fs.js';
import type { Logger } from './log.js';
import type { Clock, Runner } from './ports.js';
import { desiredHashOf, NewerDesired } from './newer.js';
import { rollbackAnswer, type PassResult } from './reconcile.js';
import { ControlClient, ControlServer, STATUS_ANSWER_MS, type ControlOp } from './report/control.js';
import { PostConvergeHook } from './report/hook.js';
import { HttpServer } from './report/http.js';
import type { LifecycleReporter } from './report/lifecycle.js';
import { AgentMetrics, PhaseTimer } from './report/metrics.js';
import type { Notify } from './report/notify.js';
import { StatusFile } from './report/status-file.js';
import { beatEveryMs, watchedClock, watchedRunner, type Watchdog } from './report/watchdog.js';
import { ProcessRunner } from './runner.js';
import { scheduleTimings, Scheduler } from './schedule.js';
import { ASG_TAG } from './sources/index.js';
import { imdsMonitors, LeavingWatch, type LeavingNotice } from './sources/leaving.js';
import { LocalWatcher } from './sources/watch.js';
import { beforeFirstRebuild, FIRST_REBUILD_WAIT_MS, passExitCode, type Status, type StatusPhase } from './status.js';

/** The signals the daemon acts on; the composition root decides which process signals they are. */
export type DaemonSignal = 'SIGTERM' | 'SIGINT' | 'SIGHUP';

export interface DaemonDeps {
  readonly log: Logger;
  readonly clock: Clock;
  /** The agent's environment: AWS settings for the SDK, the children's environment. */
  readonly env: NodeJS.ProcessEnv;
  readonly notify: Notify;
  readonly watchdog: Watchdog;
  /** Reads the configuration again (SIGHUP); without it SIGHUP keeps the configuration and converges. */
  readonly reload?: () => Promise<Config>;
  /** Clients and runner to use instead of the real ones (a simulation). */
  readonly edges?: Pick<AgentEdges, 'imds' | 'ssm' | 'autoscaling' | 'runner' | 'credentials'>;
  /** Hears every status after the daemon's own sinks (a simulation watching its agents). */
  readonly onStatus?: (status: Status) => void;
  /** The clock the Auto Scaling reporter waits on; by default `clock`. */
  readonly reporterClock?: Clock;
  /**
   * The caller holds the root's lock, which every daemon takes before it starts: no other can be
   * running, and the control socket need not be asked.
   */
  readonly rootLocked?: boolean;
}

/** What the caller holds: a running daemon to signal and wait for. */
export interface Daemon {
  signal(signal: DaemonSignal): void;
  /** Resolves with the exit code once everything the daemon started has stopped. */
  readonly done: Promise<number>;
  /** The latest status (for tests and simulations). */
  readonly status: Status;
}

type ControlReply = (answer: unknown) => void;

type DaemonEvent =
  | { readonly kind: 'status'; readonly status: Status }
  | { readonly kind: 'pass-finished'; readonly result: PassResult; readonly durationMs: number | undefined }
  | { readonly kind: 'local-change'; readonly reason: string }
  | { readonly kind: 'leaving'; readonly notice: LeavingNotice | undefined }
  | { readonly kind: 'target-state'; readonly state: string; readonly everyMs: number }
  | { readonly kind: 'fresh-pass'; readonly reply: (result: PassResult | undefined) => void }
  | { readonly kind: 'control'; readonly op: ControlOp; readonly reply: ControlReply }
  | { readonly kind: 'signal'; readonly signal: DaemonSignal }
  | { readonly kind: 'reloaded'; readonly parts: Parts | undefined; readonly cause: string }
  | { readonly kind: 'own-configuration-changed'; readonly next: Config }
  | { readonly kind: 'kernel-wait'; readonly untilMs: number }
  | { readonly kind: 'kernel-wake' }
  | { readonly kind: 'watch-local' };

/** Everything built from one configuration. SIGHUP replaces it whole: never two alive at once. */
interface Parts {
  readonly config: Config;
  readonly agent: Agent;
  readonly kernel: KernelPolicy;
  readonly lifecycle: LifecycleReporter | undefined;
  readonly leaving: LeavingWatch | undefined;
  readonly local: LocalWatcher | undefined;
}

// A first rebuild can outlast any fixed TimeoutStartSec: until READY=1, ask systemd for more
// time when it starts and then a little at a time, so a start that stops making progress still
// times out (and the watchdog catches a wedged loop meanwhile).
const EXTEND_EVERY_MS = 30_000;

export async function startDaemon(config: Config, deps: DaemonDeps): Promise<Daemon> {
  const loop = new DaemonLoop(config, deps);
  try {
    await loop.start();
  } catch (err) {
    // What did start is stopped again: a daemon that cannot start leaves nothing running.
    await loop.abandon();
    throw err;
  }
  return loop;
}

class DaemonLoop implements Daemon {
  // The loop's state: changed only in `handle` (and in start/finish, before and after the loop).
  private parts!: Parts;
  private phase: StatusPhase = 'starting';
  private lastMessage = '';
  /** READY=1 sent: the first convergence has ended. */
  private ready = false;
  private stopping = false;
  private reloading = false;
  /** An operator's suspend or rollback waiting on the pass in hand: its build is given up as it starts. */
  private giveUpBuild: string | undefined;
  /** The latest reloads a switch caused, oldest first: what tells a flip (flipsBack). */
  private ownReloads: readonly OwnReload[] = [];
  private leavingNotice: LeavingNotice | undefined;
  private kernelWaitUntil: number | undefined;
  /** The local files' watch, waiting for the first rebuild to be under way. */
  private localWaiting: LocalWatcher | undefined;
  private readonly newer: NewerDesired;

  private readonly fs: RootFs;
  private readonly runner: Runner;
  private readonly metrics: AgentMetrics | undefined;
  private readonly phases: PhaseTimer;
  private readonly statusFile: StatusFile;
  private readonly scheduler: Scheduler;
  private readonly control: ControlServer;
  private http: HttpServer | undefined;
  /** Aborted at stop: ends every wait the loop started (kernel window, start extension). */
  private readonly stopped = new AbortController();
  /** Hooks run one after another, off the loop: a slow command never delays the next pass. */
  private hooks: Promise<unknown> = Promise.resolve();
  /** Work started by handlers; waited for at stop so nothing outlives the daemon. */
  private readonly inFlight = new Set<Promise<unknown>>();
  private resolveDone!: (code: number) => void;
  readonly done: Promise<number>;

  constructor(
    private readonly config: Config,
    private readonly deps: DaemonDeps,
  ) {
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    const { log, clock } = deps;
    this.fs = new RootFs(config.root);
    this.statusFile = new StatusFile(this.fs, (err) => log.warn({ event: 'status.write-failed', err: err.message }, 'cannot write status.json'));
    // Metrics are only worth their cost when something can scrape them.
    this.metrics = config.http.listen !== null ? new AgentMetrics({ clock }) : undefined;
    this.phases = new PhaseTimer(clock);
    // A pass waits on its children (a build may take an hour) without a step of the loop between.
    this.runner = watchedRunner(deps.edges?.runner ?? new ProcessRunner(deps.env), deps.watchdog, clock);
    this.newer = new NewerDesired(() => this.parts, clock);
    this.scheduler = new Scheduler(clock, {
      ...scheduleTimings(config),
      tickMs: beatEveryMs(deps.watchdog.intervalUsec),
      throttleLevel: () => this.parts.agent.ssm.throttleLevel,
      // Only a build can be cancelled: nothing has been activated yet.
      cancellable: () => this.reconciler.status.phase === 'building',
      changed: (signal) => this.newer.check(signal, false),
      // What a pass would converge to, read as the pass reads it: polls see pushes through it.
      probe: async (signal) => desiredHashOf(await this.parts.agent.sources.peek(signal), clock.now()),
    });
    this.control = new ControlServer(controlSocketPath(config), (op) => new Promise((reply) => this.post({ kind: 'control', op, reply })));
  }

  get status(): Status {
    return this.reconciler.status;
  }

  private get reconciler() {
    return this.parts.agent.reconciler;
  }

  signal(signal: DaemonSignal): void {
    this.post({ kind: 'signal', signal });
  }

  /** Every event enters here; handlers run one at a time, in order. */
  private post(event: DaemonEvent): void {
    this.handle(event);
  }

  private handle(event: DaemonEvent): void {
    switch (event.kind) {
      case 'status':
        return this.onStatus(event.status);
      case 'pass-finished':
        return this.onPassFinished(event.result, event.durationMs);
      case 'local-change':
        this.deps.log.info({ event: 'local.changed', reason: event.reason }, `local input ${event.reason}`);
        this.scheduler.trigger(event.reason);
        return;
      case 'leaving':
        return this.onLeaving(event.notice);
      case 'target-state':
        this.parts?.lifecycle?.observeTarget(event.state, event.everyMs);
        return;
      case 'fresh-pass':
        // The group took the instance out of its warm pool: the launch hook waits for this pass.
        this.spawn(this.convergeAfresh('left the warm pool').then(event.reply, () => event.reply(undefined)));
        return;
      case 'control':
        return this.onControl(event.op, event.reply);
      case 'signal':
        if (event.signal === 'SIGHUP') return this.onReload('SIGHUP');
        return this.onStop(event.signal);
      case 'own-configuration-changed':
        return this.onOwnConfigurationChanged(event.next);
      case 'reloaded':
        return this.onReloaded(event.parts, event.cause);
      case 'kernel-wait':
        return this.onKernelWait(event.untilMs);
      case 'watch-local':
        return this.onWatchLocal();
      case 'kernel-wake':
        this.kernelWaitUntil = undefined;
        this.spawn(this.scheduler.exclusive(() => this.kernelCheck()));
        return;
    }
  }

  private onStatus(status: Status): void {
    const { notify } = this.deps;
    if (this.giveUpBuild !== undefined && status.phase === 'building') this.scheduler.cancelBuild(this.giveUpBuild);
    if (!this.ready && status.phase === 'building' && this.phase !== 'building') this.extendStart();
    this.parts?.lifecycle?.update(status);
    if (this.localWaiting && !beforeFirstRebuild(status)) this.onWatchLocal();
    this.statusFile.update(status);
    if (status.message !== this.lastMessage) {
      this.lastMessage = status.message;
      notify.status(status.message);
    }
    this.phase = status.phase;
    const ended = this.phases.observe(status);
    if (ended) this.deps.log.info({ event: 'phase', phase: ended.phase, durationMs: ended.durationMs, desiredHash: ended.desiredHash, next: ended.next }, `${ended.phase} ended after ${ended.durationMs} ms`);
    this.metrics?.observe(status);
    this.deps.onStatus?.(status);
  }

  /** A pass (durationMs set) or an operator's rollback ended. */
  private onPassFinished(result: PassResult, durationMs: number | undefined): void {
    const { notify } = this.deps;
    if (durationMs !== undefined) this.metrics?.recordPass(result, durationMs);
    const status = this.reconciler.status;
    const hook = new PostConvergeHook(this.runner, this.parts.config.postConvergeCommand, this.deps.log, (run) => this.metrics?.recordHook(run.outcome, run.durationMs));
    this.hooks = this.hooks.then(() => hook.run(result, status));
    if (result.outcome === 'converged' || result.outcome === 'rolled-back') this.checkOwnConfiguration();
    if (durationMs === undefined) return;
    if (!this.ready) {
      // A first build cancelled by a newer desired state has not ended the first convergence.
      if (!status.firstConvergenceDone) return;
      this.ready = true;
      notify.ready(status.message);
    } else if (notify.enabled) {
      // After SIGHUP, READY=1 ends the RELOADING=1 state.
      notify.send({ READY: 1 });
    }
  }

  private onKernelWait(untilMs: number): void {
    const { log, clock } = this.deps;
    if (this.kernelWaitUntil === untilMs) return;
    this.kernelWaitUntil = untilMs;
    log.info({ event: 'kernel.reboot-wait', until: new Date(untilMs).toISOString() }, `reboot required; waiting for the reboot window (${new Date(untilMs).toISOString()})`);
    clock.sleep(untilMs - clock.now(), this.stopped.signal).then(
      () => this.post({ kind: 'kernel-wake' }),
      () => undefined,
    );
  }

  private onLeaving(notice: LeavingNotice | undefined): void {
    const { log } = this.deps;
    this.leavingNotice = notice;
    // systemd hears of it through STATUS= alone: it takes STOPPING=1 as the service's own stop,
    // kills it TimeoutStopSec later and ignores READY=1 meanwhile, and the agent keeps running
    // (health checks, an instance that stays after all) until it is told to stop.
    if (notice) {
      log.warn({ event: 'leaving', kind: notice.kind, detail: notice.detail }, `${notice.detail}: no new rebuild starts`);
      this.scheduler.block(notice.detail);
      this.reconciler.setLeaving(notice.detail);
    } else {
      log.info({ event: 'leaving.ended' }, 'the instance is no longer leaving; convergence resumes');
      this.reconciler.setLeaving(undefined);
      this.scheduler.unblock();
    }
  }

  /**
   * One pass now that reads every source again, whatever the revision says; undefined when none
   * will run (stopping, or the instance is leaving).
   */
  private async convergeAfresh(reason: string): Promise<PassResult | undefined> {
    if (this.scheduler.state.running) {
      // A build of what the sources still say is let finish: only a newer desired state cancels
      // it (runNow below). Otherwise the next pass starts when this one ends.
      const newer = await this.newer.check(undefined, true).catch(() => undefined);
      if (newer === undefined) await this.scheduler.exclusive(async () => undefined);
    }
    this.parts.agent.ssm.invalidate(reason);
    this.parts.agent.sources.forget();
    return this.scheduler.runNow(reason);
  }

  private onControl(op: ControlOp, reply: ControlReply): void {
    // What an operator asked of the instance, in its journal beside what came of it; a status
    // read (`status --wait` asks every second) changes nothing and is not logged.
    if (op !== 'status') this.deps.log.info({ event: 'control.request', op }, `${op} asked over the control socket`);
    const answer = async (): Promise<unknown> => {
      switch (op) {
        case 'status':
          return { ok: true, status: this.reconciler.status };
        case 'converge': {
          // An operator asking means: read everything again, whatever the revision says.
          const result = await this.convergeAfresh('converge --now');
          if (result === undefined) {
            const why = this.leavingNotice ? `the instance is leaving (${this.leavingNotice.detail})` : 'the agent is stopping';
            return { ok: false, error: `not converging: ${why}`, status: this.reconciler.status };
          }
          return { ok: passExitCode(result.outcome) === 0, outcome: result.outcome, status: this.reconciler.status };
        }
        case 'rollback': {
          // An operator rolling back wants the previous good generation now, not after an hour's
          // build of what is being rolled back from: a build that has not activated is given up,
          // as for a suspend. With nothing to go back to, that is said at once, and the pass in
          // hand goes on.
          if ((await this.reconciler.rollbackTarget()) === undefined) return rollbackAnswer(this.reconciler.refuseRollback(), this.reconciler.status);
          const result = await this.givingUpBuild('rollback', () => this.reconciler.rollback());
          if (!result.refused) this.post({ kind: 'pass-finished', result, durationMs: undefined });
          return rollbackAnswer(result, this.reconciler.status);
        }
        case 'suspend': {
          // A suspend means: change nothing more here. A build that has not activated is given up
          // as a newer desired state gives it up; waited for, it would hold the suspend for as long
          // as the build takes (an hour) and then switch to what it built.
          await this.givingUpBuild('suspend', () => this.reconciler.suspend('control socket'));
          return { ok: true, status: this.reconciler.status };
        }
        case 'resume':
          await this.scheduler.exclusive(() => this.reconciler.resume());
          this.scheduler.trigger('resume');
          return { ok: true, status: this.reconciler.status };
      }
    };
    this.spawn(answer().then(reply, (err: unknown) => reply({ ok: false, error: (err as Error).message })));
  }

  private onStop(signal: DaemonSignal): void {
    if (this.stopping) return;
    this.stopping = true;
    this.deps.log.info({ event: 'stop', signal }, `stopping on ${signal}`);
    this.deps.notify.stopping('stopping');
    this.stopped.abort();
    // Watching ends first, so nothing queues a pass while the one in hand finishes.
    void this.parts.local?.stop();
    void this.parts.leaving?.stop();
    this.scheduler.stop();
  }

  /**
   * The agent is configured by the system it switches (the NixOS module writes its configuration
   * file into /etc), so a switch may have changed it: user data or SSM setting the agent's own
   * prefixes, probes or timings. Once a switch (or a switch back) has ended, the file is read
   * again, and when it says something else than the running configuration, it is taken as SIGHUP
   * takes it. Without this, settings pushed through the agent took effect only at its next start.
   */
  private checkOwnConfiguration(): void {
    const reload = this.deps.reload;
    if (!reload || this.stopping) return;
    const running = this.parts.config;
    this.spawn(
      reload().then(
        (next) => {
          if (!sameConfiguration(next, running)) this.post({ kind: 'own-configuration-changed', next });
        },
        // A file that does not parse is what a reload would refuse too: it is not taken.
        (err: unknown) => this.deps.log.error({ event: 'reload.failed', cause: 'switch', err: (err as Error).message }, `switch: the configuration was not reloaded: ${(err as Error).message}`),
      ),
    );
  }

  /**
   * Runs an operator's request once no pass runs, giving up (`reason`) the build of the pass in
   * hand: at once when it is building, or as soon as it starts building when the request finds it
   * still reading its sources or rendering (onStatus). A pass that activates goes on to its end.
   */
  private async givingUpBuild<T>(reason: string, fn: () => Promise<T>): Promise<T> {
    const before = this.scheduler.state.cancelled;
    this.giveUpBuild = reason;
    this.scheduler.cancelBuild(reason);
    try {
      return await this.scheduler.exclusive(fn);
    } finally {
      if (this.giveUpBuild === reason) this.giveUpBuild = undefined;
      // A first pass cut short has not ended the first convergence (READY=1, status --wait): the
      // pass that follows, suspended or held at once, ends it.
      if (this.scheduler.state.cancelled > before) this.scheduler.trigger(reason);
    }
  }

  /**
   * A switch rewrote the agent's configuration. Taken, unless taking it goes back once more to a
   * configuration that switches led away from and back to: the sources then say one thing through
   * one configuration's prefixes and the other through the other's, and every flip is a rebuild and
   * a switch on every instance, for ever. The configuration in hand stays (its desired state runs,
   * so the sources read through it converge to what runs), and SIGHUP still takes the file.
   */
  private onOwnConfigurationChanged(next: Config): void {
    const running = this.parts.config;
    if (!flipsBack(this.ownReloads, configKey(running), configKey(next), this.deps.clock.now())) return this.onReload('switch');
    const changed = changedSettings(running, next);
    this.deps.log.error(
      { event: 'reload.refused', cause: 'switch', settings: changed },
      `switch: the configuration was not reloaded: it would flip back and forth (${changed.join(', ')}), since the generation each one converges to writes the other; fix what the sources set for the agent's own settings, then reload (SIGHUP) to take the file`,
    );
  }

  /** `cause`: SIGHUP, or a switch that changed the configuration file (checkOwnConfiguration). */
  private onReload(cause: string): void {
    if (this.stopping || this.reloading) return;
    this.reloading = true;
    this.deps.notify.reloading();
    this.spawn(this.scheduler.exclusive(() => this.rebuildParts(cause)).then((parts) => this.post({ kind: 'reloaded', parts, cause })));
  }

  /** Reads the configuration again and builds every part from it; undefined keeps the running one. */
  private async rebuildParts(cause: string): Promise<Parts | undefined> {
    const { log } = this.deps;
    let next: Config;
    try {
      next = await (this.deps.reload ?? (async () => this.parts.config))();
    } catch (err) {
      // A bad file keeps the running configuration: a typo must not stop convergence.
      log.error({ event: 'reload.failed', cause, err: (err as Error).message }, `${cause}: the configuration was not reloaded: ${(err as Error).message}`);
      return undefined;
    }
    if (path.resolve(next.root) !== path.resolve(this.parts.config.root)) {
      // The root's lock, its control socket and its journal belong to the root the daemon started on.
      log.error({ event: 'reload.failed', cause, root: next.root }, `${cause}: the configuration was not reloaded: root changed from ${this.parts.config.root} to ${next.root}, which applies only at restart`);
      return undefined;
    }
    try {
      const parts = await this.buildParts(next, this.parts.agent.reconciler);
      // The old parts stop before the new ones start: one configuration at a time talks to AWS.
      await this.stopParts(this.parts);
      return parts;
    } catch (err) {
      log.error({ event: 'reload.failed', cause, err: (err as Error).message }, `${cause}: the configuration was not reloaded: ${(err as Error).message}`);
      return undefined;
    }
  }

  private onReloaded(parts: Parts | undefined, cause: string): void {
    const { log, notify } = this.deps;
    this.reloading = false;
    if (parts && this.stopping) {
      // Stopped meanwhile: the new parts never start; stopping them is the stop's job.
      this.parts = parts;
      return;
    }
    if (parts) {
      // An operator's reload starts the count of flips afresh: it takes what the file says.
      this.ownReloads =
        cause === 'switch' ? [...this.ownReloads.slice(-(FLIPS_KEPT - 1)), { from: configKey(this.parts.config), to: configKey(parts.config), at: this.deps.clock.now() }] : [];
      this.parts = parts;
      // The replaced parts' watch, if it still waited for the first rebuild, never starts.
      this.localWaiting = undefined;
      // Reloaded with termination.enabled off: nothing watches any more what blocked the rebuilds.
      if (this.leavingNotice && !parts.leaving) this.onLeaving(undefined);
      if (this.leavingNotice) parts.agent.reconciler.setLeaving(this.leavingNotice.detail);
      log.level = parts.config.logLevel;
      this.scheduler.reconfigure(scheduleTimings(parts.config));
      this.spawn(this.startParts(parts));
      log.info({ event: 'reload', cause, root: parts.config.root }, `${cause}: configuration reloaded (http.listen and controlSocket apply at restart)`);
    }
    this.parts.agent.ssm.invalidate(cause);
    // The pass that follows ends RELOADING=1 with READY=1; while leaving, READY=1 is sent now.
    if (this.leavingNotice || this.scheduler.isStopped) notify.send({ READY: 1 });
    else void this.scheduler.runNow(cause);
  }

  /** `previous`: the reconciler the new parts replace (SIGHUP), whose status they carry on. */
  private async buildParts(config: Config, previous?: Agent['reconciler']): Promise<Parts> {
    const { log, clock, env } = this.deps;
    const agent = await createAgent(config, log, {
      ...this.deps.edges,
      clock,
      env,
      runner: this.runner,
      onStatus: (status) => this.post({ kind: 'status', status }),
      onProgress: () => this.deps.watchdog.alive(),
      waitClock: watchedClock(clock, this.deps.watchdog),
    });
    // The first pass's remote reads go out while the reconciler loads and recovers its state.
    agent.sources.prefetch();
    if (previous) agent.reconciler.carryOver(previous);
    await agent.reconciler.start();
    const kernel = new KernelPolicy({
      policy: config.kernel.policy,
      window: config.kernel.rebootWindow,
      rebootCommand: config.kernel.rebootCommand,
      clock,
      runner: this.runner,
      setInstanceHealth: (input) => agent.autoscaling.setInstanceHealth(input.InstanceId, input.HealthStatus, input.ShouldRespectGracePeriod),
      log: (level, event, message, fields) => log[level]({ event, ...fields }, message),
    });
    const leaving = config.termination.enabled
      ? new LeavingWatch(imdsMonitors(agent.imds, config.termination.checkSeconds * 1000, (state, everyMs) => this.post({ kind: 'target-state', state, everyMs })), {
          clock,
          ...(this.leavingNotice ? { initial: this.leavingNotice } : {}),
          onChange: (notice) => this.post({ kind: 'leaving', notice }),
          onError: (kind, err, inARow) => {
            if (inARow === 1 || inARow % 20 === 0) log.warn({ event: 'leaving.check-failed', kind, err: err.message, inARow }, `cannot read the ${kind} notice from IMDS: ${err.message}`);
          },
        })
      : undefined;
    const fs = agent.fs;
    const local = config.local.watch
      ? new LocalWatcher({
          baseConfiguration: fs.resolve(config.local.baseConfiguration),
          modulesDir: fs.resolve(config.local.modulesDir),
          baseline: () => localBaseline(agent),
          onChange: (reason) => this.post({ kind: 'local-change', reason }),
          onError: (err) => log.warn({ event: 'local.watch-error', err: err.message }, `watching local inputs: ${err.message}`),
        })
      : undefined;
    const lifecycle = createLifecycleReporter(agent, log, {
      clock: this.deps.reporterClock ?? clock,
      freshPass: () => new Promise((reply) => this.post({ kind: 'fresh-pass', reply })),
      onCompleted: (result) => this.metrics?.lifecycleCompleted(result),
      onHeartbeat: () => this.metrics?.heartbeat(),
    });
    return { config, agent, kernel, lifecycle, leaving, local };
  }

  private async startParts(parts: Parts, options: { boot?: boolean } = {}): Promise<void> {
    await parts.leaving?.start();
    parts.lifecycle?.update(parts.agent.reconciler.status);
    parts.lifecycle?.start();
    // The local files' watch is not needed to reach the first rebuild (chokidar's import and first
    // scan were a tenth of the way there): at the daemon's start it begins once the rebuild is
    // under way, or FIRST_REBUILD_WAIT_MS in. Whenever it begins, what it finds is compared with
    // what the pass before it read (`localBaseline`), so no change falls between the two.
    if (options.boot && parts.local && beforeFirstRebuild(parts.agent.reconciler.status)) {
      this.localWaiting = parts.local;
      this.spawn(this.deps.clock.sleep(FIRST_REBUILD_WAIT_MS, this.stopped.signal).then(() => this.post({ kind: 'watch-local' }), () => undefined));
      return;
    }
    await this.watchLocal(parts.local);
  }

  private async watchLocal(local: LocalWatcher | undefined): Promise<void> {
    const { log } = this.deps;
    await local?.start().catch((err: unknown) => log.warn({ event: 'local.watch-failed', err: (err as Error).message }, `cannot watch local inputs: ${(err as Error).message}`));
  }

  /** The watch waiting for the first rebuild starts now (a reload's parts have their own). */
  private onWatchLocal(): void {
    const local = this.localWaiting;
    this.localWaiting = undefined;
    if (local && !this.stopping) this.spawn(this.watchLocal(local));
  }

  /** `last`: the daemon's own stop, not a reload's end of the parts it replaces. */
  private async stopParts(parts: Parts, last = false): Promise<void> {
    await parts.local?.stop();
    await parts.leaving?.stop();
    await parts.lifecycle?.stop({ lastLook: last });
  }

  async start(): Promise<void> {
    const { log, notify, watchdog } = this.deps;
    // A second daemon on the root would take the first one's journal entry for a killed agent's
    // (putting configuration.nix back and stopping its build), then its control socket. Without the
    // root's lock, one that answers on the socket is running; nothing answering is a killed one.
    if (!this.deps.rootLocked) {
      const socket = controlSocketPath(this.config);
      const other = await new ControlClient(socket, STATUS_ANSWER_MS).request('status').then(() => true, () => false);
      if (other) throw new TransientError(`another daemon is running on ${this.config.root}: it answers on ${socket}`, 'control', { where: socket });
    }
    this.parts = await this.buildParts(this.config);
    await this.startParts(this.parts, { boot: true });
    // Health checks must answer during the first rebuild: /healthz while the image's good
    // generation runs, /readyz 503 until the first convergence.
    this.http =
      this.config.http.listen !== null
        ? new HttpServer({
            listen: this.config.http.listen,
            status: () => this.reconciler.status,
            hasGoodGeneration: () => this.reconciler.status.lastGood !== undefined || this.reconciler.durable?.lastGood !== undefined,
            ...(this.metrics ? { metrics: () => this.metrics!.render() } : {}),
            log,
          })
        : undefined;
    // Convergence matters more than its report: a port already taken is logged, not fatal.
    await this.http?.start().catch((err: unknown) => log.error({ event: 'http.listen-failed', listen: this.config.http.listen, err: (err as Error).message }, `cannot serve HTTP on ${this.config.http.listen}: ${(err as Error).message}`));
    await this.control.start();
    watchdog.start();
    if (notify.enabled) void this.extendUntilReady();
    void this.run().then(this.resolveDone, (err: unknown) => {
      log.error({ event: 'loop.error', err: (err as Error).message }, `daemon: ${(err as Error).message}`);
      this.resolveDone(70);
    });
  }

  /** Undoes a start that failed part way. */
  async abandon(): Promise<void> {
    this.stopped.abort();
    this.deps.watchdog.stop();
    await this.control.stop().catch(() => undefined);
    await this.http?.stop().catch(() => undefined);
    if (this.parts) await this.stopParts(this.parts).catch(() => undefined);
  }

  /** The pass loop: the Scheduler says when, the reconciler does the pass, the loop hears of it. */
  private async run(): Promise<number> {
    const { log, clock, watchdog } = this.deps;
    let code = 0;
    await this.scheduler.run(async (reason, signal) => {
      watchdog.alive();
      const started = clock.now();
      const result = await this.reconciler.converge(reason, signal);
      const durationMs = clock.now() - started;
      await this.kernelCheck().catch((err: unknown) => log.error({ event: 'kernel.policy-failed', err: (err as Error).message }, `kernel policy: ${(err as Error).message}`));
      this.post({ kind: 'pass-finished', result, durationMs });
      watchdog.alive();
      return result;
    }, () => watchdog.alive()).catch((err: unknown) => {
      // Not one of the expected failures: a bug. The daemon stops whole (nothing left answering
      // health checks for a dead loop) and exits non-zero, so systemd restarts it.
      log.fatal({ event: 'loop.crashed', err: (err as Error)?.stack ?? String(err) }, `the pass loop failed: ${(err as Error)?.message ?? String(err)}`);
      this.onStop('SIGTERM');
      code = 70;
    });
    await this.finish();
    return code;
  }

  private async finish(): Promise<void> {
    const { log, watchdog } = this.deps;
    watchdog.stop();
    this.stopped.abort();
    await this.control.stop();
    // Control answers and reloads still under way end before the parts they use stop.
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    await this.stopParts(this.parts, true);
    await this.http?.stop();
    await this.hooks;
    await this.statusFile.flush();
    log.info({ event: 'stopped' }, 'stopped');
  }

  /** Keeps track of work a handler started, so stop waits for it. */
  private spawn(work: Promise<unknown>): void {
    const tracked = work.catch((err: unknown) => this.deps.log.error({ event: 'loop.error', err: (err as Error).message }, `daemon: ${(err as Error).message}`));
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  /** After each pass: a committed generation that changed the kernel is acted on by policy. */
  private async kernelCheck(): Promise<void> {
    const { agent, kernel, config } = this.parts;
    const required = agent.reconciler.rebootRequired;
    if (!required) return;
    const instanceId = agent.reconciler.status.instanceId;
    const group =
      config.kernel.policy === 'replace'
        ? ((await agent.imds.get(`latest/meta-data/tags/instance/${ASG_TAG}`).catch(() => undefined)) ??
          (instanceId ? (await agent.autoscaling.describeInstance(instanceId).catch(() => undefined))?.group : undefined))
        : undefined;
    const action = kernel.decide(required, group !== undefined);
    if (action.kind === 'wait') {
      this.post({ kind: 'kernel-wait', untilMs: action.untilMs });
      return;
    }
    if (action.kind === 'reboot' || action.kind === 'replace') {
      if (this.leavingNotice) return;
      await kernel.act(action, required.storePath, instanceId);
    }
  }

  private extendStart(): void {
    this.deps.notify.extendTimeout(EXTEND_EVERY_MS * 3 * 1_000);
  }

  /** Until READY=1, asks systemd for more start time every EXTEND_EVERY_MS. */
  private async extendUntilReady(): Promise<void> {
    while (!this.ready && !this.stopped.signal.aborted) {
      try {
        await this.deps.clock.sleep(EXTEND_EVERY_MS, this.stopped.signal);
      } catch {
        return;
      }
      if (!this.ready) this.extendStart();
    }
  }
}

/** Two configurations as parsed (plain data, keys in the schema's order) say the same. */
function sameConfiguration(a: Config, b: Config): boolean {
  return configKey(a) === configKey(b);
}

function configKey(c: Config): string {
  return JSON.stringify(c);
}

/** A reload a switch caused: from one configuration (configKey) to another. */
export interface OwnReload {
  readonly from: string;
  readonly to: string;
  readonly at: number;
}

const FLIPS_KEPT = 2;
/** Two flips further apart than this are an operator's changes, not a loop. */
export const FLIP_MEMORY_MS = 3_600_000;

/**
 * True when taking `next` would be the third reload in a row, each caused by a switch, between
 * the same two configurations within FLIP_MEMORY_MS: `running` → `next` and back were taken
 * already. Two are let through: an operator may change the agent's settings and change them back.
 */
export function flipsBack(history: readonly OwnReload[], running: string, next: string, now: number): boolean {
  const [before, last] = history.slice(-FLIPS_KEPT);
  if (!before || !last || now - before.at > FLIP_MEMORY_MS) return false;
  return before.from === running && before.to === next && last.from === next && last.to === running;
}

/** The top-level settings two configurations disagree on (`ssm`, `health`), for the operator. */
function changedSettings(a: Config, b: Config): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof Config>;
  return [...keys].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

/** The local files as the agent's last read found them, by absolute path: a watch's baseline. */
function localBaseline(agent: Agent): ReadonlyMap<string, string> | undefined {
  const read = agent.sources.lastLocal;
  if (!read) return undefined;
  const files = [...(read.baseConfiguration ? [read.baseConfiguration] : []), ...read.modules];
  return new Map(files.map((f) => [agent.fs.resolve(f.path), f.digest]));
}
