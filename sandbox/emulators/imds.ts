// The EC2 instance metadata service as IMDSv2 answers it: session tokens from
// `PUT /latest/api/token`, a token on every read, the documented status codes (400 bad TTL, 401 bad
// token, 403 forbidden or disabled, 404 absent, 405 wrong method), text/plain items, LF-separated
// directory listings and user data as opaque bytes. Everything lives on the emulator object, so any
// number of instances can run side by side in one process.
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { systemClock, type Clock } from '../../agent/ports.js';
import { listen, type LoggedRequest, type RunningServer } from './server.js';

/** The session lifetime bounds IMDS accepts in `X-aws-ec2-metadata-token-ttl-seconds`. */
export const MIN_TOKEN_TTL_SECONDS = 1;
export const MAX_TOKEN_TTL_SECONDS = 21600;
/** EC2 refuses raw user data larger than this at launch, so no instance can serve more. */
export const MAX_USER_DATA_BYTES = 16 * 1024;

/** The values `autoscaling/target-lifecycle-state` can hold (case-sensitive). Pending states never appear. */
export const TARGET_LIFECYCLE_STATES = [
  'Detached',
  'InService',
  'Standby',
  'Terminated',
  'Warmed:Hibernated',
  'Warmed:Running',
  'Warmed:Stopped',
  'Warmed:Terminated',
] as const;
export type TargetLifecycleState = (typeof TARGET_LIFECYCLE_STATES)[number];

export type HttpEndpointMode = 'enabled' | 'disabled';
/** `required` is IMDSv2 only; `optional` also answers token-less (IMDSv1) reads. */
export type HttpTokensMode = 'required' | 'optional';

export interface SpotInstanceAction {
  action: 'terminate' | 'stop' | 'hibernate';
  /** ISO 8601 UTC, e.g. 2017-09-18T08:22:00Z. */
  time: string;
}

export interface ImdsInstance {
  instanceId: string;
  amiId: string;
  instanceType: string;
  region: string;
  availabilityZone: string;
  accountId: string;
  privateIp: string;
  /** The private DNS name; derived from the IP and region when absent, as EC2 names it. */
  hostname?: string;
  tags: Record<string, string>;
  /** EC2's "Allow tags in instance metadata" (off by default on real instances). */
  tagsInMetadata: boolean;
  targetLifecycleState?: string;
  /**
   * The purchasing option IMDS names in `instance-life-cycle`; on-demand unless given. Only a spot
   * instance is ever sent an interruption notice.
   */
  instanceLifeCycle?: InstanceLifeCycle;
  spotInstanceAction?: SpotInstanceAction;
  /** ISO 8601 UTC time of a rebalance recommendation, once one has been emitted. */
  rebalanceNoticeTime?: string;
  iamRole?: string;
  userData?: Buffer;
}

/**
 * A plausible Auto Scaling group member with an instance profile. Its tags are not in instance
 * metadata: "Allow tags in instance metadata" is off unless an instance's metadata options turn it on.
 */
export function defaultInstance(overrides: Partial<ImdsInstance> = {}): ImdsInstance {
  const region = overrides.region ?? 'us-east-1';
  return {
    instanceId: 'i-0123456789abcdef0',
    amiId: 'ami-0abcdef1234567890',
    instanceType: 't3.micro',
    region,
    availabilityZone: `${region}a`,
    accountId: '123456789012',
    privateIp: '10.0.1.23',
    tags: { 'aws:autoscaling:groupName': 'demo-asg', Name: 'nixos-ec2-agent-demo' },
    tagsInMetadata: false,
    iamRole: 'nixos-ec2-agent-demo',
    ...overrides,
  };
}

/**
 * Whether EC2 can expose a tag key in instance metadata: letters, digits and `+ - = . , _ : @`
 * only, and not `.`, `..` or `_index`.
 */
export function isMetadataTagKey(key: string): boolean {
  return /^[A-Za-z0-9+\-=.,_:@]+$/.test(key) && key !== '.' && key !== '..' && key !== '_index';
}

/** The purchasing options an instance of an Auto Scaling group is launched with. */
export const INSTANCE_LIFE_CYCLES = ['on-demand', 'spot'] as const;
export type InstanceLifeCycle = (typeof INSTANCE_LIFE_CYCLES)[number];

export class ImdsEmulatorConfigError extends Error {
  constructor(
    message: string,
    /** The instance field or option that was refused. */
    readonly field: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'ImdsEmulatorConfigError';
  }
}

