// One simulated instance, built from the agent's public API exactly as the daemon builds itself:
// createAgent (the real sources, SSM change detection, render, reconcile) with its edges handed in
// (the shared simulated clock, a stand-in Runner, this instance's IMDS and SSM client), and the
// real Scheduler wired to it as the daemon wires it. This is the only fleet module that knows how
// the daemon is composed: when that changes, this file follows and the benchmark does not.
import { SimulatedAutoScaling } from './autoscaling.js';
import { mkdtemp } from 'node:fs/promises';
import path from 'node:path';
import { createAgent, type Agent } from '../../../agent/agent.js';
import { ImdsClient, type Imds } from '../../../agent/aws/imds.js';
import { BUILD_DIR } from '../../../agent/apply/rebuild.js';
import { parseConfig, type Config, type ConfigInput } from '../../../agent/config.js';
import { silentLogger, type Logger } from '../../../agent/log.js';
import type { Clock, RunRequest, RunResult, Runner } from '../../../agent/ports.js';
import type { PassResult } from '../../../agent/reconcile.js';
import { CONFIGURATION_NIX } from '../../../agent/render/render.js';
import { scheduleTimings, Scheduler } from '../../../agent/schedule.js';
import { desiredHashOf, NewerDesired } from '../../../agent/newer.js';
import { ImdsEmulator, type ImdsInstance } from '../../../sandbox/emulators/imds.js';
import type { SsmEmulator } from '../../../sandbox/emulators/ssm.js';
import { FakeMachine } from '../../support/reconcile-fakes.js';
import { SimulatedImds } from './imds.js';
import { simulatedSsm, type SsmCallCounter } from './ssm.js';

export interface InstanceOptions {
  readonly clock: Clock;
  readonly ssm: SsmEmulator;
  /** A directory the instance's root is made in. */
  readonly under: string;
  readonly imds: ImdsInstance;
  /** How long the stand-in `nixos-rebuild build` takes, on the simulated clock. */
  readonly rebuildMs: number;
  readonly random: () => number;
  /** Configuration beyond the defaults (the benchmark leaves the agent's defaults alone). */
  readonly config?: ConfigInput;
  readonly onPass?: (instance: SimInstance, reason: string, result: PassResult) => void;
  /** Shared by the fleet: a logger per instance would cost memory and say nothing. */
  readonly log?: Logger;
  /**
   * The stand-in `nixos-rebuild build` fails (exit 1) when this holds for the configuration.nix it
   * builds: how a benchmark makes a pushed desired state a bad one. Absent: every build succeeds.
   */
  readonly failBuild?: (configuration: string) => boolean;
  /**
   * Serve this instance's metadata from an IMDS emulator server of its own, read by the agent's
   * real ImdsClient over HTTP on 127.0.0.1, instead of in-process. Its requests are counted in
   * `realIo`, which the simulation waits on before time moves.
   */
  readonly imdsOverHttp?: { readonly realIo: RealIo };
}

/** Requests in flight outside the simulated clock (sockets), for the driver to wait on. */
export interface RealIo {
  inFlight: number;
}

export interface SimInstance {
  readonly id: string;
  readonly agent: Agent;
  readonly config: Config;
  /** The instance description its metadata is served from (in-process, or by `imdsServer`). */
  readonly imds: SimulatedImds;
  /** With `imdsOverHttp`: the emulator server the agent reads over HTTP; closed by the caller. */
  readonly imdsServer: ImdsEmulator | undefined;
  /** Sets an instance tag, as `aws ec2 create-tags` does, and allows tags in instance metadata. */
  tagInMetadata(key: string, value: string): void;
  readonly ssmCalls: SsmCallCounter;
  /** The desired state the running system was built from. */
  readonly runningHash: string | undefined;
  /** What `converge --now` over the control socket does (the SSM Run Command push path). */
  convergeNow(reason: string): void;
  /** Runs the loop until stop(); a first pass at once. */
  run(): Promise<void>;
  stop(): void;
}

/**
 * The stand-in's protocol (sandbox/standin), answered in-process: `nixos-rebuild build` takes
 * `rebuildMs` and leaves `result` pointing at the store path its configuration names;
 * switch-to-configuration moves /run/current-system; nix-env sets generations; the Nix parser and
 * systemctl find nothing wrong.
 */
class StandInRunner implements Runner {
  constructor(
    private readonly machine: FakeMachine,
    private readonly clock: Clock,
    private readonly rebuildMs: number,
    private readonly failBuild?: (configuration: string) => boolean,
  ) {}

  async run(request: RunRequest): Promise<RunResult> {
    const started = this.clock.now();
    const ok = (stdout = ''): RunResult => ({ code: 0, signal: null, timedOut: false, aborted: false, stdout, stderr: '', tail: [], durationMs: this.clock.now() - started });
    const name = path.basename(request.command);
    const [first, ...rest] = request.args;
    const r = this.machine.rebuilder;
    if (name === 'nixos-rebuild' && first === 'build') {
      try {
        await this.clock.sleep(this.rebuildMs, request.signal);
      } catch {
        return { ...ok(), code: null, signal: 'SIGTERM', aborted: true };
      }
      if (this.failBuild?.((await this.machine.fs.readText(CONFIGURATION_NIX)) ?? '')) return { ...ok(), code: 1, stderr: 'error: builder failed', tail: ['error: builder failed'] };
      // nixos-rebuild leaves `result` in its working directory, one of its own under BUILD_DIR.
      if (!request.cwd?.startsWith(this.machine.fs.resolve(BUILD_DIR))) throw new Error(`a build outside ${BUILD_DIR}: ${request.cwd}`);
      await this.machine.fs.symlinkAtomic(await r.build(), `/${path.relative(this.machine.fs.root, request.cwd)}/result`);
      return ok();
    }
    if (name === 'switch-to-configuration') {
      await r.activate(path.dirname(path.dirname(request.command)), first as 'test' | 'switch' | 'boot');
      return ok();
    }
    if (name === 'nix-env') {
      const set = rest.indexOf('--set');
      const sw = rest.indexOf('--switch-generation');
      if (set >= 0) await r.setProfile(rest[set + 1] as string);
      else if (sw >= 0) await r.switchGeneration(Number(rest[sw + 1]));
      return ok();
    }
    // nix-instantiate --parse / --version, systemctl list-units --state=failed: all well.
    return ok();
  }
}

