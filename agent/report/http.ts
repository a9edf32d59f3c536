// HTTP endpoints for load balancers, Auto Scaling health checks and Prometheus: /healthz, /readyz,
// /status, /metrics. Read-only: every answer comes from an in-memory snapshot (a getter), never
// from awaiting the reconciler, so a pass that runs for an hour does not stall a health check, and
// nothing here can change state. Small timeouts keep slow or idle clients from holding sockets.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { InvalidInputError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Status } from '../status.js';

const ALLOW = 'GET, HEAD';

export interface HttpTimeouts {
  /** A connection that sends nothing for this long is closed. */
  readonly requestMs: number;
  /**
   * A request's headers must arrive within this of the connection opening, or of the previous
   * response's end and the keep-alive wait; at most requestMs.
   */
  readonly headersMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveMs: number;
}

export const DEFAULT_TIMEOUTS: HttpTimeouts = { requestMs: 5_000, headersMs: 5_000, keepAliveMs: 5_000 };

/**
 * Node checks its own request and headers timeouts from an interval that runs for the server's
 * whole life, whether a client is connected or not: at 1 s, to catch a slow client within a second
 * of its timeout, it was a third of the idle daemon's CPU (`npm run bench -- watch`). Those checks
 * are off (timeouts 0, the interval the longest a timer holds); each connection carries its own
 * deadline instead (guard), a timer that exists only while the connection is open.
 */
const NODE_CHECKS_OFF = { requestTimeout: 0, headersTimeout: 0, connectionsCheckingInterval: 2 ** 31 - 1 } as const;
const REQUEST_TIMEOUT = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

export interface HttpServerOptions {
  /** host:port; `[v6]:port` for IPv6; port 0 binds a free port (see `address`). */
  readonly listen: string;
  /** The current Status; called per request, must not block. */
  readonly status: () => Status;
  /**
   * Whether the agent knows a good generation (before the first pass ends, the image's booted
   * system is one, though Status does not name it yet). Defaults to Status having a lastGood.
   */
  readonly hasGoodGeneration?: () => boolean;
  /** The Prometheus exposition; /metrics answers 404 without it. */
  readonly metrics?: () => Promise<{ contentType: string; body: string }>;
  readonly log?: Logger;
  readonly timeouts?: Partial<HttpTimeouts>;
}

export interface Verdict {
  readonly ok: boolean;
  readonly reason: string;
}

/** /healthz: the instance runs a good generation (what ELB and Auto Scaling health checks want). */
export function healthOf(status: Status, hasGoodGeneration: boolean): Verdict {
  if (status.noGoodGeneration) return { ok: false, reason: `no good generation runs: ${status.reasons[0] ?? status.message}` };
  if (!hasGoodGeneration) return { ok: false, reason: 'no good generation is known yet' };
  return { ok: true, reason: `running a good generation (${status.condition})` };
}

/** /readyz: converged to the current desired state. */
export function readinessOf(status: Status): Verdict {
  // A poll that has found no change leaves the condition as it was (see the reconciler), so
  // readiness follows the condition alone.
  if (status.condition === 'converged') return { ok: true, reason: status.message };
  if (!status.firstConvergenceDone) return { ok: false, reason: `the first convergence has not ended (${status.phase}): ${status.message}` };
  return { ok: false, reason: `${status.condition}: ${status.message}` };
}

