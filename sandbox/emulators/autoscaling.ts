// An EC2 Auto Scaling endpoint on loopback that speaks the real awsQuery protocol (form-encoded
// `Action=…&Version=2011-01-01` in, namespaced XML out), so the SDK v3 client, botocore and the AWS
// CLI all work against it unchanged. It models what an instance sees of its group: lifecycle hooks
// that hold a launch in Pending:Wait until completed, heartbeats, timeouts that apply the hook's
// DefaultResult, and SetInstanceHealth. Time comes from an injected Clock; state lives per instance.
import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import { type Clock, systemClock } from '../../agent/ports.js';
import { type LoggedRequest, listen, readBody, type RunningServer } from './server.js';
import { TokenBucket } from './token-bucket.js';

export const AUTOSCALING_XMLNS = 'http://autoscaling.amazonaws.com/doc/2011-01-01/';
export const AUTOSCALING_API_VERSION = '2011-01-01';

export type LifecycleTransition = 'autoscaling:EC2_INSTANCE_LAUNCHING' | 'autoscaling:EC2_INSTANCE_TERMINATING';
export type LifecycleActionResult = 'CONTINUE' | 'ABANDON';
export type HealthStatus = 'HEALTHY' | 'UNHEALTHY';
export type HealthCheckType = 'EC2' | 'ELB' | 'VPC_LATTICE' | 'EBS';

export const LAUNCHING: LifecycleTransition = 'autoscaling:EC2_INSTANCE_LAUNCHING';
export const TERMINATING: LifecycleTransition = 'autoscaling:EC2_INSTANCE_TERMINATING';

// Documented limits (PutLifecycleHook, LifecycleHook.GlobalTimeout, DescribeAutoScalingInstances).
export const HEARTBEAT_TIMEOUT_MIN_S = 30;
export const HEARTBEAT_TIMEOUT_MAX_S = 7200;
export const HEARTBEAT_TIMEOUT_DEFAULT_S = 3600;
export const GLOBAL_TIMEOUT_MAX_S = 172_800;
const MAX_INSTANCE_IDS = 50;
const MAX_RECORDS_INSTANCES = 50;
const MAX_RECORDS_GROUPS = 100;
const MAX_HOOKS_PER_GROUP = 50;

export interface LaunchTemplateRef {
  readonly launchTemplateId?: string;
  readonly launchTemplateName?: string;
  readonly version?: string;
}

export interface ThroughputOptions {
  /** Tokens added per second of Clock time: the sustained request rate. */
  readonly ratePerSecond: number;
  /** Bucket size: how many requests may arrive at once. Defaults to one second's worth. */
  readonly burst?: number;
}

export interface AutoScalingEmulatorOptions {
  /** New connections let through (server.ts, ListenOptions). */
  readonly admit?: () => boolean;
  readonly clock?: Clock;
  readonly region?: string;
  readonly accountId?: string;
  readonly host?: string;
  readonly port?: number;
  /** One account-wide bucket shared by every Action, as AWS throttles Auto Scaling. Unlimited when absent. */
  readonly throughput?: ThroughputOptions;
  /**
   * How often timeouts are evaluated without a request arriving, in real milliseconds; 0 turns the
   * timer off (they are still evaluated on every request and by `tick()`). Default 1000.
   */
  readonly tickIntervalMs?: number;
}

export interface GroupSpec {
  readonly name: string;
  readonly minSize?: number;
  readonly maxSize?: number;
  readonly desiredCapacity?: number;
  readonly healthCheckType?: HealthCheckType;
  /** Seconds. */
  readonly healthCheckGracePeriod?: number;
  readonly availabilityZones?: readonly string[];
  readonly launchTemplate?: LaunchTemplateRef;
  readonly tags?: Readonly<Record<string, string>>;
}

export interface HookSpec {
  readonly groupName: string;
  readonly hookName: string;
  readonly transition?: LifecycleTransition;
  /** Seconds, 30..7200. */
  readonly heartbeatTimeout?: number;
  readonly defaultResult?: LifecycleActionResult;
  readonly notificationMetadata?: string;
}

/** A warm pool's pool state: what its instances are kept as until the group needs them. */
export type WarmPoolState = 'Stopped' | 'Running' | 'Hibernated';
export const WARM_POOL_STATES: readonly WarmPoolState[] = ['Stopped', 'Running', 'Hibernated'];

/** A group's warm pool as PutWarmPool sets it (the instances in it are launched with `warmPool`). */
export interface WarmPoolSpec {
  readonly poolState: WarmPoolState;
  readonly minSize: number;
  /** -1 (or absent): the group's MaxSize. */
  readonly maxGroupPreparedCapacity?: number;
  readonly reuseOnScaleIn?: boolean;
}

export interface LaunchSpec {
  readonly instanceId: string;
  readonly groupName: string;
  readonly availabilityZone?: string;
  readonly instanceType?: string;
  readonly launchTemplate?: LaunchTemplateRef;
  /**
   * Launched into the group's warm pool, kept there in this state. Its launch hooks hold it in
   * `Warmed:Pending:Wait` first, and again in `Pending:Wait` when it leaves the pool for the group
   * (leaveWarmPool): "a newly launched instance first pauses ... when it reaches the
   * Warmed:Pending:Wait state, and then pauses again when the instance restarts and reaches the
   * Pending:Wait state" (EC2 Auto Scaling user guide, warm-pool-instance-lifecycle).
   */
  readonly warmPool?: WarmPoolState;
}

export interface LaunchOutcome {
  readonly lifecycleState: string;
  /** The token of the first launch hook's action, when a hook holds the instance. */
  readonly token?: string;
  /** One token per launch hook. */
  readonly tokens: readonly string[];
}

export interface ActiveActionView {
  readonly hookName: string;
  readonly transition: LifecycleTransition;
  readonly token: string;
  readonly startedAt: number;
  readonly lastHeartbeatAt: number;
  readonly heartbeats: number;
  /** When the DefaultResult applies unless a heartbeat or completion comes first (epoch ms). */
  readonly deadline: number;
}

export interface InstanceView {
  readonly instanceId: string;
  readonly groupName: string;
  readonly availabilityZone: string;
  readonly instanceType: string;
  readonly lifecycleState: string;
  readonly healthStatus: HealthStatus;
  readonly launchTemplate?: LaunchTemplateRef;
  readonly launchedAt: number;
  readonly inServiceAt?: number;
  readonly activeActions: readonly ActiveActionView[];
  /** The result that ended the last lifecycle action on this instance, however it ended. */
  readonly lastResult?: LifecycleActionResult;
  /** Heartbeats recorded over the instance's life. */
  readonly heartbeats: number;
  /** Every lifecycle state the instance has been in, oldest first. */
  readonly stateHistory: readonly string[];
  /** The pool state while the instance belongs to its group's warm pool (or is on its way in). */
  readonly warmPool?: WarmPoolState;
}

/** One entry of the lifecycle history: what was completed, heartbeated or timed out, and how. */
export interface ActionEvent {
  readonly at: number;
  readonly kind: 'complete' | 'heartbeat' | 'timeout';
  readonly instanceId: string;
  readonly groupName: string;
  readonly hookName: string;
  readonly token: string;
  readonly result?: LifecycleActionResult;
  /** How the caller named the action; `timeout` for results the service applied itself. */
  readonly by: 'token' | 'instance-id' | 'timeout';
}

