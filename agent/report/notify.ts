// sd_notify from the agent's own process.
//
// Why a small Node-API addon (native/sd_notify.c) and not something off the shelf: Node 20 has no
// unix datagram sockets (`dgram` is UDP only) and no FFI. The `unix-dgram` package copies the
// address into sun_path with strncpy, so it cannot reach abstract (`@name`) sockets, which
// NOTIFY_SOCKET may name; `sd-notify` needs libsystemd-dev to build and reports no errors; spawning
// `systemd-notify` costs a process per message (watchdog pings included) and its datagrams come
// from its own PID, which `NotifyAccess=main` refuses unless it runs as root with `--no-block`.
// The addon sends one datagram per call from this process, so the kernel stamps our PID on it.
import { requireAddon } from '../native.js';

/** Sends one datagram to a unix socket path or `@abstract` name; throws a system error on failure. */
export type NativeSend = (socketPath: string, message: string) => void;

/** The port the agent's reporter uses; every method is a no-op when not started by systemd. */
export interface Notify {
  /** True when systemd asked for notifications (NOTIFY_SOCKET is set). */
  readonly enabled: boolean;
  /** Sends KEY=VALUE lines in one datagram. Newlines in values are flattened to spaces. */
  send(fields: Readonly<Record<string, string | number>>): void;
  ready(status?: string): void;
  status(text: string): void;
  watchdog(): void;
  /** Asks systemd for `usec` more microseconds from now before its start/stop timeout fires. */
  extendTimeout(usec: number): void;
  stopping(status?: string): void;
  /** RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload requires. */
  reloading(): void;
}

export interface NotifyOptions {
  /** Where send failures go; they are never thrown into the caller. */
  readonly onError?: (err: Error) => void;
  /** Loads the native sender; tests inject one. Called at most once, on the first send. */
  readonly load?: () => NativeSend;
}

/** Why a notification could not be delivered; `code` is the errno name when the kernel refused it. */
export class NotifyError extends Error {
  constructor(
    message: string,
    readonly socket: string,
    readonly code: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'NotifyError';
  }
}

function loadAddon(): NativeSend {
  const addon = requireAddon('sd_notify');
  if (typeof addon.send !== 'function') throw new Error('build/Release/sd_notify.node exports no send()');
  return addon.send as NativeSend;
}

// systemd parses each line as one assignment, so a newline in a value would smuggle in another
// (a STATUS containing "\nREADY=1" must not report readiness), and it drops any message that
// holds a NUL byte.
function flatten(value: string): string {
  return value.replace(/[\r\n\0]+/g, ' ');
}

const KEY = /^[A-Z_][A-Z0-9_]*$/;

function encode(fields: Readonly<Record<string, string | number>>): string {
  let message = '';
  for (const [key, value] of Object.entries(fields)) {
    if (!KEY.test(key)) throw new RangeError(`notification field name ${JSON.stringify(key)} is not KEY_LIKE_THIS`);
    if (typeof value === 'number' && !Number.isFinite(value)) {
      throw new RangeError(`notification field ${key} is ${value}, not a finite number`);
    }
    message += `${key}=${flatten(String(value))}\n`;
  }
  return message;
}

function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

class DisabledNotify implements Notify {
  readonly enabled = false;
  send(): void {}
  ready(): void {}
  status(): void {}
  watchdog(): void {}
  extendTimeout(): void {}
  stopping(): void {}
  reloading(): void {}
}

class SocketNotify implements Notify {
  readonly enabled = true;
  readonly #socket: string;
  readonly #onError: (err: Error) => void;
  readonly #load: () => NativeSend;
  /** undefined until the first send; null once loading failed (reported once, then silent). */
  #sender: NativeSend | null | undefined;

  constructor(socket: string, options: NotifyOptions) {
    this.#socket = socket;
    this.#onError = options.onError ?? (() => {});
    this.#load = options.load ?? loadAddon;
  }

  send(fields: Readonly<Record<string, string | number>>): void {
    let message: string;
    try {
      message = encode(fields);
    } catch (err) {
      this.#report(new NotifyError(`sd_notify: ${describe(err)}`, this.#socket, undefined, { cause: err }));
      return;
    }
    if (message === '') return;
    const sender = this.#sender === undefined ? this.#resolveSender() : this.#sender;
    if (sender === null) return;
    try {
      sender(this.#socket, message);
    } catch (err) {
      const code = errnoCode(err);
      this.#report(
        new NotifyError(`sd_notify to ${this.#socket} failed: ${describe(err)}`, this.#socket, code, { cause: err }),
      );
    }
  }

  ready(status?: string): void {
    this.send(status === undefined ? { READY: 1 } : { READY: 1, STATUS: status });
  }

  status(text: string): void {
    this.send({ STATUS: text });
  }

  watchdog(): void {
    this.send({ WATCHDOG: 1 });
  }

  extendTimeout(usec: number): void {
    if (!(usec > 0) || !Number.isFinite(usec)) {
      const message = `sd_notify: EXTEND_TIMEOUT_USEC must be a positive number, got ${usec}`;
      this.#report(new NotifyError(message, this.#socket, undefined));
      return;
    }
    this.send({ EXTEND_TIMEOUT_USEC: Math.ceil(usec) });
  }

  stopping(status?: string): void {
    this.send(status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: status });
  }

  reloading(): void {
    // Type=notify-reload compares MONOTONIC_USEC with the time it sent the reload signal, to tell
    // this reload from an earlier one. process.hrtime reads CLOCK_MONOTONIC on Linux.
    const monotonicUsec = process.hrtime.bigint() / 1000n;
    this.send({ RELOADING: 1, MONOTONIC_USEC: monotonicUsec.toString() });
  }

  #resolveSender(): NativeSend | null {
    if (!this.#socket.startsWith('/') && !this.#socket.startsWith('@')) {
      // systemd may also hand out vsock: addresses (for VMs); the addon speaks only AF_UNIX.
      this.#sender = null;
      const message = `sd_notify: NOTIFY_SOCKET=${this.#socket} is not a unix socket path or @name; notifications are off`;
      this.#report(new NotifyError(message, this.#socket, undefined));
      return null;
    }
    try {
      this.#sender = this.#load();
    } catch (err) {
      this.#sender = null;
      this.#report(
        new NotifyError(
          `sd_notify: NOTIFY_SOCKET is set but the native addon (build/Release/sd_notify.node) could not be loaded, ` +
            `so systemd will get no READY=1 or watchdog pings; build it with \`npm install\` (or \`node-gyp rebuild\`) at the package root: ${describe(err)}`,
          this.#socket,
          errnoCode(err),
          { cause: err },
        ),
      );
    }
    return this.#sender;
  }

  #report(err: Error): void {
    try {
      this.#onError(err);
    } catch {
      // A failing error sink must not turn a lost notification into a crash of the loop.
    }
  }
}

/** A Notify for this process: live when systemd set NOTIFY_SOCKET, otherwise a no-op. */
export function createNotify(env: NodeJS.ProcessEnv, options: NotifyOptions = {}): Notify {
  const socket = env['NOTIFY_SOCKET'];
  if (socket === undefined || socket === '') return new DisabledNotify();
  return new SocketNotify(socket, options);
}