/** Parses `host:port`, `[v6]:port` or `:port` (all interfaces). */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new InvalidInputError(`${JSON.stringify(listen)} is not host:port (e.g. 0.0.0.0:9731, [::]:9731, 127.0.0.1:0)`, 'http.listen');
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export class HttpServer {
  private server: Server | undefined;
  private bound: { host: string; port: number; url: string } | undefined;
  private readonly timeouts: HttpTimeouts;
  private readonly deadlines = new WeakMap<Socket, { met(): void; answered(): void }>();

  constructor(private readonly options: HttpServerOptions) {
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    parseListen(options.listen);
  }

  /** The bound address, once started: the real port when `listen` asked for port 0. */
  get address(): { host: string; port: number; url: string } | undefined {
    return this.bound;
  }

  async start(): Promise<{ host: string; port: number; url: string }> {
    if (this.bound) return this.bound;
    const { host, port } = parseListen(this.options.listen);
    const t = this.timeouts;
    const server = createServer(
      {
        ...NODE_CHECKS_OFF,
        keepAliveTimeout: t.keepAliveMs,
        // Health checks send a handful of headers; a flood of them is refused with 431.
        maxHeaderSize: 8 * 1024,
      },
      (req, res) => this.handle(req, res),
    );
    server.maxHeadersCount = 50;
    // A client that connects and sends nothing is closed by the socket's inactivity timeout; one
    // that sends a byte now and then, never finishing its request, by its deadline.
    server.timeout = t.requestMs;
    server.on('connection', (socket: Socket) => this.guard(socket));
    // A connection may make a few requests, not hold the socket forever with an endless stream.
    server.maxRequestsPerSocket = 100;
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable || (err.code === 'ECONNRESET' && !socket.bytesWritten)) {
        socket.destroy();
        return;
      }
      const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.options.log?.error({ event: 'http.error', err: err.message }, `HTTP server: ${err.message}`));
    this.server = server;
    const addr = server.address();
    const boundPort = typeof addr === 'object' && addr ? addr.port : port;
    const boundHost = typeof addr === 'object' && addr ? addr.address : host;
    const urlHost = boundHost.includes(':') ? `[${boundHost}]` : boundHost;
    this.bound = { host: boundHost, port: boundPort, url: `http://${urlHost}:${boundPort}` };
    // Said at start, so an operator reading the log knows who may reach /status: the wildcard is
    // the default, for the load balancer's health checks (README: the load balancer).
    const everywhere = boundHost === '0.0.0.0' || boundHost === '::';
    this.options.log?.info(
      { event: 'http.listening', url: this.bound.url, allAddresses: everywhere },
      `serving /healthz /readyz /status /metrics on ${everywhere ? `every address, port ${boundPort} (as far as the firewall and security group allow)` : this.bound.url}`,
    );
    return this.bound;
  }

  /** Stops listening and drops every open connection, idle or not. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    this.bound = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }

  /**
   * A connection's deadline: its request's headers within headersMs of its opening, or of the
   * previous response's end and the keep-alive wait. What it has sent by then and not made a
   * request of is answered 408, as Node's own check answers; a connection that sent nothing is
   * closed without a word.
   */
  private guard(socket: Socket): void {
    const { headersMs, keepAliveMs } = this.timeouts;
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number) => {
      clearTimeout(timer);
      const read = socket.bytesRead;
      timer = setTimeout(() => {
        if (socket.bytesRead > read && socket.writable) socket.end(REQUEST_TIMEOUT);
        else socket.destroy();
      }, ms);
      timer.unref();
    };
    arm(Math.min(headersMs, this.timeouts.requestMs));
    this.deadlines.set(socket, { met: () => clearTimeout(timer), answered: () => arm(keepAliveMs + headersMs) });
    socket.once('close', () => clearTimeout(timer));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const deadline = this.deadlines.get(req.socket);
    deadline?.met();
    res.once('finish', () => deadline?.answered());
    // Never read a body: nothing here takes input. Drain it so the connection stays usable.
    req.resume();
    let pathname: string;
    try {
      pathname = new URL(req.url ?? '', 'http://agent.invalid').pathname;
      if (!req.url?.startsWith('/')) throw new Error('not an origin-form request target');
    } catch {
      send(res, req, 400, 'text/plain; charset=utf-8', 'bad request target\n');
      return;
    }
    const known = pathname === '/healthz' || pathname === '/readyz' || pathname === '/status' || pathname === '/metrics';
    if (!known) {
      send(res, req, 404, 'text/plain; charset=utf-8', 'not found: /healthz /readyz /status /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', ALLOW);
      send(res, req, 405, 'text/plain; charset=utf-8', `method ${req.method ?? ''} not allowed; nothing over HTTP changes state\n`);
      return;
    }
    try {
      switch (pathname) {
        case '/healthz': {
          const status = this.options.status();
          const verdict = healthOf(status, this.options.hasGoodGeneration ? this.options.hasGoodGeneration() : status.lastGood !== undefined);
          sendVerdict(res, req, verdict, status);
          return;
        }
        case '/readyz': {
          const status = this.options.status();
          sendVerdict(res, req, readinessOf(status), status);
          return;
        }
        case '/status':
          send(res, req, 200, 'application/json; charset=utf-8', `${JSON.stringify(this.options.status(), null, 2)}\n`);
          return;
        case '/metrics':
          this.serveMetrics(req, res);
          return;
      }
    } catch (err) {
      this.options.log?.error({ event: 'http.handler-error', path: pathname, err: (err as Error).message }, `HTTP ${pathname}: ${(err as Error).message}`);
      send(res, req, 500, 'text/plain; charset=utf-8', 'internal error\n');
    }
  }

  private serveMetrics(req: IncomingMessage, res: ServerResponse): void {
    const metrics = this.options.metrics;
    if (!metrics) {
      send(res, req, 404, 'text/plain; charset=utf-8', 'metrics are off\n');
      return;
    }
    metrics().then(
      ({ contentType, body }) => send(res, req, 200, contentType, body),
      (err: unknown) => {
        this.options.log?.error({ event: 'http.metrics-error', err: (err as Error).message }, `metrics: ${(err as Error).message}`);
        send(res, req, 500, 'text/plain; charset=utf-8', 'metrics unavailable\n');
      },
    );
  }
}

function sendVerdict(res: ServerResponse, req: IncomingMessage, verdict: Verdict, status: Status): void {
  const body = { ok: verdict.ok, reason: verdict.reason, condition: status.condition, phase: status.phase };
  send(res, req, verdict.ok ? 200 : 503, 'application/json; charset=utf-8', `${JSON.stringify(body)}\n`);
}

function send(res: ServerResponse, req: IncomingMessage, code: number, contentType: string, body: string): void {
  if (res.headersSent || res.destroyed) return;
  const bytes = Buffer.from(body, 'utf8');
  res.statusCode = code;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', bytes.length);
  res.setHeader('Cache-Control', 'no-store');
  // HEAD: the same headers, no body.
  res.end(req.method === 'HEAD' ? undefined : bytes);
}
