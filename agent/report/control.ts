// The local control socket: `status`, `converge --now`, `rollback`, `suspend`, `resume` reach the
// running daemon here. A unix stream socket, mode 0600 in a root-only directory: only root can
// change what the instance runs. One JSON line in, one JSON line out.
import { chmod, lstat, mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

export type ControlOp = 'status' | 'converge' | 'rollback' | 'suspend' | 'resume';
const OPS = new Set<string>(['status', 'converge', 'rollback', 'suspend', 'resume']);
const MAX_REQUEST = 4096;

export type ControlHandler = (op: ControlOp) => Promise<unknown>;

/**
 * The socket's directory must be this user's or root's and writable by no one else: in a directory
 * another user controls, they could put a socket of their own in the daemon's place, and commands
 * would take its answers (a sandbox whose root is too deep for a socket path gets one under /tmp,
 * whose name anyone can work out from the root).
 */
async function checkSocketDirectory(dir: string): Promise<void> {
  const st = await lstat(dir);
  const uid = process.getuid?.();
  const owner = uid === undefined || st.uid === uid || st.uid === 0;
  if (!st.isDirectory() || !owner || (st.mode & 0o022) !== 0) {
    throw new Error(`${dir}, the control socket's directory, is ${st.isDirectory() ? `owned by uid ${st.uid} with mode ${(st.mode & 0o7777).toString(8)}` : 'not a directory'}: it must be root's or this user's, writable by no one else`);
  }
}

export class ControlServer {
  private server: net.Server | undefined;

  constructor(
    private readonly socketPath: string,
    private readonly handler: ControlHandler,
  ) {}

  async start(): Promise<void> {
    await mkdir(path.dirname(this.socketPath), { recursive: true, mode: 0o755 });
    await checkSocketDirectory(path.dirname(this.socketPath));
    // A socket left by a killed agent would make listen fail with EADDRINUSE.
    await rm(this.socketPath, { force: true });
    const server = net.createServer((socket) => this.serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chmod(this.socketPath, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.socketPath, { force: true });
  }

  private serve(socket: net.Socket): void {
    let buffer = '';
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      if (buffer.length > MAX_REQUEST) {
        socket.end(`${JSON.stringify({ ok: false, error: 'request too large' })}\n`);
        return;
      }
      const newline = buffer.indexOf('\n');
      if (newline < 0) return;
      const line = buffer.slice(0, newline);
      socket.removeAllListeners('data');
      // The request is in; its answer may take as long as a rebuild (`converge --now`).
      socket.setTimeout(0);
      let op: unknown;
      try {
        op = (JSON.parse(line) as { op?: unknown }).op;
      } catch {
        op = undefined;
      }
      if (typeof op !== 'string' || !OPS.has(op)) {
        socket.end(`${JSON.stringify({ ok: false, error: `unknown request; ops are ${[...OPS].join(', ')}` })}\n`);
        return;
      }
      this.handler(op as ControlOp).then(
        (answer) => socket.end(`${JSON.stringify(answer)}\n`),
        (err: unknown) => socket.end(`${JSON.stringify({ ok: false, error: (err as Error).message })}\n`),
      );
    });
  }
}

/**
 * How long a `status` request waits for the daemon, which answers it from memory at once: for
 * `status` itself, and for a command that must know whether a daemon runs on the root before it
 * acts. The client's default wait is a rebuild's (`converge --now`): a daemon that takes the
 * connection and says nothing (stopped, or its loop wedged until the watchdog restarts it) would
 * hold those ten minutes.
 */
export const STATUS_ANSWER_MS = 5_000;

/**
 * The daemon took the request and gave no answer within the client's wait: it is busy (a request
 * that changes the state waits for the pass under way to end) and may still carry it out.
 */
export class NoAnswerError extends Error {
  constructor(
    readonly socketPath: string,
    readonly waitedMs: number,
  ) {
    super(`no answer from ${socketPath} within ${waitedMs >= 1_000 ? `${Math.round(waitedMs / 1_000)} s` : `${waitedMs} ms`}`);
    this.name = 'NoAnswerError';
  }
}

export class ControlClient {
  constructor(
    private readonly socketPath: string,
    private readonly timeoutMs = 600_000,
  ) {}

  async request(op: ControlOp): Promise<unknown> {
    // A directory that is not there holds no daemon: connecting says so (ENOENT), as before.
    await checkSocketDirectory(path.dirname(this.socketPath)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(this.socketPath);
      let data = '';
      let sent = false;
      socket.setTimeout(this.timeoutMs, () => {
        socket.destroy();
        reject(sent ? new NoAnswerError(this.socketPath, this.timeoutMs) : new Error(`no answer from ${this.socketPath}`));
      });
      socket.on('connect', () => socket.write(`${JSON.stringify({ op })}\n`, () => (sent = true)));
      socket.on('data', (chunk) => (data += chunk.toString('utf8')));
      socket.on('error', reject);
      socket.on('end', () => {
        try {
          resolve(JSON.parse(data));
        } catch {
          reject(new Error(`bad answer from ${this.socketPath}`));
        }
      });
    });
  }
}
