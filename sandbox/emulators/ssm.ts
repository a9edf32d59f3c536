// SSM Parameter Store over its real wire protocol (awsJson1_1: `POST /`, `X-Amz-Target:
// AmazonSSM.<Op>`), so the SDK v3 SSMClient, botocore and the AWS CLI work against it unchanged.
// State, throttle, faults and the request log are per instance; time comes from an injected Clock.
//
// Where AWS documents a behaviour (the API reference, the botocore service model) it is followed;
// where it only shows in practice (error messages, which code a reserved name gets) the messages
// are those AWS users report, as moto reproduces them.
import { createCipheriv, createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import type { Clock } from '../../agent/ports.js';
import { systemClock } from '../../agent/ports.js';
import { listen, readBody, type LoggedRequest, type RunningServer } from './server.js';
import { TokenBucket } from './token-bucket.js';

export type ParameterType = 'String' | 'StringList' | 'SecureString';
export type ParameterTier = 'Standard' | 'Advanced' | 'Intelligent-Tiering';

/** A PutParameter request as it is on the wire (and in a `--parameters FILE`). */
export interface PutParameterRequest {
  readonly Name: string;
  readonly Value: string;
  readonly Type?: ParameterType;
  readonly Overwrite?: boolean;
  readonly Description?: string;
  readonly KeyId?: string;
  readonly Tier?: ParameterTier;
  readonly DataType?: string;
  readonly AllowedPattern?: string;
  readonly Tags?: readonly { readonly Key: string; readonly Value: string }[];
}

/** One version of a parameter, with its plaintext value. */
export interface StoredParameter {
  readonly Name: string;
  readonly Type: ParameterType;
  readonly Value: string;
  readonly Version: number;
  readonly LastModifiedDate: Date;
  readonly LastModifiedUser: string;
  readonly ARN: string;
  readonly DataType: string;
  readonly Tier: 'Standard' | 'Advanced';
  readonly Description?: string;
  readonly KeyId?: string;
  readonly AllowedPattern?: string;
  readonly Labels: readonly string[];
}

/** The whole store, JSON-serialisable, for keeping a sandbox's parameters across runs. */
export interface SsmSnapshot {
  readonly format: 'ssm-parameters/1';
  readonly parameters: readonly {
    readonly Name: string;
    readonly Tags: Readonly<Record<string, string>>;
    readonly Versions: readonly (Omit<StoredParameter, 'LastModifiedDate' | 'ARN' | 'Name'> & { readonly LastModifiedDate: string })[];
  }[];
}

export interface SsmThroughput {
  /** GetParameter + GetParameters + GetParametersByPath, shared per account (AWS default 40). */
  readonly readsPerSecond: number;
  readonly burst?: number;
  /** DescribeParameters + GetParameterHistory, their own bucket; unthrottled when absent. */
  readonly describesPerSecond?: number;
  /** PutParameter + DeleteParameter(s), their own bucket; unthrottled when absent. */
  readonly writesPerSecond?: number;
}

export interface SsmEmulatorOptions {
  /** New connections let through (server.ts, ListenOptions). */
  readonly admit?: () => boolean;
  readonly clock?: Clock;
  readonly region?: string;
  readonly accountId?: string;
  readonly host?: string;
  readonly port?: number;
  /**
   * Account-wide throttle. Left out: AWS's default of 40 reads a second (burst 40). `null`, a
   * present-but-undefined value, or `readsPerSecond: Infinity` turns read throttling off.
   */
  readonly throughput?: SsmThroughput | null;
  /** The KMS key SecureStrings use when a request names none. */
  readonly kmsKeyId?: string;
}

/** A failure to inject, matched by operation; it answers instead of the operation. */
export interface SsmFault {
  /** The SSM operation (e.g. `GetParametersByPath`); any operation when absent. */
  readonly operation?: string;
  /** How many matching calls it hits; default 1, `Infinity` for all. */
  readonly times?: number;
  /** Wait this long on the emulator's clock first. Alone, it only delays the real answer; `Infinity` never answers. */
  readonly delayMs?: number;
  /** Close the connection without answering. */
  readonly drop?: boolean;
  /** Answer with this error code (`__type`); InternalServerError when only `status` is given. */
  readonly code?: string;
  readonly message?: string;
  /** Default 500 for InternalServerError, 503 for ServiceUnavailable, else 400. */
  readonly status?: number;
  /** Only calls that carry a `NextToken` (the second and later pages of a walk). */
  readonly continuation?: boolean;
  /** Runs when the fault is taken, before the answer (e.g. deletes a parameter between two pages). */
  readonly before?: () => void;
}

export interface SsmLoggedRequest extends LoggedRequest {
  readonly requestId: string;
  /** The `__type` of an error answer. */
  readonly errorCode?: string;
  /** The parsed request body. */
  readonly input?: unknown;
  /** The access key id from the signature's credential scope. */
  readonly accessKeyId?: string;
}

/** An SSM error: what the wire answer carries, and what `put()` and friends throw. */
export class SsmServiceError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number = code === 'InternalServerError' ? 500 : 400,
  ) {
    super(message);
    this.name = 'SsmServiceError';
  }
}

const OPERATIONS = [
  'PutParameter',
  'GetParameter',
  'GetParameters',
  'GetParametersByPath',
  'DeleteParameter',
  'DeleteParameters',
  'DescribeParameters',
  'GetParameterHistory',
  'LabelParameterVersion',
] as const;
type Operation = (typeof OPERATIONS)[number];

const READ_OPS: ReadonlySet<string> = new Set(['GetParameter', 'GetParameters', 'GetParametersByPath']);
const DESCRIBE_OPS: ReadonlySet<string> = new Set(['DescribeParameters', 'GetParameterHistory']);
const WRITE_OPS: ReadonlySet<string> = new Set(['PutParameter', 'DeleteParameter', 'DeleteParameters', 'LabelParameterVersion']);

const TYPES: readonly ParameterType[] = ['String', 'StringList', 'SecureString'];
const TIERS: readonly ParameterTier[] = ['Standard', 'Advanced', 'Intelligent-Tiering'];
const DATA_TYPES = ['text', 'aws:ec2:image', 'aws:ssm:integration'];
const DEFAULT_KMS_KEY = 'alias/aws/ssm';
// "Parameter hierarchies are limited to a maximum depth of fifteen levels" (PutParameter, Name).
const MAX_DEPTH = 15;
// "The reported maximum length of 2048 characters for a parameter name includes 1037 characters
// reserved for internal use": 1011 are left, and "this count of 1011 characters includes the
// characters in the ARN that precede the name you specify" (PutParameter, Name).
const MAX_NAME_LENGTH = 1011;
// "Standard parameters have a value limit of 4 KB. Advanced parameters have a value limit of 8 KB."
const STANDARD_VALUE_LIMIT = 4096;
const ADVANCED_VALUE_LIMIT = 8192;
// Parameter Store keeps the latest 100 versions; putting a 101st drops the oldest, unless it is labelled.
const MAX_VERSIONS = 100;
// "A version of a parameter can have a maximum of 10 labels" (LabelParameterVersion).
const MAX_LABELS = 10;
// Labels: letters, numbers, `.`, `-`, `_`, at most 100 characters, not starting with a number,
// `aws` or `ssm` (user guide, "Labeling parameters"). A bad one comes back in InvalidLabels.
const LABEL = /^(?![0-9])(?!aws)(?!ssm)[a-zA-Z0-9_.-]{1,100}$/i;

