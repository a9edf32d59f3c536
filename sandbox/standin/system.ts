// The system closures the stand-in "builds" and activates. A configuration is every file
// configuration.nix reaches through path literals; it is parsed by the real Nix parser, and its
// content (never its location) names the store path, so the same configuration always yields the
// same system, and building it again reuses it, as Nix does.
import { nixBase32 } from '../../agent/nix-base32.js';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { mkdir, readFile, readdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { delimiter, dirname, extname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommandError, type Io, type Layout, inRoot, isMissing, readLinkOrNull, shellQuote, symlinkAtomic, writeFileAtomic } from './layout.js';
import { findMarkers, pathLiterals } from './nixpaths.js';

export const NIXOS_VERSION = '24.11.sandbox';
export const DEFAULT_KERNEL = '6.6.0';
export const DEMO_UNIT = 'sandbox-demo.service';
/** The compiled entry point every generated wrapper runs. */
export const CLI_PATH = fileURLToPath(new URL('./cli.js', import.meta.url));

export interface ConfigFile {
  /** Where it was read from (for messages and the parser). */
  readonly path: string;
  readonly content: Buffer;
  /** Nix source (parsed and followed) rather than a file it merely refers to. */
  readonly nix: boolean;
}

export interface Configuration {
  readonly entry: string;
  readonly files: readonly ConfigFile[];
}

// ---- nix-base32 store hashes ----------------------------------------------------------------

export { nixBase32 };

/** A 32-character store hash: sha256 folded to 160 bits, as Nix's compressHash does. */
export function storeHash(input: string): string {
  const full = createHash('sha256').update(input).digest();
  const folded = new Uint8Array(20);
  for (let k = 0; k < full.length; k++) folded[k % 20]! ^= full[k]!;
  return nixBase32(folded);
}

// ---- collecting a configuration -------------------------------------------------------------

const MAX_FILES = 2000;

/**
 * Reads the entry file and every file its path literals reach: `./x.nix` and `../x.nix`
 * (followed in turn), `./dir` (its default.nix, or, without one, the .nix files directly in it, as
 * a `readDir` import sees them), and other files named by path (hashed, not parsed). Paths that do
 * not exist are skipped: Nix fails on them only when they are imported, and `pathExists` guards
 * are common.
 */
export async function collectConfiguration(layout: Layout, entry: string): Promise<Configuration> {
  const files = new Map<string, ConfigFile>();
  const queue: string[] = [entry];
  try {
    if (!(await stat(entry)).isFile()) throw new CommandError(`error: '${entry}' is not a regular file`, 1);
  } catch (err) {
    if (isMissing(err)) throw new CommandError(`error: getting status of '${entry}': No such file or directory`, 1);
    throw err;
  }
  const addPath = async (path: string, interpolated: boolean): Promise<void> => {
    let st;
    try {
      st = await stat(path);
    } catch (err) {
      if (isMissing(err)) return;
      throw err;
    }
    if (st.isDirectory()) {
      if (path === '/' || path === layout.root) return;
      const def = join(path, 'default.nix');
      if (!interpolated && (await isFile(def))) {
        queue.push(def);
        return;
      }
      for (const name of (await readdir(path)).sort()) {
        if (name.startsWith('.') || !name.endsWith('.nix')) continue;
        if (await isFile(join(path, name))) queue.push(join(path, name));
      }
    } else if (st.isFile()) {
      queue.push(path);
    }
  };
  while (queue.length > 0) {
    const path = queue.shift() as string;
    if (files.has(path)) continue;
    if (files.size >= MAX_FILES) throw new CommandError(`error: configuration ${entry} reaches more than ${MAX_FILES} files`, 1);
    const content = await readFile(path);
    const nix = extname(path) === '.nix';
    files.set(path, { path, content, nix });
    if (!nix) continue;
    for (const lit of pathLiterals(content.toString('utf8'))) {
      let text = lit.text;
      if (lit.interpolated) {
        // `./local.d + "/${f}"` and `./local.d/${f}` both name the directory's files.
        if (!text.endsWith('/')) continue;
      }
      if (text.length > 1 && text.endsWith('/')) text = text.slice(0, -1);
      const target = isAbsolute(text) ? inRoot(layout, text) : resolve(dirname(path), text);
      await addPath(target, lit.interpolated);
    }
  }
  return { entry, files: [...files.values()] };
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

// ---- parsing with the real Nix parser -------------------------------------------------------

export function findNixInstantiate(): string | null {
  const candidates = ['/usr/bin/nix-instantiate', ...(process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, 'nix-instantiate'))];
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // Not here.
    }
  }
  return null;
}