/** A failure to inject. The first fault whose method and path match a request is applied to it. */
export interface ImdsFault {
  /** Matched against the request's path with slashes collapsed and any version prefix read as `/latest`. */
  readonly path?: string | RegExp;
  readonly method?: string;
  /** Answer with this status (and AWS's small XHTML error body) instead of serving the request. */
  readonly status?: number;
  /** Hold the request this long (real time) before serving it or applying the rest of the fault. */
  readonly delayMs?: number;
  /** Destroy the connection without answering. */
  readonly drop?: boolean;
  /** Forget every issued token before the request is handled (early token expiry). */
  readonly expireTokens?: boolean;
  /** How many matching requests it applies to; default 1, `Infinity` for every one. */
  readonly times?: number;
}

export interface ActiveFault extends ImdsFault {
  /** Matching requests still to be affected. */
  remaining: number;
}

export interface ImdsLoggedRequest extends LoggedRequest {
  /** The request target as sent, query included (e.g. `//latest/meta-data/instance-id`). */
  readonly rawPath: string;
  /** Whether the request carried an `X-aws-ec2-metadata-token` header. */
  readonly tokenPresented: boolean;
  /** The fault applied to this request, if any. */
  readonly fault?: ImdsFault;
}

export interface ImdsStartOptions {
  /** New connections let through (server.ts, ListenOptions). */
  readonly admit?: () => boolean;
  readonly instance?: ImdsInstance;
  readonly clock?: Clock;
  readonly host?: string;
  readonly port?: number;
  readonly httpEndpoint?: HttpEndpointMode;
  readonly httpTokens?: HttpTokensMode;
}

interface Token {
  readonly issuedAt: number;
  readonly ttlSeconds: number;
}

interface RoleCredentials {
  readonly role: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken: string;
  readonly lastUpdated: number;
  readonly expiration: number;
}

/** A metadata tree: strings are items, objects directories, undefined entries absent. */
interface Dir {
  readonly [name: string]: Entry;
}
type Entry = string | Dir | undefined;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

const TOKEN_HEADER = 'x-aws-ec2-metadata-token';
const TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';
const CREDENTIAL_LIFETIME_MS = 6 * 60 * 60 * 1000;
/** IMDS offers fresh role credentials at least five minutes before the old ones expire. */
const CREDENTIAL_REFRESH_MS = 15 * 60 * 1000;
const VERSIONS = ['1.0', '2007-01-19', '2008-02-01', '2009-04-04', '2012-01-12', '2016-09-02', '2019-10-01', '2020-10-27', '2021-03-23', '2021-07-15', 'latest'];
const VERSION_SEGMENT = /^(?:latest|1\.0|\d{4}-\d{2}-\d{2})$/;

function errorBody(status: number): string {
  const title = `${status} - ${http.STATUS_CODES[status] ?? 'Error'}`;
  return [
    '<?xml version="1.0" encoding="iso-8859-1"?>',
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"',
    '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">',
    '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">',
    ' <head>',
    `  <title>${title}</title>`,
    ' </head>',
    ' <body>',
    `  <h1>${title}</h1>`,
    ' </body>',
    '</html>',
    '',
  ].join('\n');
}

/** EC2 timestamps carry whole seconds. */
function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function randomChars(n: number, alphabet: string): string {
  const bytes = randomBytes(n);
  let out = '';
  for (const b of bytes) out += alphabet[b % alphabet.length];
  return out;
}

const UPPER_BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function partitionOf(region: string): { partition: string; domain: string } {
  if (region.startsWith('cn-')) return { partition: 'aws-cn', domain: 'amazonaws.com.cn' };
  if (region.startsWith('us-gov-')) return { partition: 'aws-us-gov', domain: 'amazonaws.com' };
  return { partition: 'aws', domain: 'amazonaws.com' };
}

function privateDnsName(instance: ImdsInstance): string {
  const ip = `ip-${instance.privateIp.replace(/\./g, '-')}`;
  return instance.region === 'us-east-1' ? `${ip}.ec2.internal` : `${ip}.${instance.region}.compute.internal`;
}

/** Stable hex digits for an id EC2 would have assigned: the same inputs always give the same id. */
function derivedHex(seed: string, digits: number): string {
  return createHash('sha256').update(seed).digest('hex').slice(0, digits);
}