const NAME_CHARS = /^[a-zA-Z0-9_.\-/]+$/;
const SUB_PATH_MESSAGE =
  'Parameter name: can\'t be prefixed with "ssm" (case-insensitive). If formed as a path, it can consist of ' +
  'sub-paths divided by slash symbol; each sub-path can be formed as a mix of letters, numbers and the following 3 symbols .-_';
const PATH_MESSAGE =
  'The parameter doesn\'t meet the parameter name requirements. The parameter name must begin with a forward slash "/". ' +
  'It can\'t be prefixed with "aws" or "ssm" (case-insensitive). It must use only letters, numbers, or the following ' +
  'symbols: . (period), - (hyphen), _ (underscore). Special characters are not allowed. All sub-paths, if specified, ' +
  'must use the forward slash symbol "/". Valid example: /get/parameters2-/by1./path0_.';

interface Version {
  readonly Name: string;
  readonly Type: ParameterType;
  readonly Value: string;
  readonly Version: number;
  readonly LastModifiedDate: number;
  readonly LastModifiedUser: string;
  readonly DataType: string;
  readonly Tier: 'Standard' | 'Advanced';
  readonly Description?: string;
  readonly KeyId?: string;
  readonly AllowedPattern?: string;
  readonly Labels: string[];
  /** What a SecureString reads as without decryption: fixed per version, like a stored KMS blob. */
  readonly ciphertext?: string;
}

interface Entry {
  readonly versions: Version[];
  readonly tags: Map<string, string>;
}

interface Filter {
  readonly Key: string;
  readonly Option: string;
  readonly Values: readonly string[];
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);
const memberName = (key: string): string => key.charAt(0).toLowerCase() + key.slice(1);
const validation = (message: string): SsmServiceError => new SsmServiceError('ValidationException', message);
const oneError = (detail: string): SsmServiceError => validation(`1 validation error detected: ${detail}`);

export class SsmEmulator {
  readonly url: string;
  readonly port: number;
  readonly region: string;
  readonly accountId: string;
  readonly requests: SsmLoggedRequest[] = [];

  private readonly clock: Clock;
  private readonly server: RunningServer;
  private readonly store = new Map<string, Entry>();
  private readonly kmsKeyId: string;
  /** KMS keys this account has: ids, ARNs and aliases that a SecureString may name. */
  private readonly kmsKeys = new Set<string>();
  private readonly encryptionKey = randomBytes(32);
  private readonly tokenSecret = randomBytes(32);
  private readonly reads: TokenBucket | undefined;
  private readonly describes: TokenBucket | undefined;
  private readonly writes: TokenBucket | undefined;
  private readonly calls = new Map<string, number>();
  private readonly throttled = new Map<string, number>();
  private faults: { fault: SsmFault; left: number }[] = [];

  private constructor(server: RunningServer, options: SsmEmulatorOptions, clock: Clock) {
    this.server = server;
    this.url = server.url;
    this.port = server.port;
    this.clock = clock;
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '123456789012';
    this.kmsKeyId = options.kmsKeyId ?? DEFAULT_KMS_KEY;
    for (const key of [DEFAULT_KMS_KEY, this.kmsKeyId]) this.addKmsKey(key);
    const throughput =
      'throughput' in options ? (options.throughput ?? undefined) : { readsPerSecond: 40, burst: 40 };
    const bucket = (rate: number | undefined, burst?: number) =>
      rate === undefined || rate === Infinity ? undefined : new TokenBucket({ ratePerSecond: rate, burst: burst ?? rate, clock });
    this.reads = bucket(throughput?.readsPerSecond, throughput?.burst);
    this.describes = bucket(throughput?.describesPerSecond);
    this.writes = bucket(throughput?.writesPerSecond);
  }

  static async start(options: SsmEmulatorOptions = {}): Promise<SsmEmulator> {
    const clock = options.clock ?? systemClock;
    let emulator: SsmEmulator | undefined;
    const server = await listen(
      (req, res) => {
        // The server is up before the instance exists; nothing connects in between but be safe.
        if (!emulator) {
          res.statusCode = 503;
          res.end();
          return;
        }
        void emulator.handle(req, res);
      },
      { host: options.host, port: options.port, ...(options.admit ? { admit: options.admit } : {}) },
    );
    emulator = new SsmEmulator(server, options, clock);
    return emulator;
  }

  close(): Promise<void> {
    return this.server.close();
  }

  // ---- direct API: the same rules as the wire ----

  put(request: PutParameterRequest, user?: string): { Version: number; Tier: 'Standard' | 'Advanced' } {
    return this.putParameter(request as unknown as Json, user ?? `arn:aws:iam::${this.accountId}:root`);
  }

  /**
   * Creates a customer managed KMS key (as KMS CreateKey, with an optional CreateAlias): its id, ARN
   * and alias become valid `KeyId`s for SecureStrings. Any other KeyId is InvalidKeyId.
   */
  createKmsKey(alias?: string): { KeyId: string; Arn: string } {
    const keyId = randomUUID();
    const arn = `arn:aws:kms:${this.region}:${this.accountId}:key/${keyId}`;
    this.kmsKeys.add(keyId).add(arn);
    if (alias !== undefined) this.addKmsKey(alias.startsWith('alias/') ? alias : `alias/${alias}`);
    return { KeyId: keyId, Arn: arn };
  }

  /** Attaches labels to a version (the latest by default), as the LabelParameterVersion call does. */
  label(name: string, labels: readonly string[], version?: number): { InvalidLabels: string[]; ParameterVersion: number } {
    return this.labelParameterVersion({ Name: name, Labels: [...labels], ...(version !== undefined ? { ParameterVersion: version } : {}) });
  }

  /** Deletes a parameter and all its versions; throws ParameterNotFound when there is none. */
  delete(name: string): void {
    if (!this.store.delete(name)) throw notFound(name);
  }

  /** The latest version, with its plaintext value. */
  get(name: string): StoredParameter | undefined {
    const entry = this.store.get(name);
    const latest = entry?.versions.at(-1);
    return latest && this.view(latest);
  }

  /** Every kept version, oldest first. */
  history(name: string): StoredParameter[] {
    return (this.store.get(name)?.versions ?? []).map((v) => this.view(v));
  }

  /** All names, sorted. */
  names(): string[] {
    return [...this.store.keys()].sort(compareNames);
  }

