// Pure: the options of each prefix, in precedence order → the definitions to render. A later prefix
// wins over every earlier definition it overlaps, whichever of the two paths is the longer: left to
// the module system, two prefixes setting `time.timeZone` and `time = { timeZone = …; }` are two
// equal-priority definitions of one option, a conflict that fails evaluation (or, for a list, a
// concatenation nobody asked for), where one with the same path was simply replaced.
import { JsonNumber, type Json } from '../render/nix.js';
import type { DesiredOption } from './desired.js';

/** What a later definition did to an earlier one from another prefix. */
export type Overlap =
  /** Same path: the later one replaced it, in its place (a layer overriding a default, no news). */
  | { readonly kind: 'replaced'; readonly earlier: DesiredOption; readonly by: DesiredOption }
  /** The later path lies inside the earlier value: that part of it is left out, the rest stays. */
  | { readonly kind: 'trimmed'; readonly earlier: DesiredOption; readonly by: DesiredOption }
  /**
   * Nothing of it is left: the later path is above it (`covered`), lies inside it where its value
   * holds no attribute set (`not-a-set`), or took every attribute it set (`emptied`).
   */
  | { readonly kind: 'dropped'; readonly earlier: DesiredOption; readonly by: DesiredOption; readonly reason: 'covered' | 'not-a-set' | 'emptied' };

export interface Layered {
  /** In render order: an option keeps the place of the first definition at its path. */
  readonly options: readonly DesiredOption[];
  /** In the order they happened. */
  readonly overlaps: readonly Overlap[];
}

interface Node {
  readonly children: Map<string, Node>;
  /** The definition at exactly this path that later layers may still override. */
  option?: DesiredOption;
}

/**
 * Lays the layers over each other, first to last. Within one layer (one prefix) definitions have
 * no order that means anything, so they never override each other: overlapping paths there stay
 * separate definitions that the module system merges, as it merges two modules.
 */
export function layerOptions(layers: readonly (readonly DesiredOption[])[]): Layered {
  // Keyed by the parsed segments, never by the dotted text, so that one path has one key however
  // its name was spelled.
  const kept = new Map<string, DesiredOption>();
  const root: Node = { children: new Map() };
  const overlaps: Overlap[] = [];

  const drop = (earlier: DesiredOption, by: DesiredOption, reason: 'covered' | 'not-a-set' | 'emptied', node: Node): void => {
    delete node.option;
    kept.delete(keyOf(earlier.path));
    overlaps.push({ kind: 'dropped', earlier, by, reason });
  };

  for (const layer of layers) {
    // Every definition of this layer is resolved against the earlier layers before any of them is
    // added, so that they cannot override each other.
    for (const later of layer) {
      let node: Node | undefined = root;
      for (let depth = 0; depth < later.path.length && node !== undefined; depth++) {
        node = node.children.get(later.path[depth] as string);
        const earlier = node?.option;
        if (node === undefined || earlier === undefined) continue;
        if (depth === later.path.length - 1) {
          // Detached from the tree, not from `kept`: the later definition takes its place there.
          delete node.option;
          overlaps.push({ kind: 'replaced', earlier, by: later });
          continue;
        }
        const trimmed = without(earlier.value, later.path.slice(depth + 1));
        if (trimmed === 'not-a-set') drop(earlier, later, 'not-a-set', node);
        else if (trimmed === 'empty') drop(earlier, later, 'emptied', node);
        else if (trimmed !== earlier.value) {
          const left = { ...earlier, value: trimmed };
          node.option = left;
          kept.set(keyOf(earlier.path), left);
          overlaps.push({ kind: 'trimmed', earlier, by: later });
        }
      }
      if (node === undefined) continue;
      // The later value stands for its whole subtree: a definition below it would reach into it.
      const below: Node[] = [...node.children.values()];
      for (let next = below.pop(); next !== undefined; next = below.pop()) {
        if (next.option !== undefined) drop(next.option, later, 'covered', next);
        below.push(...next.children.values());
      }
    }
    for (const option of layer) {
      let node = root;
      for (const segment of option.path) {
        let child = node.children.get(segment);
        if (child === undefined) node.children.set(segment, (child = { children: new Map() }));
        node = child;
      }
      node.option = option;
      kept.set(keyOf(option.path), option);
    }
  }
  return { options: [...kept.values()], overlaps };
}

function keyOf(path: readonly string[]): string {
  return JSON.stringify(path);
}

function isAttrs(v: Json | undefined): v is { [k: string]: Json } {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof JsonNumber);
}

/**
 * `value` without what it sets at `rest`: the same object when it sets nothing there, `not-a-set`
 * when a value on the way is not an attribute set (the later path cannot lie inside it), `empty`
 * when nothing else is left. Attribute sets emptied on the way go too: the later definition defines
 * them anyway, and an empty one left behind would still overlap it. Copies only along `rest`.
 */
function without(value: Json, rest: readonly string[]): Json | 'not-a-set' | 'empty' {
  if (!isAttrs(value)) return 'not-a-set';
  const [head, ...tail] = rest as [string, ...string[]];
  if (!Object.hasOwn(value, head)) return value;
  const inner = tail.length === 0 ? 'empty' : without(value[head] as Json, tail);
  if (inner === 'not-a-set') return inner;
  if (inner === value[head]) return value;
  // fromEntries defines own properties: a key named `__proto__` stays a key like any other.
  const entries = Object.entries(value).flatMap(([k, v]): [string, Json][] => (k !== head ? [[k, v]] : inner === 'empty' ? [] : [[k, inner]]));
  return entries.length === 0 ? 'empty' : Object.fromEntries(entries);
}
