// The emulated AWS an instance lives in: IMDS, SSM, Auto Scaling and CloudWatch alarms on loopback, wired so the
// instance is a member of its group with a launch lifecycle hook, as on a real fleet. Shared by
// `emulate`, `sandbox` and the end-to-end tests.
import { readFile } from 'node:fs/promises';
import { z } from 'zod/v3';
import type { Clock } from '../agent/ports.js';
import { AutoScalingEmulator, type WarmPoolState } from './emulators/autoscaling.js';
import { CloudWatchEmulator } from './emulators/cloudwatch.js';
import { defaultInstance, ImdsEmulator, INSTANCE_LIFE_CYCLES, type ImdsInstance, type TargetLifecycleState } from './emulators/imds.js';
import { SsmEmulator, SsmServiceError, type PutParameterRequest, type SsmThroughput } from './emulators/ssm.js';

export const InstanceFile = z.strictObject({
  instanceId: z.string().regex(/^i-[0-9a-f]{8,17}$/).optional(),
  amiId: z.string().optional(),
  instanceType: z.string().optional(),
  region: z.string().optional(),
  availabilityZone: z.string().optional(),
  accountId: z.string().regex(/^\d{12}$/).optional(),
  privateIp: z.string().optional(),
  hostname: z.string().optional(),
  tags: z.record(z.string(), z.string()).optional(),
  tagsInMetadata: z.boolean().optional(),
  iamRole: z.string().optional(),
  targetLifecycleState: z.string().optional(),
  instanceLifeCycle: z.enum(INSTANCE_LIFE_CYCLES).optional(),
  autoScaling: z
    .strictObject({
      group: z.string(),
      hook: z
        .strictObject({
          name: z.string(),
          heartbeatTimeout: z.number().int().min(30).max(7200).optional(),
          defaultResult: z.enum(['CONTINUE', 'ABANDON']).optional(),
        })
        .nullable()
        .optional(),
      /** Launched into the group's warm pool, kept there in this state until it leaves for the group. */
      warmPool: z.enum(['Stopped', 'Running', 'Hibernated']).optional(),
    })
    .nullable()
    .optional(),
});
export type InstanceSpec = z.infer<typeof InstanceFile>;

/**
 * A PutParameter request's members (botocore's ssm PutParameterRequest); a misspelt one would be
 * dropped without a word. Their values are SSM's to judge: the emulator answers as SSM would.
 */
const PutParameterFile = z.strictObject({
  Name: z.string(),
  Value: z.string(),
  Type: z.string().optional(),
  Description: z.string().optional(),
  KeyId: z.string().optional(),
  Overwrite: z.boolean().optional(),
  AllowedPattern: z.string().optional(),
  Tags: z.array(z.strictObject({ Key: z.string(), Value: z.string() })).optional(),
  Tier: z.string().optional(),
  Policies: z.string().optional(),
  DataType: z.string().optional(),
});

/** `[2].Tags[0].Key`: where in the file, as a person would point at it. */
function pathOf(at: readonly (string | number)[]): string {
  return at.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
}

export interface WorldOptions {
  readonly instance?: InstanceSpec;
  readonly userData?: Buffer;
  readonly parameters?: readonly PutParameterRequest[];
  readonly host?: string;
  readonly ports?: { imds?: number; ssm?: number; autoscaling?: number; cloudwatch?: number };
  readonly clock?: Clock;
  readonly ssmThroughput?: SsmThroughput | null;
  /** Whether the instance's network lets a new connection reach the endpoints (ListenOptions.admit). */
  readonly admit?: () => boolean;
}

export const DEFAULT_GROUP = 'demo-asg';
export const DEFAULT_HOOK = 'nixos-ec2-agent-launch';

export class World {
  private constructor(
    readonly imds: ImdsEmulator,
    readonly ssm: SsmEmulator,
    readonly autoscaling: AutoScalingEmulator,
    readonly cloudwatch: CloudWatchEmulator,
    readonly instance: ImdsInstance,
    readonly group: string | undefined,
    readonly hook: string | undefined,
  ) {}