  /** Applies PutParameter requests in order (a `--parameters FILE`); the first bad one throws, naming its index. */
  load(requests: readonly PutParameterRequest[]): void {
    // The array usually comes straight from a JSON file, so its shape is checked here too.
    const list: unknown = requests;
    if (!Array.isArray(list)) throw validation('parameters: expected a JSON array of PutParameter requests');
    list.forEach((request: unknown, index) => {
      if (!isObject(request)) throw validation(`parameters[${index}]: expected a PutParameter request object`);
      try {
        this.putParameter(request, `arn:aws:iam::${this.accountId}:root`);
      } catch (err) {
        if (err instanceof SsmServiceError) {
          throw new SsmServiceError(err.code, `parameters[${index}] (${String(request['Name'])}): ${err.message}`, err.status);
        }
        throw err;
      }
    });
  }

  snapshot(): SsmSnapshot {
    return {
      format: 'ssm-parameters/1',
      parameters: this.names().map((name) => {
        const entry = this.store.get(name)!;
        return {
          Name: name,
          Tags: Object.fromEntries(entry.tags),
          Versions: entry.versions.map(({ ciphertext: _c, Name: _n, LastModifiedDate, ...rest }) => ({
            ...rest,
            Labels: [...rest.Labels],
            LastModifiedDate: new Date(LastModifiedDate).toISOString(),
          })),
        };
      }),
    };
  }

  /** Replaces the whole store with a snapshot's. */
  restore(snapshot: SsmSnapshot): void {
    const candidate: unknown = snapshot;
    if (!isObject(candidate) || candidate['format'] !== 'ssm-parameters/1' || !Array.isArray(candidate['parameters'])) {
      throw validation('snapshot: not an ssm-parameters/1 snapshot');
    }
    this.store.clear();
    for (const p of snapshot.parameters) {
      const versions = p.Versions.map((v): Version => {
        const version: Version = { ...v, Name: p.Name, Labels: [...v.Labels], LastModifiedDate: Date.parse(v.LastModifiedDate) };
        return v.Type === 'SecureString' ? { ...version, ciphertext: this.encrypt(v.Value, v.KeyId ?? this.kmsKeyId) } : version;
      });
      this.store.set(p.Name, { versions, tags: new Map(Object.entries(p.Tags ?? {})) });
      // A key a stored SecureString was put with existed then: it stays valid.
      for (const v of versions) if (v.KeyId) this.kmsKeys.add(v.KeyId);
    }
  }

  // ---- observation and faults ----

  /** Calls received per operation (throttled and faulted ones included). */
  callCounts(): Record<string, number> {
    return Object.fromEntries(this.calls);
  }

  /** Calls answered with ThrottlingException. */
  get throttledCount(): number {
    let total = 0;
    for (const n of this.throttled.values()) total += n;
    return total;
  }

  throttledCounts(): Record<string, number> {
    return Object.fromEntries(this.throttled);
  }

  resetCounters(): void {
    this.calls.clear();
    this.throttled.clear();
    this.requests.length = 0;
  }

  injectFault(fault: SsmFault): void {
    this.faults.push({ fault, left: fault.times ?? 1 });
  }

  clearFaults(): void {
    this.faults = [];
  }

  // ---- the wire ----

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const at = this.clock.now();
    const path = req.url ?? '/';
    let operation: string | undefined;
    let input: unknown;
    let accessKeyId: string | undefined;
    const log = (status: number, errorCode?: string) =>
      this.requests.push({ at, method: req.method ?? '', path, operation, status, requestId, errorCode, input, accessKeyId });
    const answer = (status: number, body: unknown, errorCode?: string) => {
      const text = JSON.stringify(body);
      res.writeHead(status, {
        'content-type': 'application/x-amz-json-1.1',
        'content-length': Buffer.byteLength(text),
        'x-amzn-requestid': requestId,
        ...(errorCode ? { 'x-amzn-errortype': errorCode } : {}),
      });
      res.end(text);
      log(status, errorCode);
    };
    const fail = (err: SsmServiceError) =>
      answer(err.status, { __type: err.code, message: err.message, Message: err.message }, err.code);

