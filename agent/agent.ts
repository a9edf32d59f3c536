// Builds the real edges from a Config: the one place (with cli.ts) that wires. Everything here is
// per call, nothing global, so several agents can live in one process.
import path from 'node:path';
import { ClosureRealiser, GC_ROOTS } from './apply/closure.js';
import { Rebuilder } from './apply/rebuild.js';
import { GroupLocator, SdkAutoScaling, type AutoScaling } from './aws/autoscaling.js';
import { defaultCredentials } from './aws/credentials.js';
import { ImdsClient, type Imds } from './aws/imds.js';
import type { AwsCredentialIdentityProvider } from '@smithy/types';
import type { Config } from './config.js';
import { RootFs } from './fs.js';
import { AlarmWatcher, sdkDescribeAlarms } from './rollout/alarms.js';
import { FailureReporter } from './rollout/reporter.js';
import type { Logger } from './log.js';
import type { Clock, Runner } from './ports.js';
import { Reconciler } from './reconcile.js';
import { NixParser } from './render/validate.js';
import { CHANNELS_FILE, NIXOS_DIR, RENDER_ROOT } from './render/render.js';
import { RenderWriter } from './render/write.js';
import { ProcessRunner } from './runner.js';
import { LifecycleReporter } from './report/lifecycle.js';
import { STATUS_FILE } from './report/status-file.js';
import { SourceReader } from './sources/index.js';
import { WatchedSsm, type SsmParts } from './sources/revision.js';
import { STATE_DIR, StateStore } from './state.js';
import type { Status } from './status.js';
import { HealthChecker } from './verify/health.js';
import type { Reachable } from './verify/reach.js';

/** Every directory the agent writes files into atomically, where a kill can leave a temp file. */
const WRITTEN_DIRS = [
  { path: NIXOS_DIR },
  { path: RENDER_ROOT, recursive: true },
  { path: STATE_DIR, recursive: true },
  { path: path.dirname(STATUS_FILE), recursive: true },
  { path: path.dirname(CHANNELS_FILE) },
  // The prebuilt closure's roots, pinned by replacing a symlink.
  { path: GC_ROOTS },
];

/** What the composition root hands in: time and the environment are never taken from the process here. */
export interface AgentEdges {
  readonly clock: Clock;
  /** The agent's environment: the SDK's region and endpoints, the children's environment. */
  readonly env: NodeJS.ProcessEnv;
  readonly runner?: Runner;
  readonly imds?: Imds;
  /** The whole-tree fetch and the cheap revision read; the SDK client's when absent. */
  readonly ssm?: () => Promise<SsmParts>;
  readonly autoscaling?: AutoScaling;
  /** The credentials of the SDK clients; the SDK's default chain when absent. */
  readonly credentials?: () => Promise<AwsCredentialIdentityProvider>;
  readonly onStatus?: (status: Status) => void;
  readonly onProgress?: () => void;
  /**
   * What waits on a busy SSM account sleep on (minutes, with no step of the loop between): the
   * daemon's counts those sleeps as progress for systemd's watchdog. `clock` when absent.
   */
  readonly waitClock?: Clock;
}

export interface Agent {
  readonly config: Config;
  readonly fs: RootFs;
  /** The one writer of the agent's durable files. */
  readonly store: StateStore;
  readonly imds: Imds;
  readonly reconciler: Reconciler;
  readonly sources: SourceReader;
  readonly runner: Runner;
  readonly clock: Clock;
  /** SSM behind its change detection: a poll fetches the whole tree only when a revision moved. */
  readonly ssm: WatchedSsm;
  /** Created on first call: the SDK client is imported only when a call is made. */
  readonly autoscaling: AutoScaling;
  /** The instance's group, found once (IMDS tag, else DescribeAutoScalingInstances). */
  readonly groups: GroupLocator;
}

