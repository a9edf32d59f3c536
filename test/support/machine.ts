// A sandboxed machine for a daemon run in the test's own process: a root booted as an AMI boots it,
// with the stand-in nixos-rebuild, nix-env, nix-channel and systemctl beside it.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bootMachine, installStandins, type StandinPaths } from '../../sandbox/standin/install.js';

export interface SandboxedMachine {
  /** The temporary directory holding the root and the stand-ins. */
  readonly dir: string;
  readonly root: string;
  readonly tools: StandinPaths;
  /** Deletes the directory, the root with it. */
  remove(): Promise<void>;
}

export async function sandboxedMachine(prefix: string): Promise<SandboxedMachine> {
  const dir = await mkdtemp(path.join(tmpdir(), `${prefix}-`));
  const root = path.join(dir, 'root');
  const tools = await installStandins({ binDir: path.join(dir, 'bin'), root });
  await bootMachine(root);
  return { dir, root, tools, remove: () => rm(dir, { recursive: true, force: true }) };
}
