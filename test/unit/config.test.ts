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
    const notJson = path.join(dir, 'cc-not.json');
    await writeFile(notJson, 'nope');
    assert.equal(spawnSync(process.execPath, [CLI, 'check-config', notJson], { encoding: 'utf8' }).status, 2);
  });
});
