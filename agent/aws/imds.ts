// IMDSv2, and nothing else: no silent fall back to IMDSv1.
//
// `@aws-sdk/ec2-metadata-service`'s MetadataService falls short in four ways that matter on every
// instance of a fleet, so this client sends its requests with node:http itself, as the SDK's own
// instance-credentials reader does (@smithy/credential-provider-imds, remoteProvider/httpRequest):
// - it builds a new HTTP handler, so a new connection, inside every `request()`; here one
//   keep-alive agent keeps one idle socket, so the termination checks every few seconds reuse it
//   instead of paying a TCP handshake each time (measured by `npm run bench -- watch`, idle CPU);
// - it PUTs a new token before every GET; here one token is cached until shortly before its TTL
//   ends and dropped on a 401 (as cloud-init's `_refresh_stale_aws_token_cb`);
// - it decodes every body as UTF-8, corrupting gzip'd user data; user data is read as bytes here;
// - its token errors lose the status code, and a 403 switches it to IMDSv1 for good; here the PUT
//   is ours, a 403 (IMDS disabled) fails at once with that reason, and it always runs with a
//   timeout (it has none by default).
// Nothing of the SDK's HTTP stack is loaded for it: IMDS is read first thing at boot, and that stack
// (its protocols, schemas, node:https and TLS) is ~100 KiB that an instance whose SSM reads are off
// would compile only for this (`npm run bench -- boot`).
import { Agent, request } from 'node:http';
import { ImdsDisabledError, InvalidInputError, TransientError } from '../errors.js';
import type { Clock } from '../ports.js';

const DEFAULT_ENDPOINT = 'http://169.254.169.254';
const TOKEN_TTL_SECONDS = 21_600;
/** Refresh this long before the TTL ends, so a token never expires between check and use. */
const TOKEN_REFRESH_MARGIN_MS = 60_000;

export interface ImdsOptions {
  readonly clock: Clock;
  /** Defaults to AWS_EC2_METADATA_SERVICE_ENDPOINT, then the link-local address. */
  readonly endpoint?: string;
  /** The agent's environment (never read from the process here). */
  readonly env: NodeJS.ProcessEnv;
  readonly timeoutMs?: number;
  /** Retries after the first attempt, for connection errors, timeouts, 5xx and 429. */
  readonly retries?: number;
  /** Base of the exponential backoff; each wait is full-jittered in [0, base × 2^n]. */
  readonly backoffBaseMs?: number;
  readonly random?: () => number;
  readonly tokenTtlSeconds?: number;
}

/** What the agent reads of an instance's identity. */
export interface InstanceIdentity {
  readonly instanceId: string;
  readonly region: string;
  readonly availabilityZone: string;
  readonly instanceType: string;
  readonly amiId: string;
  readonly accountId: string;
}

/** The operations the rest of the agent uses; a fleet simulation can hand in its own. */
export interface Imds {
  get(path: string): Promise<string | undefined>;
  getBytes(path: string): Promise<Buffer | undefined>;
  identity(): Promise<InstanceIdentity>;
  /** Whether IMDS answers a new connection (verify/reach.ts); absent where it cannot be asked. */
  reach?(timeoutMs: number): Promise<void>;
}

interface Response {
  readonly status: number;
  readonly body: Buffer;
}

class HttpStatusError extends Error {
  constructor(readonly status: number) {
    super(`HTTP ${status}`);
  }
}

export class ImdsClient implements Imds {
  readonly endpoint: string;
  private readonly url: URL;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffBaseMs: number;
  private readonly random: () => number;
  private readonly ttlSeconds: number;
  private token: { value: string; expiresAt: number } | undefined;
  private tokenInFlight: Promise<string> | undefined;
  private identityCache: Promise<InstanceIdentity> | undefined;

