// What the agent says to its Auto Scaling group, and nothing more: the launch hook's heartbeats
// and completion, the instance's health, and the two reads that find the group and its hooks.
//
// `@aws-sdk/client-auto-scaling` is imported on first use: it is heavy, and an instance that is in
// no group, or that finished its launch hook long ago, never needs it on the boot path.
import { InvalidInputError, TransientError } from '../errors.js';
import type { Imds } from './imds.js';
import type { AwsCredentialIdentityProvider } from '@smithy/types';

export type LifecycleResult = 'CONTINUE' | 'ABANDON';
export type LifecycleTransition = 'autoscaling:EC2_INSTANCE_LAUNCHING' | 'autoscaling:EC2_INSTANCE_TERMINATING';
export const LAUNCHING: LifecycleTransition = 'autoscaling:EC2_INSTANCE_LAUNCHING';

export interface LifecycleHook {
  readonly name: string;
  readonly transition: string;
  /** Seconds; absent when the service did not say. */
  readonly heartbeatTimeout?: number;
  readonly globalTimeout?: number;
  readonly defaultResult?: string;
}

export interface GroupMembership {
  readonly group: string;
  /** `Pending:Wait`, `InService`, …: the LifecycleState enum. */
  readonly lifecycleState: string;
  /** As DescribeAutoScalingInstances spells it: `HEALTHY` / `UNHEALTHY`. */
  readonly healthStatus?: string;
}

export interface LifecycleActionRef {
  readonly group: string;
  readonly hook: string;
  readonly instanceId: string;
}

/**
 * `done` when the service took it. `no-active-action` when it has no lifecycle action for this
 * instance and hook: already completed, timed out, or the instance is not waiting in a hook. That
 * is an expected answer, not a failure, so it is a value rather than an error.
 */
export type ActionOutcome = 'done' | 'no-active-action';

/** The operations the agent uses; a fleet simulation or a test can hand in its own. */
export interface AutoScaling {
  describeLifecycleHooks(group: string): Promise<readonly LifecycleHook[]>;
  completeLifecycleAction(input: LifecycleActionRef & { readonly result: LifecycleResult }): Promise<ActionOutcome>;
  recordHeartbeat(input: LifecycleActionRef): Promise<ActionOutcome>;
  setInstanceHealth(instanceId: string, health: 'Healthy' | 'Unhealthy', shouldRespectGracePeriod?: boolean): Promise<void>;
  /** Undefined when the instance is in no Auto Scaling group. */
  describeInstance(instanceId: string): Promise<GroupMembership | undefined>;
}

export interface AutoScalingClientOptions {
  /** Used for the region and the endpoint override: the agent's environment, never read from the process here. */
  readonly env: NodeJS.ProcessEnv;
  /** Asked for the region only when the environment names none. */
  readonly imds?: Pick<Imds, 'identity'>;
  readonly region?: string;
  /** Otherwise AWS_ENDPOINT_URL_AUTO_SCALING, then AWS_ENDPOINT_URL, then AWS's own. */
  readonly endpoint?: string;
  /** Otherwise the SDK's default chain (instance role credentials from IMDS on EC2). */
  readonly credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } | (() => Promise<AwsCredentialIdentityProvider>);
  /** The SDK's attempts per call; throttling and 5xx are retried with its adaptive backoff. */
  readonly maxAttempts?: number;
  /** Per HTTP attempt: the SDK has no timeout of its own, and a hung call would stall reporting. */
  readonly requestTimeoutMs?: number;
}

type Sdk = typeof import('./autoscaling-sdk.js');
type SdkClient = InstanceType<Sdk['AutoScalingClient']>;

const NO_ACTIVE_ACTION = /No active Lifecycle Action found/i;

/** The tag EC2 puts on every member of an Auto Scaling group. */
export const ASG_TAG = 'aws:autoscaling:groupName';