export async function createAgent(config: Config, log: Logger, edges: AgentEdges): Promise<Agent> {
  const { clock, env } = edges;
  const runner = edges.runner ?? new ProcessRunner(env);
  const fs = new RootFs(config.root);
  // The base configuration may be configured outside /etc/nixos.
  const baseDir = path.dirname(config.local.baseConfiguration);
  await fs.removeTemporaries(WRITTEN_DIRS.some((d) => d.path === baseDir) ? WRITTEN_DIRS : [...WRITTEN_DIRS, { path: baseDir }]).then(
    (files) => files.length > 0 && log.info({ event: 'temporaries.removed', files }, `removed ${files.length} temporary files left by a killed run`),
    (err: Error) => log.warn({ event: 'temporaries.failed', err: err.message }, 'cannot remove temporary files left by a killed run'),
  );
  const imds =
    edges.imds ??
    new ImdsClient({
      clock,
      env,
      timeoutMs: config.imds.timeoutMs,
      retries: config.imds.retries,
      ...(config.imds.endpoint ? { endpoint: config.imds.endpoint } : {}),
    });
  // Edges that bring their own clients (a fleet simulation) never load the credential chain.
  const credentials = memo(edges.credentials ?? defaultCredentials);
  const ssmWhere: SsmWhere = { imds, env, credentials };
  const ssmParts = memo(edges.ssm ?? (() => createSsmSource(config, edges.waitClock ?? clock, ssmWhere)));
  const ssm = new WatchedSsm(ssmParts, {
    clock,
    imds,
    tag: config.ssm.revisionTag,
    parameter: config.ssm.revisionParameter,
    fullRefreshMs: config.ssm.fullRefreshSeconds * 1000,
  });

  let parser: NixParser | undefined = new NixParser(runner, { command: config.rebuild.nixInstantiate });
  if (config.rebuild.validate === 'if-available' && !(await parser.available())) parser = undefined;

  const autoscaling = edges.autoscaling ?? new SdkAutoScaling({ env, imds, credentials });
  const groups = new GroupLocator(imds, autoscaling);
  const sources = new SourceReader(imds, async () => ssm, fs, {
    userData: config.userData.enabled,
    ssmPrefixes: config.ssm.enabled ? config.ssm.prefixes : undefined,
    baseConfiguration: config.local.baseConfiguration,
    modulesDir: config.local.modulesDir,
    canaryTag: config.rollout.canaryTag,
    alarms: new AlarmWatcher(memo(() => sdkDescribeAlarms({ env, credentials, region: async () => (await imds.identity()).region })), {
      clock,
      minIntervalMs: config.ssm.pollIntervalSeconds * 1000,
    }),
    // The scheduler's probe (a peek) right before a poll's pass serves that pass.
    reuseMs: 250,
    now: () => clock.now(),
  }, groups);
  const store = new StateStore(fs, () => clock.now());
  const reconciler = new Reconciler({
    config,
    clock,
    fs,
    log,
    runner,
    sources,
    writer: new RenderWriter(fs, parser, log),
    rebuilder: new Rebuilder(
      runner,
      fs,
      {
        nixosRebuild: config.rebuild.nixosRebuild,
        nixEnv: config.rebuild.nixEnv,
        nixChannel: config.rebuild.nixChannel,
        extraArgs: config.rebuild.extraArgs,
        buildTimeoutMs: config.rebuild.buildTimeoutSeconds * 1000,
        activateTimeoutMs: config.rebuild.activateTimeoutSeconds * 1000,
      },
      log,
    ),
    closures: new ClosureRealiser(
      runner,
      fs,
      {
        nix: config.closure.nix,
        nixStore: config.closure.nixStore,
        timeoutMs: config.closure.timeoutSeconds * 1000,
        reserveBytes: config.closure.reserveMiB * 1024 * 1024,
        gcWhenShort: config.closure.gcWhenShort,
      },
      log,
    ),
    health: new HealthChecker(runner, clock, {
      systemctl: config.health.systemctl,
      checkFailedUnits: config.health.checkFailedUnits,
      graceMs: config.health.graceSeconds * 1000,
      intervalMs: config.health.intervalSeconds * 1000,
      probes: config.health.probes,
      reach: managedThrough(config, edges, ssmWhere),
    }),
    store,
    ...(edges.onStatus ? { onStatus: edges.onStatus } : {}),
    ...(edges.onProgress ? { onProgress: edges.onProgress } : {}),
    rollout: new FailureReporter(async () => (await ssmParts()).putParameter, { clock, log, revisionParameter: config.ssm.revisionParameter }),
  });
  return { config, fs, store, imds, reconciler, sources, runner, clock, ssm, autoscaling, groups };
}

/** Per SSM request: a read that times out fails its pass, which the scheduler retries; a write is retried by the SDK within `ssm.maxAttempts`. */
export const SSM_REQUEST_TIMEOUT_MS = 10_000;

/**
 * The SSM client, imported only when SSM is on: it is the heaviest module on the boot path. The
 * region comes from the environment when set, else from IMDS; credentials from the SDK's default
 * chain (IMDS role credentials on EC2). The reads wait a busy account out with the agent's own
 * backoff, one attempt at a time (agent/aws/ssm-sdk.ts), so that a fleet sharing the account's
 * throughput spreads out; the SDK's adaptive retry is left to the one write.
 */
async function createSsmSource(config: Config, clock: Clock, where: SsmWhere): Promise<SsmParts> {
  const [sdk, client] = await ssmClient(config, where);
  return sdk.ssmParts(client, { clock, random: Math.random, maxWaitMs: config.ssm.maxBackoffSeconds * 1000 });
}

