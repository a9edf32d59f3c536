// One writer per root. The daemon (`run`), `converge --once` and a `rollback`, `suspend` or
// `resume` acting with no daemon each hold var/lib/nixos-ec2-agent/lock for as long as they run:
// two of them on one root would each take the other's journal entry for a killed agent's (putting
// configuration.nix back, stopping the other's build) and write state.json over each other.
//
// flock(2) (native/flock.c), not a PID file: the kernel drops the lock when its holder dies, however
// it dies, so nothing is ever stale and nothing has to guess whether a PID was reused. The PID
// written into the file only names the holder in the refusal.
import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { TransientError } from './errors.js';
import { requireAddon } from './native.js';
import { STATE_DIR } from './state.js';

export const LOCK_FILE = `${STATE_DIR}/lock`;

/** flock(fd, LOCK_EX | LOCK_NB): true when taken, false when another open file holds it. */
export type TryLock = (fd: number) => boolean;

/** Held until released or until the process ends. */
export interface RootLock {
  readonly file: string;
  /**
   * Why nothing is held: the addon was never built (an install without node-gyp's output). The
   * caller says so and goes on as before flock: only a daemon answering on the control socket
   * keeps a second writer off.
   */
  readonly unheld?: string;
  release(): Promise<void>;
}

/** build/Release/flock.node's tryLock, or why it cannot be had. */
export function loadTryLock(): TryLock | Error {
  try {
    const addon = requireAddon('flock');
    if (typeof addon.tryLock !== 'function') return new Error('build/Release/flock.node exports no tryLock()');
    return addon.tryLock as TryLock;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

/** The root is held by another process (`holder`, when it wrote its PID). */
export class RootBusyError extends TransientError {
  constructor(
    readonly file: string,
    readonly holder: number | undefined,
  ) {
    super(`another nixos-ec2-agent${holder !== undefined ? ` (pid ${holder})` : ''} is working on this root (it holds ${file})`, 'lock', { where: file, ...(holder !== undefined ? { holder } : {}) });
  }
}

/**
 * Whether a process holds the root's lock, looked up without taking it: `held` undefined when this
 * process cannot tell (`why`).
 */
export type LockHolder = { readonly held: true; readonly pid?: number } | { readonly held: false } | { readonly held: undefined; readonly why: string };

/**
 * Who holds the root's lock, from the kernel's table of locks (/proc/locks), never by trying to
 * take it: whoever looks (`status --wait` at boot) would hold it for that moment, and a daemon
 * starting just then is refused the root (lockRoot does not wait) and fails its start.
 *
 * Matched by inode number alone: the device /proc/locks prints is the filesystem's own, which
 * stat(2) does not always give (btrfs subvolumes, overlayfs). Another filesystem's file of the same
 * number, locked at that moment, would be taken for the lock: the looker then waits as if an agent
 * held the root, the old behaviour, never the reverse.
 */
export async function lockHolder(root: string, readLocks: () => Promise<string> = () => fsp.readFile('/proc/locks', 'utf8')): Promise<LockHolder> {
  const file = path.join(path.resolve(root), LOCK_FILE);
  let ino: bigint;
  try {
    ino = (await fsp.stat(file, { bigint: true })).ino;
  } catch (err) {
    // No lock file: no agent has ever taken this root (one starting now makes it first).
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { held: false };
    return { held: undefined, why: `cannot look at ${file}: ${(err as Error).message}` };
  }
  let table: string;
  try {
    table = await readLocks();
  } catch (err) {
    return { held: undefined, why: `cannot read the kernel's locks: ${(err as Error).message}` };
  }
  // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2179896 0 EOF"; a waiter's line ("1: -> FLOCK …") holds nothing.
  for (const line of table.split('\n')) {
    const m = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(-?\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s/.exec(line);
    if (m && BigInt(m[2]!) === ino) {
      const pid = Number(m[1]);
      // A holder in a PID namespace this process cannot see is shown as 0 (or -1).
      return pid > 0 ? { held: true, pid } : { held: true };
    }
  }
  return { held: false };
}

/**
 * Takes the root's lock without waiting, or throws RootBusyError. `pid` is written into the file
 * for the next one's refusal to name.
 */
export async function lockRoot(root: string, pid: number, tryLock: TryLock | Error = loadTryLock()): Promise<RootLock> {
  const file = path.join(path.resolve(root), LOCK_FILE);
  if (tryLock instanceof Error) {
    return { file, unheld: `the flock addon could not be loaded (build it with \`npm install\` at the package root): ${tryLock.message.split('\n')[0]}`, release: async () => undefined };
  }
  // As the state store makes it: the state directory is root's alone.
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  // O_NOFOLLOW: a symlink planted here would have root open, and write a PID into, another file.
  const handle = await fsp.open(file, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  try {
    if (!tryLock(handle.fd)) {
      const text = await handle.readFile('utf8').catch(() => '');
      const holder = /^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined;
      throw new RootBusyError(file, holder);
    }
    await handle.truncate(0);
    await handle.write(`${pid}\n`, 0);
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
  let released = false;
  return {
    file,
    async release() {
      if (released) return;
      released = true;
      // The PID goes first: a refusal must never name a process that has let go.
      await handle.truncate(0).catch(() => undefined);
      await handle.close();
    },
  };
}