export interface HealthEvent {
  readonly at: number;
  readonly instanceId: string;
  readonly healthStatus: HealthStatus;
  readonly shouldRespectGracePeriod: boolean;
}

export interface FaultSpec {
  /** Only requests for this Action; every Action when absent. */
  readonly action?: string;
  /** Error code to answer with, e.g. `Throttling`, `ResourceContention`, `InternalFailure`. */
  readonly code?: string;
  /** HTTP status; defaults from the code (500 for ResourceContention and InternalFailure, else 400). */
  readonly status?: number;
  readonly message?: string;
  /** Hold the answer this long (real time: it stands for network latency a client times out on). */
  readonly delayMs?: number;
  /** Close the connection without answering. */
  readonly drop?: boolean;
  /** How many matching requests this fault applies to; default 1. */
  readonly times?: number;
}

export interface AutoScalingLoggedRequest extends LoggedRequest {
  /** The decoded form parameters, minus Action and Version. */
  readonly params: Readonly<Record<string, string>>;
  /** The error code answered, when the answer was an error. */
  readonly errorCode?: string;
}

/** Plain JSON: what `snapshot()` returns and `restore()` takes. */
export interface AutoScalingSnapshot {
  readonly version: 1;
  readonly groups: readonly GroupState[];
  readonly hooks: readonly HookState[];
  readonly instances: readonly InstanceState[];
  readonly actions: readonly ActionState[];
  readonly history: readonly ActionEvent[];
  readonly healthHistory: readonly HealthEvent[];
}

interface GroupState {
  name: string;
  minSize: number;
  maxSize: number;
  desiredCapacity: number;
  healthCheckType: HealthCheckType;
  healthCheckGracePeriod: number;
  availabilityZones: string[];
  launchTemplate?: LaunchTemplateRef;
  tags: Record<string, string>;
  createdAt: number;
  /** The id inside the group's ARN. */
  uuid: string;
  warmPool?: WarmPoolSpec;
}

interface HookState {
  name: string;
  groupName: string;
  transition: LifecycleTransition;
  heartbeatTimeout: number;
  defaultResult: LifecycleActionResult;
  notificationMetadata?: string;
}

interface InstanceState {
  instanceId: string;
  groupName: string;
  availabilityZone: string;
  instanceType: string;
  lifecycleState: string;
  healthStatus: HealthStatus;
  launchTemplate?: LaunchTemplateRef;
  launchedAt: number;
  inServiceAt?: number;
  lastResult?: LifecycleActionResult;
  heartbeats: number;
  stateHistory: string[];
  /** The pool state while the instance belongs to the warm pool; cleared when it leaves. */
  warmPool?: WarmPoolState;
}

interface ActionState {
  token: string;
  instanceId: string;
  groupName: string;
  hookName: string;
  transition: LifecycleTransition;
  heartbeatTimeout: number;
  globalTimeout: number;
  defaultResult: LifecycleActionResult;
  startedAt: number;
  lastHeartbeatAt: number;
  heartbeats: number;
  result?: LifecycleActionResult;
}

/** An answer in AWS's awsQuery error shape; also what the programmatic methods throw on bad input. */
export class AutoScalingQueryError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
    /** `Sender` when the caller is at fault, as the model's senderFault says. */
    readonly type: 'Sender' | 'Receiver' = status < 500 || code === 'ResourceContention' ? 'Sender' : 'Receiver',
  ) {
    super(message);
    this.name = 'AutoScalingQueryError';
  }
}

const validation = (message: string) => new AutoScalingQueryError('ValidationError', message);

/** The Coral-style message AWS uses for model constraint failures. */
function constraint(value: string | null, member: string, rule: string): AutoScalingQueryError {
  const shown = value === null ? 'null' : `'${value}'`;
  return validation(`1 validation error detected: Value ${shown} at '${member}' failed to satisfy constraint: ${rule}`);
}

const DEFAULT_STATUS: Readonly<Record<string, number>> = {
  ResourceContention: 500,
  InternalFailure: 500,
  ServiceLinkedRoleFailure: 500,
  ServiceUnavailable: 503,
};

const DEFAULT_MESSAGE: Readonly<Record<string, string>> = {
  Throttling: 'Rate exceeded',
  ResourceContention:
    'You already have a pending update to an Auto Scaling resource (for example, a group, instance, or load balancer).',
  InternalFailure: 'An internal error occurred.',
  ServiceUnavailable: 'Service is unavailable.',
};

// SigV4 as every SDK and the CLI send it; the signature itself is not checked.
const AUTHORIZATION =
  /^AWS4-HMAC-SHA256 Credential=[^/\s,]+\/\d{8}\/[a-z0-9-]+\/autoscaling\/aws4_request, ?SignedHeaders=[a-z0-9;-]+, ?Signature=[0-9a-f]{64}$/;

/** `Warmed:` while the instance belongs to the warm pool: its lifecycle states are the pool's own. */
function poolPrefix(instance: Pick<InstanceState, 'warmPool'>): '' | 'Warmed:' {
  return instance.warmPool ? 'Warmed:' : '';
}

/** Gone from the group or from its warm pool: no call names it any more. */
function gone(instance: Pick<InstanceState, 'lifecycleState'>): boolean {
  return /^(Warmed:)?Terminated$/.test(instance.lifecycleState);
}

/** On its way out, or gone: from the group (`Terminating…`) or from the warm pool (`Warmed:Terminating…`). */
function terminating(instance: Pick<InstanceState, 'lifecycleState'>): boolean {
  return /^(Warmed:)?Terminat/.test(instance.lifecycleState);
}

