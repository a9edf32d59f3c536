// Reading rendered options back through the real evaluator, many at once: one nix-instantiate call
// for a whole batch of rendered options.nix files.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { nixString } from '../../agent/render/nix.js';
import { NIX_CANONICAL, evalNixFileJson, withTempDir } from './nix.js';

export interface ReadBackInput {
  /** The text of a rendered options.nix that sets one option. */
  readonly optionsNix: string;
  /** The option's path. */
  readonly path: readonly string[];
  /** The JSON text the value came from: Nix's own JSON reader is the oracle for what it is. */
  readonly json: string;
}

export interface ReadBack {
  /** The module's arguments and top-level attribute names. */
  readonly args: string[];
  readonly top: string[];
  /** Each imported module's attribute names. */
  readonly shape: string[][];
  /** The attribute names met walking down `config.<path>`: one per level, or the value grew siblings. */
  readonly spine: string[][];
  /** NIX_CANONICAL of the value set, and of builtins.fromJSON of `json`. */
  readonly got: unknown;
  readonly want: unknown;
}

export async function readBackOptions(inputs: readonly ReadBackInput[]): Promise<ReadBack[]> {
  return withTempDir(async (dir) => {
    const entries: string[] = [];
    for (const [i, input] of inputs.entries()) {
      await writeFile(join(dir, `o${i}.nix`), input.optionsNix);
      await writeFile(join(dir, `o${i}.json`), input.json);
      entries.push(`  (check ./o${i}.nix ./o${i}.json [ ${input.path.map((s) => nixString(s)).join(' ')} ])`);
    }
    const file = join(dir, 'check.nix');
    await writeFile(
      file,
      `let
  canonical = ${NIX_CANONICAL};
  spine = path: set: if path == [ ] then [ ] else [ (builtins.attrNames set) ] ++ spine (builtins.tail path) set.\${builtins.head path};
  check = file: json: path:
    let m = import file { }; first = builtins.head m.imports; in {
      args = builtins.attrNames (builtins.functionArgs (import file));
      top = builtins.attrNames m;
      shape = map builtins.attrNames m.imports;
      spine = spine ([ "config" ] ++ path) first;
      got = canonical (builtins.foldl' (s: n: s.\${n}) first.config path);
      want = canonical (builtins.fromJSON (builtins.readFile json));
    };
in [
${entries.join('\n')}
]
`,
    );
    return (await evalNixFileJson(file)) as ReadBack[];
  });
}