    try {
      let raw: Buffer;
      try {
        raw = await readBody(req);
      } catch {
        // The body was refused (too large) or the client went away: nothing sensible to answer.
        res.destroy();
        log(0);
        return;
      }
      const target = header(req, 'x-amz-target');
      if (req.method !== 'POST' || path !== '/' || !target) {
        throw new SsmServiceError('UnknownOperationException', `Unknown operation: ${req.method} ${path}`);
      }
      const [prefix, op] = target.split('.', 2);
      operation = op ?? target;
      if (prefix !== 'AmazonSSM' || !op) {
        throw new SsmServiceError('UnknownOperationException', `Unknown operation ${target}`);
      }
      accessKeyId = this.checkAuthorization(header(req, 'authorization'));
      this.calls.set(op, (this.calls.get(op) ?? 0) + 1);

      const fault = this.takeFault(op, hasNextToken(raw));
      fault?.before?.();
      if (fault?.delayMs === Infinity) {
        // A call that never returns: the socket stays open until the client gives up or close().
        log(0);
        return;
      }
      if (fault?.delayMs) await this.clock.sleep(fault.delayMs);
      if (fault?.drop) {
        res.socket?.destroy();
        log(0);
        return;
      }
      if (fault?.code || fault?.status) {
        const code = fault.code ?? 'InternalServerError';
        throw new SsmServiceError(code, fault.message ?? code, fault.status ?? defaultStatus(code));
      }

      if (!isOperation(op)) throw new SsmServiceError('UnknownOperationException', `Unknown operation ${target}`);
      const bucket = READ_OPS.has(op) ? this.reads : DESCRIBE_OPS.has(op) ? this.describes : WRITE_OPS.has(op) ? this.writes : undefined;
      if (bucket && !bucket.tryTake()) {
        this.throttled.set(op, (this.throttled.get(op) ?? 0) + 1);
        throw new SsmServiceError('ThrottlingException', 'Rate exceeded');
      }

      const text = raw.toString('utf8').trim();
      try {
        input = text === '' ? {} : JSON.parse(text);
      } catch {
        throw new SsmServiceError('SerializationException', 'Request body is not valid JSON');
      }
      if (!isObject(input)) throw new SsmServiceError('SerializationException', 'Request body must be a JSON object');
      const user = `arn:aws:iam::${this.accountId}:user/${accessKeyId}`;
      answer(200, this.dispatch(op, input, user));
    } catch (err) {
      if (err instanceof SsmServiceError) {
        fail(err);
      } else {
        const message = err instanceof Error ? err.message : String(err);
        fail(new SsmServiceError('InternalServerError', message, 500));
      }
    }
  }

  /**
   * Requires a well-formed SigV4 Authorization header scoped to this region and `ssm`, without
   * checking the signature (the SDK and the CLI always sign when they hold credentials). The codes
   * are those AWS's JSON services answer: MissingAuthenticationTokenException with no header,
   * IncompleteSignatureException for a malformed one, InvalidSignatureException for a wrong scope.
   */
  private checkAuthorization(value: string | undefined): string {
    if (!value) throw new SsmServiceError('MissingAuthenticationTokenException', 'Missing Authentication Token');
    const match = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=[^,\s]+,\s*Signature=[0-9a-f]+$/.exec(
      value.trim(),
    );
    if (!match) {
      throw new SsmServiceError(
        'IncompleteSignatureException',
        `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters. Authorization=${value.split(' ')[0]}`,
      );
    }
    const [, accessKeyId, , region, service] = match;
    if (service !== 'ssm') throw new SsmServiceError('InvalidSignatureException', "Credential should be scoped to correct service: 'ssm'. ");
    if (region !== this.region) {
      throw new SsmServiceError('InvalidSignatureException', `Credential should be scoped to a valid region, not '${region}'. `);
    }
    return accessKeyId!;
  }

  private takeFault(op: string, continuation: boolean): SsmFault | undefined {
    const slot = this.faults.find(
      (f) => f.left > 0 && (f.fault.operation === undefined || f.fault.operation === op) && (!f.fault.continuation || continuation),
    );
    if (!slot) return undefined;
    slot.left -= 1;
    this.faults = this.faults.filter((f) => f.left > 0);
    return slot.fault;
  }

  private dispatch(op: Operation, input: Json, user: string): unknown {
    switch (op) {
      case 'PutParameter':
        return this.putParameter(input, user);
      case 'GetParameter':
        return this.getParameter(input);
      case 'GetParameters':
        return this.getParameters(input);
      case 'GetParametersByPath':
        return this.getParametersByPath(input);
      case 'DeleteParameter':
        return this.deleteParameter(input);
      case 'DeleteParameters':
        return this.deleteParameters(input);
      case 'DescribeParameters':
        return this.describeParameters(input);
      case 'GetParameterHistory':
        return this.getParameterHistory(input);
      case 'LabelParameterVersion':
        return this.labelParameterVersion(input);
    }
  }

  // ---- operations ----

  private putParameter(input: Json, user: string): { Version: number; Tier: 'Standard' | 'Advanced' } {
    const name = validateName(requiredString(input, 'Name', 1, 2048), (n) => this.arn(n).length);
    const value = requiredString(input, 'Value', 1);
    const type = optionalEnum(input, 'Type', TYPES);
    const overwrite = optionalBoolean(input, 'Overwrite') ?? false;
    const description = optionalString(input, 'Description', 0, 1024);
    const keyId = optionalString(input, 'KeyId', 1, 256);
    const tier = optionalEnum(input, 'Tier', TIERS);
    const dataType = optionalString(input, 'DataType', 0, 128);
    const allowedPattern = optionalString(input, 'AllowedPattern', 0, 1024);
    const tags = optionalTags(input);

    if (overwrite && tags) {
      throw validation(
        "Invalid request: tags and overwrite can't be used together. To create a parameter with tags, please remove overwrite " +
          'flag. To update tags for an existing parameter, please use AddTagsToResource or RemoveTagsFromResource.',
      );
    }
    if (dataType !== undefined && !DATA_TYPES.includes(dataType)) {
      throw validation(`The following data type is not supported: ${dataType} (Data type names are all lowercase.)`);
    }

    const entry = this.store.get(name);
    const previous = entry?.versions.at(-1);
    if (previous && !overwrite) {
      throw new SsmServiceError(
        'ParameterAlreadyExists',
        'The parameter already exists. To overwrite this value, set the overwrite option in the request to true.',
      );
    }
    const resolvedType = type ?? previous?.Type;
    if (!resolvedType) throw validation('A parameter type is required when you create a parameter.');
    if (previous && (previous.Type === 'SecureString') !== (resolvedType === 'SecureString')) {
      // The botocore model's text for the error; the CLI prints it as AWS sends it.
      throw new SsmServiceError(
        'HierarchyTypeMismatchException',
        "Parameter Store doesn't support changing a parameter type in a hierarchy. For example, you can't change a parameter " +
          'from a String type to a SecureString type. You must create a new, unique parameter.',
      );
    }
    if (resolvedType === 'SecureString' && keyId !== undefined && !this.kmsKeys.has(keyId)) {
      throw new SsmServiceError('InvalidKeyId', `Invalid KeyId ${keyId}: the query key ID isn't valid.`);
    }

    const size = Buffer.byteLength(value, 'utf8');
    const wanted = tier ?? (previous?.Tier === 'Advanced' ? 'Advanced' : 'Standard');
    const resolvedTier: 'Standard' | 'Advanced' =
      wanted === 'Intelligent-Tiering' ? (size > STANDARD_VALUE_LIMIT || previous?.Tier === 'Advanced' ? 'Advanced' : 'Standard') : wanted;
    if (previous?.Tier === 'Advanced' && resolvedTier === 'Standard') {
      throw validation(
        "This parameter uses the advanced-parameter tier. You can't downgrade a parameter from the advanced-parameter tier to " +
          'the standard-parameter tier. If necessary, you can delete the advanced parameter and recreate it as a standard parameter.',
      );
    }
    if (resolvedTier === 'Standard' && size > STANDARD_VALUE_LIMIT) {
      throw validation(
        `Standard tier parameters support a maximum parameter value of ${STANDARD_VALUE_LIMIT} characters. To create a larger ` +
          'parameter value, upgrade the parameter to use the advanced-parameter tier.',
      );
    }
    if (size > ADVANCED_VALUE_LIMIT) {
      throw validation(`Advanced tier parameters support a maximum parameter value of ${ADVANCED_VALUE_LIMIT} characters.`);
    }

    const pattern = allowedPattern ?? previous?.AllowedPattern;
    if (pattern) {
      let regex: RegExp;
      try {
        regex = new RegExp(pattern);
      } catch {
        throw new SsmServiceError('InvalidAllowedPatternException', `The allowed pattern is not a valid regular expression: ${pattern}`);
      }
      if (!regex.test(value)) {
        throw new SsmServiceError('ParameterPatternMismatchException', `Parameter value, cannot be validated against allowedPattern: ${pattern}`);
      }
    }

    const secure = resolvedType === 'SecureString';
    const resolvedKey = secure ? (keyId ?? (previous?.Type === 'SecureString' ? previous.KeyId : undefined) ?? this.kmsKeyId) : undefined;
    const version: Version = {
      Name: name,
      Type: resolvedType,
      Value: value,
      Version: (previous?.Version ?? 0) + 1,
      LastModifiedDate: this.clock.now(),
      LastModifiedUser: user,
      DataType: dataType ?? previous?.DataType ?? 'text',
      Tier: resolvedTier,
      Labels: [],
      ...(description !== undefined || previous?.Description !== undefined ? { Description: description ?? previous?.Description } : {}),
      ...(resolvedKey ? { KeyId: resolvedKey, ciphertext: this.encrypt(value, resolvedKey) } : {}),
      ...(pattern ? { AllowedPattern: pattern } : {}),
    };
    if (entry) {
      if (entry.versions.length >= MAX_VERSIONS && entry.versions[0]!.Labels.length > 0) {
        const oldest = entry.versions[0]!;
        throw new SsmServiceError(
          'ParameterMaxVersionLimitExceeded',
          `You attempted to create a new version of ${name} by calling the PutParameter API with the overwrite flag. Version ` +
            `${oldest.Version}, the oldest version, can't be deleted because it has a label associated with it. Move the label to ` +
            'another version of the parameter, and try again.',
        );
      }
      entry.versions.push(version);
      if (entry.versions.length > MAX_VERSIONS) entry.versions.shift();
    } else {
      this.store.set(name, { versions: [version], tags: new Map((tags ?? []).map((t) => [t.Key, t.Value])) });
    }
    return { Version: version.Version, Tier: version.Tier };
  }

  private getParameter(input: Json): unknown {
    const requested = requiredString(input, 'Name', 1, 2048);
    const decrypt = optionalBoolean(input, 'WithDecryption') ?? false;
    const found = this.resolve(requested);
    if (found instanceof SsmServiceError) throw found;
    return { Parameter: this.wireParameter(found.version, decrypt, found.selector) };
  }

  private getParameters(input: Json): unknown {
    const names = requiredStringList(input, 'Names', 1, 10);
    const decrypt = optionalBoolean(input, 'WithDecryption') ?? false;
    const parameters: unknown[] = [];
    const invalid: string[] = [];
    for (const requested of new Set(names)) {
      const found = this.resolve(requested);
      if (found instanceof SsmServiceError) invalid.push(requested);
      else parameters.push(this.wireParameter(found.version, decrypt, found.selector));
    }
    return { Parameters: parameters, InvalidParameters: invalid };
  }

  private getParametersByPath(input: Json): unknown {
    const path = validatePath(requiredString(input, 'Path', 1, 2048));
    const recursive = optionalBoolean(input, 'Recursive') ?? false;
    const decrypt = optionalBoolean(input, 'WithDecryption') ?? false;
    const maxResults = optionalInteger(input, 'MaxResults', 1, 10) ?? 10;
    const filters = parseFilters(input['ParameterFilters'], 'byPath');
    const binding = this.binding('GetParametersByPath', [path, recursive, input['ParameterFilters'] ?? null]);
    const after = this.cursor(input, 'GetParametersByPath', binding);

    const prefix = path === '/' ? '/' : `${path}/`;
    const candidates = this.names().filter(
      (name) => name.startsWith(prefix) && (recursive || !name.slice(prefix.length).includes('/')) && (after === undefined || compareNames(name, String(after)) > 0),
    );
    // Parameter Store reads a page's worth of names under the path, then filters: with filters a
    // page may hold fewer than MaxResults (even none) and still carry a NextToken.
    const window = candidates.slice(0, maxResults);
    // A Label filter reads the labelled version of each parameter carrying the label, which need
    // not be its latest: "view a list of specific parameter versions that all use the same label
    // ... by using the GetParametersByPath API" (SSM user guide, sysman-paramstore-labels).
    const labels = filters.find((f) => f.Key === 'Label')?.Values;
    const parameters = window
      .map((name) => {
        const entry = this.store.get(name)!;
        const version = labels ? entry.versions.findLast((v) => v.Labels.some((l) => labels.includes(l))) : entry.versions.at(-1);
        return { entry, version };
      })
      .filter((c): c is { entry: Entry; version: Version } => c.version !== undefined && matchesAll(c.entry, filters, c.version))
      .map((c) => this.wireParameter(c.version, decrypt));
    const next = candidates.length > maxResults ? this.token('GetParametersByPath', binding, window.at(-1)!) : undefined;
    return { Parameters: parameters, ...(next ? { NextToken: next } : {}) };
  }

  private deleteParameter(input: Json): unknown {
    const name = requiredString(input, 'Name', 1, 2048);
    if (!this.store.delete(name)) throw notFound(name);
    return {};
  }

  private deleteParameters(input: Json): unknown {
    const names = requiredStringList(input, 'Names', 1, 10);
    const deleted: string[] = [];
    const invalid: string[] = [];
    for (const name of new Set(names)) (this.store.delete(name) ? deleted : invalid).push(name);
    return { DeletedParameters: deleted, InvalidParameters: invalid };
  }

  private describeParameters(input: Json): unknown {
    const maxResults = optionalInteger(input, 'MaxResults', 1, 50) ?? 50;
    if (input['Filters'] !== undefined && input['ParameterFilters'] !== undefined) {
      throw validation('You can use either Filters or ParameterFilters in a single request.');
    }
    const filters = [...parseFilters(input['ParameterFilters'], 'describe'), ...parseLegacyFilters(input['Filters'])];
    const binding = this.binding('DescribeParameters', [input['Filters'] ?? null, input['ParameterFilters'] ?? null]);
    const after = this.cursor(input, 'DescribeParameters', binding);
    const candidates = this.names().filter((name) => after === undefined || compareNames(name, String(after)) > 0);
    const window = candidates.slice(0, maxResults);
    const metadata = window
      .map((name) => this.store.get(name)!)
      .filter((entry) => matchesAll(entry, filters))
      .map((entry) => {
        const v = entry.versions.at(-1)!;
        return {
          Name: v.Name,
          ARN: this.arn(v.Name),
          Type: v.Type,
          ...(v.KeyId ? { KeyId: v.KeyId } : {}),
          LastModifiedDate: epochSeconds(v.LastModifiedDate),
          LastModifiedUser: v.LastModifiedUser,
          ...(v.Description !== undefined ? { Description: v.Description } : {}),
          ...(v.AllowedPattern ? { AllowedPattern: v.AllowedPattern } : {}),
          Version: v.Version,
          Tier: v.Tier,
          Policies: [],
          DataType: v.DataType,
        };
      });
    const next = candidates.length > maxResults ? this.token('DescribeParameters', binding, window.at(-1)!) : undefined;
    return { Parameters: metadata, ...(next ? { NextToken: next } : {}) };
  }

  private getParameterHistory(input: Json): unknown {
    const requested = requiredString(input, 'Name', 1, 2048);
    const decrypt = optionalBoolean(input, 'WithDecryption') ?? false;
    const maxResults = optionalInteger(input, 'MaxResults', 1, 50) ?? 50;
    const name = this.stripArn(requested);
    const entry = this.store.get(name);
    if (!entry) throw notFound(requested);
    const binding = this.binding('GetParameterHistory', [name]);
    const after = this.cursor(input, 'GetParameterHistory', binding);
    const remaining = entry.versions.filter((v) => after === undefined || v.Version > Number(after));
    const page = remaining.slice(0, maxResults);
    const history = page.map((v) => ({
      Name: v.Name,
      Type: v.Type,
      ...(v.KeyId ? { KeyId: v.KeyId } : {}),
      LastModifiedDate: epochSeconds(v.LastModifiedDate),
      LastModifiedUser: v.LastModifiedUser,
      ...(v.Description !== undefined ? { Description: v.Description } : {}),
      Value: this.wireValue(v, decrypt),
      ...(v.AllowedPattern ? { AllowedPattern: v.AllowedPattern } : {}),
      Version: v.Version,
      Labels: [...v.Labels],
      Tier: v.Tier,
      Policies: [],
      DataType: v.DataType,
    }));
    const next = remaining.length > maxResults ? this.token('GetParameterHistory', binding, page.at(-1)!.Version) : undefined;
    return { Parameters: history, ...(next ? { NextToken: next } : {}) };
  }

  private labelParameterVersion(input: Json): { InvalidLabels: string[]; ParameterVersion: number } {
    const requested = requiredString(input, 'Name', 1, 2048);
    const labels = requiredStringList(input, 'Labels', 1, MAX_LABELS);
    const wanted = optionalInteger(input, 'ParameterVersion', 1, Number.MAX_SAFE_INTEGER);
    // "You can't enter the Amazon Resource Name (ARN) for a parameter, only the parameter name
    // itself" (LabelParameterVersionRequest.Name): an ARN names no parameter here, and of the
    // operation's errors ParameterNotFound is the one that says so (botocore ssm model).
    const name = requested;
    const entry = this.store.get(name);
    if (!entry) throw notFound(requested);
    const version = wanted === undefined ? entry.versions.at(-1)! : entry.versions.find((v) => v.Version === wanted);
    if (!version) {
      throw new SsmServiceError('ParameterVersionNotFound', `Systems Manager could not find version ${wanted} of ${name}. Verify the version and try again.`);
    }
    const invalid = labels.filter((l) => !LABEL.test(l));
    const valid = [...new Set(labels.filter((l) => LABEL.test(l)))];
    const added = valid.filter((l) => !version.Labels.includes(l));
    if (version.Labels.length + added.length > MAX_LABELS) {
      throw new SsmServiceError('ParameterVersionLabelLimitExceeded', 'A parameter version can have a maximum of ten labels.');
    }
    // A label names one version of a parameter: attaching it elsewhere moves it here.
    for (const other of entry.versions) {
      if (other === version) continue;
      for (const l of added) {
        const at = other.Labels.indexOf(l);
        if (at !== -1) other.Labels.splice(at, 1);
      }
    }
    version.Labels.push(...added);
    return { InvalidLabels: invalid, ParameterVersion: version.Version };
  }

  // ---- helpers ----

  /** `name`, `name:version`, `name:label`, or the parameter's ARN in place of its name. */
  private resolve(requested: string): { version: Version; selector?: string } | SsmServiceError {
    const bare = this.stripArn(requested);
    const colon = bare.indexOf(':');
    const name = colon === -1 ? bare : bare.slice(0, colon);
    const selector = colon === -1 ? undefined : bare.slice(colon + 1);
    const entry = this.store.get(name);
    if (!entry || selector === '') return notFound(requested);
    if (selector === undefined) return { version: entry.versions.at(-1)! };
    if (/^\d+$/.test(selector)) {
      const version = entry.versions.find((v) => v.Version === Number(selector));
      return version
        ? { version, selector: `:${selector}` }
        : new SsmServiceError(
            'ParameterVersionNotFound',
            `Systems Manager could not find version ${selector} of ${name}. Verify the version and try again.`,
          );
    }
    const labelled = entry.versions.findLast((v) => v.Labels.includes(selector));
    return labelled ? { version: labelled, selector: `:${selector}` } : notFound(requested);
  }

  /** An alias is valid by its name and by its ARN. */
  private addKmsKey(key: string): void {
    this.kmsKeys.add(key);
    if (key.startsWith('alias/')) this.kmsKeys.add(`arn:aws:kms:${this.region}:${this.accountId}:${key}`);
  }

  private stripArn(requested: string): string {
    const prefix = `arn:aws:ssm:${this.region}:${this.accountId}:parameter`;
    if (!requested.startsWith(prefix)) return requested;
    const rest = requested.slice(prefix.length);
    // The ARN of `name` and of `/name` read the same; prefer whichever exists.
    const bare = rest.replace(/^\//, '');
    const withSlash = rest.startsWith('/') ? rest : `/${rest}`;
    return this.store.has(withSlash.split(':')[0]!) ? withSlash : bare;
  }

  private arn(name: string): string {
    return `arn:aws:ssm:${this.region}:${this.accountId}:parameter${name.startsWith('/') ? '' : '/'}${name}`;
  }

  private wireParameter(v: Version, decrypt: boolean, selector?: string): Json {
    return {
      Name: v.Name,
      Type: v.Type,
      Value: this.wireValue(v, decrypt),
      Version: v.Version,
      ...(selector ? { Selector: selector } : {}),
      LastModifiedDate: epochSeconds(v.LastModifiedDate),
      ARN: this.arn(v.Name),
      DataType: v.DataType,
    };
  }

  private wireValue(v: Version, decrypt: boolean): string {
    return v.Type === 'SecureString' && !decrypt ? v.ciphertext ?? this.encrypt(v.Value, v.KeyId ?? this.kmsKeyId) : v.Value;
  }

  /**
   * Without WithDecryption a SecureString reads as its ciphertext, "an encrypted GUID" per the
   * user guide and a base64 KMS blob in practice. This is a real AES-GCM encryption under a
   * per-instance key, so it never equals (or reveals) the plaintext.
   */
  private encrypt(value: string, keyId: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.encryptionKey, iv);
    cipher.setAAD(Buffer.from(keyId));
    const body = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
    return Buffer.concat([Buffer.from([1, 2, 2, 0]), iv, cipher.getAuthTag(), body]).toString('base64');
  }

  private view(v: Version): StoredParameter {
    const { ciphertext: _c, LastModifiedDate, Labels, ...rest } = v;
    return { ...rest, Labels: [...Labels], LastModifiedDate: new Date(LastModifiedDate), ARN: this.arn(v.Name) };
  }

  /** What a NextToken is bound to: the operation and the request members that choose the result set. */
  private binding(op: string, members: unknown[]): string {
    return createHash('sha256').update(JSON.stringify([op, ...members])).digest('base64url').slice(0, 16);
  }

  private token(op: string, binding: string, cursor: string | number): string {
    const payload = Buffer.from(JSON.stringify({ o: op, b: binding, c: cursor })).toString('base64url');
    return `${payload}.${this.sign(payload)}`;
  }

  private sign(payload: string): string {
    return createHmac('sha256', this.tokenSecret).update(payload).digest('base64url');
  }

  /** The position a NextToken resumes after; InvalidNextToken for anything this instance did not issue for this request. */
  private cursor(input: Json, op: string, binding: string): string | number | undefined {
    const token = optionalString(input, 'NextToken', 0, 4096);
    if (token === undefined) return undefined;
    const invalid = new SsmServiceError('InvalidNextToken', 'The specified token isn\'t valid.');
    const [payload, signature, extra] = token.split('.');
    if (!payload || !signature || extra !== undefined) throw invalid;
    const expected = Buffer.from(this.sign(payload));
    const given = Buffer.from(signature);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) throw invalid;
    let decoded: unknown;
    try {
      decoded = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      throw invalid;
    }
    if (!isObject(decoded) || decoded['o'] !== op || decoded['b'] !== binding) throw invalid;
    const cursor = decoded['c'];
    if (typeof cursor !== 'string' && typeof cursor !== 'number') throw invalid;
    return cursor;
  }
}

