import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { InvalidInputError } from '../../agent/errors.js';
import {
  isOptionPath,
  nixAttrName,
  nixAttrPath,
  nixComment,
  nixString,
  nixValue,
  parseOptionPath,
  renderOptionsModule,
  renderSecretsArgsModule,
  type Json,
} from '../../agent/render/nix.js';
import { NixParser } from '../../agent/render/validate.js';
import { ProcessRunner } from '../../agent/runner.js';
import {
  NIX_CANONICAL,
  NIX_MISSING,
  canonicalJson,
  evalModuleOptions,
  evalNixJson,
  nixAvailable,
  withTempDir,
} from '../support/nix.js';

const nix = nixAvailable() ? {} : { skip: NIX_MISSING };

/** Strings that are special somewhere in Nix's string and indented-string grammars. */
const HOSTILE_STRINGS = [
  '',
  '"',
  '\\',
  '\\\\',
  '${',
  '${x}',
  '$${x}',
  '$$${x}',
  '\\${x}',
  '\\$',
  '$',
  'a$',
  '$$',
  '$\\',
  '$"',
  '${"}',
  "''",
  "''$",
  "''${x}",
  "''\\",
  "'''",
  "''\\n",
  '\n',
  '\r',
  '\r\n',
  '\t',
  'line one\nline two',
  '"; }; evil = import /etc/passwd; x = { y = "',
  '" + builtins.readFile /etc/shadow + "',
  '\u0001\u0007\u001b[31m\u007f\u009f',
  '# not a comment',
  '/* not a comment */',
  'ünïcödé ☃ 𝄞 😀 \u2028\u2029 \ufeff',
  '\\n',
  '\\"',
  '${${}}',
  '}',
  '{',
];

describe('nixString', () => {
  it('escapes exactly what the Nix string grammar treats specially', () => {
    assert.equal(nixString('plain'), '"plain"');
    assert.equal(nixString('"'), '"\\""');
    assert.equal(nixString('\\'), '"\\\\"');
    assert.equal(nixString('${x}'), '"\\${x}"');
    assert.equal(nixString('$x $'), '"$x $"');
    assert.equal(nixString('$${x}'), '"$\\${x}"');
    assert.equal(nixString('\\${x}'), '"\\\\\\${x}"');
    assert.equal(nixString('a\nb\rc\td'), '"a\\nb\\rc\\td"');
    assert.equal(nixString("''$"), '"\'\'$"');
  });

  it('rejects a NUL, which a Nix string cannot hold, naming where it came from', () => {
    assert.throws(
      () => nixString('a\u0000b', '/nixos/fleet/options/networking.hostName (version 3)'),
      (err: unknown) =>
        err instanceof InvalidInputError &&
        err.where === '/nixos/fleet/options/networking.hostName (version 3)' &&
        /NUL/.test(err.message),
    );
  });

  it('rejects lone UTF-16 surrogates, which have no UTF-8 encoding', () => {
    assert.throws(() => nixString('\ud800'), InvalidInputError);
    assert.throws(() => nixString('a\udc00b'), InvalidInputError);
    assert.equal(nixString('😀'), '"😀"');
  });

  it('evaluates back to every hostile string', nix, async () => {
    const text = `[\n${HOSTILE_STRINGS.map((s) => `  ${nixString(s)}\n`).join('')}]\n`;
    assert.deepEqual(await evalNixJson(text), HOSTILE_STRINGS);
  });

  it('evaluates back to strings glued from hostile fragments in every order', nix, async () => {
    const fragments = ['$', '{', '}', '\\', '"', "'", "''", '\n', 'x', '${'];
    const strings: string[] = [];
    for (const a of fragments) for (const b of fragments) for (const c of fragments) strings.push(a + b + c);
    assert.deepEqual(await evalNixJson(nixValue(strings)), strings);
  });
});

