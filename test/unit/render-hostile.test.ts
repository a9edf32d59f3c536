// The hostile corpus (test/fixtures/hostile/): SSM parameters, user data and agent configuration
// files built to break the renderer. Each input either renders to Nix that the real evaluator reads
// back as exactly the input, with the structure of the rendered configuration unchanged, or is
// rejected with an InvalidInputError naming it. Anything else thrown is a crash and fails the test.
// Evaluation is batched: one nix-instantiate call for all option values.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { loadConfig } from '../../agent/config.js';
import { parseJson } from '../../agent/desired/json.js';
import { InvalidInputError } from '../../agent/errors.js';
import { nixString, type Json } from '../../agent/render/nix.js';
import type { DesiredState } from '../../agent/desired/desired.js';
import { renderPlan, type RenderPlan } from '../../agent/render/render.js';
import { NixParser } from '../../agent/render/validate.js';
import { ProcessRunner } from '../../agent/runner.js';
import type { SsmParameter } from '../../agent/sources/ssm.js';
import { interpretUserData, type UserData } from '../../agent/sources/userdata.js';
import { desired, param, ssm } from '../support/desired.js';
import { NIX_MISSING, canonicalJson, evalNixFileJson, nixAvailable, withTempDir } from '../support/nix.js';
import { readBackOptions } from '../support/readback.js';

const HOSTILE = fileURLToPath(new URL('../../../test/fixtures/hostile/', import.meta.url));
const PREFIX = '/nixos/fleet';
const nix = nixAvailable() ? {} : { skip: NIX_MISSING };

interface ParameterCase {
  readonly why: string;
  readonly name: string;
  readonly type: SsmParameter['type'];
  readonly value: string;
  readonly expect: 'render' | 'reject' | 'note' | 'parse-error';
}

const GROUPS = ['injection', 'names', 'numbers', 'vocabulary', 'unicode', 'size', 'modules', 'secrets'];
const parameters: ParameterCase[] = GROUPS.flatMap((g) => JSON.parse(readFileSync(join(HOSTILE, 'parameters', `${g}.json`), 'utf8')) as ParameterCase[]);
const userDataCases = JSON.parse(readFileSync(join(HOSTILE, 'user-data', 'cases.json'), 'utf8')) as {
  file: string;
  expect: UserData['kind'] | 'reject';
  why: string;
  /** Kept exactly, and then refused by the Nix parser (the gate before anything is switched). */
  parseError?: boolean;
}[];
const configCases = JSON.parse(readFileSync(join(HOSTILE, 'config', 'cases.json'), 'utf8')) as {
  file: string;
  expect: 'accept' | 'reject';
  why: string;
  field?: string;
  /** Where the error says the fault is (line and column, or byte offset), or what it is. */
  says?: string;
}[];

const label = (c: { why: string; name?: string; file?: string }) => `${(c.name ?? c.file ?? '').slice(0, 80)} (${c.why})`;

/** Runs `fn`; an InvalidInputError is returned, anything else thrown is a crash and propagates. */
function attempt<T>(fn: () => T): { ok: T } | { rejected: InvalidInputError } {
  try {
    return { ok: fn() };
  } catch (err) {
    if (err instanceof InvalidInputError) return { rejected: err };
    throw err;
  }
}

type Outcome =
  | { readonly kind: 'reject'; readonly error: InvalidInputError }
  | { readonly kind: 'note' }
  | { readonly kind: 'render'; readonly plan: RenderPlan; readonly desired: DesiredState }
  /** Anything but an InvalidInputError: a bug. */
  | { readonly kind: 'crash'; readonly error: unknown };

function outcomeOf(c: ParameterCase): Outcome {
  let result;
  try {
    result = attempt(() => {
      const d = desired({ ssm: ssm([PREFIX, [param(c.name, c.value, { type: c.type, version: 3 })]]) });
      return { d, plan: renderPlan(d) };
    });
  } catch (err) {
    return { kind: 'crash', error: err };
  }
  if ('rejected' in result) return { kind: 'reject', error: result.rejected };
  const { d, plan } = result.ok;
  if (d.options.length + d.modules.length + d.secrets.length === 0) {
    assert.ok(d.notes.some((n) => n.includes(c.name)), `${label(c)}: neither read nor noted`);
    return { kind: 'note' };
  }
  return { kind: 'render', plan, desired: d };
}

const outcomes = new Map(parameters.map((c) => [c, outcomeOf(c)]));