export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&${{ '&': 'amp', '<': 'lt', '>': 'gt', '"': 'quot', "'": 'apos' }[c]};`);
}

export type XmlValue = string | number | boolean | undefined | XmlNode | readonly XmlNode[] | readonly string[];
export interface XmlNode {
  readonly [name: string]: XmlValue;
}

/** Members in insertion order; arrays become `<member>` lists; undefined members are left out. */
export function toXml(node: XmlNode): string {
  let out = '';
  for (const [name, value] of Object.entries(node)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) {
      const items = value as readonly (XmlNode | string)[];
      const member = (m: XmlNode | string) => `<member>${typeof m === 'string' ? escapeXml(m) : toXml(m)}</member>`;
      out += items.length === 0 ? `<${name}/>` : `<${name}>${items.map(member).join('')}</${name}>`;
    } else if (typeof value === 'object') {
      out += `<${name}>${toXml(value as XmlNode)}</${name}>`;
    } else {
      out += `<${name}>${escapeXml(String(value))}</${name}>`;
    }
  }
  return out;
}

function launchTemplateXml(t: LaunchTemplateRef | undefined): XmlNode | undefined {
  if (!t) return undefined;
  return { LaunchTemplateId: t.launchTemplateId, LaunchTemplateName: t.launchTemplateName, Version: t.version };
}

interface ArmedFault {
  spec: FaultSpec;
  remaining: number;
}

type Params = Map<string, string>;

type Handler = (p: Params) => string | undefined;

export class AutoScalingEmulator {
  readonly requests: AutoScalingLoggedRequest[] = [];
  readonly region: string;
  readonly accountId: string;

  private readonly clock: Clock;
  private readonly groups = new Map<string, GroupState>();
  /** Keyed by `group\0hook`. */
  private readonly hooks = new Map<string, HookState>();
  private readonly instances = new Map<string, InstanceState>();
  /** Active (uncompleted) lifecycle actions, keyed by token. */
  private readonly active = new Map<string, ActionState>();
  private history: ActionEvent[] = [];
  private healthHistory: HealthEvent[] = [];
  private readonly faults: ArmedFault[] = [];
  private readonly bucket: TokenBucket | undefined;
  private readonly listeners = new Set<(instance: InstanceView) => void>();
  private readonly delays = new AbortController();
  private server: RunningServer | undefined;
  private timer: NodeJS.Timeout | undefined;

  private readonly handlers: Readonly<Record<string, Handler>> = {
    CompleteLifecycleAction: (p) => this.opCompleteLifecycleAction(p),
    RecordLifecycleActionHeartbeat: (p) => this.opRecordLifecycleActionHeartbeat(p),
    SetInstanceHealth: (p) => this.opSetInstanceHealth(p),
    DescribeAutoScalingInstances: (p) => this.opDescribeAutoScalingInstances(p),
    DescribeAutoScalingGroups: (p) => this.opDescribeAutoScalingGroups(p),
    DescribeLifecycleHooks: (p) => this.opDescribeLifecycleHooks(p),
    DescribeLifecycleHookTypes: () => toXml({ LifecycleHookTypes: [LAUNCHING, TERMINATING] }),
    PutLifecycleHook: (p) => this.opPutLifecycleHook(p),
    PutWarmPool: (p) => this.opPutWarmPool(p),
    DescribeWarmPool: (p) => this.opDescribeWarmPool(p),
    DeleteWarmPool: (p) => this.opDeleteWarmPool(p),
  };

  private constructor(options: AutoScalingEmulatorOptions) {
    this.clock = options.clock ?? systemClock;
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '123456789012';
    this.bucket = options.throughput ? new TokenBucket({ ...options.throughput, clock: this.clock }) : undefined;
  }

  static async start(options: AutoScalingEmulatorOptions = {}): Promise<AutoScalingEmulator> {
    const emulator = new AutoScalingEmulator(options);
    emulator.server = await listen((req, res) => void emulator.handle(req, res), { host: options.host, port: options.port, ...(options.admit ? { admit: options.admit } : {}) });
    const interval = options.tickIntervalMs ?? 1000;
    if (interval > 0) {
      emulator.timer = setInterval(() => emulator.tick(), interval);
      emulator.timer.unref();
    }
    return emulator;
  }

  get url(): string {
    if (!this.server) throw new Error('the Auto Scaling emulator is not listening');
    return this.server.url;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.delays.abort();
    await this.server?.close();
  }

  // ---- programmatic state -------------------------------------------------------------------

  createGroup(spec: GroupSpec): void {
    if (this.groups.has(spec.name)) throw new AutoScalingQueryError('AlreadyExists', `AutoScalingGroup by this name already exists - A group with the name ${spec.name} already exists`);
    const grace = spec.healthCheckGracePeriod ?? 0;
    if (!Number.isInteger(grace) || grace < 0) throw validation(`HealthCheckGracePeriod must be a non-negative integer, got ${grace}`);
    const minSize = spec.minSize ?? 1;
    const maxSize = spec.maxSize ?? Math.max(minSize, 1);
    if (minSize > maxSize) throw validation(`The MinSize (${minSize}) must be less than or equal to the MaxSize (${maxSize}).`);
    this.groups.set(spec.name, {
      name: spec.name,
      minSize,
      maxSize,
      desiredCapacity: spec.desiredCapacity ?? minSize,
      healthCheckType: spec.healthCheckType ?? 'EC2',
      healthCheckGracePeriod: grace,
      availabilityZones: [...(spec.availabilityZones ?? [`${this.region}a`])],
      launchTemplate: spec.launchTemplate,
      tags: { ...(spec.tags ?? {}) },
      createdAt: this.clock.now(),
      uuid: randomUUID(),
    });
  }

  /** PutWarmPool: the group gets a warm pool, or its pool new settings. */
  putWarmPool(groupName: string, spec: Partial<WarmPoolSpec> = {}): void {
    const group = this.groups.get(groupName);
    if (!group) throw validation(`Group ${groupName} not found`);
    const poolState = spec.poolState ?? 'Stopped';
    if (!WARM_POOL_STATES.includes(poolState)) throw constraint(poolState, 'poolState', `Member must satisfy enum value set: [${WARM_POOL_STATES.join(', ')}]`);
    const minSize = spec.minSize ?? 0;
    if (!Number.isInteger(minSize) || minSize < 0) throw constraint(String(minSize), 'minSize', 'Member must have value greater than or equal to 0');
    const prepared = spec.maxGroupPreparedCapacity;
    if (prepared !== undefined && (!Number.isInteger(prepared) || prepared < -1)) {
      throw constraint(String(prepared), 'maxGroupPreparedCapacity', 'Member must have value greater than or equal to -1');
    }
    group.warmPool = { poolState, minSize, ...(prepared !== undefined ? { maxGroupPreparedCapacity: prepared } : {}), ...(spec.reuseOnScaleIn !== undefined ? { reuseOnScaleIn: spec.reuseOnScaleIn } : {}) };
  }

  putLifecycleHook(spec: HookSpec): void {
    this.upsertHook({
      groupName: spec.groupName,
      hookName: spec.hookName,
      transition: spec.transition ?? LAUNCHING,
      heartbeatTimeout: spec.heartbeatTimeout,
      defaultResult: spec.defaultResult,
      notificationMetadata: spec.notificationMetadata,
    });
  }

  /**
   * Puts an instance into its group (or its warm pool). With launch hooks it waits in `Pending:Wait`
   * (`Warmed:Pending:Wait`), one lifecycle action per hook; without, it goes straight on to
   * `InService` (`Warmed:<pool state>`).
   */
  launchInstance(spec: LaunchSpec): LaunchOutcome {
    this.evaluate();
    const group = this.groups.get(spec.groupName);
    if (!group) throw validation(`Group ${spec.groupName} not found`);
    const existing = this.instances.get(spec.instanceId);
    if (existing && !gone(existing)) {
      throw validation(`Instance ${spec.instanceId} is already in group ${existing.groupName}`);
    }
    const now = this.clock.now();
    const warm = poolPrefix(spec);
    const instance: InstanceState = {
      instanceId: spec.instanceId,
      groupName: group.name,
      availabilityZone: spec.availabilityZone ?? group.availabilityZones[0] ?? `${this.region}a`,
      instanceType: spec.instanceType ?? 't3.micro',
      lifecycleState: `${warm}Pending`,
      healthStatus: 'HEALTHY',
      launchTemplate: spec.launchTemplate ?? group.launchTemplate,
      launchedAt: now,
      heartbeats: 0,
      stateHistory: [`${warm}Pending`],
      ...(spec.warmPool ? { warmPool: spec.warmPool } : {}),
    };
    this.instances.set(instance.instanceId, instance);
    return this.holdLaunch(instance);
  }

  /**
   * A warm pool's instance goes into the group, as a scale-out takes it: started again, it meets the
   * launch hooks a second time, in `Pending:Wait`.
   */
  leaveWarmPool(instanceId: string): LaunchOutcome {
    this.evaluate();
    const instance = this.instances.get(instanceId);
    if (!instance?.warmPool || instance.lifecycleState !== `Warmed:${instance.warmPool}`) {
      throw validation(`Instance ${instanceId} is not waiting in a warm pool (${instance?.lifecycleState ?? 'no such instance'})`);
    }
    delete instance.warmPool;
    this.setState(instance, 'Pending');
    return this.holdLaunch(instance);
  }

  /** A launch held by the launch hooks in (Warmed:)Pending:Wait, or, with none, launched at once. */
  private holdLaunch(instance: InstanceState): LaunchOutcome {
    const tokens = this.startActions(instance, LAUNCHING, `${poolPrefix(instance)}Pending:Wait`);
    if (tokens.length === 0) this.launched(instance);
    this.changed(instance);
    return { lifecycleState: instance.lifecycleState, token: tokens[0], tokens };
  }

  /**
   * Starts a scale-in of one instance: `Terminating:Wait` under terminate hooks, else `Terminated`.
   * Under its warm pool's instance reuse policy (ReuseOnScaleIn), an instance in service goes back
   * to the pool instead: "an instance that is returning to the warm pool pauses to perform a custom
   * action when it reaches the Warmed:Pending:Wait state for the EC2_INSTANCE_TERMINATING lifecycle
   * action" (EC2 Auto Scaling user guide, warm-pool-instance-lifecycle), then rests in the pool's
   * state until a scale-out takes it again (leaveWarmPool).
   */
  terminateInstance(instanceId: string): { lifecycleState: string; tokens: readonly string[] } {
    this.evaluate();
    const instance = this.instances.get(instanceId);
    if (!instance) throw validation(`Instance Id not found - No managed instance found for instance ID: ${instanceId}`);
    const pool = this.groups.get(instance.groupName)?.warmPool;
    if (pool?.reuseOnScaleIn && instance.lifecycleState === 'InService') {
      instance.warmPool = pool.poolState;
      this.setState(instance, 'Warmed:Pending');
      const tokens = this.startActions(instance, TERMINATING, 'Warmed:Pending:Wait');
      if (tokens.length === 0) this.launched(instance);
      this.changed(instance);
      return { lifecycleState: instance.lifecycleState, tokens };
    }
    const tokens = this.beginTermination(instance, true);
    return { lifecycleState: instance.lifecycleState, tokens };
  }

  instance(id: string): InstanceView | undefined {
    this.evaluate();
    const instance = this.instances.get(id);
    return instance ? this.view(instance) : undefined;
  }

  /** The lifecycle history: completions, heartbeats and applied timeouts, oldest first. */
  actions(): readonly ActionEvent[] {
    this.evaluate();
    return [...this.history];
  }

  healthEvents(): readonly HealthEvent[] {
    return [...this.healthHistory];
  }

  /** Called with the instance's new view at each lifecycle or health change; returns an unsubscribe. */
  onInstanceChange(listener: (instance: InstanceView) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Applies every timeout that has passed by the Clock's now. */
  tick(): void {
    this.evaluate();
  }

  injectFault(spec: FaultSpec): void {
    this.faults.push({ spec, remaining: spec.times ?? 1 });
  }

  /** Armed faults not yet used up: a test waits for 0 to know its request has arrived. */
  get pendingFaults(): number {
    return this.faults.reduce((n, f) => n + f.remaining, 0);
  }

  clearFaults(): void {
    this.faults.length = 0;
  }

  snapshot(): AutoScalingSnapshot {
    return structuredClone({
      version: 1 as const,
      groups: [...this.groups.values()],
      hooks: [...this.hooks.values()],
      instances: [...this.instances.values()],
      actions: [...this.active.values()],
      history: this.history,
      healthHistory: this.healthHistory,
    });
  }

  restore(snapshot: AutoScalingSnapshot): void {
    if (snapshot.version !== 1) throw new Error(`unsupported Auto Scaling snapshot version ${String(snapshot.version)}`);
    const copy = structuredClone(snapshot);
    this.groups.clear();
    this.hooks.clear();
    this.instances.clear();
    this.active.clear();
    for (const g of copy.groups) this.groups.set(g.name, g);
    for (const h of copy.hooks) this.hooks.set(hookKey(h.groupName, h.name), h);
    for (const i of copy.instances) this.instances.set(i.instanceId, i);
    for (const a of copy.actions) this.active.set(a.token, a);
    this.history = [...copy.history];
    this.healthHistory = [...copy.healthHistory];
  }

  // ---- lifecycle model -----------------------------------------------------------------------

  private upsertHook(input: {
    groupName: string;
    hookName: string;
    transition?: string;
    heartbeatTimeout?: number;
    defaultResult?: string;
    notificationMetadata?: string;
  }): void {
    if (!/^[A-Za-z0-9\-_/]{1,255}$/.test(input.hookName)) {
      throw constraint(input.hookName, 'lifecycleHookName', 'Member must satisfy regular expression pattern: [A-Za-z0-9\\-_\\/]+');
    }
    const group = this.groups.get(input.groupName);
    if (!group) throw validation(`Group ${input.groupName} not found`);
    const key = hookKey(group.name, input.hookName);
    const existing = this.hooks.get(key);
    const transition = input.transition ?? existing?.transition;
    if (transition === undefined) throw validation('LifecycleTransition is required for a new lifecycle hook');
    if (transition !== LAUNCHING && transition !== TERMINATING) {
      throw validation(`Invalid Lifecycle Transition: ${transition}`);
    }
    const heartbeatTimeout = input.heartbeatTimeout ?? existing?.heartbeatTimeout ?? HEARTBEAT_TIMEOUT_DEFAULT_S;
    if (!Number.isInteger(heartbeatTimeout) || heartbeatTimeout < HEARTBEAT_TIMEOUT_MIN_S || heartbeatTimeout > HEARTBEAT_TIMEOUT_MAX_S) {
      throw validation(
        `Heartbeat timeout must be between ${HEARTBEAT_TIMEOUT_MIN_S} and ${HEARTBEAT_TIMEOUT_MAX_S} seconds, got ${heartbeatTimeout}`,
      );
    }
    const defaultResult = input.defaultResult ?? existing?.defaultResult ?? 'ABANDON';
    if (defaultResult !== 'CONTINUE' && defaultResult !== 'ABANDON') {
      throw validation(`Invalid value for DefaultResult: ${defaultResult}. Valid values are CONTINUE and ABANDON`);
    }
    if (!existing && [...this.hooks.values()].filter((h) => h.groupName === group.name).length >= MAX_HOOKS_PER_GROUP) {
      throw new AutoScalingQueryError('LimitExceeded', `Exceeded the maximum of ${MAX_HOOKS_PER_GROUP} lifecycle hooks for group ${group.name}`);
    }
    this.hooks.set(key, {
      name: input.hookName,
      groupName: group.name,
      transition,
      heartbeatTimeout,
      defaultResult,
      notificationMetadata: input.notificationMetadata ?? existing?.notificationMetadata,
    });
  }

  private hooksFor(groupName: string, transition: LifecycleTransition): HookState[] {
    return [...this.hooks.values()].filter((h) => h.groupName === groupName && h.transition === transition);
  }

  /** Starts one action per hook of `transition`; returns their tokens (none when no hook applies). */
  private startActions(instance: InstanceState, transition: LifecycleTransition, waitState: string): string[] {
    const hooks = this.hooksFor(instance.groupName, transition);
    if (hooks.length === 0) return [];
    const now = this.clock.now();
    this.setState(instance, waitState);
    return hooks.map((hook) => {
      const token = randomUUID();
      this.active.set(token, {
        token,
        instanceId: instance.instanceId,
        groupName: instance.groupName,
        hookName: hook.name,
        transition,
        heartbeatTimeout: hook.heartbeatTimeout,
        globalTimeout: globalTimeoutFor(hook.heartbeatTimeout),
        defaultResult: hook.defaultResult,
        startedAt: now,
        lastHeartbeatAt: now,
        heartbeats: 0,
      });
      return token;
    });
  }

  private actionsOf(instanceId: string): ActionState[] {
    return [...this.active.values()].filter((a) => a.instanceId === instanceId);
  }

  private setState(instance: InstanceState, state: string): void {
    if (instance.lifecycleState === state) return;
    instance.lifecycleState = state;
    instance.stateHistory.push(state);
  }

  private enterService(instance: InstanceState): void {
    this.setState(instance, 'InService');
    instance.inServiceAt = this.clock.now();
  }

  /** A launch whose hooks are over (or that had none): into service, or to rest in the warm pool. */
  private launched(instance: InstanceState): void {
    if (instance.warmPool) this.setState(instance, `Warmed:${instance.warmPool}`);
    else this.enterService(instance);
  }

  /** Ends one action with `result`; once the instance's last action for the transition ends, it moves on. */
  private finish(action: ActionState, result: LifecycleActionResult, by: ActionEvent['by']): void {
    this.active.delete(action.token);
    const instance = this.instances.get(action.instanceId);
    this.history.push({
      at: this.clock.now(),
      kind: by === 'timeout' ? 'timeout' : 'complete',
      instanceId: action.instanceId,
      groupName: action.groupName,
      hookName: action.hookName,
      token: action.token,
      result,
      by,
    });
    if (!instance) return;
    instance.lastResult = result;
    const siblings = this.actionsOf(instance.instanceId).filter((a) => a.transition === action.transition);
    const warm = poolPrefix(instance);
    if (action.transition === LAUNCHING) {
      if (result === 'ABANDON') {
        // An abandoned launch is terminated (AWS then launches a replacement, which is not modelled).
        for (const other of siblings) this.active.delete(other.token);
        this.setState(instance, `${warm}Terminating`);
        this.setState(instance, `${warm}Terminated`);
      } else if (siblings.length === 0) {
        this.setState(instance, `${warm}Pending:Proceed`);
        this.launched(instance);
        if (!warm) this.replaceIfDue(instance);
      }
    } else {
      // On termination both results terminate; ABANDON skips the remaining hooks. An instance
      // returning to the warm pool (held in Warmed:Pending:Wait) goes on into the pool either way.
      if (result === 'ABANDON') for (const other of siblings) this.active.delete(other.token);
      if (result === 'ABANDON' || siblings.length === 0) {
        if (instance.lifecycleState === 'Warmed:Pending:Wait') {
          this.setState(instance, 'Warmed:Pending:Proceed');
          this.launched(instance);
        } else {
          this.setState(instance, `${warm}Terminating:Proceed`);
          this.setState(instance, `${warm}Terminated`);
        }
      }
    }
    this.changed(instance);
  }

  /**
   * Moves an instance towards termination; `viaHooks` runs terminate hooks as a scale-in would. A
   * warm pool's instance, never the group's, is terminated in its own states (`Warmed:Terminating:Wait`).
   */
  private beginTermination(instance: InstanceState, viaHooks: boolean): string[] {
    if (terminating(instance)) return [];
    for (const action of this.actionsOf(instance.instanceId)) this.active.delete(action.token);
    const warm = poolPrefix(instance);
    this.setState(instance, `${warm}Terminating`);
    const tokens = viaHooks ? this.startActions(instance, TERMINATING, `${warm}Terminating:Wait`) : [];
    if (viaHooks && tokens.length === 0) this.setState(instance, `${warm}Terminated`);
    this.changed(instance);
    return tokens;
  }

  private inGracePeriod(instance: InstanceState): boolean {
    const group = this.groups.get(instance.groupName);
    const grace = (group?.healthCheckGracePeriod ?? 0) * 1000;
    // The grace period starts when the instance reaches InService; before that it is always inside it.
    if (instance.inServiceAt === undefined) return grace > 0;
    return this.clock.now() < instance.inServiceAt + grace;
  }

  /** An InService instance marked UNHEALTHY is replaced once outside its grace period. */
  private replaceIfDue(instance: InstanceState, ignoreGrace = false): void {
    if (instance.healthStatus !== 'UNHEALTHY') return;
    if (terminating(instance)) return;
    if (!ignoreGrace && (instance.lifecycleState !== 'InService' || this.inGracePeriod(instance))) return;
    // Replacement of an unhealthy instance starts its termination; terminate hooks, if any, still run.
    const warm = poolPrefix(instance);
    const tokens = this.startActions(instance, TERMINATING, `${warm}Terminating:Wait`);
    if (tokens.length === 0) this.setState(instance, `${warm}Terminating`);
    for (const action of this.actionsOf(instance.instanceId)) {
      if (action.transition === LAUNCHING) this.active.delete(action.token);
    }
    this.changed(instance);
  }

  private deadline(action: ActionState): number {
    return Math.min(action.lastHeartbeatAt + action.heartbeatTimeout * 1000, action.startedAt + action.globalTimeout * 1000);
  }

  private evaluate(): void {
    const now = this.clock.now();
    for (const action of [...this.active.values()]) {
      if (this.active.has(action.token) && now >= this.deadline(action)) this.finish(action, action.defaultResult, 'timeout');
    }
    for (const instance of this.instances.values()) this.replaceIfDue(instance);
  }

  private view(instance: InstanceState): InstanceView {
    return structuredClone({
      instanceId: instance.instanceId,
      groupName: instance.groupName,
      availabilityZone: instance.availabilityZone,
      instanceType: instance.instanceType,
      lifecycleState: instance.lifecycleState,
      healthStatus: instance.healthStatus,
      launchTemplate: instance.launchTemplate,
      launchedAt: instance.launchedAt,
      inServiceAt: instance.inServiceAt,
      lastResult: instance.lastResult,
      heartbeats: instance.heartbeats,
      stateHistory: instance.stateHistory,
      ...(instance.warmPool ? { warmPool: instance.warmPool } : {}),
      activeActions: this.actionsOf(instance.instanceId).map((a) => ({
        hookName: a.hookName,
        transition: a.transition,
        token: a.token,
        startedAt: a.startedAt,
        lastHeartbeatAt: a.lastHeartbeatAt,
        heartbeats: a.heartbeats,
        deadline: this.deadline(a),
      })),
    });
  }

  private changed(instance: InstanceState): void {
    if (this.listeners.size === 0) return;
    const view = this.view(instance);
    for (const listener of this.listeners) listener(view);
  }

  // ---- wire ----------------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const url = new URL(req.url ?? '/', 'http://localhost');
    let params: Params = new Map(url.searchParams);
    let action: string | undefined;
    const log = (status: number, errorCode?: string) => {
      const logged: Record<string, string> = {};
      for (const [k, v] of params) if (k !== 'Action' && k !== 'Version') logged[k] = v;
      this.requests.push({ at: this.clock.now(), method: req.method ?? '', path: url.pathname, operation: action, status, params: logged, errorCode });
    };
    const send = (status: number, body: string, errorCode?: string) => {
      log(status, errorCode);
      res.writeHead(status, {
        'content-type': 'text/xml',
        'content-length': Buffer.byteLength(body),
        'x-amzn-RequestId': requestId,
      });
      res.end(body);
    };
    const sendError = (err: AutoScalingQueryError) =>
      send(
        err.status,
        `<ErrorResponse xmlns="${AUTOSCALING_XMLNS}"><Error><Type>${err.type}</Type><Code>${escapeXml(err.code)}</Code>` +
          `<Message>${escapeXml(err.message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`,
        err.code,
      );

    try {
      if (req.method === 'POST') {
        const body = (await readBody(req)).toString('utf8');
        params = new Map([...params, ...new URLSearchParams(body)]);
      } else if (req.method !== 'GET') {
        throw new AutoScalingQueryError('InvalidAction', `The HTTP method ${req.method ?? ''} is not supported.`, 405);
      }
      action = params.get('Action');

      const fault = this.takeFault(action);
      if (fault) {
        if (fault.delayMs) {
          await this.delay(fault.delayMs);
          // Closed while held: the connection is gone, there is no one to answer.
          if (this.delays.signal.aborted || res.destroyed) return;
        }
        if (fault.drop) {
          log(0, 'dropped');
          req.socket.destroy();
          return;
        }
        if (fault.code) {
          const status = fault.status ?? DEFAULT_STATUS[fault.code] ?? 400;
          throw new AutoScalingQueryError(fault.code, fault.message ?? DEFAULT_MESSAGE[fault.code] ?? fault.code, status);
        }
      }

      const authorization = req.headers.authorization;
      if (!authorization) throw new AutoScalingQueryError('MissingAuthenticationToken', 'Request is missing Authentication Token', 403);
      if (!AUTHORIZATION.test(authorization)) {
        throw new AutoScalingQueryError(
          'IncompleteSignature',
          `Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters for AWS4-HMAC-SHA256 with scope <date>/<region>/autoscaling/aws4_request. Authorization=${authorization}`,
        );
      }
      if (this.bucket && !this.bucket.tryTake()) throw new AutoScalingQueryError('Throttling', 'Rate exceeded');

      if (!action) throw new AutoScalingQueryError('MissingAction', 'The request must contain the parameter Action');
      const version = params.get('Version');
      if (!version) throw new AutoScalingQueryError('MissingParameter', 'The request must contain the parameter Version');
      const handler = Object.hasOwn(this.handlers, action) ? this.handlers[action] : undefined;
      if (version !== AUTOSCALING_API_VERSION || !handler) {
        throw new AutoScalingQueryError('InvalidAction', `Could not find operation ${action} for version ${version}`);
      }

      this.evaluate();
      const result = handler(params);
      const resultXml = result === undefined ? '' : result === '' ? `<${action}Result/>` : `<${action}Result>${result}</${action}Result>`;
      send(
        200,
        `<${action}Response xmlns="${AUTOSCALING_XMLNS}">${resultXml}` +
          `<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`,
      );
    } catch (err) {
      if (res.headersSent || res.destroyed) return;
      if (err instanceof AutoScalingQueryError) sendError(err);
      else sendError(new AutoScalingQueryError('InternalFailure', err instanceof Error ? err.message : String(err), 500));
    }
  }

  private takeFault(action: string | undefined): FaultSpec | undefined {
    const index = this.faults.findIndex((f) => f.remaining > 0 && (f.spec.action === undefined || f.spec.action === action));
    const armed = this.faults[index];
    if (!armed) return undefined;
    armed.remaining -= 1;
    if (armed.remaining <= 0) this.faults.splice(index, 1);
    return armed.spec;
  }

  private delay(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const onAbort = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.delays.signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      this.delays.signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  // ---- operations ----------------------------------------------------------------------------

  /** Finds the active action a Complete/Heartbeat call names, by token first, else by instance id. */
  private findAction(p: Params): { action: ActionState; by: 'token' | 'instance-id' } {
    const hookName = required(p, 'LifecycleHookName', 'lifecycleHookName');
    const groupName = required(p, 'AutoScalingGroupName', 'autoScalingGroupName');
    const token = p.get('LifecycleActionToken');
    const instanceId = p.get('InstanceId');
    if (token !== undefined) {
      if (token.length !== 36) {
        throw constraint(
          token,
          'lifecycleActionToken',
          `Member must have length ${token.length < 36 ? 'greater than or equal to' : 'less than or equal to'} 36`,
        );
      }
      const action = this.active.get(token);
      if (!action || action.hookName !== hookName || action.groupName !== groupName || (instanceId !== undefined && action.instanceId !== instanceId)) {
        throw validation(`No active Lifecycle Action found with token ${token}`);
      }
      return { action, by: 'token' };
    }
    if (instanceId === undefined || instanceId === '') {
      throw validation('Either LifecycleActionToken or InstanceId must be specified to identify the lifecycle action');
    }
    if (instanceId.length > 19) throw constraint(instanceId, 'instanceId', 'Member must have length less than or equal to 19');
    const action = this.actionsOf(instanceId).find((a) => a.hookName === hookName && a.groupName === groupName);
    if (!action) throw validation(`No active Lifecycle Action found with instance ID ${instanceId}`);
    return { action, by: 'instance-id' };
  }

  private opCompleteLifecycleAction(p: Params): string {
    const result = required(p, 'LifecycleActionResult', 'lifecycleActionResult');
    if (result !== 'CONTINUE' && result !== 'ABANDON') {
      throw validation(`Invalid value for LifecycleActionResult: ${result}. Valid values are CONTINUE and ABANDON`);
    }
    const { action, by } = this.findAction(p);
    this.finish(action, result, by);
    return '';
  }

  private opRecordLifecycleActionHeartbeat(p: Params): string {
    const { action, by } = this.findAction(p);
    const now = this.clock.now();
    action.lastHeartbeatAt = now;
    action.heartbeats += 1;
    const instance = this.instances.get(action.instanceId);
    if (instance) instance.heartbeats += 1;
    this.history.push({
      at: now,
      kind: 'heartbeat',
      instanceId: action.instanceId,
      groupName: action.groupName,
      hookName: action.hookName,
      token: action.token,
      by,
    });
    return '';
  }

  private opSetInstanceHealth(p: Params): undefined {
    const instanceId = required(p, 'InstanceId', 'instanceId');
    const status = required(p, 'HealthStatus', 'healthStatus');
    const respect = optionalBoolean(p, 'ShouldRespectGracePeriod') ?? true;
    if (status !== 'Healthy' && status !== 'Unhealthy') {
      throw validation(`Valid values for HealthStatus are Healthy and Unhealthy, got ${status}`);
    }
    const instance = this.instances.get(instanceId);
    if (!instance || gone(instance)) {
      throw validation(`Instance Id not found - No managed instance found for instance ID: ${instanceId}`);
    }
    instance.healthStatus = status === 'Healthy' ? 'HEALTHY' : 'UNHEALTHY';
    this.healthHistory.push({ at: this.clock.now(), instanceId, healthStatus: instance.healthStatus, shouldRespectGracePeriod: respect });
    this.changed(instance);
    this.replaceIfDue(instance, !respect);
    return undefined;
  }

  /**
   * An instance as DescribeAutoScalingInstances lists it (`AutoScalingInstanceDetails`, with its
   * group's name and HealthStatus `HEALTHY`/`UNHEALTHY`) or as DescribeAutoScalingGroups and
   * DescribeWarmPool list it (`Instance`, HealthStatus `Healthy`/`Unhealthy`): the two spell it
   * differently (aws-cli examples describe-auto-scaling-instances.rst, describe-auto-scaling-groups.rst,
   * describe-warm-pool.rst).
   */
  private instanceXml(i: InstanceState, shape: 'AutoScalingInstanceDetails' | 'Instance'): XmlNode {
    const details = shape === 'AutoScalingInstanceDetails';
    return {
      InstanceId: i.instanceId,
      InstanceType: i.instanceType,
      ...(details ? { AutoScalingGroupName: i.groupName } : {}),
      AvailabilityZone: i.availabilityZone,
      LifecycleState: i.lifecycleState,
      HealthStatus: details ? i.healthStatus : i.healthStatus === 'HEALTHY' ? 'Healthy' : 'Unhealthy',
      LaunchTemplate: launchTemplateXml(i.launchTemplate),
      ProtectedFromScaleIn: false,
    };
  }

  private opDescribeAutoScalingInstances(p: Params): string {
    const ids = memberList(p, 'InstanceIds');
    if (ids.length > MAX_INSTANCE_IDS) {
      throw constraint(`[${ids.join(', ')}]`, 'instanceIds', `Member must have length less than or equal to ${MAX_INSTANCE_IDS}`);
    }
    const maxRecords = optionalInteger(p, 'MaxRecords', 'maxRecords') ?? MAX_RECORDS_INSTANCES;
    if (maxRecords < 1 || maxRecords > MAX_RECORDS_INSTANCES) {
      throw validation(`MaxRecords must be between 1 and ${MAX_RECORDS_INSTANCES}, got ${maxRecords}`);
    }
    const wanted = new Set(ids);
    // Terminated instances have left their group, so Describe no longer lists them. A warm pool's
    // instances are listed, in their Warmed:* states (AutoScalingInstanceDetails.LifecycleState).
    const all = [...this.instances.values()].filter((i) => !gone(i) && (wanted.size === 0 || wanted.has(i.instanceId)));
    const { page, next } = paginate(all, p.get('NextToken'), maxRecords, 'instances');
    return toXml({ AutoScalingInstances: page.map((i) => this.instanceXml(i, 'AutoScalingInstanceDetails')), NextToken: next });
  }

  private opDescribeAutoScalingGroups(p: Params): string {
    const names = memberList(p, 'AutoScalingGroupNames');
    const maxRecords = optionalInteger(p, 'MaxRecords', 'maxRecords') ?? 50;
    if (maxRecords < 1 || maxRecords > MAX_RECORDS_GROUPS) {
      throw validation(`MaxRecords must be between 1 and ${MAX_RECORDS_GROUPS}, got ${maxRecords}`);
    }
    const includeInstances = optionalBoolean(p, 'IncludeInstances') ?? true;
    const filters = groupFilters(p);
    const wanted = new Set(names);
    const all = [...this.groups.values()].filter((g) => (wanted.size === 0 || wanted.has(g.name)) && filters.every((f) => f(g.tags)));
    const { page, next } = paginate(all, p.get('NextToken'), maxRecords, 'groups');
    const groups = page.map((g): XmlNode => {
      // The warm pool's instances are not the group's: AWS lists them with DescribeWarmPool.
      const members = [...this.instances.values()].filter((i) => i.groupName === g.name && i.lifecycleState !== 'Terminated' && !i.lifecycleState.startsWith('Warmed:'));
      return {
        AutoScalingGroupName: g.name,
        AutoScalingGroupARN: `arn:aws:autoscaling:${this.region}:${this.accountId}:autoScalingGroup:${g.uuid}:autoScalingGroupName/${g.name}`,
        LaunchTemplate: launchTemplateXml(g.launchTemplate),
        MinSize: g.minSize,
        MaxSize: g.maxSize,
        DesiredCapacity: g.desiredCapacity,
        DefaultCooldown: 300,
        AvailabilityZones: g.availabilityZones,
        LoadBalancerNames: [],
        TargetGroupARNs: [],
        HealthCheckType: g.healthCheckType,
        HealthCheckGracePeriod: g.healthCheckGracePeriod,
        Instances: includeInstances ? members.map((i) => this.instanceXml(i, 'Instance')) : undefined,
        CreatedTime: new Date(g.createdAt).toISOString(),
        SuspendedProcesses: [],
        EnabledMetrics: [],
        Tags: Object.entries(g.tags).map(([key, value]) => ({
          ResourceId: g.name,
          ResourceType: 'auto-scaling-group',
          Key: key,
          Value: value,
          PropagateAtLaunch: true,
        })),
        TerminationPolicies: ['Default'],
        NewInstancesProtectedFromScaleIn: false,
      };
    });
    return toXml({ AutoScalingGroups: groups, NextToken: next });
  }

  private opDescribeLifecycleHooks(p: Params): string {
    const groupName = required(p, 'AutoScalingGroupName', 'autoScalingGroupName');
    const names = memberList(p, 'LifecycleHookNames');
    if (names.length > 50) {
      throw constraint(`[${names.join(', ')}]`, 'lifecycleHookNames', 'Member must have length less than or equal to 50');
    }
    if (!this.groups.has(groupName)) throw validation(`Group ${groupName} not found`);
    const wanted = new Set(names);
    const hooks = [...this.hooks.values()].filter((h) => h.groupName === groupName && (wanted.size === 0 || wanted.has(h.name)));
    return toXml({
      LifecycleHooks: hooks.map((h) => ({
        LifecycleHookName: h.name,
        AutoScalingGroupName: h.groupName,
        LifecycleTransition: h.transition,
        NotificationMetadata: h.notificationMetadata,
        HeartbeatTimeout: h.heartbeatTimeout,
        GlobalTimeout: globalTimeoutFor(h.heartbeatTimeout),
        DefaultResult: h.defaultResult,
      })),
    });
  }

  private opPutWarmPool(p: Params): string {
    const reuse = optionalBoolean(p, 'InstanceReusePolicy.ReuseOnScaleIn');
    const prepared = optionalInteger(p, 'MaxGroupPreparedCapacity', 'maxGroupPreparedCapacity');
    const minSize = optionalInteger(p, 'MinSize', 'minSize');
    const poolState = p.get('PoolState') as WarmPoolState | undefined;
    this.putWarmPool(required(p, 'AutoScalingGroupName', 'autoScalingGroupName'), {
      ...(poolState !== undefined ? { poolState } : {}),
      ...(minSize !== undefined ? { minSize } : {}),
      ...(prepared !== undefined ? { maxGroupPreparedCapacity: prepared } : {}),
      ...(reuse !== undefined ? { reuseOnScaleIn: reuse } : {}),
    });
    return '';
  }

  /** The pool's settings and the instances in it (none, and no settings, for a group without a pool). */
  private opDescribeWarmPool(p: Params): string {
    const groupName = required(p, 'AutoScalingGroupName', 'autoScalingGroupName');
    const maxRecords = optionalInteger(p, 'MaxRecords', 'maxRecords') ?? MAX_RECORDS_INSTANCES;
    if (maxRecords < 1 || maxRecords > MAX_RECORDS_INSTANCES) throw validation(`MaxRecords must be between 1 and ${MAX_RECORDS_INSTANCES}, got ${maxRecords}`);
    const group = this.groups.get(groupName);
    if (!group) throw validation(`Group ${groupName} not found`);
    const pool = group.warmPool;
    const members = [...this.instances.values()].filter((i) => i.groupName === groupName && i.lifecycleState.startsWith('Warmed:') && !gone(i));
    const { page, next } = paginate(members, p.get('NextToken'), maxRecords, 'warm-pool');
    return toXml({
      WarmPoolConfiguration: pool
        ? {
            MaxGroupPreparedCapacity: pool.maxGroupPreparedCapacity,
            MinSize: pool.minSize,
            PoolState: pool.poolState,
            InstanceReusePolicy: pool.reuseOnScaleIn !== undefined ? { ReuseOnScaleIn: pool.reuseOnScaleIn } : undefined,
          }
        : undefined,
      Instances: page.map((i) => this.instanceXml(i, 'Instance')),
      NextToken: next,
    });
  }

  /**
   * The pool goes, and the instances waiting in it are terminated: through the terminate hooks, or
   * at once with ForceDelete, whatever lifecycle action they are in.
   */
  private opDeleteWarmPool(p: Params): string {
    const groupName = required(p, 'AutoScalingGroupName', 'autoScalingGroupName');
    const force = optionalBoolean(p, 'ForceDelete') ?? false;
    const group = this.groups.get(groupName);
    if (!group) throw validation(`Group ${groupName} not found`);
    if (!group.warmPool) throw validation(`No warm pool found for Auto Scaling group ${groupName}.`);
    delete group.warmPool;
    for (const i of this.instances.values()) {
      if (i.groupName !== groupName || !i.warmPool || terminating(i)) continue;
      this.beginTermination(i, !force);
      if (force) {
        this.setState(i, 'Warmed:Terminated');
        this.changed(i);
      }
    }
    return '';
  }

  private opPutLifecycleHook(p: Params): string {
    this.upsertHook({
      groupName: required(p, 'AutoScalingGroupName', 'autoScalingGroupName'),
      hookName: required(p, 'LifecycleHookName', 'lifecycleHookName'),
      transition: p.get('LifecycleTransition'),
      heartbeatTimeout: optionalInteger(p, 'HeartbeatTimeout', 'heartbeatTimeout'),
      defaultResult: p.get('DefaultResult'),
      notificationMetadata: p.get('NotificationMetadata'),
    });
    return '';
  }
}

function hookKey(groupName: string, hookName: string): string {
  return `${groupName}\0${hookName}`;
}

function globalTimeoutFor(heartbeatTimeout: number): number {
  return Math.min(GLOBAL_TIMEOUT_MAX_S, 100 * heartbeatTimeout);
}

function required(p: Params, name: string, member: string): string {
  const value = p.get(name);
  if (value === undefined || value === '') throw constraint(null, member, 'Member must not be null');
  return value;
}

function optionalInteger(p: Params, name: string, member: string): number | undefined {
  const raw = p.get(name);
  if (raw === undefined) return undefined;
  if (!/^-?\d+$/.test(raw)) throw constraint(raw, member, 'Member must be an integer');
  return Number(raw);
}

function optionalBoolean(p: Params, name: string): boolean | undefined {
  const raw = p.get(name);
  if (raw === undefined) return undefined;
  if (raw !== 'true' && raw !== 'false') throw validation(`Invalid boolean value for ${name}: ${raw}`);
  return raw === 'true';
}

/** awsQuery lists: `Name.member.1`, `Name.member.2`, … (1-based, in index order). */
function memberList(p: Params, name: string): string[] {
  const prefix = `${name}.member.`;
  return [...p.entries()]
    .filter(([k]) => k.startsWith(prefix) && /^\d+$/.test(k.slice(prefix.length)))
    .sort(([a], [b]) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)))
    .map(([, v]) => v);
}

/**
 * DescribeAutoScalingGroups' Filters (`Filters.member.N.Name`, `Filters.member.N.Values.member.M`),
 * each a test of a group's tags. The names it takes are `tag-key`, `tag-value` and `tag:<key>`;
 * filters are ANDed, a filter's values ORed, and values are case-sensitive (botocore autoscaling
 * model, Filter and DescribeAutoScalingGroups' Filters).
 */
function groupFilters(p: Params): ((tags: Readonly<Record<string, string>>) => boolean)[] {
  const out: ((tags: Readonly<Record<string, string>>) => boolean)[] = [];
  for (let n = 1; p.has(`Filters.member.${n}.Name`); n++) {
    const name = p.get(`Filters.member.${n}.Name`) ?? '';
    const values = new Set(memberList(p, `Filters.member.${n}.Values`));
    if (name === 'tag-key') out.push((tags) => Object.keys(tags).some((k) => values.has(k)));
    else if (name === 'tag-value') out.push((tags) => Object.values(tags).some((v) => values.has(v)));
    else if (name.startsWith('tag:') && name.length > 'tag:'.length) {
      const key = name.slice('tag:'.length);
      out.push((tags) => Object.hasOwn(tags, key) && values.has(tags[key]!));
    } else {
      throw validation(`Invalid filter name: ${name}. Valid filter names for DescribeAutoScalingGroups are tag-key, tag-value and tag:<key>.`);
    }
  }
  return out;
}

/** Opaque tokens bound to the listing they came from, so one operation's token fails on another. */
function paginate<T>(items: readonly T[], token: string | undefined, maxRecords: number, scope: string): { page: T[]; next?: string } {
  let offset = 0;
  if (token !== undefined) {
    const decoded = decodeToken(token);
    if (!decoded || decoded.scope !== scope || decoded.offset > items.length) {
      throw new AutoScalingQueryError('InvalidNextToken', 'The specified NextToken is not valid.');
    }
    offset = decoded.offset;
  }
  const page = items.slice(offset, offset + maxRecords);
  const end = offset + page.length;
  return { page, next: end < items.length ? Buffer.from(JSON.stringify({ s: scope, o: end })).toString('base64url') : undefined };
}

function decodeToken(token: string): { scope: string; offset: number } | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (typeof value !== 'object' || value === null) return undefined;
    const { s, o } = value as { s?: unknown; o?: unknown };
    if (typeof s !== 'string' || typeof o !== 'number' || !Number.isInteger(o) || o < 0) return undefined;
    return { scope: s, offset: o };
  } catch {
    return undefined;
  }
}
