// `render --out DIR`: the tree a render would write, put where a person can build or read it. It
// appears only once every file parsed, so a refused render leaves DIR as it was; a new DIR appears
// whole by one rename, and files in an existing DIR are each replaced by a rename.
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import { InvalidInputError, TransientError } from '../errors.js';
import { fsyncDir, writeFileAtomic } from '../fs.js';
import { CONFIGURATION_NIX } from './render.js';

export interface OutFile {
  /** Absolute path on the target system; written at the same path under DIR. */
  readonly path: string;
  readonly text: string;
}

/**
 * Kernel file systems where a directory cannot be made (or where Node's recursive mkdir retries for
 * ever on the ENOENT it gets, as in /proc), by their statfs magic numbers.
 */
const KERNEL_FILESYSTEMS: ReadonlyMap<number, string> = new Map([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x62656570, 'configfs'],
  [0xcafe4a11, 'bpf'],
  [0x6165676c, 'pstore'],
  [0xde5e81e4, 'efivarfs'],
]);

export class OutDir {
  private placed = false;

  private constructor(
    /** As given, to name in messages. */
    private readonly given: string,
    readonly dir: string,
    private readonly existed: boolean,
    /** Where the tree is written first: beside a new DIR, inside an existing one (same file system either way). */
    private readonly staging: string,
  ) {}

  /**
   * Checks that DIR can take the tree, before the sources are read: a DIR that cannot be a directory
   * is bad usage (exit 2), known before any network call. A new DIR's parent must already be a
   * directory: nothing is made on the way to it. Makes the staging directory, which also proves the
   * place writable; discard() removes it.
   */
  static async open(out: string): Promise<OutDir> {
    if (out === '') throw new InvalidInputError('an empty path names no directory', '--out');
    const dir = path.resolve(out);
    const found = await statOrUndefined(dir).catch((err: unknown) => {
      throw new InvalidInputError(`cannot use ${out}: ${(err as Error).message}`, '--out');
    });
    if (found && !found.isDirectory()) throw new InvalidInputError(`${out} is not a directory`, '--out');
    const parent = path.dirname(dir);
    if (!found) {
      const above = await statOrUndefined(parent).catch((err: unknown) => {
        throw new InvalidInputError(`cannot use ${out}: its parent ${parent}: ${(err as Error).message}`, '--out');
      });
      if (!above) throw new InvalidInputError(`cannot make ${out}: its parent ${parent} does not exist`, '--out');
      if (!above.isDirectory()) throw new InvalidInputError(`cannot make ${out}: its parent ${parent} is not a directory`, '--out');
    }
    const home = found ? dir : parent;
    const kernel = KERNEL_FILESYSTEMS.get((await fsp.statfs(home)).type);
    if (kernel) throw new InvalidInputError(`cannot write in ${home}: it is on ${kernel}, a kernel file system`, '--out');
    const staging = found ? path.join(dir, `.render${suffix()}`) : path.join(parent, `.${path.basename(dir)}${suffix()}`);
    try {
      await fsp.mkdir(staging, { mode: 0o755 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new InvalidInputError(`cannot write in ${home}: ${code}`, '--out', { errno: code });
    }
    return new OutDir(out, dir, found !== undefined, staging);
  }

  /** Writes `files` under DIR: staged first, then put in place, configuration.nix last. */
  async write(files: readonly OutFile[]): Promise<void> {
    const ordered = [...files.filter((f) => f.path !== CONFIGURATION_NIX), ...files.filter((f) => f.path === CONFIGURATION_NIX)];
    try {
      for (const f of ordered) await writeFileAtomic(path.join(this.staging, f.path), f.text);
      if (!this.existed) {
        await fsp.rename(this.staging, this.dir);
        this.placed = true;
        await fsyncDir(path.dirname(this.dir));
        return;
      }
      // DIR's other files stay; each of ours replaces its namesake at once.
      for (const f of ordered) {
        await makeDirs(this.dir, path.dirname(f.path));
        await fsp.rename(path.join(this.staging, f.path), path.join(this.dir, f.path));
      }
    } catch (err) {
      const { code, path: where } = err as NodeJS.ErrnoException;
      if (typeof code !== 'string') throw err;
      throw new TransientError(`cannot write the render under ${this.given}${where ? ` (${where})` : ''}: ${code}`, 'fs', { where: where ?? this.dir, errno: code }, { cause: err });
    }
  }

  /** Removes the staging directory and what is left in it; nothing once the tree was put in place. */
  async discard(): Promise<void> {
    if (!this.placed) await fsp.rm(this.staging, { recursive: true, force: true });
  }
}

async function statOrUndefined(file: string) {
  try {
    return await fsp.stat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Makes `rel`'s directories under `base` one at a time: Node's recursive mkdir retries for ever
 * where a directory cannot be made but its parent exists.
 */
async function makeDirs(base: string, rel: string): Promise<void> {
  let at = base;
  for (const part of rel.split('/').filter((p) => p !== '')) {
    at = path.join(at, part);
    await fsp.mkdir(at, { mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
}

/** `.tmp-PID-RANDOM`: which process left a staging directory a kill interrupted. */
function suffix(): string {
  return `.tmp-${process.pid}-${Math.floor(Math.random() * 2 ** 48).toString(16).padStart(12, '0')}`;
}
