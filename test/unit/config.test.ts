// The configuration file: every field optional with its documented default; unknown fields and
// wrong types rejected with the field's path; `check-config FILE` exits 0 or 2.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { loadConfig, parseConfig } from '../../agent/config.js';
import { InvalidInputError } from '../../agent/errors.js';
import { parseListen } from '../../agent/report/http.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../agent/cli.js');

function rejected(value: unknown): InvalidInputError {
  try {
    parseConfig(value);
  } catch (err) {
    assert.ok(err instanceof InvalidInputError, String(err));
    return err;
  }
  assert.fail(`accepted ${JSON.stringify(value)}`);
}

describe('parseConfig', () => {
  it('fills every documented default from an empty object', () => {
    const c = parseConfig({});
    assert.equal(c.root, '/');
    assert.deepEqual(c.ssm.prefixes, ['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}']);
    assert.equal(c.ssm.enabled, true);
    assert.equal(c.ssm.pollIntervalSeconds, 600);
    assert.equal(c.userData.enabled, true);
    assert.equal(c.local.baseConfiguration, '/etc/nixos/base.nix');
    assert.equal(c.local.modulesDir, '/etc/nixos-ec2-agent/local.d');
    assert.equal(c.rebuild.mode, 'safe');
    assert.equal(c.rebuild.validate, 'require');
    assert.equal(c.health.checkFailedUnits, true);
    assert.deepEqual(c.health.probes, []);
    assert.equal(c.controlSocket, '/run/nixos-ec2-agent/control.sock');
    assert.equal(c.watch.quietPeriodMs, 2_000);
    assert.equal(c.watch.maxSettleSeconds, 60);
    assert.equal(c.lifecycle.enabled, true);
    assert.equal(c.postConvergeCommand, null);
    assert.equal(c.kernel.policy, 'report');
  });

  it('keeps given values and defaults the rest of the same section', () => {
    const c = parseConfig({ ssm: { prefixes: ['/a'], pollIntervalSeconds: 5 }, rebuild: { mode: 'switch' } });
    assert.deepEqual(c.ssm.prefixes, ['/a']);
    assert.equal(c.ssm.pollIntervalSeconds, 5);
    assert.equal(c.ssm.enabled, true);
    assert.equal(c.rebuild.mode, 'switch');
    assert.equal(c.rebuild.nixosRebuild, 'nixos-rebuild');
  });

  it('rejects unknown fields, naming their path', () => {
    assert.match(rejected({ sssm: {} }).message, /"sssm"/);
    assert.match(rejected({ ssm: { prefix: ['/a'] } }).message, /\bssm\b.*prefix|prefix.*\bssm\b/);
    assert.match(rejected({ health: { probes: [{ name: 'p', http: { url: 'http://x/', expected: 200 } }] } }).message, /health\.probes\.0/);
  });

  it('rejects wrong types and values, naming the field path', () => {
    const cases: [unknown, RegExp][] = [
      [{ root: 5 }, /^configuration: root:/],
      [{ ssm: { pollIntervalSeconds: '60' } }, /ssm\.pollIntervalSeconds/],
      [{ ssm: { pollIntervalSeconds: 0 } }, /ssm\.pollIntervalSeconds/],
      [{ ssm: { prefixes: ['nixos/fleet'] } }, /ssm\.prefixes\.0/],
      [{ rebuild: { mode: 'yolo' } }, /rebuild\.mode/],
      [{ imds: { retries: 1.5 } }, /imds\.retries/],
      [{ kernel: { rebootWindow: { lower: '3am', upper: '05:00' } } }, /kernel\.rebootWindow\.lower/],
      [{ userData: true }, /userData/],
      [[], /top level/],
    ];
    for (const [value, pattern] of cases) {
      const err = rejected(value);
      assert.match(err.message, pattern, JSON.stringify(value));
      assert.equal(err.kind, 'invalid-input');
    }
  });

  it('rejects a time longer than a Node timer holds, which would fire after 1 ms', () => {
    const cases: [unknown, RegExp][] = [
      [{ rebuild: { buildTimeoutSeconds: 3_000_000 } }, /rebuild\.buildTimeoutSeconds: at most 2147483 seconds/],
      [{ health: { intervalSeconds: 1e400 } }, /health\.intervalSeconds: at most/],
      [{ health: { graceSeconds: 3_000_000 } }, /health\.graceSeconds: at most/],
      [{ lifecycle: { heartbeatSeconds: 3_000_000 } }, /lifecycle\.heartbeatSeconds: at most/],
      [{ imds: { timeoutMs: 2 ** 31 } }, /imds\.timeoutMs: at most 2147483647 ms/],
      [{ health: { probes: [{ name: 'p', http: { url: 'http://x/', timeoutMs: 2 ** 31 } }] } }, /health\.probes\.0/],
      [{ watch: { quietPeriodMs: 2 ** 31 } }, /watch\.quietPeriodMs: at most/],
    ];
    for (const [value, pattern] of cases) assert.match(rejected(value).message, pattern, JSON.stringify(value));
    assert.equal(parseConfig({ rebuild: { buildTimeoutSeconds: 2_147_483 } }).rebuild.buildTimeoutSeconds, 2_147_483);
  });

  it('names the field inside a probe, not only the probe', () => {
    assert.match(rejected({ health: { probes: [{ name: 'p', command: { argv: ['true'], timeoutMs: '5' } }] } }).message, /health\.probes\.0\.command\.timeoutMs: Expected number/);
    assert.match(rejected({ health: { probes: [{ name: 'p', http: { url: 'nope' } }] } }).message, /health\.probes\.0\.http\.url: Invalid url/);
    assert.match(rejected({ health: { probes: [{ name: 'p' }] } }).message, /health\.probes\.0\.http: Required or health\.probes\.0\.command: Required/);
  });

  it('takes http.listen exactly as the HTTP server reads it, so a bad one fails check-config, not the start', () => {
    for (const good of ['0.0.0.0:9731', '[::1]:80', ':9731', '127.0.0.1:0', ' 0.0.0.0:9731 ']) {
      assert.equal(parseConfig({ http: { listen: good } }).http.listen, good);
      assert.doesNotThrow(() => parseListen(good), good);
    }
    for (const bad of ['9731', 'localhost', 'host:99999', '::1:80', 'a:b', 'nonsense', '']) {
      assert.match(rejected({ http: { listen: bad } }).message, /^configuration: http\.listen: /, bad);
      assert.throws(() => parseListen(bad), bad);
    }
  });

  it('refuses a control socket and an IMDS endpoint the daemon could not use', () => {
    for (const bad of ['', 'control.sock', '/run/nixos-ec2-agent/', '/']) {
      assert.match(rejected({ controlSocket: bad }).message, /^configuration: controlSocket: an absolute path to the socket file/, JSON.stringify(bad));
    }
    assert.equal(parseConfig({ controlSocket: '/run/ctl.sock' }).controlSocket, '/run/ctl.sock');
    for (const bad of ['ftp://169.254.169.254', 'file:///etc/passwd']) assert.match(rejected({ imds: { endpoint: bad } }).message, /imds\.endpoint: an http:\/\/ or https:\/\/ URL/, bad);
    for (const good of ['http://169.254.169.254', 'http://[fd00:ec2::254]', 'http://127.0.0.1:1338/']) assert.equal(parseConfig({ imds: { endpoint: good } }).imds.endpoint, good);
  });

  it('refuses settings that parse but the daemon cannot use, naming the field', () => {
    const cases: [unknown, RegExp][] = [
      [{ kernel: { rebootWindow: { lower: '25:00', upper: '05:00' } } }, /^configuration: kernel\.rebootWindow\.lower: a time HH:MM from 00:00 to 23:59$/],
      [{ kernel: { rebootWindow: { lower: '01:00', upper: '99:99' } } }, /^configuration: kernel\.rebootWindow\.upper: a time HH:MM from 00:00 to 23:59$/],
      [{ kernel: { rebootWindow: { lower: '01:60', upper: '05:00' } } }, /kernel\.rebootWindow\.lower/],
      [{ http: { listen: 'no such host!:80' } }, /^configuration: http\.listen: the host "no such host!" is not an IP address, localhost or a host name$/],
      [{ http: { listen: '999.1.1.1:80' } }, /^configuration: http\.listen: the host "999\.1\.1\.1"/],
      [{ http: { listen: '[not-v6]:80' } }, /^configuration: http\.listen: \[not-v6\] is not an IPv6 address$/],
      [{ http: { listen: `${'a'.repeat(64)}.example:80` } }, /^configuration: http\.listen: the host/],
      [{ ssm: { prefixes: ['/nixos/fleet', '/nixos/x/{nope}'] } }, /^configuration: ssm\.prefixes\.1: unknown placeholder \{nope\} \(known: \{instance-id\}, \{region\}, \{asg\}\)$/],
      [{ ssm: { prefixes: ['/nixos/{instance_id}'] } }, /ssm\.prefixes\.0: unknown placeholder \{instance_id\}/],
      [{ health: { probes: [{ name: 'a', http: { url: 'ftp://x/' } }] } }, /^configuration: health\.probes\.0\.http\.url: an http:\/\/ or https:\/\/ URL$/],
      [{ ssm: { pollIntervalSeconds: 0.0001 } }, /^configuration: ssm\.pollIntervalSeconds: at least 0\.5 seconds/],
      [{ retry: { failedBackoffSeconds: 100000, maxBackoffSeconds: 10 } }, /^configuration: retry\.maxBackoffSeconds: 10 is less than retry\.failedBackoffSeconds \(100000\)/],
      [{ retry: { failedBackoffSeconds: 100000 } }, /retry\.maxBackoffSeconds: 21600 is less than/],
    ];
    for (const [value, pattern] of cases) {
      const err = rejected(value);
      assert.match(err.message, pattern, JSON.stringify(value));
      assert.equal(err.kind, 'invalid-input');
    }
    const goods: unknown[] = [
      { kernel: { rebootWindow: { lower: '00:00', upper: '23:59' } } },
      { http: { listen: 'localhost:9731' } },
      { http: { listen: 'web-1.internal.example.:9731' } },
      { http: { listen: '[::ffff:10.0.0.1]:9731' } },
      { ssm: { prefixes: ['/nixos/{region}/{asg}/{instance-id}'], pollIntervalSeconds: 0.5 } },
      { health: { probes: [{ name: 'a', http: { url: 'HTTPS://x/healthz' } }] } },
      { retry: { failedBackoffSeconds: 60, maxBackoffSeconds: 60 } },
    ];
    for (const good of goods) assert.doesNotThrow(() => parseConfig(good), JSON.stringify(good));
  });

  it('names every bad field, not only the first', () => {
    const err = rejected({ root: 1, rebuild: { mode: 'x' } });
    assert.match(err.message, /root/);
    assert.match(err.message, /rebuild\.mode/);
  });
});

