// The one entry point of the stand-ins: `cli.js --root ROOT TOOL ARGS...`, where TOOL is
// nixos-rebuild, switch-to-configuration (with `--system PATH`), nix-env, nix-channel or systemctl.
// The wrappers that installStandins writes bake ROOT in, so callers use the real tools' command lines.
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommandError, type Io, type Layout, layoutOf, processIo } from './layout.js';
import { nixChannelMain, systemctlMain, updateChannels } from './machine.js';
import { listGenerations, currentGenerationNumber, nixEnvMain, rollbackProfile, setProfile } from './profile.js';
import { nixosRebuildMain, switchToConfiguration } from './system.js';

const USAGE = 'usage: cli.js --root ROOT {nixos-rebuild|switch-to-configuration --system PATH|nix-env|nix-channel|systemctl} ARGS...';

async function previousGeneration(profile: string): Promise<string | null> {
  const current = await currentGenerationNumber(profile);
  const gens = await listGenerations(profile);
  return gens.filter((g) => current === null || g.number < current).at(-1)?.link ?? null;
}

async function dispatch(layout: Layout, tool: string, args: readonly string[], io: Io): Promise<number> {
  switch (tool) {
    case 'nixos-rebuild':
      return nixosRebuildMain(layout, args, io, {
        updateChannels: () => updateChannels(layout, io),
        setProfile,
        rollbackProfile: (profile) => rollbackProfile(profile, io),
        previousGeneration,
      });
    case 'switch-to-configuration': {
      if (args[0] !== '--system' || args[1] === undefined) throw new CommandError(USAGE, 1);
      return switchToConfiguration(layout, args[1], args.slice(2), io);
    }
    case 'nix-env':
      return nixEnvMain(layout, args, io);
    case 'nix-channel':
      return nixChannelMain(layout, args, io);
    case 'systemctl':
      return systemctlMain(layout, args, io);
    default:
      throw new CommandError(`unknown tool '${tool}'\n${USAGE}`, 1);
  }
}

export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  if (argv[0] !== '--root' || argv[1] === undefined || argv[2] === undefined) {
    io.err(USAGE);
    return 1;
  }
  try {
    return await dispatch(layoutOf(argv[1]), argv[2], argv.slice(3), io);
  } catch (err) {
    if (err instanceof CommandError) {
      io.err(err.message);
      return err.exitCode;
    }
    throw err;
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