/** What an SSM client is made from: the agent's environment, IMDS (for the region), credentials. */
export interface SsmWhere {
  readonly imds: Imds;
  readonly env: NodeJS.ProcessEnv;
  readonly credentials: () => Promise<AwsCredentialIdentityProvider>;
}

/**
 * An SSM client for this agent. `fresh`: one that opens a new connection for every request (the
 * reach check), where the SDK's default keeps connections alive.
 */
async function ssmClient(config: Config, { imds, env, credentials }: SsmWhere, fresh = false) {
  const [sdk, identity, provider] = await Promise.all([
    import('./aws/ssm-sdk.js'),
    env.AWS_REGION || env.AWS_DEFAULT_REGION ? Promise.resolve(undefined) : imds.identity(),
    credentials(),
  ]);
  const client = new sdk.SSMClient({
    credentials: provider,
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || identity?.region,
    // Named here, from the agent's own environment, so agents in one process each reach their own.
    ...(env.AWS_ENDPOINT_URL_SSM || env.AWS_ENDPOINT_URL ? { endpoint: env.AWS_ENDPOINT_URL_SSM || env.AWS_ENDPOINT_URL } : {}),
    maxAttempts: config.ssm.maxAttempts,
    retryMode: 'adaptive',
    // The SDK waits forever for an answer by default: an SSM endpoint that accepts and never
    // answers would hold the pass (and SIGTERM) for good.
    requestHandler: {
      requestTimeout: SSM_REQUEST_TIMEOUT_MS,
      connectionTimeout: Math.min(SSM_REQUEST_TIMEOUT_MS, 3_000),
      throwOnRequestTimeout: true,
      ...(fresh ? { httpAgent: { keepAlive: false }, httpsAgent: { keepAlive: false } } : {}),
    },
  });
  return [sdk, client] as const;
}

/**
 * The endpoints a switch must leave reachable (verify/reach.ts): IMDS, and SSM when it is a source.
 * Edges that bring their own clients (a fleet simulation) are asked only where they can answer.
 */
export function managedThrough(config: Config, edges: Pick<AgentEdges, 'ssm'>, where: SsmWhere): Reachable[] {
  if (!config.health.checkReachable) return [];
  const endpoints: Reachable[] = [];
  const imds = where.imds.reach?.bind(where.imds);
  if (imds) endpoints.push({ name: 'IMDS', reach: imds });
  if (config.ssm.enabled && !edges.ssm) {
    const client = memo(() => ssmClient(config, where, true));
    const path = readablePath(config.ssm.prefixes[0] ?? '/');
    endpoints.push({
      name: 'SSM',
      reach: async (timeoutMs) => {
        const [sdk, ssm] = await client();
        await sdk.ssmAnswers(ssm, path, timeoutMs);
      },
    });
  }
  return endpoints;
}

/** A prefix up to its first placeholder (`/nixos/asg/{asg}` → `/nixos/asg`): a path SSM takes as it is. */
export function readablePath(prefix: string): string {
  const kept: string[] = [];
  for (const part of prefix.split('/').filter(Boolean)) {
    if (part.includes('{')) break;
    kept.push(part);
  }
  return `/${kept.join('/')}`;
}

/**
 * The Auto Scaling lifecycle reporter for this agent, or undefined when `lifecycle.enabled` is off.
 * The group comes from the agent's GroupLocator: the IMDS tag when tags are exposed there, else the
 * one DescribeAutoScalingInstances answer the sources also use.
 */
export function createLifecycleReporter(
  agent: Agent,
  log: Logger,
  options: { clock: Clock; freshPass?: () => Promise<unknown>; onCompleted?: (result: 'CONTINUE' | 'ABANDON') => void; onHeartbeat?: () => void; oneShot?: boolean },
): LifecycleReporter | undefined {
  if (!agent.config.lifecycle.enabled) return undefined;
  const { clock, ...callbacks } = options;
  return new LifecycleReporter({
    autoscaling: agent.autoscaling,
    clock,
    store: agent.store,
    log: log.child({ component: 'lifecycle' }),
    config: agent.config.lifecycle,
    locate: async () => {
      const [identity, group, target] = await Promise.all([agent.imds.identity(), agent.groups.group(), agent.imds.get('latest/meta-data/autoscaling/target-lifecycle-state')]);
      return { instanceId: identity.instanceId, ...(group ? { group } : {}), ...(target?.trim() ? { targetLifecycleState: target.trim() } : {}) };
    },
    ...callbacks,
  });
}

/** Made once, on first use; a failure is not kept, so the next use tries again. */
function memo<T>(make: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  return () => {
    value ??= make().catch((err: unknown) => {
      value = undefined;
      throw err;
    });
    return value;
  };
}