describe('nixAttrName and nixAttrPath', () => {
  it('leaves identifiers bare and quotes everything else', () => {
    assert.equal(nixAttrName('enable'), 'enable');
    assert.equal(nixAttrName('_x'), '_x');
    assert.equal(nixAttrName("a-b'c"), "a-b'c");
    assert.equal(nixAttrName('__proto__'), '__proto__');
    assert.equal(nixAttrName('true'), 'true');
    for (const keyword of ['if', 'then', 'else', 'assert', 'with', 'let', 'in', 'rec', 'inherit', 'or', '__curPos']) {
      assert.equal(nixAttrName(keyword), `"${keyword}"`);
    }
    assert.equal(nixAttrName(''), '""');
    assert.equal(nixAttrName('1abc'), '"1abc"');
    assert.equal(nixAttrName('-a'), '"-a"');
    assert.equal(nixAttrName('a.b'), '"a.b"');
    assert.equal(nixAttrName('a b'), '"a b"');
    assert.equal(nixAttrName('${x}'), '"\\${x}"');
  });

  it('joins a path with dots', () => {
    assert.equal(nixAttrPath(['services', 'nginx', 'virtualHosts', 'example.com']), 'services.nginx.virtualHosts."example.com"');
    assert.throws(() => nixAttrPath([]), InvalidInputError);
  });

  it('gives back every name as an attribute of the evaluated set', nix, async () => {
    const names = ['enable', 'if', 'or', '__curPos', '', ' ', '__proto__', 'a.b', "x'", "a''b", 'a-', '1', '${x}', '"', '\\', "''", 'é', 'a\nb'];
    const set = `{\n${names.map((n, i) => `  ${nixAttrName(n)} = ${i};\n`).join('')}}\n`;
    const evaluated = (await evalNixJson(set)) as Record<string, number>;
    assert.deepEqual(Object.keys(evaluated).sort(), [...names].sort());
    names.forEach((n, i) => assert.equal(evaluated[n], i));
  });
});

describe('option paths', () => {
  it('parses dotted identifiers', () => {
    assert.deepEqual(parseOptionPath('services.nginx.enable'), { ok: true, path: ['services', 'nginx', 'enable'] });
    assert.deepEqual(parseOptionPath("a_b.c-d.e'"), { ok: true, path: ['a_b', 'c-d', "e'"] });
    assert.equal(isOptionPath('networking.hostName'), true);
    assert.equal(isOptionPath('x'), true);
  });

  it('rejects empty paths, empty segments and non-identifiers with a reason', () => {
    for (const bad of ['', '.', 'a.', '.a', 'a..b', '1a.b', 'a.b c', 'a."b"', 'a.-b', 'a/b', 'a.${b}', 'é']) {
      const parsed = parseOptionPath(bad);
      assert.equal(parsed.ok, false, bad);
      if (!parsed.ok) assert.ok(parsed.reason.length > 0);
      assert.equal(isOptionPath(bad), false, bad);
    }
  });
});

