// Every file the agent writes goes through here: under `root`, and atomically (temp file, fsync,
// rename, fsync of the directory), so a crash or SIGKILL at any point leaves either the old file or
// the new one, never half of either.
import { constants, type Dirent } from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';

/** RootFs.entry's answer. */
export type Entry = { readonly kind: 'file' } | { readonly kind: 'missing' } | { readonly kind: 'dangling'; readonly target: string } | { readonly kind: 'other'; readonly what: string };

export interface WriteOptions {
  /** File mode; the temp file is created with it, so the content is never more readable. */
  readonly mode?: number;
  /** Mode for directories created on the way. */
  readonly dirMode?: number;
  /**
   * false for runtime files under /run: the rename alone keeps readers from ever seeing half a
   * file, and the fsyncs only guard against a power loss, which /run (a tmpfs) does not survive
   * anyway. Default true.
   */
  readonly durable?: boolean;
}

export class RootFs {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** The real path of an absolute path on the target system. */
  resolve(systemPath: string): string {
    if (!path.isAbsolute(systemPath)) throw new Error(`not an absolute path: ${systemPath}`);
    return path.join(this.root, systemPath);
  }

  async read(systemPath: string): Promise<Buffer | undefined> {
    try {
      return await fsp.readFile(this.resolve(systemPath));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async readText(systemPath: string): Promise<string | undefined> {
    return (await this.read(systemPath))?.toString('utf8');
  }

  async exists(systemPath: string): Promise<boolean> {
    try {
      await fsp.lstat(this.resolve(systemPath));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * What is at `systemPath`, links followed: a regular file, nothing, a link that leads nowhere (its
   * target), or another kind of entry (named). Errors other than "not there" are thrown as they are.
   */
  async entry(systemPath: string): Promise<Entry> {
    const file = this.resolve(systemPath);
    let stats;
    try {
      stats = await fsp.stat(file);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      const link = await fsp.lstat(file).catch(() => undefined);
      if (!link?.isSymbolicLink()) return { kind: 'missing' };
      return { kind: 'dangling', target: await fsp.readlink(file).catch(() => 'nothing') };
    }
    if (stats.isFile()) return { kind: 'file' };
    const what = stats.isDirectory() ? 'a directory' : stats.isFIFO() ? 'a FIFO' : stats.isSocket() ? 'a socket' : stats.isCharacterDevice() || stats.isBlockDevice() ? 'a device' : 'something else';
    return { kind: 'other', what };
  }

  /** Whether `systemPath`, its links followed, is a file the agent may execute. */
  async isExecutable(systemPath: string): Promise<boolean> {
    try {
      const file = this.resolve(systemPath);
      await fsp.access(file, constants.X_OK);
      return (await fsp.stat(file)).isFile();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (isNotFound(err) || code === 'ENOTDIR' || code === 'EACCES' || code === 'ELOOP') return false;
      throw err;
    }
  }

  async mkdirp(systemPath: string, mode = 0o755): Promise<void> {
    await fsp.mkdir(this.resolve(systemPath), { recursive: true, mode });
  }

  /** A new directory under `parent` (which must exist), named PREFIX and six random characters, 0700; its path under root. */
  async uniqueDir(parent: string, prefix: string): Promise<string> {
    return path.posix.join(parent, path.basename(await fsp.mkdtemp(path.join(this.resolve(parent), prefix))));
  }

  async writeAtomic(systemPath: string, data: string | Uint8Array, options: WriteOptions = {}): Promise<void> {
    await writeFileAtomic(this.resolve(systemPath), data, options);
  }

  /**
   * Makes what earlier writes left in the page cache durable: each file (the one now at its path),
   * then each of `dirs` and each file's directory, once. For writes made with `durable: false` that
   * something must find on disk after a power loss only from a later point on (configuration.nix
   * naming them), so that their flushes need not come before what can go on without them.
   */
  async sync(files: readonly string[], dirs: readonly string[] = []): Promise<void> {
    await Promise.all(files.map((f) => fsyncFile(this.resolve(f))));
    const all = new Set([...dirs.map((d) => this.resolve(d)), ...files.map((f) => path.dirname(this.resolve(f)))]);
    await Promise.all([...all].map((d) => fsyncDir(d)));
  }

  async list(systemPath: string): Promise<string[]> {
    try {
      return (await fsp.readdir(this.resolve(systemPath))).sort();
    } catch (err) {
      if (isNotFound(err)) return [];
      throw err;
    }
  }

  async remove(systemPath: string): Promise<void> {
    await fsp.rm(this.resolve(systemPath), { recursive: true, force: true });
  }

  /**
   * Removes what a killed writer left of its temporary files under each of `dirs` (and, for those
   * marked `recursive`, their subdirectories): only names of this module's own temp naming whose
   * writer is gone, so another process's write in flight is never touched. Returns what it removed.
   */
  async removeTemporaries(dirs: readonly { readonly path: string; readonly recursive?: boolean }[]): Promise<string[]> {
    const removed: string[] = [];
    const sweep = async (dir: string, recursive: boolean): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (isNotFound(err) || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw err;
      }
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        const writer = temporaryWriter(entry.name);
        if (writer !== undefined && !isAlive(writer)) {
          await fsp.rm(full, { force: true, recursive: true });
          removed.push(full);
        } else if (recursive && entry.isDirectory()) {
          await sweep(full, true);
        }
      }
    };
    for (const dir of dirs) await sweep(this.resolve(dir.path), dir.recursive ?? false);
    return removed;
  }

  async readlink(systemPath: string): Promise<string | undefined> {
    try {
      return await fsp.readlink(this.resolve(systemPath));
    } catch (err) {
      if (isNotFound(err) || (err as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
      throw err;
    }
  }

  /** Points `systemPath` at `target` atomically (a temp link renamed over it). */
  async symlinkAtomic(target: string, systemPath: string): Promise<void> {
    const file = this.resolve(systemPath);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const tmp = temporaryBeside(file);
    await fsp.symlink(target, tmp);
    await fsp.rename(tmp, file);
    await fsyncDir(path.dirname(file));
  }
}

export async function writeFileAtomic(file: string, data: string | Uint8Array, options: WriteOptions = {}): Promise<void> {
  const dir = path.dirname(file);
  await fsp.mkdir(dir, { recursive: true, mode: options.dirMode ?? 0o755 });
  const tmp = temporaryBeside(file);
  const mode = options.mode ?? 0o644;
  const handle = await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await handle.writeFile(data);
    // The umask may have narrowed the mode; a secret's must be exact, a config's readable.
    await handle.chmod(mode);
    if (options.durable !== false) await handle.sync();
  } catch (err) {
    await handle.close();
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  if (options.durable !== false) await fsyncDir(dir);
}

/**
 * `.NAME.tmp-PID-RANDOM` beside `file`: hidden, never matching a `*.nix` glob, and naming its writer
 * so that a later start can tell a dead writer's leftover from a live one's write in flight.
 */
function temporaryBeside(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomHex12()}`);
}

/**
 * 48 random bits: the pid already tells writers in different processes apart, and O_EXCL refuses
 * a name in use, so this needs no cryptographic source (node:crypto stays off the boot path).
 */
function randomHex12(): string {
  return Math.floor(Math.random() * 2 ** 48).toString(16).padStart(12, '0');
}

const TEMPORARY = /^\..+\.tmp-(\d+)-[0-9a-f]{12}$/;

/** The writer's pid when `name` is one of temporaryBeside's names. */
export function temporaryWriter(name: string): number | undefined {
  const m = TEMPORARY.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Whether process `pid` exists (another user's counts). */
export function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, as another user's process.
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

// Linux flushes a file's data and metadata through any descriptor of it, a read-only one too.
async function fsyncPath(file: string, flags: number): Promise<void> {
  const handle = await fsp.open(file, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function fsyncFile(file: string): Promise<void> {
  return fsyncPath(file, constants.O_RDONLY);
}

export function fsyncDir(dir: string): Promise<void> {
  return fsyncPath(dir, constants.O_RDONLY | constants.O_DIRECTORY);
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
