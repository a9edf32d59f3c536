// Nix profiles as `nix-env -p PROFILE` keeps them: `PROFILE-N-link` siblings pointing into the store,
// and PROFILE a relative link to the current one. A generation's time is its link's mtime.
import { lstat, readdir, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CommandError, type Io, type Layout, inRoot, isMissing, readLinkOrNull, symlinkAtomic } from './layout.js';

export interface Generation {
  readonly number: number;
  readonly link: string;
  /** Where the generation link points (a store path). */
  readonly target: string;
  readonly mtimeMs: number;
  readonly current: boolean;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function linkName(profile: string, n: number): string {
  return `${basename(profile)}-${n}-link`;
}

export async function currentGenerationNumber(profile: string): Promise<number | null> {
  const target = await readLinkOrNull(profile);
  if (target === null) return null;
  const m = new RegExp(`^${escapeRegExp(basename(profile))}-(\\d+)-link$`).exec(basename(target));
  return m ? Number(m[1]) : null;
}

export async function listGenerations(profile: string): Promise<Generation[]> {
  const dir = dirname(profile);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isMissing(err)) return [];
    throw err;
  }
  const current = await currentGenerationNumber(profile);
  const pattern = new RegExp(`^${escapeRegExp(basename(profile))}-(\\d+)-link$`);
  const gens: Generation[] = [];
  for (const name of names) {
    const m = pattern.exec(name);
    if (!m) continue;
    const link = join(dir, name);
    const target = await readLinkOrNull(link);
    if (target === null) continue;
    const st = await lstat(link);
    const number = Number(m[1]);
    gens.push({ number, link, target, mtimeMs: st.mtimeMs, current: number === current });
  }
  return gens.sort((a, b) => a.number - b.number);
}

async function switchTo(profile: string, n: number): Promise<void> {
  await symlinkAtomic(linkName(profile, n), profile);
}

/** `nix-env -p PROFILE --set PATH`; returns the generation number the profile now points to. */
export async function setProfile(profile: string, storePath: string): Promise<number> {
  try {
    await stat(storePath);
  } catch (err) {
    if (isMissing(err)) throw new CommandError(`error: getting status of '${storePath}': No such file or directory`, 1);
    throw err;
  }
  const gens = await listGenerations(profile);
  const last = gens.at(-1);
  // As Nix's createGeneration: setting the newest generation's path again makes no new generation.
  if (last && last.target === storePath) {
    await switchTo(profile, last.number);
    return last.number;
  }
  const n = (last?.number ?? 0) + 1;
  await symlinkAtomic(storePath, join(dirname(profile), linkName(profile, n)));
  await switchTo(profile, n);
  return n;
}

export async function rollbackProfile(profile: string, io: Io): Promise<number> {
  const gens = await listGenerations(profile);
  const current = await currentGenerationNumber(profile);
  const previous = gens.filter((g) => current === null || g.number < current).at(-1);
  if (!previous) {
    throw new CommandError(`error: no profile version older than the current (${current ?? 0}) exists`, 1);
  }
  io.err(`switching profile from version ${current ?? 0} to ${previous.number}`);
  await switchTo(profile, previous.number);
  return previous.number;
}

export async function switchGeneration(profile: string, n: number, io: Io): Promise<void> {
  const gens = await listGenerations(profile);
  if (!gens.some((g) => g.number === n)) throw new CommandError(`error: profile version ${n} does not exist`, 1);
  io.err(`switching profile from version ${(await currentGenerationNumber(profile)) ?? 0} to ${n}`);
  await switchTo(profile, n);
}

const DAY_MS = 24 * 60 * 60 * 1000;