  constructor(private readonly options: ImdsOptions) {
    const env = options.env;
    this.endpoint = (options.endpoint ?? env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
    this.url = new URL(this.endpoint);
    // IMDS is plain HTTP on a link-local (or IPv6 ULA) address; there is no TLS endpoint to reach.
    if (this.url.protocol !== 'http:') {
      const where = options.endpoint !== undefined ? 'imds.endpoint' : 'AWS_EC2_METADATA_SERVICE_ENDPOINT';
      throw new InvalidInputError(`the IMDS endpoint must be http://, not ${this.url.protocol}//`, where);
    }
    this.timeoutMs = options.timeoutMs ?? 1_000;
    // A socket the server closed while idle is dropped by the agent; one closed in the same instant
    // as a request goes out fails that request as a connection error, which the retries absorb.
    // Free sockets are unref'd by Node, so the kept one never holds a stopping process open.
    this.agent = new Agent({ keepAlive: true, maxFreeSockets: 1 });
    this.retries = options.retries ?? 5;
    this.backoffBaseMs = options.backoffBaseMs ?? 200;
    this.random = options.random ?? Math.random;
    this.ttlSeconds = options.tokenTtlSeconds ?? TOKEN_TTL_SECONDS;
  }

  /** A text item, or undefined when IMDS answers 404 (not set for this instance). */
  async get(path: string): Promise<string | undefined> {
    return (await this.getBytes(path))?.toString('utf8');
  }

  /** A binary item (user data), byte for byte. Every request carries a token: there is no IMDSv1 path. */
  async getBytes(path: string): Promise<Buffer | undefined> {
    return this.withRetries(path, (token) => this.send('GET', path, { 'x-aws-ec2-metadata-token': token }));
  }

  identity(): Promise<InstanceIdentity> {
    this.identityCache ??= this.readIdentity().catch((err: unknown) => {
      this.identityCache = undefined;
      throw err;
    });
    return this.identityCache;
  }

  /**
   * Resolves when IMDS answers a token PUT over a connection of its own, whatever the status: the
   * question is whether the instance still reaches it, not what it says. The kept-alive socket of
   * every other request would hide a network the last switch broke (a firewall lets an established
   * connection on; an address dropped with a restarted DHCP client leaves the socket to time out
   * later), so this one is never pooled.
   */
  async reach(timeoutMs: number): Promise<void> {
    await this.send('PUT', 'latest/api/token', { 'x-aws-ec2-metadata-token-ttl-seconds': '60' }, { agent: false, timeoutMs });
  }

  private async readIdentity(): Promise<InstanceIdentity> {
    const text = await this.get('latest/dynamic/instance-identity/document');
    if (text === undefined) throw new TransientError('instance identity document is missing', 'imds');
    let doc: Record<string, unknown>;
    try {
      doc = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new TransientError('instance identity document is not JSON', 'imds');
    }
    const field = (name: string): string => {
      const value = doc[name];
      if (typeof value !== 'string' || value === '') {
        throw new TransientError(`instance identity document has no ${name}`, 'imds');
      }
      return value;
    };
    return {
      instanceId: field('instanceId'),
      region: field('region'),
      availabilityZone: field('availabilityZone'),
      instanceType: field('instanceType'),
      amiId: field('imageId'),
      accountId: field('accountId'),
    };
  }

  /**
   * One read, with the retry policy of cloud-init's Ec2 datasource: 401 drops the token and
   * tries again; 403 is IMDS turned off (fail now); 404 is "not set"; other 4xx are final;
   * connection errors, timeouts, 429 and 5xx back off and retry until the budget is spent. A status
   * is an answer, not an error: the termination check reads a 404 every few seconds, and making an
   * Error (its stack trace) for each was a tenth of the idle daemon's CPU.
   */
  private async withRetries(path: string, read: (token: string) => Promise<Response>): Promise<Buffer | undefined> {
    let lastProblem = '';
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      if (attempt > 0) await this.backoff(attempt);
      let token: string;
      try {
        token = await this.currentToken();
      } catch (err) {
        if (err instanceof ImdsDisabledError || err instanceof InvalidInputError) throw err;
        lastProblem = `token: ${describe(err)}`;
        continue;
      }
      let response: Response;
      try {
        response = await read(token);
      } catch (err) {
        lastProblem = `${path}: ${describe(err)}`;
        continue;
      }
      const { status } = response;
      if (status === 200) return response.body;
      if (status === 404) return undefined;
      if (status === 401) {
        this.token = undefined;
        lastProblem = `${path}: 401 (token refused)`;
        continue;
      }
      if (status === 403) throw disabled(path);
      if (status === 429 || status >= 500) {
        lastProblem = `${path}: HTTP ${status}`;
        continue;
      }
      throw new TransientError(`IMDS answered ${status} for ${path}`, 'imds', { path, status });
    }
    throw new TransientError(`IMDS unreachable after ${this.retries + 1} attempts (${lastProblem})`, 'imds', {
      path,
      endpoint: this.endpoint,
    });
  }