/**
 * The instance's Auto Scaling group. The tag from IMDS first: free, but served only when "Allow tags
 * in instance metadata" is on, which it is not by default. Otherwise one DescribeAutoScalingInstances
 * call, whose answer (a group or none) is kept: an instance never changes group while it runs. A
 * failed call is not kept, so the next look asks again.
 */
export class GroupLocator {
  private asked: Promise<string | undefined> | undefined;

  constructor(
    private readonly imds: Pick<Imds, 'get' | 'identity'>,
    private readonly autoscaling: Pick<AutoScaling, 'describeInstance'>,
  ) {}

  async group(): Promise<string | undefined> {
    const tag = await this.imds.get(`latest/meta-data/tags/instance/${ASG_TAG}`);
    if (tag !== undefined) return tag;
    this.asked ??= this.describe().catch((err: unknown) => {
      this.asked = undefined;
      throw err;
    });
    return this.asked;
  }

  private async describe(): Promise<string | undefined> {
    const { instanceId } = await this.imds.identity();
    return (await this.autoscaling.describeInstance(instanceId))?.group;
  }
}

/** The real client over the AWS SDK, created on the first call. */
export class SdkAutoScaling implements AutoScaling {
  private ready: Promise<{ sdk: Sdk; client: SdkClient }> | undefined;

  constructor(private readonly options: AutoScalingClientOptions) {}

  async describeLifecycleHooks(group: string): Promise<readonly LifecycleHook[]> {
    const out = await this.call('DescribeLifecycleHooks', { group }, ({ sdk, client }) =>
      client.send(new sdk.DescribeLifecycleHooksCommand({ AutoScalingGroupName: group })),
    );
    return (out.LifecycleHooks ?? []).flatMap((h) =>
      h.LifecycleHookName
        ? [
            {
              name: h.LifecycleHookName,
              transition: h.LifecycleTransition ?? '',
              ...(h.HeartbeatTimeout !== undefined ? { heartbeatTimeout: h.HeartbeatTimeout } : {}),
              ...(h.GlobalTimeout !== undefined ? { globalTimeout: h.GlobalTimeout } : {}),
              ...(h.DefaultResult !== undefined ? { defaultResult: h.DefaultResult } : {}),
            },
          ]
        : [],
    );
  }

  async completeLifecycleAction(input: LifecycleActionRef & { readonly result: LifecycleResult }): Promise<ActionOutcome> {
    return this.action('CompleteLifecycleAction', input, ({ sdk, client }) =>
      client.send(
        new sdk.CompleteLifecycleActionCommand({
          AutoScalingGroupName: input.group,
          LifecycleHookName: input.hook,
          InstanceId: input.instanceId,
          LifecycleActionResult: input.result,
        }),
      ),
    );
  }

  async recordHeartbeat(input: LifecycleActionRef): Promise<ActionOutcome> {
    return this.action('RecordLifecycleActionHeartbeat', input, ({ sdk, client }) =>
      client.send(
        new sdk.RecordLifecycleActionHeartbeatCommand({
          AutoScalingGroupName: input.group,
          LifecycleHookName: input.hook,
          InstanceId: input.instanceId,
        }),
      ),
    );
  }

  async setInstanceHealth(instanceId: string, health: 'Healthy' | 'Unhealthy', shouldRespectGracePeriod = true): Promise<void> {
    await this.call('SetInstanceHealth', { instanceId, health }, ({ sdk, client }) =>
      client.send(new sdk.SetInstanceHealthCommand({ InstanceId: instanceId, HealthStatus: health, ShouldRespectGracePeriod: shouldRespectGracePeriod })),
    );
  }

  async describeInstance(instanceId: string): Promise<GroupMembership | undefined> {
    const out = await this.call('DescribeAutoScalingInstances', { instanceId }, ({ sdk, client }) =>
      client.send(new sdk.DescribeAutoScalingInstancesCommand({ InstanceIds: [instanceId] })),
    );
    // Unknown ids are ignored by the service rather than refused: no entry means no group.
    const entry = out.AutoScalingInstances?.find((i) => i.InstanceId === instanceId);
    if (!entry?.AutoScalingGroupName) return undefined;
    return {
      group: entry.AutoScalingGroupName,
      lifecycleState: entry.LifecycleState ?? 'unknown',
      ...(entry.HealthStatus ? { healthStatus: entry.HealthStatus } : {}),
    };
  }

