// Every piece of Nix text the agent writes is built here, from values that may be hostile (SSM
// parameters, user data): each value is rendered as a closed Nix expression, so nothing it holds can
// change the structure of the file around it.
import { InvalidInputError } from '../errors.js';

export type Json = null | boolean | number | JsonNumber | string | Json[] | { [k: string]: Json };

/**
 * A JSON number kept as its text, for what a JavaScript number would alter: every float (`1.0` and
 * `1e2` are floats to Nix, but 1 and 100 to JavaScript) and integers past 2^53. parseJson makes
 * them; a plain `number` is used only for safe integers.
 */
export class JsonNumber {
  constructor(
    /** The token as JSON wrote it (RFC 8259's grammar, checked by parseJson). */
    readonly text: string,
  ) {}

  get isInteger(): boolean {
    return !/[.eE]/.test(this.text);
  }

  /** For logs and status: the nearest double, as JSON.parse would give. */
  toJSON(): number {
    return Number(this.text);
  }
}

/**
 * How deep a value may nest. NixOS values are a few levels deep; the bound keeps a hostile value
 * from exhausting the renderer's, the parser's or the evaluator's stack.
 */
export const MAX_DEPTH = 100;
/** Indentation stops growing here, so the rendered size stays linear in the input's size. */
const MAX_INDENT = 32;

/** Option path segments as the NixOS module system names options (and SSM names allow). */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_'-]*$/;

/**
 * Words the Nix 2.8 lexer takes as keywords, so they cannot be bare attribute names. `__curPos` is
 * lexed as a token of its own; `or` is accepted bare by some versions, but quoting it never hurts.
 */
const KEYWORDS: ReadonlySet<string> = new Set([
  'if',
  'then',
  'else',
  'assert',
  'with',
  'let',
  'in',
  'rec',
  'inherit',
  'or',
  '__curPos',
]);

/** Smallest positive normal double: below it Nix's float lexer rejects the literal (see nixFloat). */
const MIN_NORMAL = 2.2250738585072014e-308;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * A double-quoted Nix string literal that evaluates to exactly `s`.
 *
 * Inside "…" the Nix lexer treats `\`, `"` and `${` specially; `\n`, `\r`, `\t` have escapes and
 * every other character (other control characters included) stands for itself, so it is written raw.
 * A `$` is escaped only before `{`: a lone `$`, a trailing `$` and `$$` are literal already, and
 * `$\${` keeps `$${` from hitting the lexer's `$$` rule.
 *
 * Throws InvalidInputError (where = `where`) for what a Nix string cannot hold: NUL (Nix strings are
 * C strings, so the rest would be cut off silently) and lone UTF-16 surrogates (no UTF-8 encoding).
 */
export function nixString(s: string, where = 'value'): string {
  return quote(s, () => where);
}

