// The system's generations, read from the real layout: nix/var/nix/profiles/system-N-link.
import { lstat, readFile, readlink } from 'node:fs/promises';
import type { RootFs } from '../fs.js';
import { SYSTEM_PROFILE } from './rebuild.js';

export interface Generation {
  readonly number: number;
  readonly date: string;
  readonly storePath: string;
  readonly current: boolean;
  readonly booted: boolean;
  readonly running: boolean;
}

export async function listGenerations(fs: RootFs): Promise<Generation[]> {
  const dir = SYSTEM_PROFILE.slice(0, SYSTEM_PROFILE.lastIndexOf('/'));
  const currentLink = await fs.readlink(SYSTEM_PROFILE);
  const booted = await fs.readlink('/run/booted-system');
  const running = await fs.readlink('/run/current-system');
  const generations: Generation[] = [];
  for (const name of await fs.list(dir)) {
    const match = /^system-(\d+)-link$/.exec(name);
    if (!match) continue;
    const link = `${dir}/${name}`;
    const storePath = await fs.readlink(link);
    if (!storePath) continue;
    const stat = await lstat(fs.resolve(link));
    generations.push({
      number: Number(match[1]),
      date: stat.mtime.toISOString(),
      storePath,
      current: currentLink === name,
      booted: booted === storePath,
      running: running === storePath,
    });
  }
  return generations.sort((a, b) => a.number - b.number);
}

export async function runningSystem(fs: RootFs): Promise<string | undefined> {
  return fs.readlink('/run/current-system');
}

export async function bootedSystem(fs: RootFs): Promise<string | undefined> {
  return fs.readlink('/run/booted-system');
}

/**
 * The kernel, initrd and modules of a system: what a switch cannot apply without a reboot. Store
 * paths are real paths (under a sandbox root they already include it), so they are read as such.
 */
export async function bootEssentials(storePath: string): Promise<string> {
  const parts: string[] = [];
  for (const item of ['kernel', 'initrd', 'kernel-modules']) {
    const file = `${storePath}/${item}`;
    let value = '';
    try {
      value = await readlink(file);
    } catch {
      value = await readFile(file, 'utf8').then((t) => t.trim(), () => '');
    }
    parts.push(`${item}=${value}`);
  }
  return parts.join(';');
}
