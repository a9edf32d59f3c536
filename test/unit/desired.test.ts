// The desired state built from source snapshots: option paths, prefix precedence, the rules on
// SecureStrings and names, and a hash that changes exactly when an input does.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildDesired } from '../../agent/desired/desired.js';
import { InvalidInputError } from '../../agent/errors.js';
import { JsonNumber } from '../../agent/render/nix.js';
import { desired, NO_LOCAL, param, ssm, userData } from '../support/desired.js';

const FLEET = '/nixos/fleet';
const ASG = '/nixos/asg/web';
const INSTANCE = '/nixos/instance/i-0123456789abcdef0';

function rejected(fn: () => unknown, ...patterns: RegExp[]): InvalidInputError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InvalidInputError, `expected InvalidInputError, got ${String(err)}`);
    for (const p of patterns) assert.match(err.message, p);
    return err;
  }
  assert.fail('expected an InvalidInputError');
}

describe('buildDesired: options', () => {
  it('reads options/<dotted.path> as a JSON value at that option path', () => {
    const d = desired({
      ssm: ssm([
        FLEET,
        [
          param(`${FLEET}/options/services.nginx.enable`, 'true'),
          param(`${FLEET}/options/networking.hostName`, '"web-1"'),
          param(`${FLEET}/options/services.nginx.virtualHosts`, '{"a.example":{"root":"/srv"}}'),
          param(`${FLEET}/options/boot.kernel.sysctl.vm_swappiness`, '10'),
          param(`${FLEET}/options/users.users.o'neil.isNormalUser`, 'true'),
        ],
      ]),
    });
    const byPath = Object.fromEntries(d.options.map((o) => [o.path.join('.'), o.value]));
    assert.deepEqual(byPath, {
      'services.nginx.enable': true,
      'networking.hostName': 'web-1',
      'services.nginx.virtualHosts': { 'a.example': { root: '/srv' } },
      'boot.kernel.sysctl.vm_swappiness': 10,
      "users.users.o'neil.isNormalUser": true,
    });
    assert.deepEqual(d.options.find((o) => o.path.at(-1) === 'hostName')?.path, ['networking', 'hostName']);
  });

  it('rejects an option path that is not a dotted path, naming the parameter and its version', () => {
    for (const bad of ['services..enable', '.services', 'services.', '1abc.x', 'a.b c', '', 'services.nginx."x"']) {
      const name = `${FLEET}/options/${bad}`;
      const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, 'true', { version: 7 })]]) }), /option path/);
      assert.equal(err.where, `SSM parameter ${name} (version 7)`);
      assert.ok(err.message.includes(name) && err.message.includes('version 7'), err.message);
    }
  });

  it('lets later prefixes win per option path, keeping the others', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/a.x`, '1'), param(`${FLEET}/options/a.y`, '1')]],
        [ASG, [param(`${ASG}/options/a.x`, '2', { version: 4 })]],
        [INSTANCE, [param(`${INSTANCE}/options/a.y`, '3'), param(`${INSTANCE}/options/a.z`, '3')]],
      ),
    });
    const byPath = Object.fromEntries(d.options.map((o) => [o.path.join('.'), [o.value, o.from.name, o.from.version]]));
    assert.deepEqual(byPath, {
      'a.x': [2, `${ASG}/options/a.x`, 4],
      'a.y': [3, `${INSTANCE}/options/a.y`, 1],
      'a.z': [3, `${INSTANCE}/options/a.z`, 1],
    });
  });

  it('reads a StringList as a list of strings', () => {
    const d = desired({ ssm: ssm([FLEET, [param(`${FLEET}/options/networking.nameservers`, '1.1.1.1,8.8.8.8', { type: 'StringList' })]]) });
    assert.deepEqual(d.options[0]?.value, ['1.1.1.1', '8.8.8.8']);
  });

  it('rejects a value that is not JSON, naming the parameter and version', () => {
    const name = `${FLEET}/options/networking.hostName`;
    const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, 'web-1', { version: 3 })]]) }), /not JSON/);
    assert.equal(err.where, `SSM parameter ${name} (version 3)`);
  });

  it('refuses a SecureString under options/ or modules/ (it would land in the Nix store)', () => {
    for (const name of [`${FLEET}/options/services.x.password`, `${FLEET}/modules/db`]) {
      const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, '"hunter2"', { type: 'SecureString', version: 2 })]]) }), /SecureString/, /secrets\//);
      assert.equal(err.where, `SSM parameter ${name} (version 2)`);
      assert.ok(!err.message.includes('hunter2'));
    }
  });
});

describe('buildDesired: modules and secrets', () => {
  it('reads modules/<name> as module text and secrets/<name> as a Secret', () => {
    const d = desired({
      ssm: ssm([
        FLEET,
        [
          param(`${FLEET}/modules/web`, '{ ... }: { services.nginx.enable = true; }', { version: 5 }),
          param(`${FLEET}/secrets/db-password`, 's3cret!', { type: 'SecureString', version: 9 }),
        ],
      ]),
    });
    assert.deepEqual(
      d.modules.map((m) => [m.name, m.text, m.from]),
      [['web', '{ ... }: { services.nginx.enable = true; }', { name: `${FLEET}/modules/web`, version: 5 }]],
    );
    assert.equal(d.secrets.length, 1);
    assert.equal(d.secrets[0]?.name, 'db-password');
    assert.equal(d.secrets[0]?.value.reveal(), 's3cret!');
  });

  it('requires a secret to be a SecureString', () => {
    for (const type of ['String', 'StringList'] as const) {
      const name = `${FLEET}/secrets/token`;
      const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, 'plain', { type, version: 1 })]]) }), /SecureString/);
      assert.equal(err.where, `SSM parameter ${name} (version 1)`);
    }
  });

  it('refuses module and secret names that would leave their directory or are not one plain segment', () => {
    for (const kind of ['modules', 'secrets'] as const) {
      const type = kind === 'secrets' ? 'SecureString' : 'String';
      for (const bad of ['..', '.', 'a/b', '../etc/passwd', 'has space', '', '.hidden', 'a/../../b']) {
        const name = `${FLEET}/${kind}/${bad}`;
        const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, '{ }', { type })]]) }), /name/);
        assert.equal(err.where, `SSM parameter ${name} (version 1)`);
      }
    }
  });

  it('lets a later prefix replace a module of the same name', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/modules/web`, 'fleet')]], [INSTANCE, [param(`${INSTANCE}/modules/web`, 'instance')]]),
    });
    assert.deepEqual(d.modules.map((m) => m.text), ['instance']);
  });

  it('never serialises a secret value', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/secrets/api-key`, 'AKIA-very-secret-value', { type: 'SecureString' })]]),
    });
    const json = JSON.stringify(d);
    assert.ok(!json.includes('AKIA-very-secret-value'), json);
    assert.ok(!String(d.secrets[0]?.value).includes('very-secret'));
  });
});

describe('buildDesired: notes', () => {
  it('notes unknown kinds, ignored user data and skipped prefixes, and leaves them alone', () => {
    const snapshot = {
      ...ssm([FLEET, [param(`${FLEET}/other/thing`, 'x'), param(`${FLEET}/readme`, 'x')]]),
      skipped: [{ prefix: '/nixos/asg/{asg}', reason: '{asg} is not known for this instance' }],
    };
    const d = desired({ userData: '# only a comment\n', ssm: snapshot });
    assert.equal(d.options.length + d.modules.length + d.secrets.length, 0);
    const notes = d.notes.join('\n');
    assert.match(notes, /\/nixos\/fleet\/other\/thing/);
    assert.match(notes, /\/nixos\/fleet\/readme/);
    assert.match(notes, /\/nixos\/asg\/\{asg\}/);
    assert.match(notes, /comment/);
  });
});

describe('buildDesired: names that cannot be valid', () => {
  it('rejects known kinds in another case, kinds without a name, and names below system, naming the parameter', () => {
    const cases: [string, RegExp][] = [
      [`${FLEET}/Options/networking.hostName`, /did you mean options\//],
      [`${FLEET}/MODULES/web`, /did you mean modules\//],
      [`${FLEET}/Secrets/db`, /did you mean secrets\//],
      [`${FLEET}/System`, /did you mean system/],
      [`${FLEET}/options`, /needs an option path/],
      [`${FLEET}/modules`, /needs a name/],
      [`${FLEET}/secrets`, /needs a name/],
      [`${FLEET}/system/x`, /not a folder/],
      [`${FLEET}/options/_`, /starts with "_"/],
      [`${FLEET}/options/_module.args.pkgs`, /starts with "_"/],
      [`${FLEET}/options/services._x`, /starts with "_"/],
    ];
    for (const [name, pattern] of cases) {
      const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, 'true', { version: 2 })]]) }), pattern);
      assert.equal(err.where, `SSM parameter ${name} (version 2)`, name);
    }
  });

  it('only notes names of kinds it does not read (other tools may share the prefix)', () => {
    const d = desired({ ssm: ssm([FLEET, [param(`${FLEET}/other`, 'x'), param(`${FLEET}/docs/readme`, 'x')]]) });
    assert.equal(d.notes.length, 2);
    assert.match(d.notes.join('\n'), /\/nixos\/fleet\/other .*not read by this agent/);
  });
});

describe('buildDesired: values kept exactly', () => {
  it('keeps floats as floats and integers with every digit', () => {
    const d = desired({ ssm: ssm([FLEET, [param(`${FLEET}/options/a.b`, '[1.0, 1e2, 9007199254740993, 7, {"x": -0.5}]')]]) });
    const value = d.options[0]?.value as unknown[];
    assert.deepEqual(value.map((v) => (v instanceof JsonNumber ? `n:${v.text}` : v)), ['n:1.0', 'n:1e2', 'n:9007199254740993', 7, { x: new JsonNumber('-0.5') }]);
  });

  it('rejects JSON that JSON.parse would silently settle: duplicate keys, escaped lone surrogates, a BOM', () => {
    for (const [text, pattern] of [
      ['{"a": 1, "a": 2}', /appears twice/],
      ['"\\ud800"', /lone UTF-16 surrogate/],
      ['["\\udc00x"]', /lone UTF-16 surrogate/],
      ['\ufeff{}', /byte order mark/],
    ] as const) {
      const name = `${FLEET}/options/a.b`;
      const err = rejected(() => desired({ ssm: ssm([FLEET, [param(name, text, { version: 5 })]]) }), /not JSON/, pattern);
      assert.equal(err.where, `SSM parameter ${name} (version 5)`);
    }
  });

  it('rejects lone surrogates in module texts and secrets rather than writing U+FFFD, never printing the secret', () => {
    const mod = `${FLEET}/modules/web`;
    assert.equal(rejected(() => desired({ ssm: ssm([FLEET, [param(mod, '{ x = "\ud800"; }')]]) }), /lone UTF-16 surrogate/).where, `SSM parameter ${mod} (version 1)`);
    const sec = `${FLEET}/secrets/db`;
    const err = rejected(() => desired({ ssm: ssm([FLEET, [param(sec, 'hunter2\udfff', { type: 'SecureString' })]]) }), /lone UTF-16 surrogate/);
    assert.equal(err.where, `SSM parameter ${sec} (version 1)`);
    assert.ok(!err.message.includes('hunter2'));
    // A whole pair is a character like any other.
    assert.doesNotThrow(() => desired({ ssm: ssm([FLEET, [param(mod, '{ x = "\ud83d\ude00"; }'), param(sec, '\ud83d\ude00', { type: 'SecureString' })]]) }));
  });

  it('rejects a module text that starts with a byte order mark', () => {
    rejected(() => desired({ ssm: ssm([FLEET, [param(`${FLEET}/modules/web`, '\ufeff{ }')]]) }), /byte order mark/);
  });
});

describe('buildDesired: the hash', () => {
  const params = () => [
    param(`${FLEET}/options/a.b`, '1', { version: 1 }),
    param(`${FLEET}/modules/m`, '{ }', { version: 2 }),
    param(`${FLEET}/options/c.d`, '"x"', { version: 3 }),
    param(`${FLEET}/secrets/s`, 'v', { type: 'SecureString', version: 4 }),
  ];

  it('is the same for the same inputs, whatever order each prefix\'s parameters arrive in', () => {
    const a = desired({ userData: '{ }\n', ssm: ssm([FLEET, params()], [INSTANCE, [param(`${INSTANCE}/options/a.b`, '2')]]) });
    const b = desired({ userData: '{ }\n', ssm: ssm([FLEET, params().reverse()], [INSTANCE, [param(`${INSTANCE}/options/a.b`, '2')]]) });
    assert.equal(a.hash, b.hash);
    assert.match(a.hash, /^[0-9a-f]{64}$/);
    // Same hash, same desired state: what is rendered from it must not depend on arrival order.
    assert.deepEqual(JSON.stringify(a), JSON.stringify(b));
  });

  it('changes when a version, a date, the user data or a local file changes', () => {
    const base = desired({ userData: '{ }\n', ssm: ssm([FLEET, params()]) });
    const bumped = params();
    bumped[0] = param(`${FLEET}/options/a.b`, '1', { version: 2 });
    assert.notEqual(desired({ userData: '{ }\n', ssm: ssm([FLEET, bumped]) }).hash, base.hash);
    const touched = params();
    touched[1] = param(`${FLEET}/modules/m`, '{ }', { version: 2, lastModified: Date.UTC(2024, 5, 1) });
    assert.notEqual(desired({ userData: '{ }\n', ssm: ssm([FLEET, touched]) }).hash, base.hash);
    assert.notEqual(desired({ userData: '{ }\n\n', ssm: ssm([FLEET, params()]) }).hash, base.hash);
    const local = { baseConfiguration: undefined, modules: [{ path: '/etc/nixos-ec2-agent/local.d/a.nix', digest: 'ab' }] };
    assert.notEqual(desired({ userData: '{ }\n', ssm: ssm([FLEET, params()]), local }).hash, base.hash);
    // A secret's rotation is a new version: it changes the hash without its value entering it.
    const rotated = params();
    rotated[3] = param(`${FLEET}/secrets/s`, 'v2', { type: 'SecureString', version: 5 });
    assert.notEqual(desired({ userData: '{ }\n', ssm: ssm([FLEET, rotated]) }).hash, base.hash);
  });

  it('changes when the same parameters move to another prefix (precedence may differ)', () => {
    const x = param('/p/options/a.b', '1');
    const y = param('/q/options/a.b', '2');
    const one = desired({ ssm: ssm(['/p', [x]], ['/q', [y]]) });
    const other = desired({ ssm: ssm(['/q', [y]], ['/p', [x]]) });
    assert.notEqual(one.hash, other.hash);
    assert.deepEqual(one.options.map((o) => o.value), [2]);
    assert.deepEqual(other.options.map((o) => o.value), [1]);
  });

  it('is the same with no SSM at all and with SSM holding nothing', () => {
    const none = buildDesired({ userData: userData(undefined), ssm: undefined, local: NO_LOCAL });
    const empty = buildDesired({ userData: userData(undefined), ssm: ssm([FLEET, []]), local: NO_LOCAL });
    assert.equal(none.hash, empty.hash);
    assert.deepEqual(none.options, []);
    assert.equal(none.userData.kind, 'none');
  });
});