const NIX_STRING_SPECIAL = /[\\"\n\r\t]|\$(?=\{)/g;
const NIX_STRING_ESCAPES: Readonly<Record<string, string>> = { '\\': '\\\\', '"': '\\"', '\n': '\\n', '\r': '\\r', '\t': '\\t', $: '\\$' };

/** nixString, naming its source only when it fails: a large render builds no names it never uses. */
function quote(s: string, where: () => string): string {
  if (s.includes('\0')) {
    throw new InvalidInputError('a string contains a NUL character, which a Nix string cannot hold', where());
  }
  if (LONE_SURROGATE.test(s)) {
    throw new InvalidInputError('a string contains a lone UTF-16 surrogate, which is not valid Unicode', where());
  }
  return `"${s.replace(NIX_STRING_SPECIAL, (c) => NIX_STRING_ESCAPES[c] as string)}"`;
}

/** An attribute name: bare when Nix allows it, else a quoted string (which evaluates to `name`). */
export function nixAttrName(name: string, where = 'attribute name'): string {
  return IDENTIFIER.test(name) && !KEYWORDS.has(name) ? name : nixString(name, where);
}

/** `a.b."c d"`: an attribute path, each segment through nixAttrName. */
export function nixAttrPath(path: readonly string[], where = 'attribute path'): string {
  if (path.length === 0) throw new InvalidInputError('an attribute path needs at least one segment', where);
  return path.map((segment) => nixAttrName(segment, where)).join('.');
}

export type OptionPathResult =
  | { readonly ok: true; readonly path: string[] }
  | { readonly ok: false; readonly reason: string };

/**
 * Attribute names the module system reads as its own vocabulary rather than as configuration
 * (nixpkgs lib/modules.nix: `_type` makes a set an mkIf/mkOverride/mkMerge/mkOrder/mkDefinition in
 * `dischargeProperties`; `_module` holds `args`, `check` and `freeformType`; `unifyModuleSyntax`
 * takes `_class`, `_file`, `require`, `imports`, `disabledModules` and `freeformType` out of a module
 * written as a value of a module-typed option), and names starting with `__`, which Nix itself gives
 * a meaning (`__functor`, `__toString`). A value from `options/` may hold none of them, anywhere, so
 * that setting an option never reaches priorities, conditions, module arguments or imports.
 * `key`, `config`, `options` and `meta` stay allowed: they are common setting names, and in the
 * usual `types.submodule` a set value is only ever configuration (lib/types.nix:
 * `shorthandOnlyDefinesConfig = true`).
 */
const MODULE_VOCABULARY: ReadonlySet<string> = new Set([
  '_type',
  '_module',
  '_class',
  '_file',
  'require',
  'imports',
  'disabledModules',
  'freeformType',
]);

/** Why `name` may not appear in an option value, or undefined when it may. */
function reservedNameReason(name: string): string | undefined {
  if (MODULE_VOCABULARY.has(name)) return `the NixOS module system reads "${name}" as its own (lib/modules.nix), not as a setting`;
  if (name.startsWith('__')) return `Nix gives names starting with "__" a meaning of their own (e.g. __functor, __toString)`;
  return undefined;
}

/**
 * Throws InvalidInputError (naming `where` and the place in the value) when an option value holds an
 * attribute name of the module system's vocabulary. Iterative: the value may be deep.
 */
function checkOptionValue(value: Json, where: string): void {
  // The walk keeps no paths (a fleet renders thousands of values); the place is found only for an error.
  const stack: Json[] = [value];
  while (stack.length > 0) {
    const v = stack.pop() as Json;
    if (v === null || typeof v !== 'object' || v instanceof JsonNumber) continue;
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
      continue;
    }
    for (const key of Object.keys(v)) {
      const reason = reservedNameReason(key);
      if (reason !== undefined) {
        const path = pathTo(value, v) ?? [];
        throw new InvalidInputError(
          `the attribute ${JSON.stringify(key)}${path.length === 0 ? '' : ` at ${atOf(path)}`} cannot be set from an option value: ${reason}; use a module (modules/<name>) for that`,
          where,
        );
      }
      stack.push(v[key] as Json);
    }
  }
}