  static async start(options: WorldOptions = {}): Promise<World> {
    const spec = options.instance ?? {};
    const { autoScaling, ...identity } = spec;
    const group = autoScaling === null ? undefined : (autoScaling?.group ?? spec.tags?.['aws:autoscaling:groupName'] ?? DEFAULT_GROUP);
    const tags = { ...(group ? { 'aws:autoscaling:groupName': group } : {}), Name: 'nixos-ec2-agent-demo', ...spec.tags };
    const instance = defaultInstance({
      ...(identity as Partial<ImdsInstance>),
      tags,
      ...(options.userData ? { userData: options.userData } : {}),
    });
    const host = options.host ?? '127.0.0.1';
    // What every emulator shares: the clock, and the network between them and the instance.
    const shared = { ...(options.clock ? { clock: options.clock } : {}), ...(options.admit ? { admit: options.admit } : {}) };
    // Whatever fails part way closes what already listens: nothing may keep the process alive.
    const started: { close(): Promise<void> }[] = [];
    const closeStarted = () => Promise.all(started.map((server) => server.close()));
    let imds: ImdsEmulator;
    let ssm: SsmEmulator;
    let autoscaling: AutoScalingEmulator;
    let cloudwatch: CloudWatchEmulator;
    try {
      imds = await ImdsEmulator.start({ instance, host, ...shared, ...(options.ports?.imds ? { port: options.ports.imds } : {}) });
      started.push(imds);
      ssm = await SsmEmulator.start({
        region: instance.region,
        accountId: instance.accountId,
        host,
        ...shared,
        ...(options.ports?.ssm ? { port: options.ports.ssm } : {}),
        ...(options.ssmThroughput !== undefined ? { throughput: options.ssmThroughput } : {}),
      });
      started.push(ssm);
      autoscaling = await AutoScalingEmulator.start({
        region: instance.region,
        accountId: instance.accountId,
        host,
        ...shared,
        ...(options.ports?.autoscaling ? { port: options.ports.autoscaling } : {}),
      });
      started.push(autoscaling);
      cloudwatch = await CloudWatchEmulator.start({
        region: instance.region,
        accountId: instance.accountId,
        host,
        ...shared,
        ...(options.ports?.cloudwatch ? { port: options.ports.cloudwatch } : {}),
      });
      started.push(cloudwatch);
      if (options.parameters) seedParameters(ssm, options.parameters, '--parameters');
    } catch (err) {
      await closeStarted();
      throw err;
    }
    let hook: string | undefined;
    if (group) {
      autoscaling.createGroup({ name: group, healthCheckType: 'ELB', healthCheckGracePeriod: 300 });
      const hookSpec = autoScaling?.hook === undefined ? { name: DEFAULT_HOOK } : autoScaling.hook;
      if (hookSpec) {
        hook = hookSpec.name;
        autoscaling.putLifecycleHook({
          groupName: group,
          hookName: hookSpec.name,
          transition: 'autoscaling:EC2_INSTANCE_LAUNCHING',
          ...(hookSpec.heartbeatTimeout ? { heartbeatTimeout: hookSpec.heartbeatTimeout } : {}),
          ...(hookSpec.defaultResult ? { defaultResult: hookSpec.defaultResult } : {}),
        });
      }
      // "When an instance prepares to transition to one of the preceding steady states, Amazon EC2 Auto
      // Scaling updates the value of the instance metadata item autoscaling/target-lifecycle-state"
      // (EC2 Auto Scaling user guide, retrieving-target-lifecycle-state-through-imds): a launch held
      // in Pending:Wait reads InService, a termination Terminated; a launch into a warm pool reads
      // the pool's state (Warmed:Stopped) from Warmed:Pending on.
      const pool = autoScaling?.warmPool;
      if (pool) autoscaling.putWarmPool(group, { poolState: pool });
      const follow = (state: string, inPool: WarmPoolState | undefined = pool) => {
        const target = targetOf(state, inPool);
        if (target) imds.setTargetLifecycleState(target);
      };
      const launched = autoscaling.launchInstance({
        instanceId: instance.instanceId,
        groupName: group,
        availabilityZone: instance.availabilityZone,
        instanceType: instance.instanceType,
        ...(pool ? { warmPool: pool } : {}),
      });
      if (spec.targetLifecycleState === undefined) follow(launched.lifecycleState);
      autoscaling.onInstanceChange((view) => {
        // A scale-in under the pool's reuse policy takes an instance of the group itself there.
        if (view.instanceId === instance.instanceId) follow(view.lifecycleState, view.warmPool);
      });
    }
    return new World(imds, ssm, autoscaling, cloudwatch, instance, group, hook);
  }

  /** The variables that point the SDK, the AWS CLI and the agent at this world. */
  env(): Record<string, string> {
    return {
      AWS_EC2_METADATA_SERVICE_ENDPOINT: this.imds.url,
      AWS_ENDPOINT_URL_SSM: this.ssm.url,
      AWS_ENDPOINT_URL_AUTO_SCALING: this.autoscaling.url,
      AWS_ENDPOINT_URL_CLOUDWATCH: this.cloudwatch.url,
      AWS_REGION: this.instance.region,
      AWS_DEFAULT_REGION: this.instance.region,
    };
  }

