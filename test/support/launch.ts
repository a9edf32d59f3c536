// How the Nix package's wrapper starts the agent: node's flags and the environment it sets, from
// nix/launch.json (nix/package.nix writes the wrapper from the same file). The end-to-end harness
// and the benchmarks launch the bin the same way, so they test and measure what ships: a flag that
// breaks something (--lite-mode, once shipped, took WebAssembly, so fetch, away) breaks the tests too.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Launch {
  readonly nodeFlags: readonly string[];
  readonly env: Readonly<Record<string, string>>;
}

/** nix/launch.json as it is, for the tests that check what ships. */
export function launchFile(): Launch {
  return JSON.parse(readFileSync(fileURLToPath(new URL('../../../nix/launch.json', import.meta.url)), 'utf8')) as Launch;
}

const CLI = fileURLToPath(new URL('../../agent/cli.js', import.meta.url));

let compileCache: string | undefined;

/**
 * The shipped launch for a test or benchmark to run: the compile cache it names (the package's, in
 * the store) becomes a private directory of this process's, made once and seeded as the package's
 * build seeds its own (seedCompileCache), and removed when the process exits.
 */
export function shippedLaunch(): Launch {
  const launch = launchFile();
  const env = { ...launch.env };
  if (env.NODE_COMPILE_CACHE !== undefined) env.NODE_COMPILE_CACHE = testCompileCache(launch);
  return { nodeFlags: [...launch.nodeFlags], env };
}

function testCompileCache(launch: Launch): string {
  if (compileCache === undefined) {
    const dir = mkdtempSync(path.join(tmpdir(), 'nixos-ec2-agent-compile-cache-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    if (canSeedCompileCache(process.execPath)) seedCompileCache(process.execPath, launch, dir, process.getuid?.() ?? 0);
    compileCache = dir;
  }
  return compileCache;
}

/** Whether NODE can make a compile cache for the agent: Node >= 22.10 (module.flushCompileCache). */
export function canSeedCompileCache(node: string): boolean {
  if (node === process.execPath) return typeof (process.getBuiltinModule('node:module') as { flushCompileCache?: unknown }).flushCompileCache === 'function';
  const probe = spawnSync(node, ['-p', "typeof require('node:module').flushCompileCache"], { encoding: 'utf8' });
  return probe.stdout.trim() === 'function';
}

/**
 * What nix/package.nix's postFixup does, `nixos-ec2-agent seed-compile-cache --uid UID` through the
 * wrapper: the agent's modules compiled into DIR by NODE, under the launch's flags and environment.
 */
export function seedCompileCache(node: string, launch: Launch, dir: string, uid: number): void {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('NODE_')) env[k] = v;
  const seed = spawnSync(node, [...launch.nodeFlags, CLI, 'seed-compile-cache', '--uid', String(uid)], { env: { ...env, ...launch.env, NODE_COMPILE_CACHE: dir }, encoding: 'utf8' });
  if (seed.status !== 0) throw new Error(`seed-compile-cache exited ${seed.status}: ${seed.stderr}`);
}

/** A launch's words as a benchmark prints them: the compile cache's directory, a private one per run, left out. */
export function shownWords(words: readonly string[]): string[] {
  return words.filter((w) => !w.startsWith('NODE_COMPILE_CACHE='));
}

/** Words of a launch, as a benchmark takes them: NAME=value is an environment variable, the rest node flags. */
export function splitLaunchWords(words: readonly string[]): Launch {
  const isEnv = (w: string) => /^[A-Z_][A-Z0-9_]*=/.test(w);
  return {
    nodeFlags: words.filter((w) => !isEnv(w)),
    env: Object.fromEntries(words.filter(isEnv).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)])),
  };
}