function runCapture(command: string, args: readonly string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, [...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolvePromise({ code, stderr }));
  });
}

/** Parses every Nix file; the first that fails ends the build with Nix's own message. */
export async function parseConfiguration(config: Configuration): Promise<void> {
  const nixInstantiate = findNixInstantiate();
  if (nixInstantiate === null) return;
  const nixFiles = config.files.filter((f) => f.nix);
  const results = new Array<{ code: number | null; stderr: string }>(nixFiles.length);
  let next = 0;
  const worker = async () => {
    while (next < nixFiles.length) {
      const k = next++;
      // dummy:// lets a non-root caller parse without the Nix daemon.
      results[k] = await runCapture(nixInstantiate, ['--store', 'dummy://', '--parse', (nixFiles[k] as ConfigFile).path]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, nixFiles.length) }, worker));
  for (const r of results) {
    if (r.code !== 0) throw new CommandError(r.stderr.trimEnd() || `error: nix-instantiate --parse failed (${r.code})`, 1);
  }
}

// ---- building ---------------------------------------------------------------------------------

function commonDir(paths: readonly string[]): string {
  let base = dirname(paths[0] as string);
  for (const p of paths) {
    while (!(p === base || p.startsWith(base.endsWith(sep) ? base : base + sep))) base = dirname(base);
  }
  return base;
}

export interface SystemPlan {
  readonly name: string;
  readonly storePath: string;
  readonly drvPath: string;
  readonly hostname: string;
  readonly kernel: string;
  readonly failedUnits: readonly string[];
  /** The failed units fail only after switch-to-configuration has returned: it cannot see them. */
  readonly unitsFailLater: boolean;
  readonly activationFails: boolean;
  readonly failBuild: boolean;
  readonly hang: boolean;
  readonly cutsNetwork: boolean;
  /**
   * Files of the configuration: the entry as `configuration.nix`, the files it reaches under
   * `imports/`, by their path relative to their common directory.
   */
  readonly files: ReadonlyMap<string, Buffer>;
  readonly markerFile: (marker: string) => string | undefined;
}

export function planSystem(layout: Layout, config: Configuration): SystemPlan {
  // Where the entry lies is no part of the system, as with Nix: a copy of configuration.nix that
  // imports the same files builds the same system (copySystemConfiguration takes its content).
  const reached = config.files.filter((f) => f.path !== config.entry);
  const base = reached.length > 0 ? commonDir(reached.map((f) => f.path)) : dirname(config.entry);
  const files = new Map<string, Buffer>();
  const entry = config.files.find((f) => f.path === config.entry);
  if (entry) files.set('configuration.nix', entry.content);
  for (const f of reached) files.set(join('imports', relative(base, f.path)), f.content);
  const texts = config.files.map((f) => f.content.toString('utf8'));
  const markers = findMarkers(texts);
  let hostname = 'sandbox';
  for (const f of config.files) {
    const m = f.nix ? /\bhostName\s*=\s*"([A-Za-z0-9][A-Za-z0-9-]*)"/.exec(f.content.toString('utf8')) : null;
    if (m) {
      hostname = m[1] as string;
      break;
    }
  }
  const fingerprint = JSON.stringify({
    format: 2,
    files: [...files.entries()].map(([rel, content]) => [rel, createHash('sha256').update(content).digest('hex')]).sort(),
  });
  const name = `nixos-system-${hostname}-${NIXOS_VERSION}`;
  const storePath = join(layout.store, `${storeHash(`output:${fingerprint}`)}-${name}`);
  const drvPath = join(layout.store, `${storeHash(`drv:${fingerprint}`)}-${name}.drv`);
  return {
    name,
    storePath,
    drvPath,
    hostname,
    kernel: markers.kernel ?? DEFAULT_KERNEL,
    failedUnits: markers.failUnit || markers.unitFailsLater ? [DEMO_UNIT] : [],
    unitsFailLater: markers.unitFailsLater && !markers.failUnit,
    activationFails: markers.failSwitch,
    failBuild: markers.failBuild,
    hang: markers.hang,
    cutsNetwork: markers.cutNetwork,
    files,
    markerFile: (marker) => config.files.find((f) => f.content.includes(marker))?.path,
  };
}