export async function deleteGenerations(profile: string, specs: readonly string[], io: Io, now = Date.now()): Promise<void> {
  const gens = await listGenerations(profile);
  const current = await currentGenerationNumber(profile);
  const doomed = new Set<number>();
  for (const spec of specs) {
    if (spec === 'old') {
      for (const g of gens) if (g.number !== current) doomed.add(g.number);
    } else if (/^\+\d+$/.test(spec)) {
      // Keep the last N generations counted back from the current one.
      const keep = Number(spec.slice(1));
      if (keep === 0) throw new CommandError(`error: invalid number of generations to keep`, 1);
      const older = gens.filter((g) => current === null || g.number <= current).reverse();
      for (const g of older.slice(keep)) doomed.add(g.number);
    } else if (/^\d+d$/.test(spec)) {
      const cutoff = now - Number(spec.slice(0, -1)) * DAY_MS;
      // As Nix: the newest generation older than the cutoff stays, so the profile could still be rolled back to then.
      const older = gens.filter((g) => g.mtimeMs < cutoff);
      for (const g of older.slice(0, -1)) if (g.number !== current) doomed.add(g.number);
    } else if (/^\d+$/.test(spec)) {
      const n = Number(spec);
      if (n === current) throw new CommandError(`error: cannot delete current version of profile ${profile}`, 1);
      doomed.add(n);
    } else {
      throw new CommandError(`error: invalid generation specifier '${spec}'`, 1);
    }
  }
  for (const g of gens) {
    if (!doomed.has(g.number) || g.number === current) continue;
    io.err(`removing profile version ${g.number}`);
    await rm(g.link, { force: true });
  }
}

function two(n: number): string {
  return String(n).padStart(2, '0');
}

/** `nix-env --list-generations`: `%4u   %Y-%m-%d %H:%M:%S   (current)`, local time. */
export function formatGeneration(g: Generation): string {
  const d = new Date(g.mtimeMs);
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  return `${String(g.number).padStart(4, ' ')}   ${date}   ${g.current ? '(current)' : ''}`;
}

const USAGE = 'usage: nix-env [-p PROFILE] {--set PATH | --rollback | --list-generations | --switch-generation N | --delete-generations N...|old|+N|Nd}';

/** The `nix-env` command line, for the profile operations NixOS uses. */
export async function nixEnvMain(layout: Layout, args: readonly string[], io: Io): Promise<number> {
  let profile = join(layout.profiles, 'default');
  let op: string | null = null;
  const operands: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const next = (): string => {
      const v = args[++i];
      if (v === undefined) throw new CommandError(`error: flag '${a}' requires an argument\n${USAGE}`, 1);
      return v;
    };
    if (a === '-p' || a === '--profile') profile = inRoot(layout, next());
    else if (a.startsWith('--profile=')) profile = inRoot(layout, a.slice('--profile='.length));
    else if (['--set', '--rollback', '--list-generations', '--switch-generation', '-G', '--delete-generations'].includes(a)) {
      if (op !== null) throw new CommandError(`error: only one operation may be specified\n${USAGE}`, 1);
      op = a === '-G' ? '--switch-generation' : a;
    } else if (a === '--option') {
      next();
      next();
    } else if (a.startsWith('-') && a !== '-') {
      // Verbosity and store flags change nothing here.
    } else operands.push(a);
  }
  switch (op) {
    case '--set': {
      if (operands.length !== 1) throw new CommandError(`error: --set requires exactly one argument\n${USAGE}`, 1);
      await setProfile(profile, inRoot(layout, operands[0] as string));
      return 0;
    }
    case '--rollback':
      await rollbackProfile(profile, io);
      return 0;
    case '--list-generations':
      for (const g of await listGenerations(profile)) io.out(formatGeneration(g));
      return 0;
    case '--switch-generation': {
      const n = operands[0];
      if (operands.length !== 1 || !/^\d+$/.test(n ?? '')) {
        throw new CommandError(`error: --switch-generation requires one generation number\n${USAGE}`, 1);
      }
      await switchGeneration(profile, Number(n), io);
      return 0;
    }
    case '--delete-generations':
      if (operands.length === 0) throw new CommandError(`error: --delete-generations requires an argument\n${USAGE}`, 1);
      await deleteGenerations(profile, operands, io);
      return 0;
    default:
      throw new CommandError(`error: no operation specified\n${USAGE}`, 1);
  }
}
