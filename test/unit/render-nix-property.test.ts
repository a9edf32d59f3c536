// Random JSON values, many of them built from what is special in Nix strings, rendered with nixValue
// and evaluated by the real evaluator: what comes back must be exactly what went in. Values are
// evaluated in batches, one nix-instantiate call per batch.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InvalidInputError } from '../../agent/errors.js';
import { nixString, nixValue, renderOptionsModule, type Json } from '../../agent/render/nix.js';
import { NIX_CANONICAL, NIX_MISSING, canonicalJson, evalModuleOptions, evalNixJson, nixAvailable, withTempDir } from '../support/nix.js';

const nix = nixAvailable() ? {} : { skip: NIX_MISSING };

/** Pieces that mean something in Nix's double-quoted or indented strings, paths or comments. */
const FRAGMENTS = [
  '$', '${', '$${', '}', '{', '\\', '\\$', '"', "'", "''", "''$", "''\\", '\n', '\r', '\t', '#', '/*', '*/',
  '; ', ' = ', 'x', 'é', '☃', '😀', '\u2028', '\u0001', '\u007f', ' ', 'inherit', 'rec',
];

const hostileString = fc.oneof(
  fc.array(fc.constantFrom(...FRAGMENTS), { maxLength: 12 }).map((parts) => parts.join('')),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 20 }).filter((s) => !s.includes('\0')),
);

const number = fc.oneof(
  fc.integer(),
  fc.maxSafeInteger(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.constantFrom(-0, 0.1, 1e300, -1e300, 5e-324, 2 ** 53, 2 ** 63, 1e21, Number.MAX_VALUE, Number.MIN_SAFE_INTEGER),
);

const hostileValue: fc.Arbitrary<Json> = fc.letrec<{ value: Json }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    number,
    hostileString,
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(fc.oneof(hostileString, fc.constantFrom('__proto__', 'if', 'or', '__curPos', '', 'a.b')), tie('value'), {
      maxKeys: 5,
    }),
  ),
})).value;

const BATCH = { minLength: 150, maxLength: 200 };

function canContain(value: Json, bad: (s: string) => boolean): boolean {
  if (typeof value === 'string') return bad(value);
  if (Array.isArray(value)) return value.some((v) => canContain(v, bad));
  if (value !== null && typeof value === 'object') {
    return Object.entries(value).some(([k, v]) => bad(k) || canContain(v, bad));
  }
  return false;
}

describe('nixValue, evaluated', () => {
  let checked = 0;

  async function evalCanonical(value: Json): Promise<unknown> {
    return evalNixJson(`(${NIX_CANONICAL}) (${nixValue(value)})\n`);
  }

  /**
   * Renders the batch as one list, evaluates it once, and compares floats bit for bit. When the batch
   * fails, the values are tried one by one so the report names the value (shrinking a batch through
   * the evaluator would take minutes).
   */
  async function roundTrip(values: Json[]): Promise<void> {
    let batchFailure: unknown;
    try {
      assert.deepStrictEqual(await evalCanonical(values), canonicalJson(values));
      checked += values.length;
      return;
    } catch (err) {
      batchFailure = err;
    }
    for (const value of values) {
      let evaluated: unknown;
      try {
        evaluated = await evalCanonical(value);
      } catch (err) {
        assert.fail(`${JSON.stringify(value)} does not evaluate:\n${nixValue(value)}\n${String(err)}`);
      }
      assert.deepStrictEqual(evaluated, canonicalJson(value), `${JSON.stringify(value)} rendered as\n${nixValue(value)}`);
    }
    throw batchFailure;
  }

  it('gives back random JSON values', nix, async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.jsonValue({ maxDepth: 4 }) as fc.Arbitrary<Json>, BATCH), roundTrip),
      { numRuns: 8, endOnFailure: true },
    );
  });

  it('gives back random JSON values with any Unicode', nix, async () => {
    const unicodeJson = fc.jsonValue({ maxDepth: 3, stringUnit: 'binary' }) as fc.Arbitrary<Json>;
    await fc.assert(
      fc.asyncProperty(fc.array(unicodeJson.filter((v) => !canContain(v, (s) => s.includes('\0'))), BATCH), roundTrip),
      { numRuns: 5, endOnFailure: true },
    );
  });

  it('gives back values built from hostile strings, keys and numbers', nix, async () => {
    await fc.assert(fc.asyncProperty(fc.array(hostileValue, BATCH), roundTrip), { numRuns: 10, endOnFailure: true });
  });

  it('gives back hostile strings glued together', nix, async () => {
    await fc.assert(fc.asyncProperty(fc.array(hostileString, { minLength: 300, maxLength: 400 }), roundTrip), {
      numRuns: 4,
      endOnFailure: true,
    });
  });

  it('checked a few thousand values in all', nix, () => {
    assert.ok(checked >= 3000, `only ${checked} values were evaluated`);
  });
});