describe('the hostile corpus', () => {
  it('has at least 200 inputs', () => {
    const total = parameters.length + userDataCases.length + configCases.length;
    assert.ok(total >= 200, `${total} inputs`);
    console.log(`hostile corpus: ${parameters.length} parameters, ${userDataCases.length} user data, ${configCases.length} configuration files`);
  });

  it('rejects each parameter it expects to, naming the parameter and its version, and no other', () => {
    for (const [c, outcome] of outcomes) {
      const expected = c.expect === 'parse-error' ? 'render' : c.expect;
      const detail = outcome.kind === 'reject' || outcome.kind === 'crash' ? String(outcome.kind === 'crash' ? outcome.error : outcome.error.message) : outcome.kind;
      assert.equal(outcome.kind, expected, `${label(c)}: ${detail}`);
      if (outcome.kind === 'reject') {
        // A value's error may say where inside the value; it starts with the parameter.
        assert.ok(outcome.error.where.startsWith(`SSM parameter ${c.name} (version 3)`), label(c));
        assert.ok(outcome.error.message.startsWith(`SSM parameter ${c.name} (version 3)`), label(c));
        assert.ok(!outcome.error.message.includes('\n') || /\n/.test(c.name), `${label(c)}: not one line`);
        if (c.type === 'SecureString' && c.value.length >= 3) assert.ok(!outcome.error.message.includes(c.value), `${label(c)}: the secret is in the message`);
      }
    }
  });

  it('gives back every rendered option value exactly, in a configuration of unchanged structure', nix, async () => {
    const cases = [...outcomes].flatMap(([c, o]) => (o.kind === 'render' && c.name.includes('/options/') ? [{ c, plan: o.plan }] : []));
    assert.ok(cases.length >= 100, `${cases.length} rendered option values`);
    const results = await readBackOptions(
      cases.map(({ c, plan }) => {
        const part = plan.parts.find((p) => p.path.endsWith('/options.nix'));
        assert.ok(part, label(c));
        // A StringList is its items.
        const json = c.type === 'StringList' ? JSON.stringify(c.value.split(',')) : c.value;
        return { optionsNix: part.text, path: c.name.slice(`${PREFIX}/options/`.length).split('.'), json };
      }),
    );
    for (const [i, { c }] of cases.entries()) {
      const r = results[i];
      assert.ok(r, label(c));
      const path = c.name.slice(`${PREFIX}/options/`.length).split('.');
      assert.deepEqual([r.args, r.top, r.shape], [[], ['imports'], [['config']]], label(c));
      assert.deepEqual(r.spine, [['config'], ...path.map((s) => [s])], label(c));
      assert.deepStrictEqual(r.got, r.want, label(c));
      // And the agent's own reading of the text agrees with Nix's.
      const mine: Json = c.type === 'StringList' ? c.value.split(',') : parseJson(c.value);
      assert.deepStrictEqual(r.got, canonicalJson(mine), label(c));
    }
  });

  it('writes module texts exactly as given; the Nix parser rejects exactly the broken ones, naming them', nix, async () => {
    const cases = [...outcomes].flatMap(([c, o]) => (o.kind === 'render' && c.name.includes('/modules/') ? [{ c, plan: o.plan }] : []));
    assert.ok(cases.length >= 10);
    await withTempDir(async (dir) => {
      const files: string[] = [];
      for (const [i, { c, plan }] of cases.entries()) {
        const part = plan.parts.find((p) => p.path.includes('/modules/'));
        assert.ok(part, label(c));
        assert.equal(part.text, c.value.endsWith('\n') ? c.value : `${c.value}\n`, label(c));
        assert.equal(part.source, `SSM parameter ${c.name} (version 3)`);
        const file = join(dir, `m${i}.nix`);
        await writeFile(file, part.text);
        files.push(file);
      }
      const errors = await new NixParser(new ProcessRunner(process.env)).check(files);
      const failed = new Set(errors.map((e) => e.file));
      for (const [i, { c }] of cases.entries()) {
        assert.equal(failed.has(files[i] as string), c.expect === 'parse-error', label(c));
      }
    });
  });

  it('leaves configuration.nix importing exactly the rendered parts, whatever the input', nix, async () => {
    await withTempDir(async (dir) => {
      // Each rendered for a root of its own, and written there as /etc/nixos/configuration.nix.
      const plans = [...outcomes.values()].flatMap((o) => (o.kind === 'render' ? [o.desired] : [])).map((d, i) => renderPlan(d, join(dir, `r${i}`)));
      const entries: string[] = [];
      for (const [i, plan] of plans.entries()) {
        const file = join(dir, `r${i}`, plan.configuration.path);
        await mkdir(dirname(file), { recursive: true });
        await writeFile(file, plan.configuration.text);
        entries.push(`  (shape ${nixString(file)})`);
      }
      const check = join(dir, 'check.nix');
      await writeFile(
        check,
        `let shape = file: let c = import file { }; in { top = builtins.attrNames c; imports = map toString c.imports; };\nin [\n${entries.join('\n')}\n]\n`,
      );
      const results = (await evalNixFileJson(check)) as { top: string[]; imports: string[] }[];
      for (const [i, plan] of plans.entries()) {
        assert.deepEqual(results[i], { top: ['imports'], imports: plan.parts.map((p) => join(dir, `r${i}`, p.path)) }, plan.configuration.text);
      }
    });
  });

  it('keeps secret values out of every rendered file, giving modules only their paths', nix, async () => {
    const cases = [...outcomes].flatMap(([c, o]) => (o.kind === 'render' && c.name.includes('/secrets/') ? [{ c, plan: o.plan }] : []));
    assert.ok(cases.length >= 5);
    await withTempDir(async (dir) => {
      for (const [i, { c, plan }] of cases.entries()) {
        for (const part of [...plan.parts, plan.configuration]) {
          if (c.value.length >= 3) assert.ok(!part.text.includes(c.value), `${label(c)} in ${part.path}`);
        }
        const part = plan.parts.find((p) => p.path.endsWith('/secrets.nix'));
        assert.ok(part);
        const file = join(dir, `s${i}.nix`);
        await writeFile(file, `(import ${nixString(join(dir, `s${i}-module.nix`))} { }).config._module.args.ec2Secrets\n`);
        await writeFile(join(dir, `s${i}-module.nix`), part.text);
        const name = c.name.slice(`${PREFIX}/secrets/`.length);
        assert.deepEqual(await evalNixFileJson(file), { [name]: `/run/nixos-ec2-agent/secrets/${name}` }, label(c));
      }
    });
  });

  it('reads user data exactly or rejects it as user data; never a crash, never a silent rewrite', nix, async () => {
    const texts: { c: (typeof userDataCases)[number]; text: string }[] = [];
    for (const c of userDataCases) {
      const raw = readFileSync(join(HOSTILE, 'user-data', c.file));
      const result = attempt(() => interpretUserData(raw));
      if ('rejected' in result) {
        assert.equal(c.expect, 'reject', `${label(c)}: ${result.rejected.message}`);
        assert.equal(result.rejected.where, 'user data');
        continue;
      }
      const ud = result.ok;
      assert.equal(ud.kind, c.expect, label(c));
      const bytes = raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b ? gunzipSync(raw) : raw;
      if (ud.kind === 'script') assert.ok(ud.script.equals(bytes), label(c));
      if (ud.kind === 'nix') {
        assert.ok(Buffer.from(ud.text, 'utf8').equals(bytes), `${label(c)}: the text is not the bytes`);
        texts.push({ c, text: ud.text });
      }
    }
    await withTempDir(async (dir) => {
      const files = await Promise.all(
        texts.map(async ({ text }, i) => {
          const file = join(dir, `u${i}.nix`);
          await writeFile(file, text);
          return file;
        }),
      );
      const failed = new Set((await new NixParser(new ProcessRunner(process.env)).check(files)).map((e) => e.file));
      for (const [i, { c }] of texts.entries()) assert.equal(failed.has(files[i] as string), c.parseError === true, label(c));
    });
  });

  it('loads each agent configuration file or rejects it naming the file, the field and where', async () => {
    for (const c of configCases) {
      const file = join(HOSTILE, 'config', c.file);
      let error: unknown;
      try {
        await loadConfig(file);
      } catch (err) {
        error = err;
      }
      if (c.expect === 'accept') {
        assert.equal(error, undefined, `${label(c)}: ${String(error)}`);
        continue;
      }
      assert.ok(error instanceof InvalidInputError, `${label(c)}: ${String(error)}`);
      assert.equal(error.where, file, label(c));
      if (c.field !== undefined) assert.ok(error.message.includes(c.field), `${label(c)}: ${error.message}`);
      if (c.says !== undefined) assert.ok(error.message.includes(c.says), `${label(c)}: ${error.message}`);
      assert.ok(!error.message.includes('\n'), `${label(c)}: not one line`);
    }
  });
});