/** Where `target` sits inside `v`, depth-first; only for error messages. */
function pathTo(v: Json, target: Json, path: (string | number)[] = []): (string | number)[] | undefined {
  if (v === target) return path;
  if (v === null || typeof v !== 'object' || v instanceof JsonNumber || path.length > MAX_DEPTH) return undefined;
  const entries: [string | number, Json][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
  for (const [k, x] of entries) {
    const found = pathTo(x, target, [...path, k]);
    if (found) return found;
  }
  return undefined;
}

/**
 * Splits `services.nginx.enable` into segments; every segment must be a Nix identifier, and none may
 * start with `_`: no NixOS option does, and `_module` (module arguments, type checking) is the
 * module system's own.
 */
export function parseOptionPath(dotted: string): OptionPathResult {
  if (dotted === '') return { ok: false, reason: 'the option path is empty' };
  const path = dotted.split('.');
  for (const [i, segment] of path.entries()) {
    if (segment === '') {
      return { ok: false, reason: `segment ${i + 1} of option path ${JSON.stringify(dotted)} is empty` };
    }
    if (!IDENTIFIER.test(segment)) {
      return {
        ok: false,
        reason: `segment ${JSON.stringify(segment)} of option path ${JSON.stringify(dotted)} is not a Nix identifier ([A-Za-z_][A-Za-z0-9_'-]*)`,
      };
    }
    if (segment.startsWith('_')) {
      return {
        ok: false,
        reason: `segment ${JSON.stringify(segment)} of option path ${JSON.stringify(dotted)} starts with "_": no NixOS option does, and _module is the module system's own`,
      };
    }
  }
  return { ok: true, path };
}

/**
 * A float as a Nix expression that evaluates to exactly the same double.
 *
 * Nix 2.8 lexes float literals with strtod, which rounds correctly, so JavaScript's shortest
 * round-trip digits give back the same double once reshaped to Nix's grammar: a `.` is required
 * (`1e300` lexes as `1` applied to `e300`), hence `1.0e+300`. But the lexer rejects any literal
 * for which strtod sets ERANGE, which glibc does for every subnormal result ("invalid float
 * '5.0e-324'"); those go through `builtins.fromJSON`, whose parser keeps them exact.
 * A negative value is a parenthesised negation (`0 - x` is exact), valid in list position.
 *
 * Nix 2.8's `--json` output (and builtins.toJSON) prints floats with only 6 significant digits
 * (`4.94066e-324`), so what the evaluator prints is not a test of exactness; the tests compare
 * mantissa and exponent inside the evaluator instead.
 */
function nixFloat(v: number): string {
  const abs = Math.abs(v);
  if (abs < MIN_NORMAL) return `(builtins.fromJSON ${nixString(String(v))})`;
  const [mantissa = '', exponent] = String(abs).split('e');
  const literal = (mantissa.includes('.') ? mantissa : `${mantissa}.0`) + (exponent === undefined ? '' : `e${exponent}`);
  return v < 0 ? `(-${literal})` : literal;
}

/** Nix integers are 64-bit (NixInt is int64_t); its lexer rejects a literal past the maximum. */
const NIX_INT_MIN = -(2n ** 63n);
const NIX_INT_MAX = 2n ** 63n - 1n;

/** A JSON number token as the Nix value of the same type and exactly the same value, or a rejection. */
function nixJsonNumber(n: JsonNumber, where: string, at: () => string): string {
  const place = () => (at() === '' ? '' : ` at ${at()}`);
  if (n.isInteger) {
    const v = BigInt(n.text);
    if (v < NIX_INT_MIN || v > NIX_INT_MAX) {
      throw new InvalidInputError(
        `the integer ${n.text}${place()} is outside Nix's 64-bit integer range (-2^63 to 2^63-1); write it as a string or a float (e.g. ${n.text}.0) if that is what is meant`,
        where,
      );
    }
    if (v === 0n) return '0';
    if (v > 0n) return v.toString();
    // -2^63 has no positive literal to negate.
    return v === NIX_INT_MIN ? `(-${-(v + 1n)} - 1)` : `(${v})`;
  }
  const v = Number(n.text);
  if (!Number.isFinite(v)) {
    throw new InvalidInputError(`the number ${n.text}${place()} is beyond the largest Nix float (a 64-bit double, about 1.8e308)`, where);
  }
  if (v === 0) {
    if (/[1-9]/.test(n.text.split(/[eE]/)[0] as string)) {
      throw new InvalidInputError(`the number ${n.text}${place()} is too small for a Nix float (a 64-bit double): it would become 0`, where);
    }
    // `0.0 - 0.0` is +0: negative zero only comes back through the JSON parser.
    return Object.is(v, -0) ? '(builtins.fromJSON "-0.0")' : '0.0';
  }
  return nixFloat(v);
}

function nixNumber(v: number, where: string, at: () => string): string {
  if (!Number.isFinite(v)) {
    throw new InvalidInputError(`the number at ${at()} is not finite (${v}); JSON has no such value`, where, { at: at() });
  }
  // Only safe integers are certainly the integer the JSON held; anything else is a float, as
  // Number.isInteger cannot tell 1e300 from an integer. -0 becomes 0: Nix integers have no sign
  // for zero, and JSON.stringify(-0) is "0" too.
  if (Number.isSafeInteger(v)) return v < 0 ? `(${v})` : String(v === 0 ? 0 : v);
  return nixFloat(v);
}

function pad(n: number): string {
  return ' '.repeat(Math.min(n, MAX_INDENT));
}

/** Where a value sits in its JSON document, e.g. `.a[2]["b c"]`; built only for an error. */
function atOf(path: readonly (string | number)[]): string {
  return path.map((p) => (typeof p === 'number' ? `[${p}]` : IDENTIFIER.test(p) ? `.${p}` : `[${JSON.stringify(p)}]`)).join('');
}

function render(v: Json, indent: number, where: string, path: (string | number)[]): string {
  if (v === null) return 'null';
  if (v instanceof JsonNumber) return nixJsonNumber(v, where, () => atOf(path));
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      return nixNumber(v, where, () => atOf(path));
    case 'string':
      return quote(v, () => (path.length === 0 ? where : `${where} at ${atOf(path)}`));
  }
  if (path.length >= MAX_DEPTH) {
    throw new InvalidInputError(`the value nests deeper than ${MAX_DEPTH} levels (at ${atOf(path.slice(0, 8))}…)`, where);
  }
  if (Array.isArray(v)) {
    if (v.length === 0) return '[ ]';
    const inner = pad(indent + 2);
    let out = '[\n';
    for (let i = 0; i < v.length; i++) {
      path.push(i);
      out += `${inner}${render(v[i] as Json, indent + 2, where, path)}\n`;
      path.pop();
    }
    return `${out}${pad(indent)}]`;
  }
  const keys = Object.keys(v);
  if (keys.length === 0) return '{ }';
  const inner = pad(indent + 2);
  let out = '{\n';
  for (const key of keys) {
    path.push(key);
    const name = IDENTIFIER.test(key) && !KEYWORDS.has(key) ? key : nixAttrName(key, `${where} at ${atOf(path)} (its name)`);
    out += `${inner}${name} = ${render(v[key] as Json, indent + 2, where, path)};\n`;
    path.pop();
  }
  return `${out}${pad(indent)}}`;
}