/**
 * The agent's ImdsClient, as createAgent builds it, against `url`; each call counts in `io` while
 * it waits on the network, not while its retry backoff sleeps on the simulated clock (time must
 * move for that sleep to end).
 */
function overHttp(url: string, config: Config, clock: Clock, random: () => number, io: RealIo): Imds {
  const sleeping: Clock = {
    now: () => clock.now(),
    sleep: async (ms, signal) => {
      io.inFlight--;
      try {
        await clock.sleep(ms, signal);
      } finally {
        io.inFlight++;
      }
    },
  };
  const client = new ImdsClient({ clock: sleeping, env: {}, endpoint: url, timeoutMs: config.imds.timeoutMs, retries: config.imds.retries, random });
  const track = async <T>(request: () => Promise<T>): Promise<T> => {
    io.inFlight++;
    try {
      return await request();
    } finally {
      io.inFlight--;
    }
  };
  return {
    get: (path) => track(() => client.get(path)),
    getBytes: (path) => track(() => client.getBytes(path)),
    identity: () => track(() => client.identity()),
  };
}

/** The Auto Scaling group every simulated instance belongs to (the `{asg}` of its SSM prefixes). */
export const FLEET_GROUP = 'fleet';

export async function createInstance(options: InstanceOptions): Promise<SimInstance> {
  const { clock } = options;
  const root = await mkdtemp(path.join(options.under, `${options.imds.instanceId}-`));
  const config = parseConfig({
    // What the simulation has no use for: sockets and HTTP ports (one process holds every instance),
    // the Auto Scaling hook, IMDS termination notices (never set here), file watching.
    http: { listen: null },
    lifecycle: { enabled: false },
    termination: { enabled: false },
    ...options.config,
    local: { watch: false, ...options.config?.local },
    root,
  });
  const imds = new SimulatedImds(options.imds);
  const imdsServer = options.imdsOverHttp ? await ImdsEmulator.start({ instance: options.imds, clock, host: '127.0.0.1' }) : undefined;
  const agentImds: Imds = imdsServer && options.imdsOverHttp ? overHttp(imdsServer.url, config, clock, options.random, options.imdsOverHttp.realIo) : imds;
  const ssmCalls: SsmCallCounter = { calls: 0, throttled: 0 };
  const parts = simulatedSsm({ emulator: options.ssm, clock, region: options.imds.region, maxAttempts: config.ssm.maxAttempts, maxWaitMs: config.ssm.maxBackoffSeconds * 1000, counter: ssmCalls, random: options.random });
  const log = options.log ?? silentLogger();
  let standIn: StandInRunner | undefined;
  // The runner is handed in before the agent's root exists; the stand-in machine lives in it.
  const runner: Runner = { run: (request) => (standIn as StandInRunner).run(request) };
  const agent = await createAgent(config, log, { clock, runner, imds: agentImds, ssm: async () => parts, autoscaling: new SimulatedAutoScaling(FLEET_GROUP), env: {} });
  const machine = new FakeMachine(agent.fs);
  await machine.install();
  standIn = new StandInRunner(machine, clock, options.rebuildMs, options.failBuild);
  const reconciler = agent.reconciler;
  await reconciler.start();

  // As the daemon (agent/loop.ts) wires its Scheduler.
  const newer = new NewerDesired(() => ({ agent, config }), clock);
  const scheduler = new Scheduler(clock, {
    ...scheduleTimings(config),
    random: options.random,
    // The daemon wakes every 5 s to feed systemd's watchdog; nothing here watches, so the loop
    // sleeps straight to its next poll (fewer simulated steps, the same SSM calls).
    tickMs: config.ssm.pollIntervalSeconds * 1000,
    throttleLevel: () => agent.ssm.throttleLevel,
    cancellable: () => reconciler.status.phase === 'building',
    changed: (signal) => newer.check(signal, false),
    probe: async (signal) => desiredHashOf(await agent.sources.peek(signal), clock.now()),
  });

  const instance: SimInstance = {
    id: options.imds.instanceId,
    agent,
    config,
    imds,
    ssmCalls,
    imdsServer,
    tagInMetadata(key, value) {
      imds.instance.tags[key] = value;
      imds.instance.tagsInMetadata = true;
      imdsServer?.setTag(key, value);
      imdsServer?.setTagsInMetadata(true);
    },
    get runningHash() {
      return reconciler.status.running?.desiredHash;
    },
    convergeNow(reason) {
      // As the daemon answers `converge` on its control socket.
      void (async () => {
        if (scheduler.state.running) {
          const changed = await newer.check(undefined, true).catch(() => undefined);
          if (changed === undefined) await scheduler.exclusive(async () => undefined);
        }
        agent.ssm.invalidate(reason);
        agent.sources.forget();
        await scheduler.runNow(reason);
      })();
    },
    run: () =>
      scheduler.run(async (reason, signal) => {
        const result = await reconciler.converge(reason, signal);
        options.onPass?.(instance, reason, result);
        return result;
      }),
    stop: () => scheduler.stop(),
  };
  return instance;
}