export function switchWrapper(layout: Layout, storePath: string, nodePath = process.execPath): string {
  return [
    '#!/bin/sh',
    `exec ${shellQuote(nodePath)} ${shellQuote(CLI_PATH)} --root ${shellQuote(layout.root)} switch-to-configuration --system ${shellQuote(storePath)} "$@"`,
    '',
  ].join('\n');
}

/** Writes the system into the store (in a temporary directory renamed into place) unless it is there. */
export async function realiseSystem(layout: Layout, plan: SystemPlan, io: Io): Promise<string> {
  if (await isDir(plan.storePath)) return plan.storePath;
  io.err('these 1 derivations will be built:');
  io.err(`  ${plan.drvPath}`);
  io.err(`building '${plan.drvPath}'...`);
  await mkdir(layout.store, { recursive: true });
  const tmp = join(layout.store, `.${randomBytes(6).toString('hex')}-${plan.name}.tmp`);
  try {
    await mkdir(join(tmp, 'bin'), { recursive: true });
    await writeFile(join(tmp, 'bin/switch-to-configuration'), switchWrapper(layout, plan.storePath), { mode: 0o755 });
    for (const [rel, content] of plan.files) {
      const dest = join(tmp, 'configuration', rel);
      await mkdir(dirname(dest), { recursive: true });
      await writeFile(dest, content);
    }
    await writeFile(join(tmp, 'nixos-version'), NIXOS_VERSION);
    for (const f of ['kernel', 'initrd', 'kernel-modules']) await writeFile(join(tmp, f), plan.kernel);
    await writeFile(join(tmp, 'failed-units'), plan.failedUnits.map((u) => `${u}\n`).join(''));
    if (plan.unitsFailLater) await writeFile(join(tmp, 'units-fail-later'), '');
    if (plan.activationFails) await writeFile(join(tmp, 'activation-fails'), `${plan.markerFile('sandbox-fail-switch') ?? ''}\n`);
    if (plan.cutsNetwork) await writeFile(join(tmp, CUTS_NETWORK), `${plan.markerFile('sandbox-cut-network') ?? ''}\n`);
    await rename(tmp, plan.storePath);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    // Another build of the same configuration got there first: the result is the same.
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === 'EEXIST' || code === 'ENOTEMPTY') && (await isDir(plan.storePath))) return plan.storePath;
    throw err;
  }
  return plan.storePath;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

/** Never returns: the caller's timeout has to end it (the process dies with its group). */
function hangForever(): Promise<never> {
  return new Promise(() => {
    setInterval(() => undefined, 1 << 30);
  });
}