describe('loadConfig and check-config', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'config-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('names the file in its errors; a flag override wins over the file', async () => {
    const file = path.join(dir, 'bad.json');
    await writeFile(file, '{ "ssm": { "enabled": "yes" } }');
    await assert.rejects(loadConfig(file), (err: unknown) => err instanceof InvalidInputError && err.where === file && /ssm\.enabled/.test(err.message));
    const notJson = path.join(dir, 'not.json');
    await writeFile(notJson, '{ root: ');
    await assert.rejects(loadConfig(notJson), (err: unknown) => err instanceof InvalidInputError && /not JSON/.test(err.message));
    await assert.rejects(loadConfig(path.join(dir, 'missing.json')), InvalidInputError);
    const good = path.join(dir, 'good.json');
    await writeFile(good, '{ "root": "/srv/a" }');
    assert.equal((await loadConfig(good, { root: '/srv/b' })).root, '/srv/b');
  });

  it('rejects a duplicate key, at the top level or nested, naming the key, its line and column', async () => {
    const top = path.join(dir, 'dup-top.json');
    await writeFile(top, '{\n  "root": "/srv/a",\n  "root": "/srv/b"\n}\n');
    await assert.rejects(loadConfig(top), (err: unknown) => {
      assert.ok(err instanceof InvalidInputError);
      assert.equal(err.where, top);
      assert.equal(err.message, `${top}: not JSON: line 3, column 3, at root: the key "root" appears twice in one object`);
      return true;
    });
    const nested = path.join(dir, 'dup-nested.json');
    await writeFile(nested, JSON.stringify({ imds: { timeoutMs: 1 } }).replace('}}', ', "timeoutMs": 2}}'));
    await assert.rejects(loadConfig(nested), (err: unknown) => {
      assert.ok(err instanceof InvalidInputError);
      assert.match(err.message, /line 1, column 25, at imds\.timeoutMs: the key "timeoutMs" appears twice/);
      return true;
    });
  });

  it('rejects invalid UTF-8 naming the byte offset, where JSON.parse would read U+FFFD', async () => {
    const file = path.join(dir, 'latin1.json');
    // "/srv/café" in Latin-1: é is the single byte E9.
    await writeFile(file, Buffer.concat([Buffer.from('{"root": "/srv/caf'), Buffer.from([0xe9]), Buffer.from('"}')]));
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof InvalidInputError);
      assert.equal(err.message, `${file}: not valid UTF-8 (the sequence at byte 18, counting from 0)`);
      return true;
    });
  });

  it('rejects a byte order mark, as user data and SSM values do, instead of dropping it', async () => {
    const file = path.join(dir, 'bom.json');
    await writeFile(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"root": "/srv/a"}')]));
    await assert.rejects(loadConfig(file), (err: unknown) => err instanceof InvalidInputError && /line 1, column 1: .*byte order mark/.test(err.message));
  });

  it('reads numbers written as floats or with exponents as numbers', async () => {
    const file = path.join(dir, 'floats.json');
    await writeFile(file, '{"ssm": {"pollJitter": 0.25, "pollIntervalSeconds": 1.5e2}, "imds": {"timeoutMs": 2000.0}}');
    const c = await loadConfig(file);
    assert.equal(c.ssm.pollJitter, 0.25);
    assert.equal(c.ssm.pollIntervalSeconds, 150);
    assert.equal(c.imds.timeoutMs, 2000);
  });

  const skip = existsSync(CLI) ? false : `${CLI} is not built (npx tsc -p tsconfig.json)`;

  it('check-config FILE exits 0 for a valid file and 2 naming the bad field otherwise', { skip }, async () => {
    const good = path.join(dir, 'cc-good.json');
    await writeFile(good, JSON.stringify({ ssm: { prefixes: ['/nixos/fleet'] }, health: { probes: [{ name: 'web', http: { url: 'http://127.0.0.1/' } }] } }));
    const ok = spawnSync(process.execPath, [CLI, 'check-config', good], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);

    const bad = path.join(dir, 'cc-bad.json');
    await writeFile(bad, JSON.stringify({ rebuild: { mode: 'yolo' }, unknownField: 1 }));
    const no = spawnSync(process.execPath, [CLI, 'check-config', bad], { encoding: 'utf8' });
    assert.equal(no.status, 2);
    assert.match(no.stderr, /rebuild\.mode/);
    assert.match(no.stderr, /unknownField/);

    const missing = spawnSync(process.execPath, [CLI, 'check-config'], { encoding: 'utf8' });
    assert.equal(missing.status, 2, 'no FILE is bad usage');
    // A second file would otherwise go unchecked while the first one is called valid.
    const two = spawnSync(process.execPath, [CLI, 'check-config', good, bad], { encoding: 'utf8' });
    assert.equal(two.status, 2, 'two FILEs are bad usage');
    assert.equal(two.stdout, '');
    assert.match(two.stderr, /check-config takes one FILE/);
    const notJson = path.join(dir, 'cc-not.json');
    await writeFile(notJson, 'nope');
    assert.equal(spawnSync(process.execPath, [CLI, 'check-config', notJson], { encoding: 'utf8' }).status, 2);
  });
});
