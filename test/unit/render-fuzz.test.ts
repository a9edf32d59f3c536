// Fuzzing the two interpreters of hostile text: option values (SSM parameter → desired state →
// options.nix, read back by the real evaluator) and user data (bytes → what is run or rendered).
// Bounded for CI: FUZZ_RUNS (default 4) batches of generated inputs per property; raise it for a
// longer run, e.g. FUZZ_RUNS=200 node --test dist/test/unit/render-fuzz.test.js. A failure prints
// fast-check's seed and path, to replay it.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { parseJson } from '../../agent/desired/json.js';
import { InvalidInputError } from '../../agent/errors.js';
import { renderPlan } from '../../agent/render/render.js';
import { NixParser } from '../../agent/render/validate.js';
import { ProcessRunner } from '../../agent/runner.js';
import { interpretUserData } from '../../agent/sources/userdata.js';
import { desired, param, ssm } from '../support/desired.js';
import { NIX_MISSING, canonicalJson, nixAvailable, withTempDir } from '../support/nix.js';
import { readBackOptions } from '../support/readback.js';

const RUNS = Math.max(1, Number(process.env['FUZZ_RUNS'] ?? '4') || 4);
const nix = nixAvailable() ? {} : { skip: NIX_MISSING };
const PREFIX = '/nixos/fleet';

const FRAGMENTS = ['$', '${', '$${', '}', '{', '\\', '"', "'", "''", "''$", "''\\", '\n', '\r', '\t', '#', '/*', '*/', ';', ' = ', 'x', 'é', '😀', '\u2028', '\ufeff', '\u0001', ' '];
const hostile = fc.oneof(
  fc.array(fc.constantFrom(...FRAGMENTS), { maxLength: 8 }).map((p) => p.join('')),
  fc.string({ unit: 'binary', maxLength: 10 }),
);
/** Names a JSON text may use as keys: hostile ones, and the module system's vocabulary. */
const key = fc.oneof(
  { weight: 4, arbitrary: hostile },
  fc.constantFrom('_type', '_module', 'imports', '__functor', '__proto__', 'key', 'config', 'if', 'or', '', 'a.b'),
);

/** A JSON number token: integers near and past 64 bits, floats with and without exponents. */
const numberToken = fc
  .tuple(
    fc.boolean(),
    fc.oneof(fc.nat(1000).map(String), fc.bigInt({ min: 0n, max: 2n ** 66n }).map(String), fc.stringMatching(/^[1-9][0-9]{0,24}$/)),
    fc.option(fc.stringMatching(/^[0-9]{1,20}$/), { nil: undefined }),
    fc.option(fc.tuple(fc.constantFrom('e', 'E'), fc.constantFrom('', '+', '-'), fc.integer({ min: 0, max: 420 })), { nil: undefined }),
  )
  .map(([neg, int, frac, exp]) => `${neg ? '-' : ''}${int}${frac === undefined ? '' : `.${frac}`}${exp === undefined ? '' : `${exp[0]}${exp[1]}${exp[2]}`}`);

/** JSON text, written by hand so that numbers keep their exact tokens. */
const jsonText: fc.Arbitrary<string> = fc.letrec<{ value: string }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.constantFrom('null', 'true', 'false'),
    numberToken,
    hostile.map((s) => JSON.stringify(s)),
    fc.array(tie('value'), { maxLength: 4 }).map((items) => `[${items.join(',')}]`),
    fc.array(fc.tuple(key, tie('value')), { maxLength: 4 }).map((entries) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}: ${v}`).join(', ')}}`),
  ),
})).value;