// ---- validation shared by the wire and the direct API ----

function isOperation(op: string): op is Operation {
  return (OPERATIONS as readonly string[]).includes(op);
}

/** Whether a request body carries a NextToken (for faults aimed at a walk's later pages). */
function hasNextToken(raw: Buffer): boolean {
  try {
    const body = JSON.parse(raw.toString('utf8')) as unknown;
    return typeof body === 'object' && body !== null && typeof (body as { NextToken?: unknown }).NextToken === 'string';
  } catch {
    return false;
  }
}

function defaultStatus(code: string): number {
  if (code === 'InternalServerError') return 500;
  if (code === 'ServiceUnavailable') return 503;
  return 400;
}

function notFound(name: string): SsmServiceError {
  return new SsmServiceError('ParameterNotFound', `Parameter ${name} not found.`);
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function epochSeconds(ms: number): number {
  return Math.round(ms) / 1000;
}

/** Code-point order, so paging is stable whatever the locale. */
function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * AWS's naming rules (PutParameter, Name): case-sensitive; only `a-zA-Z0-9_.-` and `/`; no
 * spaces (leading and trailing ones are removed); a hierarchy needs a leading `/`; at most 15
 * levels; no `aws`/`ssm` prefix, case-insensitive. The API reference names no error code for the
 * prefix rule; AWS answers AccessDeniedException "No access to reserved parameter name" for a
 * `/aws…` path and ValidationException otherwise (as reported by Terraform users, and by moto).
 */
function validateName(raw: string, arnLength: (name: string) => number): string {
  const name = raw.trim();
  if (name === '') throw oneError("Value null at 'name' failed to satisfy constraint: Member must not be null");
  if (arnLength(name) > MAX_NAME_LENGTH) {
    throw oneError(`Value '${name}' at 'name' failed to satisfy constraint: Member must have length less than or equal to ${MAX_NAME_LENGTH}`);
  }
  const lower = name.toLowerCase();
  const bare = lower.replace(/^\/+/, '');
  if (bare.startsWith('aws') || bare.startsWith('ssm')) {
    const isPath = (name.match(/\//g) ?? []).length > 1;
    if (lower.startsWith('/aws') && isPath) {
      throw new SsmServiceError('AccessDeniedException', `No access to reserved parameter name: ${name.replace(/^\//, '')}.`);
    }
    throw validation(isPath ? SUB_PATH_MESSAGE : 'Parameter name: can\'t be prefixed with "aws" or "ssm" (case-insensitive).');
  }
  if (!NAME_CHARS.test(name)) throw validation(SUB_PATH_MESSAGE);
  if (name.includes('/') && !name.startsWith('/')) throw validation('Parameter name must be a fully qualified name.');
  if (name.includes('//') || name.endsWith('/')) throw validation(SUB_PATH_MESSAGE);
  const depth = name.replace(/^\//, '').split('/').length;
  if (depth > MAX_DEPTH) {
    throw new SsmServiceError(
      'HierarchyLevelLimitExceededException',
      `A hierarchy can have a maximum of ${MAX_DEPTH} levels. ${name} has ${depth}.`,
    );
  }
  return name;
}

/** "Hierarchies start with a forward slash (/)… maximum of 15 levels" (GetParametersByPath, Path). */
function validatePath(raw: string): string {
  const path = raw.trim();
  if (!path.startsWith('/') || !NAME_CHARS.test(path) || path.includes('//')) throw validation(PATH_MESSAGE);
  const trimmed = path === '/' ? '/' : path.replace(/\/+$/, '');
  if (trimmed !== '/' && trimmed.slice(1).split('/').length > MAX_DEPTH) {
    throw validation(`The path can have a maximum of ${MAX_DEPTH} levels: ${path}`);
  }
  return trimmed;
}

function serialization(key: string, expected: string): SsmServiceError {
  return new SsmServiceError('SerializationException', `Expected ${expected} for member ${key}`);
}

function optionalString(input: Json, key: string, min = 0, max = Infinity): string | undefined {
  const value = input[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw serialization(key, 'a string');
  if (value.length < min) {
    throw oneError(`Value '${value}' at '${memberName(key)}' failed to satisfy constraint: Member must have length greater than or equal to ${min}`);
  }
  if (value.length > max) {
    throw oneError(`Value at '${memberName(key)}' failed to satisfy constraint: Member must have length less than or equal to ${max}`);
  }
  return value;
}

function requiredString(input: Json, key: string, min = 0, max = Infinity): string {
  const value = optionalString(input, key, min, max);
  if (value === undefined) throw oneError(`Value null at '${memberName(key)}' failed to satisfy constraint: Member must not be null`);
  return value;
}

function optionalBoolean(input: Json, key: string): boolean | undefined {
  const value = input[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw serialization(key, 'a boolean');
  return value;
}

function optionalInteger(input: Json, key: string, min: number, max: number): number | undefined {
  const value = input[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw serialization(key, 'an integer');
  if (value < min) {
    throw oneError(`Value '${value}' at '${memberName(key)}' failed to satisfy constraint: Member must have value greater than or equal to ${min}`);
  }
  if (value > max) {
    throw oneError(`Value '${value}' at '${memberName(key)}' failed to satisfy constraint: Member must have value less than or equal to ${max}`);
  }
  return value;
}

function optionalEnum<T extends string>(input: Json, key: string, values: readonly T[]): T | undefined {
  const value = optionalString(input, key);
  if (value === undefined) return undefined;
  if (!(values as readonly string[]).includes(value)) {
    throw oneError(
      `Value '${value}' at '${memberName(key)}' failed to satisfy constraint: Member must satisfy enum value set: [${[...values].reverse().join(', ')}]`,
    );
  }
  return value as T;
}

function requiredStringList(input: Json, key: string, min: number, max: number): string[] {
  const value = input[key];
  if (value === undefined || value === null) {
    throw oneError(`Value null at '${memberName(key)}' failed to satisfy constraint: Member must not be null`);
  }
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw serialization(key, 'a list of strings');
  const list = value as string[];
  if (list.length < min || list.length > max) {
    const bound = list.length < min ? `greater than or equal to ${min}` : `less than or equal to ${max}`;
    throw oneError(`Value '[${list.join(', ')}]' at '${memberName(key)}' failed to satisfy constraint: Member must have length ${bound}`);
  }
  return list;
}

function optionalTags(input: Json): { Key: string; Value: string }[] | undefined {
  const value = input['Tags'];
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value) || !value.every((t) => isObject(t) && typeof t['Key'] === 'string' && typeof t['Value'] === 'string')) {
    throw serialization('Tags', 'a list of {Key, Value}');
  }
  return value as { Key: string; Value: string }[];
}

const FILTER_KEY = /^(tag:.+|Name|Type|KeyId|Path|Label|Tier|DataType)$/;

/** ParameterFilters, validated as GetParametersByPath (Type, KeyId, Label) or DescribeParameters (all but Label) allow them. */
function parseFilters(raw: unknown, mode: 'byPath' | 'describe'): Filter[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw) || !raw.every(isObject)) throw serialization('ParameterFilters', 'a list of ParameterStringFilter');
  const seen = new Set<string>();
  return raw.map((f: Json, index): Filter => {
    const key = f['Key'];
    if (typeof key !== 'string') {
      throw oneError(`Value null at 'parameterFilters.${index + 1}.member.key' failed to satisfy constraint: Member must not be null`);
    }
    if (!FILTER_KEY.test(key)) {
      throw oneError(
        `Value '${key}' at 'parameterFilters.${index + 1}.member.key' failed to satisfy constraint: Member must satisfy regular expression pattern: tag:.+|Name|Type|KeyId|Path|Label|Tier|DataType`,
      );
    }
    const allowed = mode === 'byPath' ? ['Type', 'KeyId', 'Label'] : ['Path', 'Name', 'Type', 'KeyId', 'Tier', 'DataType'];
    // Tag filters are DescribeParameters' only: for GetParametersByPath "the following patterns listed
    // for Key aren't valid: tag, DataType, Name, Path, and Tier" (botocore model, ParameterStringFilter.Key).
    if ((mode === 'byPath' || !key.startsWith('tag:')) && !allowed.includes(key)) {
      throw new SsmServiceError(
        'InvalidFilterKey',
        `The following filter key is not valid: ${key}. Valid filter keys include: [${allowed.join(', ')}].`,
      );
    }
    if (seen.has(key)) {
      throw new SsmServiceError(
        'InvalidFilterKey',
        `The following filter is duplicated in the request: ${key}. A request can contain only one occurrence of a specific filter.`,
      );
    }
    seen.add(key);
    const values = f['Values'] ?? [];
    if (!Array.isArray(values) || values.some((v) => typeof v !== 'string' || v.length === 0 || v.length > 1024)) {
      throw new SsmServiceError('InvalidFilterValue', `The following filter values are not valid for filter key ${key}.`);
    }
    if (values.length === 0 && !key.startsWith('tag:')) {
      throw new SsmServiceError('InvalidFilterValue', `The following filter values are missing : null for filter key ${key}.`);
    }
    const option = typeof f['Option'] === 'string' ? f['Option'] : key === 'Path' ? 'OneLevel' : 'Equals';
    const options = key === 'Path' ? ['Recursive', 'OneLevel'] : key === 'Name' ? ['BeginsWith', 'Equals', 'Contains'] : key === 'Label' ? ['Equals'] : ['BeginsWith', 'Equals'];
    if (!options.includes(option)) {
      throw new SsmServiceError('InvalidFilterOption', `The following filter option is not valid: ${option}. Valid options include: [${options.join(', ')}].`);
    }
    const enumValues = key === 'Type' ? TYPES : key === 'Tier' ? TIERS : undefined;
    const bad = enumValues && option === 'Equals' ? (values as string[]).find((v) => !(enumValues as readonly string[]).includes(v)) : undefined;
    if (bad !== undefined) {
      throw new SsmServiceError('InvalidFilterValue', `The following filter value is not valid: ${bad}. Valid values include: [${enumValues!.join(', ')}].`);
    }
    if (key === 'Path' && (values as string[]).some((v) => !v.startsWith('/') || v.includes('//') || !NAME_CHARS.test(v))) {
      throw validation(PATH_MESSAGE);
    }
    return { Key: key, Option: option, Values: values as string[] };
  });
}

/** DescribeParameters' older `Filters` (Name, Type, KeyId), matched as BeginsWith for Name. */
function parseLegacyFilters(raw: unknown): Filter[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw) || !raw.every(isObject)) throw serialization('Filters', 'a list of ParametersFilter');
  return raw.map((f: Json): Filter => {
    const key = f['Key'];
    const values = f['Values'];
    if (key !== 'Name' && key !== 'Type' && key !== 'KeyId') {
      throw oneError(`Value '${String(key)}' at 'filters.1.member.key' failed to satisfy constraint: Member must satisfy enum value set: [Name, Type, KeyId]`);
    }
    if (!Array.isArray(values) || values.length === 0 || values.some((v) => typeof v !== 'string')) {
      throw new SsmServiceError('InvalidFilterValue', `The following filter values are missing : null for filter key ${key}.`);
    }
    return { Key: key, Option: key === 'Name' ? 'BeginsWith' : 'Equals', Values: values as string[] };
  });
}

/** Whether `version` (the parameter's latest unless given) passes every filter. */
function matchesAll(entry: Entry, filters: readonly Filter[], version: Version = entry.versions.at(-1)!): boolean {
  return filters.every((f) => matches(version, entry.tags, f));
}

function matches(v: Version, tags: ReadonlyMap<string, string>, f: Filter): boolean {
  const compare = (actual: string | undefined, values: readonly string[]) =>
    actual !== undefined &&
    values.some((value) => (f.Option === 'BeginsWith' ? actual.startsWith(value) : f.Option === 'Contains' ? actual.includes(value) : actual === value));
  const slashed = (s: string) => `/${s.replace(/^\/+/, '')}`;
  switch (f.Key) {
    case 'Type':
      return compare(v.Type, f.Values);
    case 'KeyId':
      return compare(v.KeyId, f.Values);
    case 'Tier':
      return compare(v.Tier, f.Values);
    case 'DataType':
      return compare(v.DataType, f.Values);
    case 'Label':
      return v.Labels.some((label) => f.Values.includes(label));
    case 'Name':
      return f.Option === 'Contains' ? compare(v.Name, f.Values) : compare(slashed(v.Name), f.Values.map(slashed));
    case 'Path': {
      const name = slashed(v.Name);
      return f.Values.some((raw) => {
        const path = raw === '/' ? '/' : raw.replace(/\/+$/, '');
        const prefix = path === '/' ? '/' : `${path}/`;
        if (!name.startsWith(prefix)) return false;
        return f.Option === 'Recursive' || !name.slice(prefix.length).includes('/');
      });
    }
    default: {
      const tag = tags.get(f.Key.slice('tag:'.length));
      return tag !== undefined && (f.Values.length === 0 || compare(tag, f.Values));
    }
  }
}
