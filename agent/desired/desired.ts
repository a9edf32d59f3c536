// Pure: snapshots of the sources → one DesiredState, or an error naming the first bad input.
// All-or-nothing: any invalid part rejects the whole desired state, and the running
// configuration stays.
import { sha256Hash } from '../sha256.js';
import { InvalidInputError } from '../errors.js';
import type { Json } from '../render/nix.js';
import { parseOptionPath } from '../render/nix.js';
import { JsonSyntaxError, parseJson } from './json.js';
import { layerOptions, type Overlap } from './precedence.js';
import type { Secret } from '../secret.js';
import type { SsmParameter, SsmSnapshot } from '../sources/ssm.js';
import { parseSystemClosure, systemFromUserData, type SystemClosure } from '../sources/system.js';
import type { Channel, UserData } from '../sources/userdata.js';

/** Bumped when the rendering changes, so every instance renders again after an upgrade. */
export const RENDER_VERSION = 3;

export interface ParameterRef {
  readonly name: string;
  readonly version: number;
}

export interface DesiredOption {
  readonly path: readonly string[];
  readonly value: Json;
  readonly from: ParameterRef;
}

export interface DesiredModule {
  readonly name: string;
  readonly text: string;
  readonly from: ParameterRef;
}

export interface DesiredSecret {
  readonly name: string;
  readonly value: Secret;
  readonly from: ParameterRef;
}

export interface LocalFile {
  /** Absolute path on the target system. */
  readonly path: string;
  readonly digest: string;
}

export interface LocalSnapshot {
  readonly baseConfiguration: LocalFile | undefined;
  readonly modules: readonly LocalFile[];
}

export interface DesiredState {
  /**
   * Stable over every input: user data digest, each parameter's name, version and date, local files;
   * and which option definitions a later prefix trimmed or dropped (see precedence.ts).
   */
  readonly hash: string;
  readonly userData: { readonly kind: UserData['kind']; readonly digest: string; readonly text?: string; readonly channels: readonly Channel[] };
  readonly options: readonly DesiredOption[];
  readonly modules: readonly DesiredModule[];
  readonly secrets: readonly DesiredSecret[];
  readonly local: LocalSnapshot;
  /** What built it: recorded with each generation. */
  readonly sources: { readonly userData: string; readonly parameters: readonly ParameterRef[] };
  /** Inputs that were noted and left alone (unknown parameter kinds, ignored user data). */
  readonly notes: readonly string[];
  /**
   * A prebuilt system closure: when present it is what runs, substituted and activated instead of
   * building the configuration. The last prefix's `system` wins, then user data's.
   */
  readonly system?: SystemClosure;
}

const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** What the agent reads under a prefix; `system` is a leaf, the others are folders. */
const KINDS = ['options', 'modules', 'secrets', 'system'] as const;