describe('nixValue', () => {
  it('renders scalars', () => {
    assert.equal(nixValue(null), 'null');
    assert.equal(nixValue(true), 'true');
    assert.equal(nixValue(false), 'false');
    assert.equal(nixValue(42), '42');
    assert.equal(nixValue(-7), '(-7)');
    assert.equal(nixValue(-0), '0');
    assert.equal(nixValue(Number.MAX_SAFE_INTEGER), '9007199254740991');
    assert.equal(nixValue(Number.MIN_SAFE_INTEGER), '(-9007199254740991)');
    assert.equal(nixValue(0.1), '0.1');
    assert.equal(nixValue(-2.5), '(-2.5)');
    assert.equal(nixValue(1e300), '1.0e+300');
    assert.equal(nixValue(1.5e-7), '1.5e-7');
    assert.equal(nixValue(5e-324), '(builtins.fromJSON "5e-324")');
  });

  it('rejects numbers JSON cannot carry', () => {
    for (const n of [NaN, Infinity, -Infinity]) assert.throws(() => nixValue([n]), InvalidInputError);
  });

  it('names where a bad string sits in the value', () => {
    assert.throws(
      () => nixValue({ a: [1, { 'b c': 'x\u0000' }] }, 0, '/nixos/fleet/options/x'),
      (err: unknown) =>
        err instanceof InvalidInputError && err.where.startsWith('/nixos/fleet/options/x') && err.message.includes('.a[1]["b c"]'),
    );
  });

  it('lays out nested values over indented lines', () => {
    assert.equal(
      nixValue({ a: [1, -2], 'b c': {}, d: [] }),
      ['{', '  a = [', '    1', '    (-2)', '  ];', '  "b c" = { };', '  d = [ ];', '}'].join('\n'),
    );
    assert.equal(nixValue({ a: { b: 1 } }, 4), ['{', '      a = {', '        b = 1;', '      };', '    }'].join('\n'));
  });

  it('evaluates back to hostile structures: keys, negatives in lists, big numbers', nix, async () => {
    const value: Json = JSON.parse(
      JSON.stringify({
        '': 'empty key',
        if: [-1, -0.5, 1, [-2, [-3]]],
        'a.b': { '${x}': "''${y}" },
        '"': null,
        big: [Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 2 ** 53, 2 ** 63, 1e21, -1e300],
        floats: [0.1, 0.2, 1 / 3, 1e300, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308, 123.456],
        nested: [[[]], [{}], { x: [{ y: [] }] }],
      }).replace('"a.b"', '"__proto__":{"x":1},"a.b"'),
    );
    assert.ok(Object.hasOwn(value as object, '__proto__'));
    const evaluated = await evalNixJson(`(${NIX_CANONICAL}) (${nixValue(value)})\n`);
    assert.deepEqual(evaluated, canonicalJson(value));
  });

  it('keeps every float bit-exact, including subnormals and extremes', nix, async () => {
    const floats = [
      0.1, 0.3, 1 / 3, Math.PI, -Math.E, 1e-7, 1e21, 1e22, 1e300, -1e300, 4.35e-310, 5e-324, -5e-324,
      Number.MIN_VALUE * 3, 2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308,
      -1.7976931348623157e308, Number.EPSILON, 2 ** 53 + 2, 2 ** 70, 9007199254740993.5, 0.1 + 0.2,
    ];
    const evaluated = await evalNixJson(`(${NIX_CANONICAL}) (${nixValue(floats)})\n`);
    assert.deepEqual(evaluated, canonicalJson(floats));
    // The oracle itself must be able to fail: a 1-ulp difference shows.
    assert.notDeepEqual(canonicalJson(0.1), canonicalJson(0.1 + Number.EPSILON / 16));
  });

  it('survives deep nesting', nix, async () => {
    let value: Json = 'bottom';
    for (let i = 0; i < 300; i++) value = i % 2 === 0 ? [value] : { [`k${i}`]: value };
    assert.deepEqual(await evalNixJson(nixValue(value)), value);
  });
});

describe('nixComment', () => {
  it('keeps a comment on its line whatever the text holds', () => {
    assert.equal(nixComment('a\nb\r\nc */ d\u2028e\u0000'), '# a b  c */ d e');
    assert.equal(nixComment('x', 4), '    # x');
  });
});