  private async currentToken(): Promise<string> {
    const now = this.options.clock.now();
    if (this.token && now < this.token.expiresAt) return this.token.value;
    this.tokenInFlight ??= this.fetchToken().finally(() => {
      this.tokenInFlight = undefined;
    });
    return this.tokenInFlight;
  }

  private async fetchToken(): Promise<string> {
    const requestedAt = this.options.clock.now();
    const response = await this.send('PUT', 'latest/api/token', {
      'x-aws-ec2-metadata-token-ttl-seconds': String(this.ttlSeconds),
    });
    if (response.status === 403) throw disabled('latest/api/token');
    if (response.status === 400) {
      throw new InvalidInputError(`token TTL ${this.ttlSeconds} refused (400)`, 'imds token request');
    }
    if (response.status !== 200) throw new HttpStatusError(response.status);
    const value = response.body.toString('utf8').trim();
    if (!value) throw new Error('empty token');
    const ttlMs = this.ttlSeconds * 1_000;
    this.token = { value, expiresAt: requestedAt + Math.max(ttlMs / 2, ttlMs - TOKEN_REFRESH_MARGIN_MS) };
    return value;
  }

  /**
   * One request, the whole of it (connect, send, answer, body) bounded by the timeout: a server
   * that accepts and never answers, or answers slowly, fails as a timeout the retries absorb. The
   * bound is a timer cleared with the answer: an AbortSignal.timeout would still fire a second
   * later, making a DOMException and an abort event for every request, a termination check every
   * few seconds included.
   */
  private send(method: 'GET' | 'PUT', path: string, headers: Record<string, string>, how: { agent?: false; timeoutMs?: number } = {}): Promise<Response> {
    const timeoutMs = how.timeoutMs ?? this.timeoutMs;
    return new Promise((resolve, reject) => {
      const req = request(
        {
          agent: how.agent ?? this.agent,
          method,
          hostname: this.url.hostname.replace(/^\[|\]$/g, ''),
          port: this.url.port || 80,
          path: `${this.url.pathname.replace(/\/+$/, '')}/${path.replace(/^\/+/, '')}`,
          headers,
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => {
            clearTimeout(timer);
            resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks) });
          });
          // A connection lost mid-body ends in an error here (ECONNRESET, "aborted").
          response.on('error', fail);
        },
      );
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        req.destroy();
      }, timeoutMs);
      // As AbortSignal.timeout's: a request in flight keeps the process alive by its socket alone.
      timer.unref();
      const fail = (err: Error): void => {
        clearTimeout(timer);
        reject(timedOut ? new Error(`no answer within ${timeoutMs} ms`) : err);
      };
      req.on('error', fail);
      req.end();
    });
  }

  private async backoff(attempt: number): Promise<void> {
    const ceiling = Math.min(10_000, this.backoffBaseMs * 2 ** (attempt - 1));
    await this.options.clock.sleep(this.random() * ceiling);
  }
}

function disabled(path: string): ImdsDisabledError {
  return new ImdsDisabledError(
    'IMDS answered 403 Forbidden: the instance metadata endpoint is disabled (HttpEndpoint=disabled); enable it with aws ec2 modify-instance-metadata-options',
    { path },
  );
}

function describe(err: unknown): string {
  return err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : String(err);
}
