// The desired state built from source snapshots: option paths, prefix precedence (overlapping paths
// included), the rules on SecureStrings and names, and a hash that changes exactly when an input does.
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

  it('replaces an earlier definition at the same path wholesale, object values included, with no note', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC","hardwareClockInLocalTime":true}')]],
        [INSTANCE, [param(`${INSTANCE}/options/time`, '{"timeZone":"Europe/Paris"}', { version: 2 })]],
      ),
    });
    assert.deepEqual(
      d.options.map((o) => [o.path.join('.'), o.value, o.from.name]),
      [['time', { timeZone: 'Europe/Paris' }, `${INSTANCE}/options/time`]],
    );
    assert.deepEqual(d.notes, []);
  });

  it('takes a later path out of an earlier object value, keeping its other attributes, and notes who won', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC","hardwareClockInLocalTime":true}', { version: 3 })]],
        [INSTANCE, [param(`${INSTANCE}/options/time.timeZone`, '"Europe/Paris"', { version: 2 })]],
      ),
    });
    assert.deepEqual(
      d.options.map((o) => [o.path.join('.'), o.value, o.from.name]),
      [
        ['time', { hardwareClockInLocalTime: true }, `${FLEET}/options/time`],
        ['time.timeZone', 'Europe/Paris', `${INSTANCE}/options/time.timeZone`],
      ],
    );
    assert.deepEqual(d.notes, [
      `SSM parameter ${FLEET}/options/time (version 3): rendered without time.timeZone, where SSM parameter ${INSTANCE}/options/time.timeZone (version 2) in a later prefix wins`,
    ]);
  });

  it('takes out only the later path, deep inside, and the attribute sets it leaves empty', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/services`, '{"nginx":{"virtualHosts":{"a":{"root":"/srv"}},"enable":true},"sshd":{"enable":true}}')]],
        [INSTANCE, [param(`${INSTANCE}/options/services.nginx.virtualHosts.a.root`, '"/var/www"')]],
      ),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value]), [
      ['services', { nginx: { enable: true }, sshd: { enable: true } }],
      ['services.nginx.virtualHosts.a.root', '/var/www'],
    ]);
  });

  it('drops an earlier object value the later path leaves nothing of', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC"}')]], [INSTANCE, [param(`${INSTANCE}/options/time.timeZone`, '"Europe/Paris"')]]),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value]), [['time.timeZone', 'Europe/Paris']]);
    assert.match(d.notes.join('\n'), /options\/time \(version 1\): not rendered, as SSM parameter \/nixos\/instance\/.*time\.timeZone \(version 1\) in a later prefix/);
  });

  it('drops an earlier value that holds no attribute set where the later path lies', () => {
    const cases: [earlier: string, later: string][] = [
      ['"UTC"', 'time.zone'],
      ['null', 'time.zone'],
      ['[1]', 'time.zone'],
      ['{"zone":{"name":[1]},"other":1}', 'time.zone.name.first'],
      ['{"zone":null}', 'time.zone.name'],
    ];
    for (const [earlier, later] of cases) {
      const d = desired({
        ssm: ssm(
          [FLEET, [param(`${FLEET}/options/time`, earlier), param(`${FLEET}/options/networking.hostName`, '"web-1"')]],
          [INSTANCE, [param(`${INSTANCE}/options/${later}`, '"x"')]],
        ),
      });
      assert.deepEqual(d.options.map((o) => o.path.join('.')), ['networking.hostName', later], earlier);
      assert.match(d.notes.join('\n'), /options\/time \(version 1\): not rendered, .*where it holds no attribute set/, earlier);
    }
  });

  it('drops earlier definitions below a later path: its value replaces the whole subtree', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time.timeZone`, '"UTC"'), param(`${FLEET}/options/time.zone.a.b`, '1'), param(`${FLEET}/options/timeout`, '5')]],
        [ASG, [param(`${ASG}/options/time.hardwareClockInLocalTime`, 'true')]],
        [INSTANCE, [param(`${INSTANCE}/options/time`, '{"timeZone":"Europe/Paris"}', { version: 4 })]],
      ),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value]), [
      ['timeout', 5],
      ['time', { timeZone: 'Europe/Paris' }],
    ]);
    assert.equal(d.notes.length, 3);
    assert.ok(
      d.notes.includes(`SSM parameter ${ASG}/options/time.hardwareClockInLocalTime (version 1): not rendered, as SSM parameter ${INSTANCE}/options/time (version 4) in a later prefix sets time, which holds it`),
      d.notes.join('\n'),
    );
  });

  it('applies each later prefix in turn: the last one to touch a path wins it', () => {
    const d = desired({
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC","hardwareClockInLocalTime":true}')]],
        [ASG, [param(`${ASG}/options/time.timeZone`, '"Asia/Tokyo"')]],
        [INSTANCE, [param(`${INSTANCE}/options/time.hardwareClockInLocalTime`, 'false')]],
      ),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value, o.from.name]), [
      ['time.timeZone', 'Asia/Tokyo', `${ASG}/options/time.timeZone`],
      ['time.hardwareClockInLocalTime', false, `${INSTANCE}/options/time.hardwareClockInLocalTime`],
    ]);
  });

  it('keeps an earlier object value whole when the later path names an attribute it does not set', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/options/time`, '{"hardwareClockInLocalTime":true}')]], [INSTANCE, [param(`${INSTANCE}/options/time.timeZone`, '"UTC"')]]),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value]), [
      ['time', { hardwareClockInLocalTime: true }],
      ['time.timeZone', 'UTC'],
    ]);
    assert.deepEqual(d.notes, []);
  });

  it('leaves overlapping paths within one prefix to the module system, as separate definitions', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/options/services.nginx.enable`, 'true'), param(`${FLEET}/options/services.nginx`, '{"enable":true,"user":"www"}')]]),
    });
    assert.deepEqual(d.options.map((o) => [o.path.join('.'), o.value]), [
      ['services.nginx', { enable: true, user: 'www' }],
      ['services.nginx.enable', true],
    ]);
    assert.deepEqual(d.notes, []);
  });

  it('keeps a key named __proto__ an attribute like any other when trimming', () => {
    const d = desired({
      ssm: ssm([FLEET, [param(`${FLEET}/options/a`, '{"__proto__":{"x":1},"b":1}')]], [INSTANCE, [param(`${INSTANCE}/options/a.b`, '2')]]),
    });
    const value = d.options[0]?.value as Record<string, unknown>;
    assert.deepEqual(Object.keys(value), ['__proto__']);
    assert.equal(Object.getPrototypeOf(value), Object.prototype);
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

  // Worked out by the agent before a later prefix won over overlapping paths: a configuration whose
  // prefixes meet only at equal paths renders as it did, so it keeps its desired state.
  it('is what it was before overlapping paths were resolved, for prefixes that meet only at equal paths', () => {
    const d = desired({
      userData: '{ }\n',
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC","hardwareClockInLocalTime":true}'), param(`${FLEET}/options/services.nginx.enable`, 'true')]],
        [ASG, [param(`${ASG}/options/time`, '{"timeZone":"Europe/Paris"}', { version: 2 })]],
        [INSTANCE, [param(`${INSTANCE}/options/networking.hostName`, '"web-1"', { version: 3 })]],
      ),
    });
    assert.equal(d.hash, '0e3e108e634bc4eab6bc5ad21e366659a64edcffd6ccb37268333a8f15e485c8');
  });

  it('changes for a configuration that a later prefix\'s overlapping path now renders differently', () => {
    const d = desired({
      userData: '{ }\n',
      ssm: ssm(
        [FLEET, [param(`${FLEET}/options/time`, '{"timeZone":"UTC","hardwareClockInLocalTime":true}')]],
        [INSTANCE, [param(`${INSTANCE}/options/time.timeZone`, '"Europe/Paris"', { version: 2 })]],
      ),
    });
    // The hash these inputs had before: the same hash would have kept an instance on its old render.
    assert.notEqual(d.hash, 'a54e8331ffdc6d8b1c06d11ddb2b02c90d4f862c5e80d81a3acec34a857c0abf');
  });

  it('is the same with no SSM at all and with SSM holding nothing', () => {
    const none = buildDesired({ userData: userData(undefined), ssm: undefined, local: NO_LOCAL });
    const empty = buildDesired({ userData: userData(undefined), ssm: ssm([FLEET, []]), local: NO_LOCAL });
    assert.equal(none.hash, empty.hash);
    assert.deepEqual(none.options, []);
    assert.equal(none.userData.kind, 'none');
  });
});