  /** For tools that take static credentials (the AWS CLI); the agent gets role credentials from IMDS. */
  cliEnv(): Record<string, string> {
    return {
      ...this.env(),
      AWS_ACCESS_KEY_ID: 'AKIDSANDBOXEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'sandbox-secret-access-key',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_PAGER: '',
    };
  }

  async close(): Promise<void> {
    await Promise.all([this.imds.close(), this.ssm.close(), this.autoscaling.close(), this.cloudwatch.close()]);
  }
}

export async function readWorldFiles(flags: { 'user-data'?: string; parameters?: string; instance?: string }): Promise<Pick<WorldOptions, 'userData' | 'parameters' | 'instance'>> {
  const out: { userData?: Buffer; parameters?: PutParameterRequest[]; instance?: InstanceSpec } = {};
  if (flags['user-data']) out.userData = await readInput(flags['user-data'], '--user-data');
  if (flags.parameters) {
    const parsed = z.array(PutParameterFile).safeParse(await readJson(flags.parameters, '--parameters'));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      if (issue?.code === 'unrecognized_keys') {
        const what = issue.path.includes('Tags') ? 'a tag has Key, Value' : `a PutParameter request has ${Object.keys(PutParameterFile.shape).join(', ')}`;
        throw new WorldInputError(`${flags.parameters}: ${pathOf([...issue.path, issue.keys[0] ?? ''])}: unknown field (${what})`);
      }
      throw new WorldInputError(`${flags.parameters}: a JSON array of PutParameter requests ({"Name", "Value", "Type"}): ${issue ? pathOf(issue.path) || '(top level)' : '(top level)'}: ${issue?.message}`);
    }
    out.parameters = parsed.data as PutParameterRequest[];
  }
  if (flags.instance) {
    const parsed = InstanceFile.safeParse(await readJson(flags.instance, '--instance'));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new WorldInputError(`${flags.instance}: ${issue?.path.join('.') || '(top level)'}: ${issue?.message}`);
    }
    out.instance = parsed.data;
  }
  return out;
}

async function readInput(file: string, flag: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new WorldInputError(`${flag} ${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

async function readJson(file: string, flag: string): Promise<unknown> {
  const text = (await readInput(file, flag)).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new WorldInputError(`${flag} ${file}: not JSON: ${(err as Error).message}`);
  }
}

/**
 * Makes SSM hold what the requests state, however often it is applied: a parameter whose value
 * and type already match is left alone; a new value overwrites it (a new version); a change between
 * String and SecureString, which Parameter Store refuses in place, deletes and recreates it.
 * Parameters the requests do not name are left as they are. Returns what changed.
 */
export function seedParameters(ssm: SsmEmulator, requests: readonly PutParameterRequest[], where: string): { created: string[]; updated: string[]; unchanged: string[] } {
  const result = { created: [] as string[], updated: [] as string[], unchanged: [] as string[] };
  requests.forEach((request, index) => {
    const current = ssm.get(request.Name);
    const type = request.Type ?? current?.Type;
    try {
      if (!current) {
        ssm.put(request);
        result.created.push(request.Name);
      } else if (current.Value === request.Value && current.Type === type) {
        result.unchanged.push(request.Name);
      } else if ((current.Type === 'SecureString') !== (type === 'SecureString')) {
        ssm.delete(request.Name);
        ssm.put(request);
        result.updated.push(request.Name);
      } else {
        // Tags are set at creation only (PutParameter refuses them with Overwrite).
        const { Tags: _tags, ...rest } = request;
        ssm.put({ ...rest, Overwrite: true });
        result.updated.push(request.Name);
      }
    } catch (err) {
      if (err instanceof SsmServiceError) throw new WorldInputError(`${where}: [${index}] ${request.Name}: ${err.code}: ${err.message}`);
      throw err;
    }
  });
  return result;
}

export class WorldInputError extends Error {
  readonly kind = 'invalid-input';
}

/** The target lifecycle state IMDS reads while Auto Scaling holds an instance in `state`. */
function targetOf(state: string, pool: WarmPoolState | undefined): TargetLifecycleState | undefined {
  if (/^(Pending|InService)/.test(state)) return 'InService';
  if (state.startsWith('Terminat')) return 'Terminated';
  if (state.startsWith('Warmed:Terminat')) return 'Warmed:Terminated';
  if (pool && state.startsWith('Warmed:')) return `Warmed:${pool}`;
  return undefined;
}
