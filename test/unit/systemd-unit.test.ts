// systemd/nixos-ec2-agent.service, through systemd's own checker. `systemd-analyze verify` only
// warns about a bad value and still exits 0, so a clean unit is exit 0 AND nothing on stderr.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { orderingCycle, unitSection as section } from '../support/systemd-units.js';
import { launchFile } from '../support/launch.js';

const UNIT_NAME = 'nixos-ec2-agent.service';
const TARGET_NAME = 'nixos-ec2-agent-converged.target';
// Compiled to dist/test/unit/; the units stay at the repository root.
const UNIT = fileURLToPath(new URL(`../../../systemd/${UNIT_NAME}`, import.meta.url));
const TARGET = fileURLToPath(new URL(`../../../systemd/${TARGET_NAME}`, import.meta.url));
const SYSTEM_BIN = '/run/current-system/sw/bin/';

const hasAnalyze = spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).status === 0;
const skip = hasAnalyze ? false : 'systemd-analyze is not on PATH (Debian: apt-get install systemd)';

/**
 * The unit in a fresh directory, with its NixOS binary paths pointed at files that exist here:
 * verify refuses an ExecStart= or ExecReload= that is not executable.
 */
function stageUnit(text: string, extra: Record<string, string> = {}): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'unit-'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  const names = new Set([...text.matchAll(/^Exec\w+=\S*?\/run\/current-system\/sw\/bin\/([^\s/]+)/gm)].map((m) => m[1]!));
  for (const name of names) symlinkSync(process.execPath, join(bin, name));
  for (const [name, body] of Object.entries(extra)) writeFileSync(join(dir, name), body);
  const file = join(dir, UNIT_NAME);
  writeFileSync(
    file,
    text.replace(/^(Exec\w+=\S*?)\/run\/current-system\/sw\/bin\//gm, (_m, head: string) => `${head}${bin}/`),
  );
  return { dir, file };
}

function verify(text: string, target = readFileSync(TARGET, 'utf8')): { status: number | null; stderr: string } {
  const { dir } = stageUnit(text, { [TARGET_NAME]: target });
  try {
    const run = spawnSync('systemd-analyze', ['verify', '--man=no', '--generators=no', '--recursive-errors=no', UNIT_NAME, TARGET_NAME], {
      cwd: dir,
      encoding: 'utf8',
    });
    return { status: run.status, stderr: run.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('systemd/nixos-ec2-agent.service', () => {
  const text = readFileSync(UNIT, 'utf8');

  it('passes systemd-analyze verify with no warning, with its target', { skip }, () => {
    const { status, stderr } = verify(text);
    assert.equal(stderr, '', `systemd-analyze verify warned:\n${stderr}`);
    assert.equal(status, 0);
  });

  it('is checked: a value systemd cannot parse is caught', { skip }, () => {
    const { status, stderr } = verify(text.replace(/^Type=notify$/m, 'Type=notifyy'));
    assert.ok(status !== 0 || stderr !== '', 'a bad Type= would go unnoticed');
    assert.match(stderr, /notifyy/);
    const badTarget = verify(text, readFileSync(TARGET, 'utf8').replace('DefaultDependencies=no', 'DefaultDependencie=no'));
    assert.match(badTarget.stderr, /DefaultDependencie\b/, 'the target is verified too');
  });

  it('is a notify service that activation neither restarts nor stops', () => {
    const unit = section(text, 'Unit');
    const service = section(text, 'Service');
    assert.deepEqual(service.get('Type'), ['notify']);
    assert.deepEqual(service.get('NotifyAccess'), ['main']);
    assert.deepEqual(service.get('ExecStart'), [`${SYSTEM_BIN}nixos-ec2-agent run --config /etc/nixos-ec2-agent/config.json`]);
    assert.match(service.get('ExecReload')?.[0] ?? '', /kill -HUP \$MAINPID$/);
    assert.deepEqual(service.get('Restart'), ['on-failure']);
    assert.ok(service.has('WatchdogSec') && service.has('TimeoutStartSec'));
    assert.deepEqual(service.get('RuntimeDirectory'), ['nixos-ec2-agent']);
    assert.deepEqual(service.get('StateDirectory'), ['nixos-ec2-agent']);
    // Node's compile cache is the package's, in the store (nix/launch.json): nothing of it on the instance.
    assert.equal(service.has('CacheDirectory'), false);
    assert.ok(launchFile().env.NODE_COMPILE_CACHE?.startsWith('@package@/'));
    // NixOS's switch-to-configuration reads X-RestartIfChanged from [Service] only and
    // X-StopOnRemoval from [Unit] (pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs).
    assert.deepEqual(service.get('X-RestartIfChanged'), ['false']);
    assert.equal(unit.has('X-RestartIfChanged'), false, 'ignored in [Unit]');
    assert.deepEqual(unit.get('X-StopOnRemoval'), ['false']);
    assert.deepEqual(section(text, 'Install').get('WantedBy'), ['multi-user.target']);
    // Stopping or restarting the agent signals the agent alone: an activation it started goes on.
    assert.deepEqual(service.get('KillMode'), ['process']);
    for (const key of ['ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectHostname']) {
      assert.equal(service.has(key), false, `${key} would give the unit a namespace that activation's changes stay in`);
    }
  });

  it('runs after multi-user.target, and its target is reachable without an ordering cycle', () => {
    const unit = section(text, 'Unit');
    const after = (unit.get('After') ?? []).flatMap((v) => v.split(/\s+/));
    const wants = (unit.get('Wants') ?? []).flatMap((v) => v.split(/\s+/));
    assert.ok(after.includes('multi-user.target') && after.includes('network-online.target'), `After=${after}`);
    assert.ok(wants.includes(TARGET_NAME), `Wants=${wants}`);
    const target = readFileSync(TARGET, 'utf8');
    assert.deepEqual(section(target, 'Unit').get('After'), [UNIT_NAME]);
    assert.deepEqual(section(target, 'Unit').get('DefaultDependencies'), ['no']);
    // Not started by switch-to-configuration (nix/module.nix says why): a restarted agent that
    // switches before READY=1 would wait on a start job queued behind its own.
    assert.deepEqual(section(target, 'Unit').get('X-OnlyManualStart'), ['true']);
    assert.deepEqual(section(target, 'Install').get('WantedBy'), ['multi-user.target']);
    const wantedBy = { [UNIT_NAME]: ['multi-user.target'], [TARGET_NAME]: ['multi-user.target'] };
    assert.deepEqual(orderingCycle({ [UNIT_NAME]: text, [TARGET_NAME]: target }, wantedBy), null);
    // The checker sees the cycle a target with default dependencies would make.
    const cyclic = orderingCycle({ [UNIT_NAME]: text, [TARGET_NAME]: target.replace(/^DefaultDependencies=no\n/m, '') }, wantedBy);
    assert.ok(cyclic?.includes('multi-user.target') && cyclic.includes(UNIT_NAME), `cycle: ${cyclic}`);
  });

  it('has a security exposure score (printed; a root agent that switches systems stays high)', { skip }, () => {
    const { dir } = stageUnit(text);
    try {
      const run = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', UNIT_NAME], {
        cwd: dir,
        encoding: 'utf8',
      });
      const score = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(run.stdout);
      assert.ok(score, `no score in:\n${run.stdout}\n${run.stderr}`);
      const value = Number(score[1]);
      console.log(`systemd-analyze security: exposure ${value} (0 safest, 10 most exposed)`);
      // An unhardened root service scores 9.6; the options this unit can take must count.
      assert.ok(value < 9.6, `exposure ${value}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