export function buildDesired(input: { userData: UserData; ssm: SsmSnapshot | undefined; local: LocalSnapshot }): DesiredState {
  const notes: string[] = [];
  const layers: DesiredOption[][] = [];
  const modules = new Map<string, DesiredModule>();
  const secrets = new Map<string, DesiredSecret>();
  const refs: ParameterRef[] = [];
  let system: SystemClosure | undefined;
  // Fed as it goes, one line per input, rather than from one JSON document of them all: a fleet's
  // 10,000 parameters should not cost a second copy of themselves.
  const digest = sha256Hash().update(`v${RENDER_VERSION}\nuser-data ${input.userData.digest}\n`);

  if (input.userData.kind === 'ignored') notes.push(input.userData.reason);
  for (const skipped of input.ssm?.skipped ?? []) notes.push(`SSM prefix ${skipped.prefix} skipped: ${skipped.reason}`);

  for (const { prefix, parameters } of input.ssm?.prefixes ?? []) {
    // Prefix order is precedence; within a prefix, arrival order means nothing, so it must not
    // reach the hash or the render.
    const byName = [...parameters].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const options: DesiredOption[] = [];
    layers.push(options);
    for (const p of byName) {
      const from: ParameterRef = { name: p.name, version: p.version };
      const where = `SSM parameter ${p.name} (version ${p.version})`;
      refs.push(from);
      digest.update(`parameter ${JSON.stringify(p.name)} ${p.version} ${p.type} ${p.lastModified ?? '-'}\n`);
      const rel = p.name.startsWith(`${prefix}/`) ? p.name.slice(prefix.length + 1) : p.name;
      const slash = rel.indexOf('/');
      const kind = slash < 0 ? rel : rel.slice(0, slash);
      const rest = slash < 0 ? '' : rel.slice(slash + 1);
      const problem = nameProblem(kind, rest, slash >= 0);
      if (problem !== undefined) throw new InvalidInputError(problem, where);
      switch (kind) {
        case 'options': {
          const parsed = parseOptionPath(rest);
          if (!parsed.ok) {
            throw new InvalidInputError(`${parsed.reason}; options/ takes a dotted NixOS option path, e.g. options/services.nginx.enable`, where);
          }
          options.push({ path: parsed.path, value: optionValue(p, where), from });
          break;
        }
        case 'modules': {
          checkName(rest, where, 'module');
          const text = plain(p, where);
          if (text.includes('\0')) throw new InvalidInputError('module text contains a NUL byte', where);
          if (text.startsWith('\ufeff')) throw new InvalidInputError('module text starts with a byte order mark, which Nix does not accept', where);
          // Written as UTF-8, a lone surrogate would silently become U+FFFD.
          if (LONE_SURROGATE.test(text)) throw new InvalidInputError('module text contains a lone UTF-16 surrogate, which is not a Unicode character', where);
          modules.set(rest, { name: rest, text, from });
          break;
        }
        case 'secrets': {
          checkName(rest, where, 'secret');
          if (p.type !== 'SecureString') {
            throw new InvalidInputError(`a secret must be a SecureString, not ${p.type} (its value would be readable in SSM and logs)`, where);
          }
          const secret = p.value as Secret;
          // The message says what, never where in the value: nothing of a secret reaches a log.
          if (LONE_SURROGATE.test(secret.reveal())) {
            throw new InvalidInputError('the secret holds a lone UTF-16 surrogate, which is not a Unicode character and cannot be written as UTF-8', where);
          }
          secrets.set(rest, { name: rest, value: secret, from });
          break;
        }
        case 'system':
          if (rest !== '') {
            notes.push(`${where}: not under options/, modules/ or secrets/; ignored`);
            break;
          }
          system = parseSystemClosure(plain(p, where), where, from);
          break;
        default:
          notes.push(`${where}: not under options/, modules/, secrets/ or system, so not read by this agent; ignored`);
      }
    }
  }

  const layered = layerOptions(layers);
  for (const overlap of layered.overlaps) {
    if (overlap.kind === 'replaced') continue;
    notes.push(overlapNote(overlap));
    // Only what renders differently from laying the prefixes side by side: a configuration without
    // such overlaps keeps its hash, and one with them is a new desired state after an upgrade.
    digest.update(`overlap ${overlap.kind} ${JSON.stringify(overlap.earlier.from.name)} ${JSON.stringify(overlap.by.from.name)}\n`);
  }

  digest.update(`local ${JSON.stringify({ base: input.local.baseConfiguration ?? null, modules: input.local.modules })}\n`);
  const hash = digest.hex();

  const ud = input.userData;
  const udSystem = ud.kind === 'nix' ? systemFromUserData(ud.text) : undefined;
  system ??= udSystem;
  return {
    hash,
    userData: {
      kind: ud.kind,
      digest: ud.digest,
      // A closure named in user data is JSON, not a module to render.
      ...(ud.kind === 'nix' && !udSystem ? { text: ud.text } : {}),
      channels: ud.kind === 'nix' ? ud.channels : [],
    },
    options: layered.options,
    modules: [...modules.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    secrets: [...secrets.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    local: input.local,
    sources: { userData: ud.digest, parameters: refs },
    notes,
    ...(system ? { system } : {}),
  };
}

/** Names the parameter that lost and the one that won, as an operator would look them up. */
function overlapNote(overlap: Exclude<Overlap, { kind: 'replaced' }>): string {
  const { earlier, by } = overlap;
  const loser = `SSM parameter ${earlier.from.name} (version ${earlier.from.version})`;
  const winner = `SSM parameter ${by.from.name} (version ${by.from.version}) in a later prefix`;
  const at = by.path.join('.');
  if (overlap.kind === 'trimmed') return `${loser}: rendered without ${at}, where ${winner} wins`;
  switch (overlap.reason) {
    case 'covered':
      return `${loser}: not rendered, as ${winner} sets ${at}, which holds it`;
    case 'emptied':
      return `${loser}: not rendered, as ${winner} sets ${at}, the last of what it set`;
    case 'not-a-set':
      return `${loser}: not rendered, as ${winner} sets ${at}, inside this value where it holds no attribute set`;
  }
}

function plain(p: SsmParameter, where: string): string {
  if (typeof p.value !== 'string') {
    throw new InvalidInputError('a SecureString here would put its value into the Nix store; use secrets/<name>', where);
  }
  return p.value;
}

/**
 * Names under a prefix that cannot be meant for anything but the agent, yet cannot work: a known kind
 * in another case (`Options/x`: SSM names are case-sensitive, so it would be ignored while looking
 * set), a folder kind without a name, or `system` used as a folder. Rejected, so the mistake is seen.
 * Names of other kinds may belong to other tools sharing the prefix: those are only noted.
 */
function nameProblem(kind: string, rest: string, hasSlash: boolean): string | undefined {
  const known = KINDS.find((k) => k.toLowerCase() === kind.toLowerCase());
  if (known === undefined) return undefined;
  const expected = known === 'system' ? 'system' : `${known}/`;
  if (known !== kind) return `"${kind}" is not a kind this agent reads; SSM names are case-sensitive: did you mean ${expected}?`;
  if (known === 'system') return hasSlash ? '"system" is one parameter, not a folder: nothing may be named below it' : undefined;
  if (rest === '') {
    return known === 'options'
      ? 'options/ needs an option path after it (e.g. options/services.nginx.enable)'
      : `${known}/ needs a name after it (e.g. ${known}/web)`;
  }
  return undefined;
}

function optionValue(p: SsmParameter, where: string): Json {
  const text = plain(p, where);
  if (p.type === 'StringList') {
    const items = text.split(',');
    if (items.some((item) => LONE_SURROGATE.test(item))) throw new InvalidInputError('a StringList item holds a lone UTF-16 surrogate', where);
    return items;
  }
  try {
    return parseJson(text);
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    throw new InvalidInputError(`value is not JSON (${err.message}); a string option is written with quotes, e.g. "\\"web-1\\""`, where);
  }
}

function checkName(name: string, where: string, what: string): void {
  // 255 bytes is the usual file name limit; `.nix` is added to module names.
  if (!NAME.test(name) || name === '.' || name === '..' || name.includes('/') || name.length > 250) {
    throw new InvalidInputError(
      `${what} name "${name}" must be one path segment of at most 250 letters, digits, _ . - (it names a file and must not leave its directory)`,
      where,
    );
  }
}

/** A short, readable form of a desired-state hash. */
export function shortHash(hash: string): string {
  return hash.slice(0, 12);
}
