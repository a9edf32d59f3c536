// How the Nix package's wrapper starts the agent: node's flags and the environment it sets, from
// nix/launch.json (nix/package.nix writes the wrapper from the same file). The end-to-end harness
// and the benchmarks launch the bin the same way, so they test and measure what ships: a flag that
// breaks something (--lite-mode, once shipped, took WebAssembly, so fetch, away) breaks the tests too.
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

let compileCache: string | undefined;

/**
 * The shipped launch for a test or benchmark to run: the compile cache it names (a directory of the
 * installed system's) becomes a private directory of this process's, made once, so runs share it as
 * the unit's starts do, and removed when the process exits.
 */
export function shippedLaunch(): Launch {
  const launch = launchFile();
  const env = { ...launch.env };
  if (env.NODE_COMPILE_CACHE !== undefined) env.NODE_COMPILE_CACHE = testCompileCache();
  return { nodeFlags: [...launch.nodeFlags], env };
}

function testCompileCache(): string {
  if (compileCache === undefined) {
    const dir = mkdtempSync(path.join(tmpdir(), 'nixos-ec2-agent-compile-cache-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    compileCache = dir;
  }
  return compileCache;
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
