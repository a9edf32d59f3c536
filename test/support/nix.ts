// Evaluating Nix from tests with the real evaluator and no nixpkgs: plain expressions, and module
// files applied to a stub `lib` that keeps mkDefault/mkForce/mkOverride/mkIf/mkMerge as plain data.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JsonNumber, nixString, nixValue, type Json } from '../../agent/render/nix.js';

export const NIX_INSTANTIATE = 'nix-instantiate';
/** A non-root Nix cannot open the daemon socket; evaluation without builds needs no store at all. */
const STORE_ARGS = ['--store', 'dummy://'];

export const NIX_MISSING = 'nix-instantiate is not installed (apt-get install nix-bin)';

/** Whether nix-instantiate is on PATH and runs. */
export function nixAvailable(): boolean {
  const result = spawnSync(NIX_INSTANTIATE, ['--version'], { stdio: 'ignore' });
  return result.status === 0;
}

export class NixEvalError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
    this.name = 'NixEvalError';
  }
}

/**
 * Evaluates a file with `--eval --strict --json` and parses its output. The output is decoded once,
 * whole: decoding chunk by chunk would break a UTF-8 sequence split between two reads.
 */
export async function evalNixFileJson(file: string): Promise<unknown> {
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
    (resolve, reject) => {
      const child = spawn(NIX_INSTANTIATE, ['--eval', '--strict', '--json', ...STORE_ARGS, file], {
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 60_000,
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
      child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
      child.once('error', reject);
      child.once('close', (exitCode) =>
        resolve({ code: exitCode, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
      );
    },
  );
  // A failing evaluation may already have printed part of the JSON.
  if (code !== 0) throw new NixEvalError(`nix-instantiate --eval exited ${code}: ${stderr.trim()}`, stderr);
  return JSON.parse(stdout);
}

/** Evaluates a Nix expression (written to a temporary file) and returns its value as JSON. */
export async function evalNixJson(expr: string): Promise<unknown> {
  return withTempDir(async (dir) => {
    const file = join(dir, 'expr.nix');
    await writeFile(file, expr);
    return evalNixFileJson(file);
  });
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'nixos-ec2-agent-nix-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A small stand-in for the NixOS module system: enough to read what modules set. Modules are
 * collected through `imports` (paths, functions, attribute sets), their definitions merged the way
 * the module system merges them for these purposes: attribute sets recursively; at a leaf the lowest
 * priority number wins (plain definitions are 100, mkOverride/mkDefault/mkForce carry theirs), equal
 * values collapse, lists of equal priority concatenate, and anything else becomes
 * `{ _type = "conflict"; definitions = [ … ]; }` so that a test can see it.
 * Module arguments are `lib` (the stub), `config` (the merged result, lazily), `pkgs` ({}),
 * `options` ({}), everything in `_module.args`, and the extra arguments given.
 */
const MODULE_EVALUATOR = `
extraArgs: root:
let
  lib = {
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = content: lib.mkOverride 1000 content;
    mkOptionDefault = content: lib.mkOverride 1500 content;
    mkForce = content: lib.mkOverride 50 content;
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkBefore = content: { _type = "order"; priority = 500; inherit content; };
    mkAfter = content: { _type = "order"; priority = 1500; inherit content; };
  };
  baseArgs = { inherit lib config; pkgs = { }; options = { }; modulesPath = "/modules"; } // extraArgs;
  # As the module system does: a function gets the fixed arguments, and the names it asks for are
  # looked up lazily, so _module.args may come from the modules themselves.
  call = f: f (baseArgs // builtins.mapAttrs
    (n: _: if baseArgs ? \${n} then baseArgs.\${n} else config._module.args.\${n})
    (builtins.functionArgs f));
  load = m:
    if builtins.isPath m || builtins.isString m then load (import m)
    else if builtins.isFunction m then call m
    else m;
  configOf = m:
    if m ? config || m ? options then m.config or { }
    else removeAttrs m [ "imports" "_file" "key" "disabledModules" "require" "meta" "freeformType" ];
  collect = m: let loaded = load m; in
    [ (configOf loaded) ] ++ builtins.concatMap collect (loaded.imports or [ ]);
  isPlainSet = v: builtins.isAttrs v && !(v ? _type);
  priorityOf = v: if builtins.isAttrs v && (v._type or null) == "override" then v.priority else 100;
  mergeLeaf = a: b:
    let pa = priorityOf a; pb = priorityOf b; in
    if pa < pb then a
    else if pb < pa then b
    else if a == b then a
    else if builtins.isList a && builtins.isList b then a ++ b
    else if (a._type or null) == "conflict" then a // { definitions = a.definitions ++ [ b ]; }
    else { _type = "conflict"; definitions = [ a b ]; };
  merge = a: b:
    if isPlainSet a && isPlainSet b then
      a // builtins.mapAttrs (n: vb: if a ? \${n} then merge a.\${n} vb else vb) b
    else mergeLeaf a b;
  config = builtins.foldl' merge { } (collect root);
in config
`;

/**
 * Applies a module-shaped file to the stub module system and returns the option values it sets
 * (merged with those of everything it imports) as JSON. `args` are extra module arguments.
 */
export async function evalModuleOptions(file: string, args: { readonly [name: string]: Json } = {}): Promise<unknown> {
  return evalNixJson(`(${MODULE_EVALUATOR}) ${nixValue(args, 0, 'module arguments')} (/. + ${nixString(file)})\n`);
}

/**
 * Nix 2.8 prints floats in `--json` with 6 significant digits, so a float's exactness cannot be read
 * from the output. `canonical` (a Nix function) replaces each float, inside the evaluator, with
 * `{ "$float" = [ sign mantissa exponent ]; }` where |x| = mantissa * 2^exponent and mantissa is an
 * integer in [2^52, 2^53): found by scaling with powers of two, which is exact, and printed as an
 * integer, which is exact. Integers become `{ "$int" = "digits"; }`, so that JSON.parse keeps
 * every digit. canonicalJson does the same in JavaScript; comparing the two compares
 * floats bit for bit, and also tells an integer from an integer-valued float.
 */
export const NIX_CANONICAL = `
let
  # x^128 by squaring seven times: exact for powers of two.
  pow128 = x: let s = y: y * y; in s (s (s (s (s (s (s x))))));
  p128 = pow128 2.0;
  m128 = pow128 0.5;
  low = 4503599627370496.0;
  high = 9007199254740992.0;
  norm = x: e:
    if x >= high * p128 then norm (x * m128) (e + 128)
    else if x >= high then norm (x * 0.5) (e + 1)
    else if x < low * m128 then norm (x * p128) (e - 128)
    else if x < low then norm (x * 2.0) (e - 1)
    else [ (builtins.floor x) e ];
  float = x:
    if x == 0.0 then [ 0 ]
    else if x < 0.0 then [ (-1) ] ++ norm (0.0 - x) 0
    else [ 1 ] ++ norm x 0;
  canonical = v:
    if builtins.isFloat v then { "$float" = float v; }
    else if builtins.isInt v then { "$int" = toString v; }
    else if builtins.isList v then map canonical v
    else if builtins.isAttrs v then builtins.mapAttrs (_: canonical) v
    else v;
in canonical
`;

function floatParts(v: number): number[] {
  if (v === 0) return [0];
  const P128 = 2 ** 128;
  const LOW = 2 ** 52;
  const HIGH = 2 ** 53;
  let x = Math.abs(v);
  let e = 0;
  for (;;) {
    if (x >= HIGH * P128) [x, e] = [x / P128, e + 128];
    else if (x >= HIGH) [x, e] = [x / 2, e + 1];
    else if (x < LOW / P128) [x, e] = [x * P128, e - 128];
    else if (x < LOW) [x, e] = [x * 2, e - 1];
    else return [v < 0 ? -1 : 1, Math.floor(x), e];
  }
}

/**
 * What NIX_CANONICAL should give back for a JSON value rendered by nixValue: safe integers are Nix
 * integers (and -0 is 0), every other number a float; a JsonNumber is an integer exactly when its
 * text has no fraction or exponent, with every digit.
 */
export function canonicalJson(v: Json): unknown {
  if (v instanceof JsonNumber) return v.isInteger ? { $int: BigInt(v.text).toString() } : { $float: floatParts(Number(v.text)) };
  if (typeof v === 'number') return Number.isSafeInteger(v) ? { $int: String(v === 0 ? 0 : v) } : { $float: floatParts(v) };
  if (Array.isArray(v)) return v.map(canonicalJson);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, canonicalJson(x)]));
  }
  return v;
}
