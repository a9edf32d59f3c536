// The lossless JSON reader for option values: the same grammar as JSON.parse, every number kept as
// written where a double would alter it, and the ambiguities JSON.parse settles silently refused.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { JsonSyntaxError, parseJson } from '../../agent/desired/json.js';
import { JsonNumber, MAX_DEPTH, type Json } from '../../agent/render/nix.js';

/** parseJson's result with every JsonNumber as the double JSON.parse would give. */
function asDoubles(v: Json): unknown {
  if (v instanceof JsonNumber) return Number(v.text);
  if (Array.isArray(v)) return v.map(asDoubles);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, asDoubles(x)]));
  return v;
}

function hasDuplicateKeysOrLoneSurrogates(text: string): boolean {
  try {
    parseJson(text);
    return false;
  } catch (err) {
    return err instanceof JsonSyntaxError && /twice|surrogate|byte order|deeper/.test(err.message);
  }
}

describe('parseJson', () => {
  it('reads what JSON.parse reads, to the same value', () => {
    fc.assert(
      fc.property(fc.json({ maxDepth: 6 }), (text) => {
        assert.deepStrictEqual(asDoubles(parseJson(text)), JSON.parse(text));
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses what JSON.parse refuses', () => {
    const near = fc.oneof(
      fc.string({ maxLength: 12 }),
      fc.json().map((t) => t.slice(0, -1)),
      fc.json().chain((t) => fc.nat(t.length).map((i) => `${t.slice(0, i)}${t.slice(i + 1)}`)),
      fc.constantFrom('01', '1.', '.5', '-', '+1', '1e', '[1,]', '{"a":1,}', 'nul', 'tru', '"\\x"', '"\t"', "'a'", 'NaN', 'Infinity', '1 2'),
    );
    fc.assert(
      fc.property(near, (text) => {
        let native = true;
        try {
          JSON.parse(text);
        } catch {
          native = false;
        }
        if (native && !hasDuplicateKeysOrLoneSurrogates(text)) assert.doesNotThrow(() => parseJson(text), text);
        if (!native) assert.throws(() => parseJson(text), JsonSyntaxError, text);
      }),
      { numRuns: 3000 },
    );
  });

  it('keeps every float and every large integer as written; safe integers are numbers', () => {
    assert.deepStrictEqual(parseJson('[1.0, 1e2, -0.0, 9007199254740993, -0, 42, -9007199254740991]'), [
      new JsonNumber('1.0'),
      new JsonNumber('1e2'),
      new JsonNumber('-0.0'),
      new JsonNumber('9007199254740993'),
      0,
      42,
      -9007199254740991,
    ]);
  });

  it('keeps a key named __proto__ as an own key', () => {
    const v = parseJson('{"__proto__": {"x": 1}, "a": 2}') as Record<string, Json>;
    assert.ok(Object.hasOwn(v, '__proto__'));
    assert.deepStrictEqual(Object.keys(v), ['__proto__', 'a']);
  });

  it('refuses duplicate keys, lone surrogates, a BOM and nesting past MAX_DEPTH, with the offset', () => {
    for (const [text, pattern] of [
      ['{"a":1,"a":2}', /"a" appears twice.* offset 7/],
      ['"\\ud800"', /lone UTF-16 surrogate/],
      ['"\\udc00\\ud800"', /lone UTF-16 surrogate/],
      ['"x\ud800"', /lone UTF-16 surrogate/],
      ['\ufeff1', /byte order mark/],
      [`${'['.repeat(MAX_DEPTH + 1)}${']'.repeat(MAX_DEPTH + 1)}`, /deeper than 100/],
    ] as const) {
      assert.throws(() => parseJson(text), (err: unknown) => err instanceof JsonSyntaxError && pattern.test(err.message), text);
    }
    assert.deepStrictEqual(parseJson('"\\ud83d\\ude00\ud83d\ude00"'), '😀😀');
    assert.doesNotThrow(() => parseJson(`${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`));
  });

  it('does not exhaust the stack on very deep input', () => {
    assert.throws(() => parseJson('['.repeat(1_000_000)), JsonSyntaxError);
  });
});
