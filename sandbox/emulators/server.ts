// The one way an emulator listens: a real HTTP server on loopback, port 0 by default, a `url`,
// and a `close()` that drops every open connection so tests never wait on keep-alive sockets.
import http from 'node:http';
import { createServer, type AddressInfo, type Socket } from 'node:net';

export interface ListenOptions {
  readonly host?: string;
  readonly port?: number;
  /**
   * Asked at each new connection: false drops it at once, as a network cut between the instance and
   * the endpoint would (the sandbox's `sandbox-cut-network` marker). Connections already open stay.
   */
  readonly admit?: () => boolean;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly server: http.Server;
  close(): Promise<void>;
}

export async function listen(handler: http.RequestListener, options: ListenOptions = {}): Promise<RunningServer> {
  const host = options.host ?? '127.0.0.1';
  const server = http.createServer(handler);
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    if (options.admit && !options.admit()) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${urlHost}:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Reads a whole request body, refusing more than `limit` bytes. */
export function readBody(req: http.IncomingMessage, limit = 1024 * 1024): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error(`request body over ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** One entry of an emulator's request log: what a test asserts on instead of mocking. */
export interface LoggedRequest {
  readonly at: number;
  readonly method: string;
  readonly path: string;
  /** The operation, where the protocol names one (SSM target, Auto Scaling Action). */
  readonly operation?: string;
  readonly status: number;
}

/** A loopback port free at the moment of asking, for a process that must be told its port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