const segment = fc.oneof(fc.stringMatching(/^[A-Za-z][A-Za-z0-9_'-]{0,5}$/), fc.constantFrom('if', 'rec', 'or', '_x', 'a b', ''));
const option = fc.record({
  path: fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join('.')),
  text: fc.oneof({ weight: 5, arbitrary: jsonText }, fc.string({ maxLength: 12 }), fc.integer({ min: 1, max: 120 }).map((d) => '['.repeat(d) + ']'.repeat(d))),
});

describe('fuzz: option values through the renderer and the real evaluator', () => {
  let rendered = 0;
  let rejected = 0;

  it('renders each value to Nix that reads back exactly, in an unchanged structure, or rejects it naming the parameter', nix, async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(option, { minLength: 80, maxLength: 120 }), async (options) => {
        const batch: { path: string[]; text: string; optionsNix: string }[] = [];
        for (const [i, o] of options.entries()) {
          const name = `${PREFIX}/options/${o.path}`;
          let optionsNix: string | undefined;
          try {
            const plan = renderPlan(desired({ ssm: ssm([PREFIX, [param(name, o.text, { version: i + 1 })]]) }));
            optionsNix = plan.parts.find((p) => p.path.endsWith('/options.nix'))?.text;
          } catch (err) {
            if (!(err instanceof InvalidInputError)) throw err;
            assert.ok(err.where.startsWith(`SSM parameter ${name} (version ${i + 1})`), err.message);
            rejected++;
            continue;
          }
          assert.ok(optionsNix !== undefined, name);
          batch.push({ path: o.path.split('.'), text: o.text, optionsNix });
        }
        if (batch.length === 0) return;
        const results = await readBackOptions(batch.map((b) => ({ optionsNix: b.optionsNix, path: b.path, json: b.text })));
        for (const [i, b] of batch.entries()) {
          const r = results[i];
          assert.ok(r);
          assert.deepEqual([r.args, r.top, r.shape], [[], ['imports'], [['config']]], b.text);
          assert.deepEqual(r.spine, [['config'], ...b.path.map((s) => [s])], b.text);
          assert.deepStrictEqual(r.got, r.want, b.text);
          assert.deepStrictEqual(r.got, canonicalJson(parseJson(b.text)), b.text);
        }
        rendered += batch.length;
      }),
      { numRuns: RUNS, endOnFailure: true },
    );
  });

  it('both rendered and rejected a fair share', nix, () => {
    console.log(`fuzz options: ${rendered} rendered and read back, ${rejected} rejected (FUZZ_RUNS=${RUNS})`);
    assert.ok(rendered >= 20 * RUNS && rejected >= 5 * RUNS, `${rendered} rendered, ${rejected} rejected`);
  });
});

const UD_FRAGMENTS = ['#!', '#!/bin/sh\n', '###', '### https://x/y ch\n', '# c\n', 'SSH_HOST_', '{ }', '${', "''", '\n', '\r\n', ' ', '\ufeff', 'é', '😀', '\0'];
const userDataBytes = fc
  .tuple(
    fc.oneof(
      fc.array(fc.constantFrom(...UD_FRAGMENTS), { maxLength: 10 }).map((p) => Buffer.from(p.join(''))),
      fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
      fc.tuple(fc.string({ maxLength: 20 }), fc.uint8Array({ maxLength: 4 })).map(([s, tail]) => Buffer.concat([Buffer.from(s), Buffer.from(tail)])),
      fc.integer({ min: 16 * 1024 - 2, max: 16 * 1024 + 2 }).map((n) => Buffer.alloc(n, 0x20)),
    ),
    fc.boolean(),
  )
  .map(([bytes, gzip]) => ({ bytes, raw: gzip ? gzipSync(bytes) : bytes }));

describe('fuzz: the user-data interpreter', () => {
  it('keeps the bytes exactly or rejects them as user data; what it renders parses as the bytes do', nix, async () => {
    const parser = new NixParser(new ProcessRunner(process.env));
    let texts = 0;
    await withTempDir(async (dir) => {
      await fc.assert(
        fc.asyncProperty(fc.array(userDataBytes, { minLength: 60, maxLength: 80 }), async (inputs) => {
          const pairs: { rendered: string; original: string }[] = [];
          for (const [i, { bytes, raw }] of inputs.entries()) {
            let ud;
            try {
              ud = interpretUserData(raw);
            } catch (err) {
              if (!(err instanceof InvalidInputError)) throw err;
              assert.equal(err.where, 'user data');
              continue;
            }
            if (ud.kind === 'script') assert.ok(ud.script.equals(bytes));
            if (ud.kind !== 'nix') continue;
            assert.ok(Buffer.from(ud.text, 'utf8').equals(bytes), 'the text is not the bytes');
            const plan = renderPlan(desired({ userData: ud.text }));
            const part = plan.parts.find((p) => p.path.endsWith('/user-data.nix'));
            assert.ok(part && part.text === ud.text);
            const rendered = join(dir, `r${i}.nix`);
            const original = join(dir, `b${i}.nix`);
            await writeFile(rendered, part.text);
            await writeFile(original, bytes);
            pairs.push({ rendered, original });
          }
          texts += pairs.length;
          // The same verdict, at the same place, for what was sent and what is written.
          const errors = await parser.check(pairs.flatMap((p) => [p.rendered, p.original]));
          const byFile = new Map(errors.map((e) => [e.file, `${e.line}:${e.column} ${e.message}`]));
          for (const p of pairs) assert.equal(byFile.get(p.rendered), byFile.get(p.original), p.rendered);
        }),
        { numRuns: RUNS, endOnFailure: true },
      );
    });
    console.log(`fuzz user data: ${texts} Nix texts rendered and parsed (FUZZ_RUNS=${RUNS})`);
  });
});