describe('renderOptionsModule', () => {
  it('renders each option as its own module and parses', nix, async () => {
    const text = renderOptionsModule([
      { path: ['networking', 'hostName'], value: 'web-1', comment: '/nixos/fleet/options/networking.hostName (version 2)' },
    ]);
    assert.match(text, /^# /);
    assert.match(text, /\{ \.\.\. \}:\n/);
    assert.match(text, /# \/nixos\/fleet\/options\/networking\.hostName \(version 2\)\n\s+\{ config\.networking\.hostName = "web-1"; \}/);
    assert.equal(await new NixParser(new ProcessRunner(process.env)).checkText(text, 'options.nix'), undefined);
  });

  it('merges options whose paths are prefixes of each other', nix, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'options.nix');
      await writeFile(
        file,
        renderOptionsModule([
          { path: ['services', 'nginx'], value: { enable: true, virtualHosts: { 'example.com': { root: '/srv' } } } },
          { path: ['services', 'nginx', 'virtualHosts', 'example.com', 'forceSSL'], value: true },
          { path: ['services', 'nginx', 'appendConfig'], value: 'worker_processes 2;' },
          { path: ['networking', 'firewall', 'allowedTCPPorts'], value: [80] },
          { path: ['networking', 'firewall', 'allowedTCPPorts'], value: [443] },
        ]),
      );
      assert.deepEqual(await evalModuleOptions(file), {
        services: {
          nginx: {
            enable: true,
            appendConfig: 'worker_processes 2;',
            virtualHosts: { 'example.com': { root: '/srv', forceSSL: true } },
          },
        },
        networking: { firewall: { allowedTCPPorts: [80, 443] } },
      });
    });
  });

  it('sets priorities with lib.mkOverride, and the lower number wins', nix, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'options.nix');
      const text = renderOptionsModule([
        { path: ['services', 'nginx'], value: { enable: false } },
        { path: ['services', 'nginx', 'enable'], value: true, priority: 50 },
      ]);
      assert.match(text, /\{ lib, \.\.\. \}:/);
      await writeFile(file, text);
      assert.deepEqual(await evalModuleOptions(file), {
        services: { nginx: { enable: { _type: 'override', priority: 50, content: true } } },
      });
    });
  });

  it('keeps hostile comments, paths and values inert', nix, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'options.nix');
      await writeFile(
        file,
        renderOptionsModule([
          { path: ['a', 'b'], value: '"; evil = true; x = "', comment: 'name\n{ config.evil = true; }\n# */' },
          { path: ['a', 'in', 'c d'], value: { '${builtins.abort "x"}': "''${x}" }, comment: '\r config.evil = true;' },
        ]),
      );
      assert.deepEqual(await evalModuleOptions(file), {
        a: { b: '"; evil = true; x = "', in: { 'c d': { '${builtins.abort "x"}': "''${x}" } } },
      });
    });
  });

  it('renders an empty module for no options', nix, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'options.nix');
      await writeFile(file, renderOptionsModule([]));
      assert.deepEqual(await evalModuleOptions(file), {});
    });
  });
});

describe('renderSecretsArgsModule', () => {
  it('gives other modules the paths as the ec2Secrets argument', nix, async () => {
    await withTempDir(async (dir) => {
      const secrets = join(dir, 'secrets.nix');
      const user = join(dir, 'user.nix');
      await writeFile(
        secrets,
        renderSecretsArgsModule([
          { name: 'db-password', path: '/run/nixos-ec2-agent/secrets/db-password' },
          { name: 'api.key', path: '/run/nixos-ec2-agent/secrets/api.key' },
          { name: '__proto__', path: '/run/nixos-ec2-agent/secrets/__proto__' },
        ]),
      );
      await writeFile(
        user,
        '{ ec2Secrets, ... }: { imports = [ ./secrets.nix ]; config.services.app.passwordFile = ec2Secrets."db-password"; config.services.app.keyFile = ec2Secrets."api.key"; }\n',
      );
      const evaluated = (await evalModuleOptions(user)) as {
        services: unknown;
        _module: { args: { ec2Secrets: Record<string, string> } };
      };
      assert.deepEqual(evaluated.services, {
        app: {
          passwordFile: '/run/nixos-ec2-agent/secrets/db-password',
          keyFile: '/run/nixos-ec2-agent/secrets/api.key',
        },
      });
      assert.deepEqual(Object.keys(evaluated._module.args.ec2Secrets).sort(), ['__proto__', 'api.key', 'db-password']);
    });
  });

  it('rejects a secret named twice', () => {
    assert.throws(
      () =>
        renderSecretsArgsModule([
          { name: 'a', path: '/x' },
          { name: 'a', path: '/y' },
        ]),
      InvalidInputError,
    );
  });
});
