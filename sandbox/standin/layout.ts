// Where a NixOS machine keeps its state, under a sandbox root, and the atomic writes that keep that
// state consistent however the stand-ins are killed: every file and link is written beside its final
// name and renamed over it, the way Nix itself switches profile links.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';

export interface Layout {
  readonly root: string;
  readonly store: string;
  readonly profiles: string;
  /** The system profile: `system -> system-N-link`. */
  readonly systemProfile: string;
  readonly run: string;
  readonly currentSystem: string;
  readonly bootedSystem: string;
  /** Units that are failed on the running machine, one per line (what `systemctl --failed` shows). */
  readonly failedUnits: string;
  /** The system the boot loader starts by default. */
  readonly bootDefault: string;
  readonly configuration: string;
  readonly channels: string;
}

export function layoutOf(root: string): Layout {
  const r = resolve(root);
  return {
    root: r,
    store: join(r, 'nix/store'),
    profiles: join(r, 'nix/var/nix/profiles'),
    systemProfile: join(r, 'nix/var/nix/profiles/system'),
    run: join(r, 'run'),
    currentSystem: join(r, 'run/current-system'),
    bootedSystem: join(r, 'run/booted-system'),
    failedUnits: join(r, 'run/standin/failed-units'),
    bootDefault: join(r, 'boot/default-system'),
    configuration: join(r, 'etc/nixos/configuration.nix'),
    channels: join(r, 'root/.nix-channels'),
  };
}

export function isWithin(parent: string, child: string): boolean {
  const rel = relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** Directories that exist on the machine only inside the sandbox (the host has no /nix/store). */
const MACHINE_ONLY = ['/nix', '/run', '/boot'];

/**
 * Maps an absolute path as the machine sees it into the sandbox, as a chroot would: a path that is
 * already under root stays; `/nix`, `/run`, `/boot` and anything that exists under root go under
 * root; anything else (a test's own temporary file) is taken as it is. Relative paths resolve
 * against the working directory.
 */
export function inRoot(layout: Layout, path: string): string {
  if (!isAbsolute(path)) return resolve(path);
  const p = resolve(path);
  if (isWithin(layout.root, p)) return p;
  const mapped = join(layout.root, p);
  if (MACHINE_ONLY.some((d) => p === d || p.startsWith(d + sep))) return mapped;
  if (existsSync(mapped)) return mapped;
  return existsSync(p) ? p : mapped;
}

function tempBeside(path: string): string {
  return join(dirname(path), `.${randomBytes(6).toString('hex')}.tmp`);
}

export async function writeFileAtomic(path: string, data: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempBeside(path);
  try {
    await writeFile(tmp, data, { mode });
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Points `path` at `target` in one rename, as Nix's `switchLink` does. */
export async function symlinkAtomic(target: string, path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempBeside(path);
  try {
    await symlink(target, tmp);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function readLinkOrNull(path: string): Promise<string | null> {
  try {
    return await readlink(path);
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

export async function lexists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

export function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Shell-quotes one word for the generated /bin/sh wrappers. */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** A command's output and exit code; the stand-ins write through this so they stay testable. */
export interface Io {
  out(line: string): void;
  err(line: string): void;
}

export const processIo: Io = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
};

/** A usage or machine error that ends the command with an exit code and a message on stderr. */
export class CommandError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}