/**
 * The primary network interface of a VPC instance, as EC2 would have given it. The instance model
 * carries none of these, so they are derived: the interface and its MAC from the instance id, the
 * subnet from the account and Availability Zone, the VPC and its default security group from the
 * account and Region, so instances of one group share a subnet and VPC. EC2 MACs are locally
 * administered unicast addresses (first octet 02 or 0e on Nitro).
 */
function primaryInterface(i: ImdsInstance): { mac: string; interfaceId: string; subnetId: string; vpcId: string; securityGroupId: string } {
  const octets = derivedHex(`mac:${i.instanceId}`, 10).match(/../g)!;
  return {
    mac: ['0e', ...octets].join(':'),
    interfaceId: `eni-${derivedHex(`eni:${i.instanceId}`, 17)}`,
    subnetId: `subnet-${derivedHex(`subnet:${i.accountId}:${i.availabilityZone}`, 17)}`,
    vpcId: `vpc-${derivedHex(`vpc:${i.accountId}:${i.region}`, 17)}`,
    securityGroupId: `sg-${derivedHex(`sg:${i.accountId}:${i.region}`, 17)}`,
  };
}

/** Graviton types (m7g, c6gn, t4g…) report arm64 in the identity document. */
function architectureOf(instanceType: string): string {
  return /^[a-z]+\d+g[a-z]*\./.test(instanceType) ? 'arm64' : 'x86_64';
}

function validateInstance(instance: ImdsInstance): void {
  if (instance.targetLifecycleState !== undefined && !(TARGET_LIFECYCLE_STATES as readonly string[]).includes(instance.targetLifecycleState)) {
    throw new ImdsEmulatorConfigError(
      `${JSON.stringify(instance.targetLifecycleState)} is not a target lifecycle state IMDS reports (${TARGET_LIFECYCLE_STATES.join(', ')})`,
      'targetLifecycleState',
    );
  }
  if (instance.userData !== undefined && instance.userData.length > MAX_USER_DATA_BYTES) {
    throw new ImdsEmulatorConfigError(`${instance.userData.length} bytes is over EC2's ${MAX_USER_DATA_BYTES}-byte user data limit`, 'userData');
  }
  const lifeCycle = instance.instanceLifeCycle ?? 'on-demand';
  if (!(INSTANCE_LIFE_CYCLES as readonly string[]).includes(lifeCycle)) {
    throw new ImdsEmulatorConfigError(`${JSON.stringify(lifeCycle)} is not ${INSTANCE_LIFE_CYCLES.join(' or ')}`, 'instanceLifeCycle');
  }
  const spot = instance.spotInstanceAction;
  if (spot !== undefined) {
    if (lifeCycle !== 'spot') throw new ImdsEmulatorConfigError('an on-demand instance is never sent a spot interruption notice (instanceLifeCycle "spot")', 'spotInstanceAction');
    if (!['terminate', 'stop', 'hibernate'].includes(spot.action)) {
      throw new ImdsEmulatorConfigError(`${JSON.stringify(spot.action)} is not terminate, stop or hibernate`, 'spotInstanceAction.action');
    }
    if (Number.isNaN(Date.parse(spot.time))) throw new ImdsEmulatorConfigError(`${JSON.stringify(spot.time)} is not a time`, 'spotInstanceAction.time');
  }
  if (instance.rebalanceNoticeTime !== undefined && Number.isNaN(Date.parse(instance.rebalanceNoticeTime))) {
    throw new ImdsEmulatorConfigError(`${JSON.stringify(instance.rebalanceNoticeTime)} is not a time`, 'rebalanceNoticeTime');
  }
}

function hasEntries(dir: Dir): boolean {
  return Object.values(dir).some((e) => e !== undefined && (typeof e === 'string' || hasEntries(e)));
}

function listing(dir: Dir, slashDirs: boolean): string {
  return Object.keys(dir)
    .filter((name) => {
      const e = dir[name];
      return e !== undefined && (typeof e === 'string' || hasEntries(e));
    })
    .sort()
    .map((name) => (slashDirs && typeof dir[name] === 'object' ? `${name}/` : name))
    .join('\n');
}

