// systemd/nixos-ec2-agent.service, through systemd's own checker. `systemd-analyze verify` only
// warns about a bad value and still exits 0, so a clean unit is exit 0 AND nothing on stderr.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

/** The `key=value` settings of a section, last one winning, as systemd reads them. */
function section(text: string, name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = header[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (current !== name || eq < 0) continue;
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
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
    assert.deepEqual(section(target, 'Install').get('WantedBy'), ['multi-user.target']);
    assert.deepEqual(orderingCycle({ [UNIT_NAME]: text, [TARGET_NAME]: target }), null);
    // The checker sees the cycle a target with default dependencies would make.
    const cyclic = orderingCycle({ [UNIT_NAME]: text, [TARGET_NAME]: target.replace(/^DefaultDependencies=no\n/m, '') });
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

/**
 * An ordering cycle among the given units and multi-user.target once they are enabled, or null.
 * Ordering as systemd derives it: After=/Before= as written, plus systemd.target(5)'s default
 * dependency of a target on what it wants (WantedBy= here), which systemd adds only when neither
 * side sets DefaultDependencies=no and the wanted unit is not already ordered after the target
 * (unit_add_default_target_dependency in systemd's src/core/unit.c).
 */
function orderingCycle(units: Record<string, string>): string[] | null {
  const after = new Map<string, Set<string>>();
  const edge = (later: string, earlier: string): void => {
    if (!after.has(later)) after.set(later, new Set());
    after.get(later)!.add(earlier);
  };
  const words = (text: string, sec: string, key: string): string[] => (section(text, sec).get(key) ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);
  const noDefaults = (name: string): boolean => units[name] !== undefined && words(units[name]!, 'Unit', 'DefaultDependencies')[0] === 'no';
  for (const [name, text] of Object.entries(units)) {
    for (const a of words(text, 'Unit', 'After')) edge(name, a);
    for (const b of words(text, 'Unit', 'Before')) edge(b, name);
  }
  for (const [name, text] of Object.entries(units)) {
    for (const target of words(text, 'Install', 'WantedBy')) {
      const orderedAfterTarget = after.get(name)?.has(target) ?? false;
      if (target.endsWith('.target') && !noDefaults(name) && !noDefaults(target) && !orderedAfterTarget) edge(target, name);
    }
  }
  const state = new Map<string, 'open' | 'done'>();
  const visit = (node: string, path: string[]): string[] | null => {
    if (state.get(node) === 'open') return [...path.slice(path.indexOf(node)), node];
    if (state.get(node) === 'done') return null;
    state.set(node, 'open');
    for (const next of after.get(node) ?? []) {
      const found = visit(next, [...path, node]);
      if (found) return found;
    }
    state.set(node, 'done');
    return null;
  };
  for (const node of after.keys()) {
    const found = visit(node, []);
    if (found) return found;
  }
  return null;
}