/**
 * A JSON value as a Nix expression that evaluates to the same value, multi-line for nested values.
 * `indent` is the indentation of the line the value starts on; `where` names the value's source in
 * errors (a value that no Nix expression can hold throws InvalidInputError).
 */
export function nixValue(v: Json, indent = 0, where = 'value'): string {
  return render(v, indent, where, []);
}

/** A `# …` comment that always ends at its own line: no newline or control character survives. */
export function nixComment(text: string, indent = 0): string {
  // Nix ends a `#` comment at \r or \n; the rest of the replaced set is for editors and terminals.
  const safe = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, ' ');
  return `${pad(indent)}# ${safe}`.trimEnd();
}

export interface RenderedOption {
  readonly path: readonly string[];
  readonly value: Json;
  /** Where the value came from (an SSM parameter name and version); written as a `#` comment. */
  readonly comment?: string;
  /** Names the source in errors; defaults to the comment, then the dotted path. */
  readonly where?: string;
  /** A NixOS priority (lib.mkOverride); without it the definition has the normal priority (100). */
  readonly priority?: number;
}

const HEADER = '# Generated by nixos-ec2-agent; changes here are overwritten at the next convergence.';

/**
 * A NixOS module setting each option. Each option is its own anonymous module in `imports`, so
 * paths that are prefixes of each other (`services.nginx = { … }` and `services.nginx.enable`) are
 * separate definitions the module system merges, never duplicate attributes in one set.
 */
export function renderOptionsModule(options: readonly RenderedOption[]): string {
  const usesLib = options.some((o) => o.priority !== undefined);
  const modules = options.map((option) => {
    const where = option.where ?? option.comment ?? option.path.join('.');
    const comment = option.comment === undefined ? '' : `${nixComment(option.comment, 4)}\n`;
    const hidden = option.path.find((segment) => segment.startsWith('_'));
    if (hidden !== undefined) {
      throw new InvalidInputError(`option path segment ${JSON.stringify(hidden)} starts with "_": no NixOS option does, and _module is the module system's own`, where);
    }
    checkOptionValue(option.value, where);
    let value = nixValue(option.value, 6, where);
    if (option.priority !== undefined) {
      if (!Number.isSafeInteger(option.priority) || option.priority < 0) {
        throw new InvalidInputError(`priority ${option.priority} is not a non-negative integer`, where);
      }
      value = `lib.mkOverride ${option.priority} (${value})`;
    }
    const definition = `config.${nixAttrPath(option.path, where)} = ${value};`;
    return value.includes('\n')
      ? `${comment}    {\n      ${definition}\n    }\n`
      : `${comment}    { ${definition} }\n`;
  });
  const args = usesLib ? '{ lib, ... }:' : '{ ... }:';
  return `${HEADER}\n${args}\n{\n  imports = [\n${modules.join('')}  ];\n}\n`;
}

/**
 * A module giving other modules the paths of the secrets as the module argument `ec2Secrets`
 * (`{ ec2Secrets, ... }: … ec2Secrets."db-password" …`). Only paths: values never enter Nix, and the
 * paths are strings, not path literals, so nothing is copied into the store.
 */
export function renderSecretsArgsModule(secrets: readonly { name: string; path: string }[]): string {
  const seen = new Set<string>();
  for (const { name } of secrets) {
    if (seen.has(name)) throw new InvalidInputError(`secret ${JSON.stringify(name)} is named twice`, 'secrets');
    seen.add(name);
  }
  // fromEntries defines own properties, so a secret named `__proto__` is a name like any other.
  const byName: { [k: string]: Json } = Object.fromEntries(secrets.map(({ name, path }) => [name, path]));
  return `${HEADER}\n{ ... }:\n{\n  config._module.args.ec2Secrets = ${nixValue(byName, 2, 'secrets')};\n}\n`;
}