/** Evaluates and builds a configuration as `nix-build '<nixpkgs/nixos>' -A system` would. */
export async function buildConfiguration(layout: Layout, entry: string, io: Io): Promise<string> {
  const config = await collectConfiguration(layout, entry);
  await parseConfiguration(config);
  const plan = planSystem(layout, config);
  if (plan.hang) {
    io.err('these 1 derivations will be built:');
    io.err(`  ${plan.drvPath}`);
    io.err(`building '${plan.drvPath}'...`);
    return hangForever();
  }
  if (plan.failBuild) {
    io.err('these 1 derivations will be built:');
    io.err(`  ${plan.drvPath}`);
    io.err(`building '${plan.drvPath}'...`);
    throw new CommandError(
      [
        `error: builder for '${plan.drvPath}' failed with exit code 1;`,
        '       last 1 log lines:',
        `       > sandbox-fail-build: marker found in ${plan.markerFile('sandbox-fail-build') ?? entry}`,
        `       For full logs, run 'nix log ${plan.drvPath}'.`,
      ].join('\n'),
      1,
    );
  }
  return realiseSystem(layout, plan, io);
}

/** Builds a configuration held in memory (the image's own, for a machine's first boot). */
export async function buildInitialSystem(layout: Layout, configurationText: string, io: Io): Promise<string> {
  const path = join(layout.root, 'etc/nixos/configuration.nix');
  const config: Configuration = { entry: path, files: [{ path, content: Buffer.from(configurationText), nix: true }] };
  return realiseSystem(layout, planSystem(layout, config), io);
}

// ---- switch-to-configuration ------------------------------------------------------------------

/**
 * The only programs NixOS puts at fixed paths, for scripts written for other systems: /bin/sh and
 * /usr/bin/env, which every activation links again (activationScripts.binsh in
 * nixos/modules/config/shells-environment.nix, usrbinenv in
 * nixos/modules/system/activation/activation-script.nix). The sandbox has no shell of its own:
 * they lead to the host's, and nothing else under the root does (no /bin/bash, as on NixOS).
 */
export async function linkFixedPrograms(layout: Layout): Promise<void> {
  await symlinkAtomic('/bin/sh', join(layout.root, 'bin/sh'));
  await symlinkAtomic('/usr/bin/env', join(layout.root, 'usr/bin/env'));
}

/** In a system's directory: while it is the running system, the instance's network is cut (machine.ts). */
export const CUTS_NETWORK = 'cuts-network';

export type SwitchAction = 'switch' | 'boot' | 'test' | 'dry-activate';
const SWITCH_ACTIONS: readonly string[] = ['switch', 'boot', 'test', 'dry-activate'];

export async function readFailedUnitsOf(system: string): Promise<string[]> {
  try {
    return (await readFile(join(system, 'failed-units'), 'utf8')).split('\n').filter(Boolean);
  } catch (err) {
    if (isMissing(err)) return [];
    throw err;
  }
}

export async function writeFailedUnits(layout: Layout, units: readonly string[]): Promise<void> {
  await writeFileAtomic(layout.failedUnits, units.map((u) => `${u}\n`).join(''));
}

/**
 * `SYSTEM/bin/switch-to-configuration ACTION`. Exit codes as the real one (nixpkgs
 * pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs, `do_system_switch`): 0 ok, 1 usage,
 * 2 the activation script failed, 4 units failed. The real one sets `exit_code = 2` when the
 * activation script fails and carries on; after starting units it lists those in state `failed`
 * ("warning: the following units failed: …", then their `systemctl status`) and sets
 * `exit_code = 4`, over a 2. A unit that fails only after it has returned is not seen: exit 0, and
 * `systemctl --failed` shows it afterwards (the `sandbox-fail-unit` marker).
 */
