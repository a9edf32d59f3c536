// Every file the agent writes goes through here: under `root`, and atomically (temp file, fsync,
// rename, fsync of the directory), so a crash or SIGKILL at any point leaves either the old file or
// the new one, never half of either.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';

export interface WriteOptions {
  /** File mode; the temp file is created with it, so the content is never more readable. */
  readonly mode?: number;
  /** Mode for directories created on the way. */
  readonly dirMode?: number;
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

  async mkdirp(systemPath: string, mode = 0o755): Promise<void> {
    await fsp.mkdir(this.resolve(systemPath), { recursive: true, mode });
  }

  async writeAtomic(systemPath: string, data: string | Uint8Array, options: WriteOptions = {}): Promise<void> {
    await writeFileAtomic(this.resolve(systemPath), data, options);
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
    const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
    await fsp.symlink(target, tmp);
    await fsp.rename(tmp, file);
    await fsyncDir(path.dirname(file));
  }
}

export async function writeFileAtomic(file: string, data: string | Uint8Array, options: WriteOptions = {}): Promise<void> {
  const dir = path.dirname(file);
  await fsp.mkdir(dir, { recursive: true, mode: options.dirMode ?? 0o755 });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${randomBytes(6).toString('hex')}`);
  const mode = options.mode ?? 0o644;
  const handle = await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await handle.writeFile(data);
    // The umask may have narrowed the mode; a secret's must be exact, a config's readable.
    await handle.chmod(mode);
    await handle.sync();
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
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
