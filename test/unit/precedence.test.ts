// Later prefixes win over every earlier option definition they overlap: properties of the layering
// over generated paths and values, and the rendered options read by the real nixpkgs lib's
// evalModules (NIXPKGS_LIB), where the prefixes laid side by side conflict.
// FUZZ_RUNS (default 4) scales the number of generated cases, as in render-fuzz.test.ts.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { DesiredOption, DesiredState } from '../../agent/desired/desired.js';
import { parseJson } from '../../agent/desired/json.js';
import { layerOptions } from '../../agent/desired/precedence.js';
import { JsonNumber, nixString, renderOptionsModule, type Json } from '../../agent/render/nix.js';
import { renderPlan } from '../../agent/render/render.js';
import { desired, param, ssm } from '../support/desired.js';
import { NIX_MISSING, evalNixJson, nixAvailable, withTempDir } from '../support/nix.js';

const RUNS = Math.max(1, Number(process.env['FUZZ_RUNS'] ?? '4') || 4);

type Path = readonly string[];

/** Every place a definition sets a value that is not an attribute set: what can conflict. */
function leaves(path: Path, value: Json): Path[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof JsonNumber) return [path];
  return Object.entries(value).flatMap(([k, v]) => leaves([...path, k], v));
}

function startsWith(path: Path, prefix: Path): boolean {
  return prefix.length <= path.length && prefix.every((s, i) => path[i] === s);
}

/** One sets something at or below where the other does: the module system would see both. */
function related(p: Path, q: Path): boolean {
  return startsWith(p, q) || startsWith(q, p);
}

/** Whether `def`'s value has an attribute at `p`, an empty attribute set included. */
function holds(def: DesiredOption, p: Path): boolean {
  if (!startsWith(p, def.path)) return false;
  let v: Json | undefined = def.value;
  for (const s of p.slice(def.path.length)) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof JsonNumber || !Object.hasOwn(v, s)) return false;
    v = v[s];
  }
  return true;
}

