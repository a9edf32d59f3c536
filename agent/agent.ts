// Builds the real edges from a Config: the one place (with cli.ts) that wires. Everything here is
// per call, nothing global, so several agents can live in one process.
import { Rebuilder } from './apply/rebuild.js';
import { ImdsClient, type Imds } from './aws/imds.js';
import type { Config } from './config.js';
import { RootFs } from './fs.js';
import type { Logger } from './log.js';
import { systemClock, type Clock, type Runner } from './ports.js';
import { Reconciler } from './reconcile.js';
import { NixParser } from './render/validate.js';
import { RenderWriter } from './render/write.js';
import { ProcessRunner } from './runner.js';
import { SourceReader } from './sources/index.js';
import { SsmSource } from './sources/ssm.js';
import { StateStore } from './state.js';
import type { Status } from './status.js';
import { HealthChecker } from './verify/health.js';

export interface AgentEdges {
  readonly clock?: Clock;
  readonly runner?: Runner;
  readonly imds?: Imds;
  readonly ssm?: () => Promise<SsmSource>;
  readonly env?: NodeJS.ProcessEnv;
  readonly onStatus?: (status: Status) => void;
  readonly onProgress?: () => void;
}

export interface Agent {
  readonly config: Config;
  readonly fs: RootFs;
  readonly imds: Imds;
  readonly reconciler: Reconciler;
  readonly sources: SourceReader;
  readonly runner: Runner;
  readonly clock: Clock;
}

export async function createAgent(config: Config, log: Logger, edges: AgentEdges = {}): Promise<Agent> {
  const clock = edges.clock ?? systemClock;
  const runner = edges.runner ?? new ProcessRunner();
  const env = edges.env ?? process.env;
  const fs = new RootFs(config.root);
  const imds =
    edges.imds ??
    new ImdsClient({
      clock,
      env,
      timeoutMs: config.imds.timeoutMs,
      retries: config.imds.retries,
      ...(config.imds.endpoint ? { endpoint: config.imds.endpoint } : {}),
    });
  const ssm = edges.ssm ?? memo(() => createSsmSource(config, imds, env));

  let parser: NixParser | undefined = new NixParser(runner, { command: config.rebuild.nixInstantiate });
  if (config.rebuild.validate === 'if-available' && !(await parser.available())) parser = undefined;

  const sources = new SourceReader(imds, ssm, fs, {
    userData: config.userData.enabled,
    ssmPrefixes: config.ssm.enabled ? config.ssm.prefixes : undefined,
    baseConfiguration: config.local.baseConfiguration,
    modulesDir: config.local.modulesDir,
  });
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
    health: new HealthChecker(runner, clock, {
      systemctl: config.health.systemctl,
      checkFailedUnits: config.health.checkFailedUnits,
      graceMs: config.health.graceSeconds * 1000,
      intervalMs: config.health.intervalSeconds * 1000,
      probes: config.health.probes,
    }),
    store: new StateStore(fs, () => clock.now()),
    ...(edges.onStatus ? { onStatus: edges.onStatus } : {}),
    ...(edges.onProgress ? { onProgress: edges.onProgress } : {}),
  });
  return { config, fs, imds, reconciler, sources, runner, clock };
}

/**
 * The SSM client, imported only when SSM is on: it is the heaviest module on the boot path. The
 * region comes from the environment when set, else from IMDS; credentials from the SDK's default
 * chain (IMDS role credentials on EC2). Throttling backs off with the SDK's adaptive retry, whose
 * client-side rate limiter keeps a fleet polling one account from stampeding.
 */
async function createSsmSource(config: Config, imds: Imds, env: NodeJS.ProcessEnv): Promise<SsmSource> {
  const [{ SSMClient, GetParametersByPathCommand }, identity] = await Promise.all([
    import('@aws-sdk/client-ssm'),
    env.AWS_REGION || env.AWS_DEFAULT_REGION ? Promise.resolve(undefined) : imds.identity(),
  ]);
  const client = new SSMClient({
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || identity?.region,
    maxAttempts: config.ssm.maxAttempts,
    retryMode: 'adaptive',
  });
  return SsmSource.fromClient(client, GetParametersByPathCommand);
}

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
