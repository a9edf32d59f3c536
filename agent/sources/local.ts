// Local inputs the render reads: the image's base configuration and the drop-in directory of
// modules. Only their names and digests enter the desired state; Nix reads the files themselves.
import { sha256Hex } from '../sha256.js';
import type { RootFs } from '../fs.js';
import type { LocalFile, LocalSnapshot } from '../desired/desired.js';

export async function readLocal(fs: RootFs, baseConfiguration: string, modulesDir: string): Promise<{ snapshot: LocalSnapshot; notes: string[] }> {
  const notes: string[] = [];
  const digest = (bytes: Buffer) => sha256Hex(bytes);
  const base = await fs.read(baseConfiguration);
  const modules: LocalFile[] = [];
  for (const name of await fs.list(modulesDir)) {
    if (!name.endsWith('.nix')) continue;
    if (!isLocalModuleName(name)) {
      notes.push(`local module ${modulesDir}/${name}: name has characters other than letters, digits, _ . + -; ignored`);
      continue;
    }
    const file = `${modulesDir.replace(/\/+$/, '')}/${name}`;
    const bytes = await fs.read(file);
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
