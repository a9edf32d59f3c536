// The emulated AWS an instance lives in: IMDS, SSM and Auto Scaling on loopback, wired so the
// instance is a member of its group with a launch lifecycle hook, as on a real fleet. Shared by
// `emulate`, `sandbox` and the end-to-end tests.
import { readFile } from 'node:fs/promises';
import { z } from 'zod/v3';
import type { Clock } from '../agent/ports.js';
import { AutoScalingEmulator } from './emulators/autoscaling.js';
import { defaultInstance, ImdsEmulator, type ImdsInstance } from './emulators/imds.js';
import { SsmEmulator, type PutParameterRequest, type SsmThroughput } from './emulators/ssm.js';

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
    })
    .nullable()
    .optional(),
});
export type InstanceSpec = z.infer<typeof InstanceFile>;

export interface WorldOptions {
  readonly instance?: InstanceSpec;
  readonly userData?: Buffer;
  readonly parameters?: readonly PutParameterRequest[];
  readonly host?: string;
  readonly ports?: { imds?: number; ssm?: number; autoscaling?: number };
  readonly clock?: Clock;
  readonly ssmThroughput?: SsmThroughput | null;
}

export const DEFAULT_GROUP = 'demo-asg';
export const DEFAULT_HOOK = 'nixos-ec2-agent-launch';

export class World {
  private constructor(
    readonly imds: ImdsEmulator,
    readonly ssm: SsmEmulator,
    readonly autoscaling: AutoScalingEmulator,
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
    const clock = options.clock ? { clock: options.clock } : {};
    const imds = await ImdsEmulator.start({ instance, host, ...clock, ...(options.ports?.imds ? { port: options.ports.imds } : {}) });
    const ssm = await SsmEmulator.start({
      region: instance.region,
      accountId: instance.accountId,
      host,
      ...clock,
      ...(options.ports?.ssm ? { port: options.ports.ssm } : {}),
      ...(options.ssmThroughput !== undefined ? { throughput: options.ssmThroughput } : {}),
    });
    const autoscaling = await AutoScalingEmulator.start({
      region: instance.region,
      accountId: instance.accountId,
      host,
      ...clock,
      ...(options.ports?.autoscaling ? { port: options.ports.autoscaling } : {}),
    });
    if (options.parameters) ssm.load(options.parameters);
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
      autoscaling.launchInstance({ instanceId: instance.instanceId, groupName: group, availabilityZone: instance.availabilityZone, instanceType: instance.instanceType });
    }
    return new World(imds, ssm, autoscaling, instance, group, hook);
  }

  /** The variables that point the SDK, the AWS CLI and the agent at this world. */
  env(): Record<string, string> {
    return {
      AWS_EC2_METADATA_SERVICE_ENDPOINT: this.imds.url,
      AWS_ENDPOINT_URL_SSM: this.ssm.url,
      AWS_ENDPOINT_URL_AUTO_SCALING: this.autoscaling.url,
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
    await Promise.all([this.imds.close(), this.ssm.close(), this.autoscaling.close()]);
  }
}

export async function readWorldFiles(flags: { 'user-data'?: string; parameters?: string; instance?: string }): Promise<Pick<WorldOptions, 'userData' | 'parameters' | 'instance'>> {
  const out: { userData?: Buffer; parameters?: PutParameterRequest[]; instance?: InstanceSpec } = {};
  if (flags['user-data']) out.userData = await readFile(flags['user-data']);
  if (flags.parameters) {
    const parsed = z.array(z.object({ Name: z.string(), Value: z.string() }).passthrough()).safeParse(JSON.parse(await readFile(flags.parameters, 'utf8')));
    if (!parsed.success) throw new WorldInputError(`${flags.parameters}: a JSON array of PutParameter requests ({"Name", "Value", "Type"}): ${parsed.error.issues[0]?.message}`);
    out.parameters = parsed.data as PutParameterRequest[];
  }
  if (flags.instance) {
    const parsed = InstanceFile.safeParse(JSON.parse(await readFile(flags.instance, 'utf8')));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new WorldInputError(`${flags.instance}: ${issue?.path.join('.') || '(top level)'}: ${issue?.message}`);
    }
    out.instance = parsed.data;
  }
  return out;
}

export class WorldInputError extends Error {
  readonly kind = 'invalid-input';
}
