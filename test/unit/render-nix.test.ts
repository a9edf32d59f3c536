import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { InvalidInputError } from '../../agent/errors.js';
import {
  JsonNumber,
  MAX_DEPTH,
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
import { parseJson } from '../../agent/desired/json.js';
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
    assert.equal(parseOptionPath('networking.hostName').ok, true);
    assert.equal(parseOptionPath('x').ok, true);
  });

  it('rejects empty paths, empty segments and non-identifiers with a reason', () => {
    for (const bad of ['', '.', 'a.', '.a', 'a..b', '1a.b', 'a.b c', 'a."b"', 'a.-b', 'a/b', 'a.${b}', 'é']) {
      const parsed = parseOptionPath(bad);
      assert.equal(parsed.ok, false, bad);
      if (!parsed.ok) assert.ok(parsed.reason.length > 0);
      assert.equal(parseOptionPath(bad).ok, false, bad);
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

  it('survives nesting up to MAX_DEPTH, in linear size, and refuses deeper values naming them', nix, async () => {
    const nest = (depth: number): Json => {
      let value: Json = 'bottom';
      for (let i = 0; i < depth; i++) value = i % 2 === 0 ? [value] : { [`k${i}`]: value };
      return value;
    };
    assert.deepEqual(await evalNixJson(nixValue(nest(MAX_DEPTH))), nest(MAX_DEPTH));
    assert.throws(
      () => nixValue(nest(MAX_DEPTH + 1), 0, 'SSM parameter /p (version 1)'),
      (err: unknown) => err instanceof InvalidInputError && err.where === 'SSM parameter /p (version 1)' && /deeper than 100/.test(err.message),
    );
    // Indentation stops growing, so twice the depth is about twice the text, not four times.
    const half = nixValue(nest(MAX_DEPTH / 2)).length;
    const full = nixValue(nest(MAX_DEPTH)).length;
    assert.ok(full < 3 * half, `${MAX_DEPTH / 2} levels: ${half} chars, ${MAX_DEPTH}: ${full}`);
  });
});

describe('nixValue: rendered size', () => {
  it('stays within a constant factor of an 8 KiB value, whatever its shape (once 33.5 MB)', () => {
    const deep = (inner: string) => `${'['.repeat(MAX_DEPTH - 1)}${inner}${']'.repeat(MAX_DEPTH - 1)}`;
    const shapes = [
      deep(Array(3900).fill('0').join(',')),
      deep(Array(2600).fill('[]').join(',')),
      deep(Array(1300).fill('[1]').join(',')),
      `${'{"a":'.repeat(MAX_DEPTH - 1)}${JSON.stringify('${'.repeat(3000))}${'}'.repeat(MAX_DEPTH - 1)}`,
      JSON.stringify(Array(1000).fill('\\"')),
    ];
    for (const text of shapes) {
      assert.ok(text.length <= 8192, `${text.length}`);
      const rendered = nixValue(parseJson(text), 6);
      assert.ok(rendered.length <= 40 * text.length, `${text.slice(0, 20)}…: ${text.length} → ${rendered.length}`);
    }
    // The value that gave 33.5 MB: 4096 levels of lists, refused when read.
    assert.throws(() => parseJson(`${'['.repeat(4096)}${']'.repeat(4096)}`), /deeper than 100/);
  });
});

describe('nixValue: JSON numbers kept as written', () => {
  const n = (text: string) => new JsonNumber(text);

  it('renders floats as floats and integers with every digit', () => {
    assert.equal(nixValue(n('1.0')), '1.0');
    assert.equal(nixValue(n('1e2')), '100.0');
    assert.equal(nixValue(n('-1.5E-3')), '(-0.0015)');
    assert.equal(nixValue(n('0.0')), '0.0');
    assert.equal(nixValue(n('-0.0')), '(builtins.fromJSON "-0.0")');
    assert.equal(nixValue(n('9007199254740993')), '9007199254740993');
    assert.equal(nixValue(n('9223372036854775807')), '9223372036854775807');
    assert.equal(nixValue(n('-9223372036854775808')), '(-9223372036854775807 - 1)');
  });

  it('refuses what Nix cannot hold, naming the value and the place', () => {
    for (const text of ['9223372036854775808', '18446744073709551616', '-9223372036854775809', '1e400', '-1e400', '1e-400']) {
      assert.throws(
        () => nixValue({ a: [n(text)] }, 0, 'SSM parameter /x (version 3)'),
        (err: unknown) =>
          err instanceof InvalidInputError && err.where === 'SSM parameter /x (version 3)' && err.message.includes(text) && err.message.includes('.a[0]'),
        text,
      );
    }
  });

  it('evaluates back to exactly the JSON value: type and every bit', nix, async () => {
    const values: Json[] = [
      '1.0', '1e2', '1E+2', '-0.0', '0.0', '0.1', '1.5e-7', '5e-324', '2.2250738585072014e-308', '1.7976931348623157e308',
      '9007199254740993', '-9007199254740993', '9223372036854775807', '-9223372036854775808', '12345678901234567890e-10',
      '123456789012345678901234567890.0',
    ].map(n);
    const evaluated = await evalNixJson(`(${NIX_CANONICAL}) (${nixValue(values)})\n`);
    assert.deepEqual(evaluated, canonicalJson(values));
    // The oracle tells an integer from an integer-valued float, and …993 from …992.
    assert.notDeepEqual(canonicalJson(n('1.0')), canonicalJson(1));
    assert.notDeepEqual(canonicalJson(n('9007199254740993')), canonicalJson(9007199254740992));
  });
});

describe('renderOptionsModule: the module system\'s vocabulary', () => {
  it('refuses _type, _module and module-structure names anywhere in a value, naming the parameter and place', () => {
    const where = 'SSM parameter /nixos/fleet/options/services.nginx.enable (version 4)';
    const bad: Json[] = [
      { _type: 'override', priority: 10, content: true },
      { _type: 'if', condition: true, content: false },
      { a: [{ _module: { args: { pkgs: null } } }] },
      { imports: ['/etc/nixos/evil.nix'] },
      { x: { require: [] } },
      { disabledModules: ['services/networking/ssh/sshd.nix'] },
      { freeformType: null },
      { _file: 'x' },
      { _class: 'nixos' },
      { __functor: 'x' },
      { __toString: 'x' },
    ];
    for (const value of bad) {
      assert.throws(
        () => renderOptionsModule([{ path: ['services', 'nginx', 'enable'], value, where }]),
        (err: unknown) => err instanceof InvalidInputError && err.where === where && /cannot be set from an option value/.test(err.message),
        JSON.stringify(value),
      );
    }
    assert.throws(
      () => renderOptionsModule([{ path: ['_module', 'args', 'pkgs'], value: null, where }]),
      (err: unknown) => err instanceof InvalidInputError && err.where === where && /_module/.test(err.message),
    );
    // Ordinary names that merely look similar, and the setting names `key`, `config`, `options`, `meta`.
    assert.doesNotThrow(() =>
      renderOptionsModule([{ path: ['a'], value: { type: 'override', _x: 1, key: 'k', config: {}, options: [], meta: {}, '_type ': 1 } }]),
    );
  });

  const lib = process.env['NIXPKGS_LIB'];
  const withLib = !nixAvailable() ? { skip: NIX_MISSING } : lib === undefined || lib === '' ? { skip: 'NIXPKGS_LIB is not set' } : {};

  it('gives types.float a float and types.int every digit, in the real module system', withLib, async () => {
    await withTempDir(async (dir) => {
      const evalWith = async (f: Json, i: Json) => {
        const file = join(dir, 'options.nix');
        await writeFile(file, renderOptionsModule([{ path: ['f'], value: f }, { path: ['i'], value: i }]));
        return evalNixJson(`
let
  lib = import ${nixString(lib as string)};
  image = { lib, ... }: {
    options.f = lib.mkOption { type = lib.types.float; };
    options.i = lib.mkOption { type = lib.types.int; };
  };
  config = (lib.evalModules { modules = [ image ${nixString(file)} ]; }).config;
in { f = builtins.typeOf config.f; one = config.f == 1.0; i = toString config.i; }
`);
      };
      assert.deepEqual(await evalWith(new JsonNumber('1.0'), new JsonNumber('9007199254740993')), { f: 'float', one: true, i: '9007199254740993' });
      // What JSON.parse would have given: the integer 1, which types.float refuses.
      await assert.rejects(evalWith(1, 1), /is not of type `floating point number'|not of type.*float/);
    });
  });

  it('cannot beat the image\'s mkForce in the real module system', withLib, async () => {
    // The old rendering of { "_type": "override", "priority": 10, "content": … } was this attribute
    // set: with the real lib it beats mkForce (priority 50). The renderer must refuse it, and what
    // it does render stays a plain value that loses to mkForce.
    const hostile = { _type: 'override', priority: 10, content: 'from-ssm' };
    assert.throws(() => renderOptionsModule([{ path: ['networking', 'hostName'], value: hostile }]), InvalidInputError);
    await withTempDir(async (dir) => {
      const rendered = join(dir, 'options.nix');
      await writeFile(rendered, renderOptionsModule([{ path: ['networking', 'hostName'], value: 'from-ssm' }]));
      const unsafe = join(dir, 'unsafe.nix');
      await writeFile(unsafe, `{ ... }: { config.networking.hostName = ${nixValue(hostile)}; }\n`);
      const evalWith = (file: string) =>
        evalNixJson(`
let
  lib = import ${nixString(lib as string)};
  image = { lib, ... }: {
    options.networking.hostName = lib.mkOption { type = lib.types.str; };
    config.networking.hostName = lib.mkForce "from-image";
  };
in (lib.evalModules { modules = [ image ${nixString(file)} ]; }).config.networking.hostName
`);
      assert.equal(await evalWith(rendered), 'from-image');
      // The oracle can fail: the unchecked set does beat mkForce.
      assert.equal(await evalWith(unsafe), 'from-ssm');
    });
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
