// Puts the stand-ins where a sandbox or a test can call them by absolute path, and boots the
// sandboxed machine: a fresh root gets the image's own system as generation 1, as a new instance
// launched from an AMI has.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type Io, layoutOf, lexists, readLinkOrNull, shellQuote, symlinkAtomic, writeFileAtomic } from './layout.js';
import { setProfile } from './profile.js';
import { CLI_PATH, buildInitialSystem, linkFixedPrograms, readFailedUnitsOf, systemOfProfile, writeFailedUnits } from './system.js';

export interface StandinPaths {
  nixosRebuild: string;
  nixEnv: string;
  nixChannel: string;
  systemctl: string;
  binDir: string;
}

/** What the image's /etc/nixos/configuration.nix holds before anything renders over it. */
export const BASE_CONFIGURATION = `# The image's own configuration: what a new instance of this AMI runs before it converges.
{ modulesPath, ... }:
{
  imports = [ "\${modulesPath}/virtualisation/amazon-image.nix" ];
  system.stateVersion = "24.11";
}
`;

const TOOLS = [
  ['nixosRebuild', 'nixos-rebuild'],
  ['nixEnv', 'nix-env'],
  ['nixChannel', 'nix-channel'],
  ['systemctl', 'systemctl'],
] as const;

/** Writes `nixos-rebuild`, `nix-env`, `nix-channel` and `systemctl` into binDir, each bound to root. */
export async function installStandins(options: { binDir: string; root: string; nodePath?: string }): Promise<StandinPaths> {
  const binDir = resolve(options.binDir);
  const root = resolve(options.root);
  const nodePath = options.nodePath ?? process.execPath;
  await mkdir(binDir, { recursive: true });
  const paths: Record<string, string> = { binDir };
  for (const [key, tool] of TOOLS) {
    const path = join(binDir, tool);
    const script = `#!/bin/sh\nexec ${shellQuote(nodePath)} ${shellQuote(CLI_PATH)} --root ${shellQuote(root)} ${tool} "$@"\n`;
    await writeFileAtomic(path, script, 0o755);
    paths[key] = path;
  }
  return paths as unknown as StandinPaths;
}

const quietIo: Io = { out: () => undefined, err: () => undefined };

/**
 * (Re)boots the sandboxed machine: /run starts empty, then booted-system and current-system are the
 * boot loader's default, with that system's units (and failures) started. A root without a profile
 * is first installed with the image's configuration as generation 1.
 */
export async function bootMachine(root: string): Promise<void> {
  const layout = layoutOf(root);
  await mkdir(layout.run, { recursive: true });
  for (const entry of await readdir(layout.run)) await rm(join(layout.run, entry), { recursive: true, force: true });

  // The boot loader's default, as switch-to-configuration boot|switch last wrote it: a profile that
  // nix-env --set moved without one is not what the machine boots. A root from before the boot
  // default was recorded boots its profile.
  let system = (await readLinkOrNull(layout.bootDefault)) ?? (await systemOfProfile(layout.systemProfile));
  if (system === null) {
    if (!(await lexists(layout.configuration))) await writeFileAtomic(layout.configuration, BASE_CONFIGURATION);
    const built = await buildInitialSystem(layout, BASE_CONFIGURATION, quietIo);
    await setProfile(layout.systemProfile, built);
    await symlinkAtomic(built, layout.bootDefault);
    system = built;
  }
  await symlinkAtomic(system, layout.bootedSystem);
  await symlinkAtomic(system, layout.currentSystem);
  // Stage 2 runs the activation script at every boot.
  await linkFixedPrograms(layout);
  await writeFailedUnits(layout, await readFailedUnitsOf(system));
}