export class ImdsEmulator {
  readonly #server: RunningServer;
  readonly #clock: Clock;
  readonly #instance: ImdsInstance;
  readonly #startedAt: number;
  readonly #reservationId: string;
  readonly #instanceProfileId = `AIPA${randomChars(17, UPPER_BASE32)}`;
  readonly #tokens = new Map<string, Token>();
  readonly #faults: ActiveFault[] = [];
  readonly #requests: ImdsLoggedRequest[] = [];
  readonly #delays = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  #httpEndpoint: HttpEndpointMode;
  #httpTokens: HttpTokensMode;
  #credentials: RoleCredentials | undefined;
  #closed = false;

  private constructor(server: RunningServer, clock: Clock, instance: ImdsInstance, httpEndpoint: HttpEndpointMode, httpTokens: HttpTokensMode) {
    this.#server = server;
    this.#clock = clock;
    this.#instance = instance;
    this.#httpEndpoint = httpEndpoint;
    this.#httpTokens = httpTokens;
    this.#startedAt = clock.now();
    this.#reservationId = `r-${randomBytes(9).toString('hex').slice(0, 17)}`;
  }

  static async start(options: ImdsStartOptions = {}): Promise<ImdsEmulator> {
    const source = options.instance ?? defaultInstance();
    // A private copy, so a test's object (and the defaults) never change under another emulator.
    const instance: ImdsInstance = { ...source, tags: { ...source.tags } };
    if (source.userData !== undefined) instance.userData = Buffer.from(source.userData);
    if (source.spotInstanceAction !== undefined) instance.spotInstanceAction = { ...source.spotInstanceAction };
    validateInstance(instance);
    let emulator: ImdsEmulator | undefined;
    const server = await listen(
      (req, res) => {
        // The handler can only be called once listen() has resolved and the emulator exists.
        void emulator!.#handle(req, res);
      },
      { ...(options.host !== undefined && { host: options.host }), ...(options.port !== undefined && { port: options.port }), ...(options.admit && { admit: options.admit }) },
    );
    emulator = new ImdsEmulator(server, options.clock ?? systemClock, instance, options.httpEndpoint ?? 'enabled', options.httpTokens ?? 'required');
    return emulator;
  }

  /** e.g. http://127.0.0.1:PORT, what `AWS_EC2_METADATA_SERVICE_ENDPOINT` should hold. */
  get url(): string {
    return this.#server.url;
  }

  get port(): number {
    return this.#server.port;
  }

  /** The instance as served now; change it through the setters. */
  get instance(): Readonly<ImdsInstance> {
    return this.#instance;
  }

  get httpEndpoint(): HttpEndpointMode {
    return this.#httpEndpoint;
  }

  get httpTokens(): HttpTokensMode {
    return this.#httpTokens;
  }

  /** Every request received, in arrival order; `status` is 0 until answered, and stays 0 when dropped. */
  get requests(): readonly ImdsLoggedRequest[] {
    return this.#requests;
  }

  /** Faults not yet used up. */
  get faults(): readonly ActiveFault[] {
    return this.#faults.filter((f) => f.remaining > 0);
  }

  /** How many issued tokens are still valid by the clock. */
  get activeTokens(): number {
    this.#pruneTokens();
    return this.#tokens.size;
  }

  setUserData(data: Buffer | string | undefined): void {
    const bytes = data === undefined ? undefined : Buffer.from(data);
    if (bytes !== undefined && bytes.length > MAX_USER_DATA_BYTES) {
      throw new ImdsEmulatorConfigError(`${bytes.length} bytes is over EC2's ${MAX_USER_DATA_BYTES}-byte user data limit`, 'userData');
    }
    this.#instance.userData = bytes;
  }

  /** Sets a tag, or removes it with `undefined`. Keys EC2 cannot expose are kept but never listed. */
  setTag(key: string, value: string | undefined): void {
    if (value === undefined) delete this.#instance.tags[key];
    else this.#instance.tags[key] = value;
  }

  setTagsInMetadata(enabled: boolean): void {
    this.#instance.tagsInMetadata = enabled;
  }

  setTargetLifecycleState(state: TargetLifecycleState | undefined): void {
    if (state !== undefined && !(TARGET_LIFECYCLE_STATES as readonly string[]).includes(state)) {
      throw new ImdsEmulatorConfigError(`${JSON.stringify(state)} is not a target lifecycle state IMDS reports`, 'targetLifecycleState');
    }
    this.#instance.targetLifecycleState = state;
  }