  private async action(op: string, input: LifecycleActionRef, send: (c: { sdk: Sdk; client: SdkClient }) => Promise<unknown>): Promise<ActionOutcome> {
    try {
      await this.call(op, { ...input }, send);
      return 'done';
    } catch (err) {
      if (err instanceof InvalidInputError && err.context.code === 'ValidationError' && NO_ACTIVE_ACTION.test(err.message)) {
        return 'no-active-action';
      }
      throw err;
    }
  }

  private async call<T>(op: string, context: Record<string, unknown>, send: (c: { sdk: Sdk; client: SdkClient }) => Promise<T>): Promise<T> {
    let ready;
    try {
      ready = await this.client();
    } catch (err) {
      throw new TransientError(`Auto Scaling client unavailable: ${(err as Error).message}`, 'autoscaling', { op, ...context }, { cause: err });
    }
    try {
      return await send(ready);
    } catch (err) {
      throw mapAutoScalingError(err, op, context);
    }
  }

  private client(): Promise<{ sdk: Sdk; client: SdkClient }> {
    this.ready ??= this.create().catch((err: unknown) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }

  private async create(): Promise<{ sdk: Sdk; client: SdkClient }> {
    const env = this.options.env;
    const fromEnv = this.options.region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined);
    const given = this.options.credentials;
    const [sdk, region, credentials] = await Promise.all([
      import('./autoscaling-sdk.js'),
      fromEnv !== undefined ? Promise.resolve(fromEnv) : this.options.imds ? this.options.imds.identity().then((i) => i.region) : Promise.resolve(undefined),
      typeof given === 'function' ? given() : Promise.resolve(given),
    ]);
    const endpoint = this.options.endpoint ?? (env.AWS_ENDPOINT_URL_AUTO_SCALING || env.AWS_ENDPOINT_URL || undefined);
    const timeout = this.options.requestTimeoutMs ?? 10_000;
    const client = new sdk.AutoScalingClient({
      ...(region ? { region } : {}),
      ...(endpoint ? { endpoint } : {}),
      ...(credentials ? { credentials } : {}),
      maxAttempts: this.options.maxAttempts ?? 3,
      // A fleet launching at once shares one account-wide Auto Scaling throttle: the adaptive
      // mode's client-side rate limiter backs each agent off instead of stampeding.
      retryMode: 'adaptive',
      // Without throwOnRequestTimeout the handler only logs a warning and keeps waiting.
      requestHandler: { requestTimeout: timeout, connectionTimeout: Math.min(timeout, 3_000), throwOnRequestTimeout: true },
    });
    return { sdk, client };
  }
}

/**
 * Wire failures become the agent's error kinds. ValidationError is the caller's input (which
 * includes "No active Lifecycle Action found"); throttling, 5xx, timeouts and refused credentials
 * may pass, so they are transient.
 */
export function mapAutoScalingError(err: unknown, op: string, context: Record<string, unknown> = {}): Error {
  const e = err as { name?: string; code?: string; message?: string; $fault?: string; $metadata?: { httpStatusCode?: number; requestId?: string } };
  const code = e.name && e.name !== 'Error' ? e.name : (e.code ?? 'Unknown');
  const status = e.$metadata?.httpStatusCode;
  const ctx = { op, code, ...(status !== undefined ? { status } : {}), ...(e.$metadata?.requestId ? { requestId: e.$metadata.requestId } : {}), ...context };
  const message = e.message ?? String(err);
  if (code === 'ValidationError') return new InvalidInputError(message, `Auto Scaling ${op}`, ctx, { cause: err });
  return new TransientError(`Auto Scaling ${op} failed: ${code}: ${message}`, 'autoscaling', ctx, { cause: err });
}