// Few segment names, so that generated paths overlap often.
const segment = fc.constantFrom('a', 'b', 'c');
const path = fc.array(segment, { minLength: 1, maxLength: 3 });
const value: fc.Arbitrary<Json> = fc.letrec<{ value: Json }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.oneof(fc.integer({ min: -3, max: 3 }), fc.constantFrom('x', 'y'), fc.constant(null), fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 2 })),
    fc.dictionary(segment, tie('value'), { maxKeys: 3, noNullPrototype: true }),
  ),
})).value;
/** One prefix: its parameter names are unique, so are its paths. */
const layer = fc.uniqueArray(fc.tuple(path, value), { selector: ([p]) => p.join('.'), maxLength: 4 });
const layers = fc.array(layer, { minLength: 1, maxLength: 4 }).map((ls) =>
  ls.map((l, i) => l.map(([p, v]): DesiredOption => ({ path: p, value: v, from: { name: `/p${i}/options/${p.join('.')}`, version: 1 } }))),
);
const layerOf = (o: DesiredOption): number => Number(/^\/p(\d+)\//.exec(o.from.name)?.[1]);

describe('layerOptions: properties', () => {
  it('never leaves definitions from two prefixes that set the same place', () => {
    fc.assert(
      fc.property(layers, (ls) => {
        const out = layerOptions(ls).options;
        for (const x of out) {
          for (const y of out) {
            if (layerOf(x) === layerOf(y)) continue;
            for (const lx of leaves(x.path, x.value)) {
              for (const ly of leaves(y.path, y.value)) assert.ok(!related(lx, ly), `${x.from.name} and ${y.from.name} both set ${lx.join('.')} / ${ly.join('.')}`);
            }
            // Nor one at or below a later prefix's path, even where the later value sets nothing.
            if (layerOf(y) < layerOf(x)) assert.ok(!startsWith(y.path, x.path), `${y.from.name} is under ${x.from.name}`);
          }
        }
      }),
      { numRuns: 100 * RUNS },
    );
  });

  it('keeps every definition of the last prefix as it is', () => {
    fc.assert(
      fc.property(layers, (ls) => {
        const out = layerOptions(ls).options;
        for (const o of ls.at(-1) ?? []) assert.ok(out.includes(o), o.from.name);
      }),
      { numRuns: 100 * RUNS },
    );
  });

  it('only ever takes away, and only what a later prefix sets', () => {
    fc.assert(
      fc.property(layers, (ls) => {
        const out = layerOptions(ls).options;
        const byName = new Map(out.map((o) => [o.from.name, o]));
        for (const [i, l] of ls.entries()) {
          const later = ls.slice(i + 1).flat();
          for (const input of l) {
            const result = byName.get(input.from.name);
            const before = leaves(input.path, input.value);
            const after = result === undefined ? [] : leaves(result.path, result.value);
            if (result !== undefined) assert.deepEqual(result.path, input.path);
            // What is left is part of what was set, with the same values.
            for (const leaf of after) assert.ok(before.some((b) => b.join('\0') === leaf.join('\0')), `${input.from.name} gained ${leaf.join('.')}`);
            const overlapped = later.some(
              (o) =>
                startsWith(input.path, o.path) ||
                holds(input, o.path) ||
                before.some((b) => startsWith(o.path, b) || leaves(o.path, o.value).some((lo) => related(b, lo))),
            );
            if (!overlapped) {
              assert.equal(result, input, `${input.from.name} changed with nothing overlapping it`);
              continue;
            }
            for (const lost of before.filter((b) => !after.some((a) => a.join('\0') === b.join('\0')))) {
              // Under a later path, or the whole definition went because a later path lies inside
              // a value of it that is not an attribute set.
              const covered = later.some((o) => startsWith(lost, o.path));
              const inside = result === undefined && later.some((o) => before.some((b) => startsWith(o.path, b) && o.path.length > b.length));
              assert.ok(covered || inside, `${input.from.name} lost ${lost.join('.')} that no later prefix sets`);
            }
          }
        }
      }),
      { numRuns: 100 * RUNS },
    );
  });

  it('is what buildDesired renders, in the prefixes\' order', () => {
    fc.assert(
      fc.property(layers, (ls) => {
        const d = desired({
          ssm: ssm(...ls.map((l, i): [string, ReturnType<typeof param>[]] => [`/p${i}`, l.map((o) => param(o.from.name, JSON.stringify(o.value)))])),
        });
        const expected = layerOptions(ls.map((l) => [...l].sort((x, y) => (x.from.name < y.from.name ? -1 : 1)))).options;
        assert.deepEqual(
          d.options.map((o) => [o.from.name, o.value]),
          expected.map((o) => [o.from.name, o.value]),
        );
      }),
      { numRuns: 50 * RUNS },
    );
  });
});

const lib = process.env['NIXPKGS_LIB'];
const withLib = !nixAvailable() ? { skip: NIX_MISSING } : lib === undefined || lib === '' ? { skip: 'NIXPKGS_LIB is not set' } : {};

/** The options as NixOS declares them (nixos/modules/config/locale.nix, services/networking/firewall.nix). */
const IMAGE = `{ lib, ... }: {
  options.time.timeZone = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; };
  options.time.hardwareClockInLocalTime = lib.mkOption { type = lib.types.bool; default = false; };
  options.networking.firewall.allowedTCPPorts = lib.mkOption { type = lib.types.listOf lib.types.port; default = [ ]; };
}`;

/** options.nix as the agent renders it for `d`, evaluated with the image's options by the real lib. */
async function evaluateRendered(text: string): Promise<unknown> {
  return withTempDir(async (dir) => {
    const file = join(dir, 'options.nix');
    await writeFile(file, text);
    return evalNixJson(`
let
  lib = import ${nixString(lib as string)};
  config = (lib.evalModules { modules = [ (${IMAGE}) ${nixString(file)} ]; }).config;
in { inherit (config.time) timeZone hardwareClockInLocalTime; ports = config.networking.firewall.allowedTCPPorts; }
`);
  });
}

function optionsNix(d: DesiredState): string {
  const part = renderPlan(d).parts.find((p) => p.path.endsWith('/options.nix'));
  assert.ok(part, 'no options.nix rendered');
  return part.text;
}

describe('overlapping option paths in the real module system', () => {
  const FLEET = '/nixos/fleet';
  const INSTANCE = '/nixos/instance/i-0123456789abcdef0';
  const cases: { name: string; fleet: [string, string][]; instance: [string, string][]; expected: unknown }[] = [
    {
      name: 'a later object above an earlier leaf',
      fleet: [['time.timeZone', '"UTC"']],
      instance: [['time', '{"timeZone":"Europe/Paris"}']],
      expected: { timeZone: 'Europe/Paris', hardwareClockInLocalTime: false, ports: [] },
    },
    {
      name: 'a later leaf inside an earlier object',
      fleet: [['time', '{"timeZone":"UTC","hardwareClockInLocalTime":true}']],
      instance: [['time.timeZone', '"Europe/Paris"']],
      expected: { timeZone: 'Europe/Paris', hardwareClockInLocalTime: true, ports: [] },
    },
    {
      name: 'a later list inside an earlier object (the two lists were concatenated)',
      fleet: [['networking.firewall', '{"allowedTCPPorts":[22]}']],
      instance: [['networking.firewall.allowedTCPPorts', '[443]']],
      expected: { timeZone: null, hardwareClockInLocalTime: false, ports: [443] },
    },
  ];

  for (const c of cases) {
    it(`${c.name}: the later prefix wins`, withLib, async () => {
      const params = (prefix: string, defs: [string, string][]) => defs.map(([p, v]) => param(`${prefix}/options/${p}`, v));
      const d = desired({ ssm: ssm([FLEET, params(FLEET, c.fleet)], [INSTANCE, params(INSTANCE, c.instance)]) });
      assert.deepEqual(await evaluateRendered(optionsNix(d)), c.expected);
      // The oracle can fail: both definitions laid side by side, as they were rendered before.
      const sideBySide = renderOptionsModule([...c.fleet, ...c.instance].map(([p, v]) => ({ path: p.split('.'), value: parseJson(v) })));
      const before = await evaluateRendered(sideBySide).catch((err: Error) => err);
      if (before instanceof Error) assert.match(before.message, /conflicting definition values/);
      else assert.notDeepEqual(before, c.expected);
    });
  }
});