  setSpotInstanceAction(action: SpotInstanceAction | undefined): void {
    const next = { ...this.#instance, spotInstanceAction: action === undefined ? undefined : { ...action } };
    validateInstance(next);
    this.#instance.spotInstanceAction = next.spotInstanceAction;
  }

  setRebalanceNoticeTime(time: string | undefined): void {
    validateInstance({ ...this.#instance, rebalanceNoticeTime: time });
    this.#instance.rebalanceNoticeTime = time;
  }

  /** Changes (or removes) the instance profile's role; credentials are reissued for a new role. */
  setIamRole(role: string | undefined): void {
    this.#instance.iamRole = role;
  }

  setHttpEndpoint(mode: HttpEndpointMode): void {
    this.#httpEndpoint = mode;
  }

  setHttpTokens(mode: HttpTokensMode): void {
    this.#httpTokens = mode;
  }

  /** Invalidates every issued token at once, as if all sessions expired early. */
  expireTokens(): void {
    this.#tokens.clear();
  }

  injectFault(fault: ImdsFault): ActiveFault {
    const times = fault.times ?? 1;
    if (!(times >= 1)) throw new ImdsEmulatorConfigError(`must be at least 1, got ${times}`, 'fault.times');
    if (fault.status !== undefined && !(Number.isInteger(fault.status) && fault.status >= 100 && fault.status <= 599)) {
      throw new ImdsEmulatorConfigError(`${fault.status} is not an HTTP status`, 'fault.status');
    }
    const active: ActiveFault = { ...fault, remaining: times };
    this.#faults.push(active);
    return active;
  }

  clearFaults(): void {
    this.#faults.length = 0;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const d of this.#delays) {
      clearTimeout(d.timer);
      d.resolve();
    }
    this.#delays.clear();
    await this.#server.close();
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rawPath = req.url ?? '/';
    const method = (req.method ?? 'GET').toUpperCase();
    const path = (rawPath.split('?')[0] ?? '/').replace(/\/{2,}/g, '/');
    const segments = path.split('/').slice(1).map((s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    });
    const version = segments[0] ?? '';
    const canonical = VERSION_SEGMENT.test(version) ? `/latest${path.slice(1 + version.length)}` : path;
    const entry: Mutable<ImdsLoggedRequest> = {
      at: this.#clock.now(),
      method,
      path,
      rawPath,
      status: 0,
      tokenPresented: req.headers[TOKEN_HEADER] !== undefined,
    };
    this.#requests.push(entry);
    res.on('finish', () => {
      entry.status = res.statusCode;
    });
    res.setHeader('Server', 'EC2ws');

    try {
      const fault = this.#takeFault(method, path, canonical);
      if (fault !== undefined) {
        entry.fault = fault;
        if (fault.expireTokens) this.expireTokens();
        if (fault.delayMs !== undefined && fault.delayMs > 0) await this.#delay(fault.delayMs);
        if (this.#closed) return;
        if (fault.drop) {
          req.socket.destroy();
          return;
        }
        if (fault.status !== undefined) {
          this.#error(res, fault.status);
          return;
        }
      }
      this.#serve(req, res, method, segments);
    } catch (err) {
      if (!res.headersSent) this.#error(res, 500);
      else res.destroy(err instanceof Error ? err : undefined);
    }
  }

  #serve(req: http.IncomingMessage, res: http.ServerResponse, method: string, segments: string[]): void {
    if (this.#httpEndpoint === 'disabled') return this.#error(res, 403);

    const [version = '', ...rest] = segments;
    const isTokenPath = rest.length === 2 && rest[0] === 'api' && rest[1] === 'token';
    if (isTokenPath && VERSION_SEGMENT.test(version)) {
      if (method !== 'PUT') return this.#error(res, 405, { Allow: 'PUT' });
      // Only the unversioned path issues tokens; AWS refuses versioned ones on purpose.
      if (version !== 'latest') return this.#error(res, 403);
      if (req.headers['x-forwarded-for'] !== undefined) return this.#error(res, 403);
      return this.#issueToken(req, res);
    }

    if (method !== 'GET' && method !== 'HEAD') return this.#error(res, 405, { Allow: 'GET, HEAD' });

    const token = req.headers[TOKEN_HEADER];
    if (token !== undefined) {
      if (typeof token !== 'string' || !this.#tokenValid(token)) return this.#error(res, 401);
    } else if (this.#httpTokens === 'required') {
      return this.#error(res, 401);
    }

    if (version === '') return this.#text(res, VERSIONS.join('\n'));
    if (!VERSION_SEGMENT.test(version)) return this.#error(res, 404);

    // Trailing slashes ask for a listing, which a directory gives with or without one.
    while (rest.length > 0 && rest[rest.length - 1] === '') rest.pop();
    const [category, ...sub] = rest;
    if (category === undefined) {
      const top: Dir = { 'meta-data': {}, dynamic: {}, ...(this.#instance.userData !== undefined && { 'user-data': '' }) };
      return this.#text(res, Object.keys(top).sort().join('\n'));
    }
    if (category === 'user-data') {
      if (sub.length > 0 || this.#instance.userData === undefined) return this.#error(res, 404);
      return this.#send(res, 200, 'application/octet-stream', this.#instance.userData);
    }
    const root = category === 'meta-data' ? this.#metadataTree() : category === 'dynamic' ? this.#dynamicTree() : undefined;
    if (root === undefined) return this.#error(res, 404);
    let node: Entry = root;
    for (const name of sub) {
      if (typeof node !== 'object') return this.#error(res, 404);
      node = Object.hasOwn(node, name) ? node[name] : undefined;
    }
    if (node === undefined) return this.#error(res, 404);
    if (typeof node === 'string') return this.#text(res, node);
    if (!hasEntries(node)) return this.#error(res, 404);
    return this.#text(res, listing(node, true));
  }

  #issueToken(req: http.IncomingMessage, res: http.ServerResponse): void {
    const header = req.headers[TTL_HEADER];
    const ttl = typeof header === 'string' && /^\d+$/.test(header.trim()) ? Number(header.trim()) : NaN;
    if (!(ttl >= MIN_TOKEN_TTL_SECONDS && ttl <= MAX_TOKEN_TTL_SECONDS)) return this.#error(res, 400);
    this.#pruneTokens();
    const token = randomBytes(42).toString('base64');
    this.#tokens.set(token, { issuedAt: this.#clock.now(), ttlSeconds: ttl });
    res.setHeader('X-aws-ec2-metadata-token-ttl-seconds', String(ttl));
    this.#text(res, token);
  }

  #tokenValid(token: string): boolean {
    const t = this.#tokens.get(token);
    if (t === undefined) return false;
    if (this.#clock.now() - t.issuedAt >= t.ttlSeconds * 1000) {
      this.#tokens.delete(token);
      return false;
    }
    return true;
  }

  #pruneTokens(): void {
    for (const token of [...this.#tokens.keys()]) this.#tokenValid(token);
  }

  #roleCredentials(role: string): RoleCredentials {
    const now = this.#clock.now();
    const current = this.#credentials;
    if (current !== undefined && current.role === role && now < current.expiration - CREDENTIAL_REFRESH_MS) return current;
    const fresh: RoleCredentials = {
      role,
      accessKeyId: `ASIA${randomChars(16, UPPER_BASE32)}`,
      secretAccessKey: randomBytes(30).toString('base64'),
      sessionToken: randomBytes(240).toString('base64'),
      lastUpdated: now,
      expiration: now + CREDENTIAL_LIFETIME_MS,
    };
    this.#credentials = fresh;
    return fresh;
  }

  #metadataTree(): Dir {
    const i = this.#instance;
    const hostname = i.hostname ?? privateDnsName(i);
    const { partition, domain } = partitionOf(i.region);
    const tags: Record<string, string> = {};
    if (i.tagsInMetadata) for (const [k, v] of Object.entries(i.tags)) if (isMetadataTagKey(k)) tags[k] = v;
    let iam: Dir | undefined;
    if (i.iamRole !== undefined) {
      const creds = this.#roleCredentials(i.iamRole);
      iam = {
        info: JSON.stringify(
          {
            Code: 'Success',
            LastUpdated: isoSeconds(creds.lastUpdated),
            InstanceProfileArn: `arn:${partition}:iam::${i.accountId}:instance-profile/${i.iamRole}`,
            InstanceProfileId: this.#instanceProfileId,
          },
          null,
          2,
        ),
        'security-credentials': {
          [i.iamRole]: JSON.stringify(
            {
              Code: 'Success',
              LastUpdated: isoSeconds(creds.lastUpdated),
              Type: 'AWS-HMAC',
              AccessKeyId: creds.accessKeyId,
              SecretAccessKey: creds.secretAccessKey,
              Token: creds.sessionToken,
              Expiration: isoSeconds(creds.expiration),
            },
            null,
            2,
          ),
        },
      };
    }
    const eni = primaryInterface(i);
    return {
      'ami-id': i.amiId,
      'ami-launch-index': '0',
      'ami-manifest-path': '(unknown)',
      autoscaling: i.targetLifecycleState !== undefined ? { 'target-lifecycle-state': i.targetLifecycleState } : undefined,
      // An EBS-backed AMI's root volume, as current AMIs (NixOS's among them) register it: the
      // virtual device the AMI names and the root device are the same (IMDS categories, block-device-mapping/ami, root).
      'block-device-mapping': { ami: '/dev/xvda', root: '/dev/xvda' },
      events: {
        maintenance: { history: '[]', scheduled: '[]' },
        recommendations: i.rebalanceNoticeTime !== undefined ? { rebalance: JSON.stringify({ noticeTime: i.rebalanceNoticeTime }) } : undefined,
      },
      hostname,
      iam,
      'instance-action': 'none',
      'instance-id': i.instanceId,
      'instance-life-cycle': i.instanceLifeCycle ?? 'on-demand',
      'instance-type': i.instanceType,
      'local-hostname': hostname,
      'local-ipv4': i.privateIp,
      // Every VPC instance has a primary interface, device 0, whose MAC is the instance's `mac`
      // (EC2 user guide, instance metadata categories: mac, network/interfaces/macs/mac/…).
      mac: eni.mac,
      network: {
        interfaces: {
          macs: {
            [eni.mac]: {
              'device-number': '0',
              'interface-id': eni.interfaceId,
              'local-hostname': hostname,
              'local-ipv4s': i.privateIp,
              mac: eni.mac,
              'owner-id': i.accountId,
              'security-group-ids': eni.securityGroupId,
              'security-groups': 'default',
              'subnet-id': eni.subnetId,
              'vpc-id': eni.vpcId,
            },
          },
        },
      },
      placement: { 'availability-zone': i.availabilityZone, region: i.region },
      'reservation-id': this.#reservationId,
      'security-groups': 'default',
      services: { domain, partition },
      spot:
        i.spotInstanceAction !== undefined
          ? {
              'instance-action': JSON.stringify({ action: i.spotInstanceAction.action, time: i.spotInstanceAction.time }),
              'termination-time': i.spotInstanceAction.time,
            }
          : undefined,
      tags: { instance: tags },
    };
  }

  #dynamicTree(): Dir {
    const i = this.#instance;
    const document = {
      accountId: i.accountId,
      architecture: architectureOf(i.instanceType),
      availabilityZone: i.availabilityZone,
      billingProducts: null,
      devpayProductCodes: null,
      marketplaceProductCodes: null,
      imageId: i.amiId,
      instanceId: i.instanceId,
      instanceType: i.instanceType,
      kernelId: null,
      pendingTime: isoSeconds(this.#startedAt),
      privateIp: i.privateIp,
      ramdiskId: null,
      region: i.region,
      version: '2017-09-30',
    };
    return { 'instance-identity': { document: JSON.stringify(document, null, 2) } };
  }

  #takeFault(method: string, path: string, canonical: string): ActiveFault | undefined {
    for (const fault of this.#faults) {
      if (fault.remaining <= 0) continue;
      if (fault.method !== undefined && fault.method.toUpperCase() !== method) continue;
      if (fault.path !== undefined) {
        const matches = typeof fault.path === 'string' ? fault.path === canonical || fault.path === path : fault.path.test(canonical);
        if (!matches) continue;
      }
      fault.remaining -= 1;
      return fault;
    }
    return undefined;
  }

  #delay(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const d = {
        timer: setTimeout(() => {
          this.#delays.delete(d);
          resolve();
        }, ms),
        resolve,
      };
      this.#delays.add(d);
    });
  }

  #text(res: http.ServerResponse, body: string): void {
    this.#send(res, 200, 'text/plain', Buffer.from(body, 'utf8'));
  }

  #error(res: http.ServerResponse, status: number, headers: Record<string, string> = {}): void {
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    this.#send(res, status, 'text/plain; charset=utf-8', Buffer.from(errorBody(status), 'utf8'));
  }

  #send(res: http.ServerResponse, status: number, contentType: string, body: Buffer): void {
    res.statusCode = status;
    res.setHeader('Content-Type', contentType);
    res.setHeader('Content-Length', body.length);
    res.end(body);
  }
}