export async function switchToConfiguration(layout: Layout, system: string, args: readonly string[], io: Io): Promise<number> {
  const action = args[0];
  if (args.length !== 1 || action === undefined || !SWITCH_ACTIONS.includes(action)) {
    io.err('Usage: switch-to-configuration [switch|boot|test|dry-activate]');
    return 1;
  }
  if (!(await isDir(system))) throw new CommandError(`error: ${system} is not a system`, 1);
  const failedUnits = await readFailedUnitsOf(system);
  const seenFailing = (await isFile(join(system, 'units-fail-later'))) ? [] : failedUnits;
  const activationFails = await isFile(join(system, 'activation-fails'));
  if (action === 'dry-activate') {
    io.err('would activate the configuration...');
    if (failedUnits.length > 0) io.err(`would start the following units: ${failedUnits.join(', ')}`);
    return 0;
  }
  if (action === 'switch' || action === 'boot') {
    io.err('updating GRUB 2 menu...');
    await symlinkAtomic(system, layout.bootDefault);
  }
  if (action === 'boot') return 0;

  io.err('activating the configuration...');
  io.err('setting up /etc...');
  // The activation script moves /run/current-system itself, before any snippet can fail.
  await symlinkAtomic(system, layout.currentSystem);
  await linkFixedPrograms(layout);
  if (activationFails) io.err("Activation script snippet 'sandbox' failed (1)");
  await writeFailedUnits(layout, failedUnits);
  io.err('reloading user units for root...');
  const started = failedUnits.filter((u) => !seenFailing.includes(u));
  if (started.length > 0) io.err(`the following new units were started: ${started.join(', ')}`);
  if (seenFailing.length > 0) {
    io.err(`warning: the following units failed: ${seenFailing.join(', ')}`);
    for (const u of seenFailing) io.err(`× ${u} - ${u.replace(/\.service$/, '')}\n     Active: failed (Result: exit-code)`);
    return 4;
  }
  return activationFails ? 2 : 0;
}

// ---- nixos-rebuild ----------------------------------------------------------------------------

const REBUILD_ACTIONS = ['switch', 'boot', 'test', 'build', 'dry-build', 'dry-activate'] as const;
type RebuildAction = (typeof REBUILD_ACTIONS)[number];
const UNSUPPORTED_ACTIONS = ['edit', 'repl', 'build-vm', 'build-vm-with-bootloader', 'list-generations', 'build-image'];
const FLAGS_WITH_ONE = new Set([
  '--max-jobs', '-j', '--cores', '--log-format', '--attr', '-A', '--file', '-f', '--builders', '--target-host',
  '--build-host', '--specialisation', '-c', '--store', '--image-variant',
]);
const FLAGS_WITH_TWO = new Set(['--option', '--arg', '--argstr']);

const REBUILD_USAGE =
  'Usage: nixos-rebuild [switch|boot|test|build|dry-build|dry-activate] [-I nixos-config=PATH] [--rollback] [--upgrade] [--profile-name NAME]';

interface RebuildOptions {
  readonly action: RebuildAction;
  readonly config: string;
  readonly profile: string;
  readonly rollback: boolean;
  readonly upgrade: boolean;
}