describe('nixValue, without the evaluator', () => {
  it('rejects exactly the strings no Nix string can hold', () => {
    const anyString = fc.oneof(hostileString, fc.string({ unit: 'binary' }), fc.constantFrom('\0', 'a\0', '\ud800', 'x\udfff'));
    fc.assert(
      fc.property(anyString, (s) => {
        const impossible = s.includes('\0') || /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
        if (impossible) assert.throws(() => nixString(s, 'here'), InvalidInputError);
        else assert.doesNotThrow(() => nixString(s, 'here'));
      }),
      { numRuns: 2000 },
    );
  });

  it('keeps each rendered string on one line between its quotes', () => {
    fc.assert(
      fc.property(hostileString, (s) => {
        const rendered = nixString(s);
        assert.ok(!/[\n\r]/.test(rendered));
        // Read as the lexer reads it: after an escape the next character is taken literally; an
        // unescaped `"` would end the string early, an unescaped `${` would start code.
        const inner = rendered.slice(1, -1);
        for (let i = 0; i < inner.length; i++) {
          if (inner[i] === '\\') i++;
          else assert.ok(inner[i] !== '"' && !(inner[i] === '$' && inner[i + 1] === '{'), rendered);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('renderOptionsModule, evaluated', () => {
  // No NixOS option path segment starts with `_` (the renderer refuses them).
  const segment = fc.stringMatching(/^[A-Za-z][A-Za-z0-9_'-]{0,6}$/);
  const leaf: fc.Arbitrary<Json> = fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), hostileString);
  const value: fc.Arbitrary<Json> = fc.oneof(
    leaf,
    fc.array(leaf, { maxLength: 3 }),
    // Names of the module system's vocabulary are refused (render-hostile.test.ts checks that).
    fc.dictionary(hostileString.filter((k) => !k.startsWith('__') && !['_type', '_module', '_class', '_file', 'require', 'imports', 'disabledModules', 'freeformType'].includes(k)), leaf, { maxKeys: 3 }),
  );

  function isPrefix(a: readonly string[], b: readonly string[]): boolean {
    return a.length <= b.length && a.every((s, i) => s === b[i]);
  }

  function expected(options: readonly { path: string[]; value: Json }[]): unknown {
    const root: Record<string, unknown> = {};
    for (const { path, value } of options) {
      let node = root;
      for (const s of path.slice(0, -1)) {
        if (!Object.hasOwn(node, s)) Object.defineProperty(node, s, { value: {}, enumerable: true, writable: true });
        node = node[s] as Record<string, unknown>;
      }
      Object.defineProperty(node, path.at(-1) as string, { value: JSON.parse(JSON.stringify(value)), enumerable: true, writable: true });
    }
    return root;
  }

  it('sets every option at its path', nix, async () => {
    const options = fc
      .uniqueArray(fc.array(segment, { minLength: 1, maxLength: 4 }), {
        maxLength: 12,
        comparator: (a, b) => isPrefix(a, b) || isPrefix(b, a),
      })
      .chain((paths) => fc.tuple(...paths.map((path) => fc.record({ path: fc.constant(path), value, comment: hostileString }))));
    await withTempDir(async (dir) => {
      const file = join(dir, 'options.nix');
      await fc.assert(
        fc.asyncProperty(options, async (opts) => {
          await writeFile(file, renderOptionsModule(opts));
          assert.deepStrictEqual(await evalModuleOptions(file), expected(opts));
        }),
        { numRuns: 25, endOnFailure: true },
      );
    });
  });
});
