// How the Nix package's wrapper starts the agent: node's flags and the environment it sets, from
// nix/launch.json (nix/package.nix writes the wrapper from the same file). The end-to-end harness
// and the benchmarks launch the bin the same way, so they test and measure what ships: a flag that
// breaks something (--lite-mode, once shipped, took WebAssembly, so fetch, away) breaks the tests too.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Launch {
  readonly nodeFlags: readonly string[];
  readonly env: Readonly<Record<string, string>>;
}

export function shippedLaunch(): Launch {
  const launch = JSON.parse(readFileSync(fileURLToPath(new URL('../../../nix/launch.json', import.meta.url)), 'utf8')) as Launch;
  return { nodeFlags: [...launch.nodeFlags], env: { ...launch.env } };
}

/** Words of a launch, as a benchmark takes them: NAME=value is an environment variable, the rest node flags. */
export function splitLaunchWords(words: readonly string[]): Launch {
  const isEnv = (w: string) => /^[A-Z_][A-Z0-9_]*=/.test(w);
  return {
    nodeFlags: words.filter((w) => !isEnv(w)),
    env: Object.fromEntries(words.filter(isEnv).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)])),
  };
}