function parseRebuildArgs(layout: Layout, args: readonly string[]): RebuildOptions {
  let action: RebuildAction | null = null;
  let config: string | null = null;
  let profile = layout.systemProfile;
  let rollback = false;
  let upgrade = false;
  const fromNixPath = (process.env.NIX_PATH ?? '').split(':').find((e) => e.startsWith('nixos-config='));
  if (fromNixPath) config = fromNixPath.slice('nixos-config='.length);
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const next = (): string => {
      const v = args[++i];
      if (v === undefined) throw new CommandError(`error: ${a} requires an argument\n${REBUILD_USAGE}`, 1);
      return v;
    };
    if (a === '-I' || a === '--include' || (a.startsWith('-I') && a.length > 2)) {
      const v = a === '-I' || a === '--include' ? next() : a.slice(2);
      if (v.startsWith('nixos-config=')) config = v.slice('nixos-config='.length);
    } else if (a === '--rollback') rollback = true;
    else if (a === '--upgrade' || a === '--upgrade-all') upgrade = true;
    else if (a === '--profile-name' || a === '-p') profile = join(layout.profiles, 'system-profiles', next());
    else if (a === '--flake') throw new CommandError('error: this machine does not use flakes (no flake.nix); use nixos-config', 1);
    else if (FLAGS_WITH_ONE.has(a)) next();
    else if (FLAGS_WITH_TWO.has(a)) {
      next();
      next();
    } else if (a.startsWith('-')) {
      // Build and verbosity flags (--show-trace, --fast, -v, --keep-going, ...) change nothing here.
    } else if ((REBUILD_ACTIONS as readonly string[]).includes(a)) {
      if (action !== null) throw new CommandError(`error: more than one action: ${action} and ${a}\n${REBUILD_USAGE}`, 1);
      action = a as RebuildAction;
    } else if (UNSUPPORTED_ACTIONS.includes(a)) {
      throw new CommandError(`error: action '${a}' is not supported on this machine`, 1);
    } else throw new CommandError(`error: unknown action or argument '${a}'\n${REBUILD_USAGE}`, 1);
  }
  if (action === null) throw new CommandError(REBUILD_USAGE, 1);
  return {
    action,
    config: config === null ? layout.configuration : inRoot(layout, config),
    profile,
    rollback,
    upgrade,
  };
}

export interface RebuildHooks {
  /** `nix-channel --update`, for `--upgrade`. */
  readonly updateChannels: () => Promise<number>;
  readonly setProfile: (profile: string, storePath: string) => Promise<number>;
  readonly rollbackProfile: (profile: string) => Promise<number>;
  readonly previousGeneration: (profile: string) => Promise<string | null>;
}

function runInherited(command: string, args: readonly string[]): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, [...args], { stdio: 'inherit' });
    child.once('error', reject);
    child.once('close', (code, signal) => resolvePromise(code ?? (signal ? 128 : 1)));
  });
}

/** The legacy `nixos-rebuild` script's flow for the actions the agent uses. */
export async function nixosRebuildMain(layout: Layout, args: readonly string[], io: Io, hooks: RebuildHooks): Promise<number> {
  const opts = parseRebuildArgs(layout, args);
  if (opts.upgrade) {
    const code = await hooks.updateChannels();
    if (code !== 0) return code;
  }
  let pathToConfig: string;
  if (opts.rollback) {
    if (opts.action === 'switch' || opts.action === 'boot') {
      await hooks.rollbackProfile(opts.profile);
      pathToConfig = opts.profile;
    } else if (opts.action === 'test' || opts.action === 'build') {
      const previous = await hooks.previousGeneration(opts.profile);
      if (previous === null) throw new CommandError(`error: no generation of ${opts.profile} older than the current one`, 1);
      pathToConfig = previous;
      await symlinkAtomic(previous, resolve('result'));
    } else throw new CommandError(REBUILD_USAGE, 1);
  } else {
    io.err('building the system configuration...');
    if (opts.action === 'dry-build') {
      const config = await collectConfiguration(layout, opts.config);
      await parseConfiguration(config);
      const plan = planSystem(layout, config);
      if (!(await isDir(plan.storePath))) {
        io.err('these 1 derivations would be built:');
        io.err(`  ${plan.drvPath}`);
      }
      return 0;
    }
    pathToConfig = await buildConfiguration(layout, opts.config, io);
    if (opts.action === 'switch' || opts.action === 'boot') await hooks.setProfile(opts.profile, pathToConfig);
    else await symlinkAtomic(pathToConfig, resolve('result'));
    if (opts.action === 'build') io.out(pathToConfig);
  }
  if (opts.action === 'build') return 0;
  const code = await runInherited(join(pathToConfig, 'bin/switch-to-configuration'), [opts.action]);
  if (code !== 0) {
    io.err('warning: error(s) occurred while switching to the new configuration');
    return 1;
  }
  return 0;
}

export async function systemOfProfile(profile: string): Promise<string | null> {
  if ((await readLinkOrNull(profile)) === null) return null;
  return realpath(profile);
}
