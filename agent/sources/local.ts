// Local inputs the render reads: the image's base configuration and the drop-in directory of
// modules. Only their names and digests enter the desired state; Nix reads the files themselves.
import { TransientError } from '../errors.js';
import type { RootFs } from '../fs.js';
import { sha256Hex } from '../sha256.js';
import type { LocalFile, LocalSnapshot } from '../desired/desired.js';

export async function readLocal(fs: RootFs, baseConfiguration: string, modulesDir: string): Promise<{ snapshot: LocalSnapshot; notes: string[] }> {
  const notes: string[] = [];
  const digest = (bytes: Buffer) => sha256Hex(bytes);
  const base = await readInput(fs, baseConfiguration);
  const modules: LocalFile[] = [];
  const dir = modulesDir.replace(/\/+$/, '');
  for (const name of await fs.list(modulesDir)) {
    if (!name.endsWith('.nix')) continue;
    const file = `${dir}/${name}`;
    if (!isLocalModuleName(name)) {
      notes.push(`local module ${file}: name has characters other than letters, digits, _ . + -; ignored`);
      continue;
    }
    // Only a regular file (or a link to one) is a module Nix can import; reading anything else
    // would fail every pass (a directory), or wait for a writer that never comes (a FIFO).
    const kind = await fileKind(fs, file);
    if (kind === 'gone') continue;
    if (kind !== 'file') {
      notes.push(`local module ${file}: ${kind}; ignored`);
      continue;
    }
    const bytes = await readInput(fs, file);
    if (bytes) modules.push({ path: file, digest: digest(bytes) });
  }
  return {
    snapshot: { baseConfiguration: base ? { path: baseConfiguration, digest: digest(base) } : undefined, modules },
    notes,
  };
}

/** A drop-in module's file name that the render takes (others are noted and ignored). */
export function isLocalModuleName(name: string): boolean {
  return /^[A-Za-z0-9_][A-Za-z0-9_.+-]*\.nix$/.test(name);
}

/** What is at `file`, following links: 'file', 'gone' (removed since it was listed), or why it is not a module. */
async function fileKind(fs: RootFs, file: string): Promise<string> {
  const entry = await fs.entry(file).catch((err: unknown) => {
    throw readError(file, err);
  });
  switch (entry.kind) {
    case 'file':
      return 'file';
    // A name that is still listed but leads nowhere is a link to nothing; else it went away.
    case 'missing':
      return 'gone';
    case 'dangling':
      return `a symbolic link to ${entry.target}, which does not exist`;
    case 'other':
      return `${entry.what}, not a regular file`;
  }
}

/** A local input's bytes; undefined when it does not exist. Any other failure names the file. */
async function readInput(fs: RootFs, file: string): Promise<Buffer | undefined> {
  try {
    return await fs.read(file);
  } catch (err) {
    throw readError(file, err);
  }
}

function readError(file: string, err: unknown): TransientError {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  const why = code === 'EISDIR' ? 'it is a directory' : code;
  return new TransientError(`cannot read local input ${file}: ${why}`, 'local', { where: file, errno: code }, { cause: err });
}
