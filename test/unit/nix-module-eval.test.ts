// nix/module.nix evaluated by the real nixpkgs lib (lib.evalModules from NIXPKGS_LIB, else
// <nixpkgs/lib>) against stand-ins for the NixOS options it touches (test/support/nixos-standins.nix
// names the nixpkgs file of each). Every scenario checks the units NixOS would write (through
// systemd-analyze verify) and the JSON configuration (through the agent's own check-config).
// Also: flake.nix's outputs, evaluated with the real lib and a stand-in nixpkgs.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { orderingCycle, unitSection as section } from '../support/systemd-units.js';

// Compiled to dist/test/unit/; the Nix files stay at the repository root.
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const MODULE = join(ROOT, 'nix/module.nix');
const STANDINS = join(ROOT, 'test/support/nixos-standins.nix');
const CLI = join(ROOT, 'dist/agent/cli.js');
const STORE_ARGS = process.getuid?.() === 0 ? [] : ['--store', 'dummy://'];

const hasNix = spawnSync('nix-instantiate', ['--version'], { stdio: 'ignore' }).status === 0;
const libExpr = ((): string | null => {
  const fromEnv = process.env['NIXPKGS_LIB'];
  if (fromEnv && existsSync(join(fromEnv, 'default.nix'))) return JSON.stringify(fromEnv).replace(/^"|"$/g, '');
  if (!hasNix) return null;
  const probe = spawnSync('nix-instantiate', [...STORE_ARGS, '--eval', '-E', '(import <nixpkgs/lib>).version'], { encoding: 'utf8' });
  return probe.status === 0 ? '<nixpkgs/lib>' : null;
})();
const skip = !hasNix
  ? 'nix-instantiate is not on PATH (Debian: apt-get install nix-bin)'
  : libExpr === null
    ? 'no nixpkgs lib: set NIXPKGS_LIB to a nixpkgs lib/ directory, or put nixpkgs on NIX_PATH'
    : false;
const hasAnalyze = spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).status === 0;

const nixString = (s: string): string => JSON.stringify(s).replace(/\$\{/g, '\\${');
const LIB = (): string => (libExpr === '<nixpkgs/lib>' ? 'import <nixpkgs/lib>' : `import ${nixString(libExpr!)}`);

function nixEval<T>(expr: string): T {
  const dir = mkdtempSync(join(tmpdir(), 'nix-module-'));
  try {
    const file = join(dir, 'eval.nix');
    writeFileSync(file, expr);
    const run = spawnSync('nix-instantiate', [...STORE_ARGS, '--eval', '--strict', '--json', file], { encoding: 'utf8' });
    assert.equal(run.status, 0, `nix-instantiate --eval failed:\n${run.stderr}`);
    return JSON.parse(run.stdout) as T;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

interface Evaluated {
  readonly failedAssertions: string[];
  readonly units: Record<string, string>;
  readonly wantedBy: Record<string, string[]>;
  readonly settingsJson: string;
  readonly firewall: number[];
  readonly etc: Record<string, string>;
  readonly checkScript: string | null;
  readonly amazonInit: boolean | null;
}

/** The module plus the scenario's modules (Nix expressions), evaluated with the real lib. */
function evaluate(...modules: string[]): Evaluated {
  return nixEval<Evaluated>(`
    import ${nixString(STANDINS)} {
      lib = ${LIB()};
      modulePath = ${nixString(MODULE)};
      modules = [ ${modules.map((m) => `(${m})`).join(' ')} ];
    }
  `);
}

const ENABLE = '{ services.nixos-ec2-agent.enable = true; }';
// amazon-init.nix's option and service, as nixos/modules/virtualisation/amazon-init.nix declares
// them (amazon-image.nix imports it).
const AMAZON_INIT = `{ config, lib, ... }: {
  options.virtualisation.amazon-init.enable = lib.mkOption { default = true; type = lib.types.bool; };
  config = lib.mkIf config.virtualisation.amazon-init.enable {
    systemd.services.amazon-init = {
      description = "Reconfigure the system from EC2 userdata on startup";
      wantedBy = [ "multi-user.target" ];
      after = [ "multi-user.target" ];
      requires = [ "network-online.target" ];
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;
      serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
    };
  };
}`;

/** systemd-analyze verify on the agent's service and target, with store binaries made to exist. */
function verifyUnits(units: Record<string, string>): { status: number | null; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), 'units-'));
  try {
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const names = ['nixos-ec2-agent.service', 'nixos-ec2-agent-converged.target'];
    for (const name of names) {
      const text = units[name]!.replace(/\/nix\/store\/[^/\s"]+\/bin\/([^\s"]+)/g, (_m, exe: string) => {
        if (!existsSync(join(bin, exe))) symlinkSync(process.execPath, join(bin, exe));
        return join(bin, exe);
      });
      writeFileSync(join(dir, name), text);
    }
    const run = spawnSync('systemd-analyze', ['verify', '--man=no', '--generators=no', '--recursive-errors=no', ...names], { cwd: dir, encoding: 'utf8' });
    return { status: run.status, stderr: run.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `nixos-ec2-agent check-config` on the generated JSON: what the system build runs. */
function checkConfig(json: string): { status: number | null; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), 'config-'));
  try {
    writeFileSync(join(dir, 'config.json'), json);
    const run = spawnSync(process.execPath, [CLI, 'check-config', join(dir, 'config.json')], { encoding: 'utf8', timeout: 60_000 });
    return { status: run.status, stderr: run.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function assertGood(e: Evaluated): { service: string; target: string; settings: Record<string, any> } {
  assert.deepEqual(e.failedAssertions, []);
  const service = e.units['nixos-ec2-agent.service']!;
  const target = e.units['nixos-ec2-agent-converged.target']!;
  assert.ok(service && target, `units: ${Object.keys(e.units)}`);
  if (hasAnalyze) {
    const v = verifyUnits(e.units);
    assert.equal(v.stderr, '', `systemd-analyze verify:\n${v.stderr}`);
    assert.equal(v.status, 0);
  }
  assert.deepEqual(orderingCycle(e.units, e.wantedBy), null, 'no ordering cycle among the units and multi-user.target');
  const check = checkConfig(e.settingsJson);
  assert.equal(check.status, 0, `check-config refused the module's configuration: ${check.stderr}`);
  return { service, target, settings: JSON.parse(e.settingsJson) as Record<string, any> };
}

describe('nix/module.nix with the real nixpkgs lib', { skip }, () => {
  it('plain: a notify service after multi-user.target, its converged target, a configuration check-config accepts', () => {
    const e = evaluate(ENABLE);
    const { service, target, settings } = assertGood(e);
    const unit = section(service, 'Unit');
    const svc = section(service, 'Service');
    assert.deepEqual(unit.get('After'), ['network-online.target multi-user.target']);
    assert.deepEqual(unit.get('Wants'), ['network-online.target nixos-ec2-agent-converged.target']);
    assert.equal(unit.get('Before'), undefined);
    assert.deepEqual(unit.get('X-StopOnRemoval'), ['false']);
    assert.deepEqual(svc.get('X-RestartIfChanged'), ['false']);
    assert.deepEqual(svc.get('Type'), ['notify']);
    assert.deepEqual(svc.get('NotifyAccess'), ['main']);
    assert.deepEqual(svc.get('KillMode'), ['process']);
    assert.match(svc.get('ExecStart')![0]!, /^\/nix\/store\/\S+-nixos-ec2-agent-0\.1\.0\/bin\/nixos-ec2-agent run --config \/etc\/nixos-ec2-agent\/config\.json$/);
    const env = (svc.get('Environment') ?? []).map((v) => JSON.parse(v) as string);
    assert.ok(env.includes('HOME=/root') && env.includes('NIX_REMOTE=daemon'), `Environment: ${env}`);
    assert.ok(env.some((v) => /^PATH=.*-nixos-rebuild-ng-[^/]*\/bin:.*-util-linux-[^/]*\/bin/.test(v)), 'nixos-rebuild-ng and flock on PATH');
    assert.ok(env.some((v) => v.startsWith('NIX_PATH=nixos-config=/etc/nixos/configuration.nix:nixpkgs=')), `NIX_PATH: ${env}`);
    assert.deepEqual(e.wantedBy['nixos-ec2-agent.service'], ['multi-user.target']);
    assert.deepEqual(section(target, 'Unit').get('After'), ['nixos-ec2-agent.service']);
    assert.deepEqual(section(target, 'Unit').get('DefaultDependencies'), ['false']);
    assert.deepEqual(e.wantedBy['nixos-ec2-agent-converged.target'], ['multi-user.target']);
    assert.equal(settings['logLevel'], 'info');
    assert.deepEqual(settings['ssm'].prefixes, ['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}']);
    assert.equal(settings['http'].listen, '0.0.0.0:9731');
    assert.match(e.checkScript ?? '', /\/bin\/nixos-ec2-agent check-config \S+nixos-ec2-agent\.json/);
    assert.deepEqual(e.firewall, []);
    assert.equal(e.amazonInit, null, 'no amazon-init option, no definition');
  });

  it('in an amazon-image-like configuration: amazon-init is turned off, nothing else changes', () => {
    const e = evaluate(ENABLE, AMAZON_INIT);
    assertGood(e);
    assert.equal(e.amazonInit, false);
    assert.equal(e.units['amazon-init.service'], undefined, 'amazon-init does not run beside the agent');
  });

  it('amazon-init kept on: the assertion says why, instead of a definition conflict', () => {
    const e = evaluate(ENABLE, AMAZON_INIT, '{ virtualisation.amazon-init.enable = true; }');
    assert.equal(e.amazonInit, true);
    assert.equal(e.failedAssertions.length, 1, `${e.failedAssertions}`);
    assert.match(e.failedAssertions[0]!, /amazon-init[\s\S]*whichever runs last[\s\S]*virtualisation\.amazon-init\.enable = true/);
  });

  it('openFirewall: the port of an IPv4 or an IPv6 listen address, and an assertion without a port', () => {
    const v4 = evaluate(ENABLE, '{ services.nixos-ec2-agent.openFirewall = true; }');
    assertGood(v4);
    assert.deepEqual(v4.firewall, [9731]);
    const v6 = evaluate(ENABLE, '{ services.nixos-ec2-agent = { openFirewall = true; http.listen = "[::]:8080"; }; }');
    const { settings } = assertGood(v6);
    assert.deepEqual(v6.firewall, [8080]);
    assert.equal(settings['http'].listen, '[::]:8080');
    const none = evaluate(ENABLE, '{ services.nixos-ec2-agent = { openFirewall = true; http.listen = null; }; }');
    assert.deepEqual(none.firewall, []);
    assert.equal(none.failedAssertions.length, 1);
    assert.match(none.failedAssertions[0]!, /openFirewall/);
  });

  it('PATH: the pinned tools first, then the system profile, for health command probes, post-converge commands and user-data scripts', () => {
    const e = evaluate(ENABLE, `{
      services.nixos-ec2-agent.health.probes = [ { name = "db"; command = { argv = [ "pg_isready" ]; }; } ];
    }`);
    const { service, settings } = assertGood(e);
    assert.deepEqual(settings['health'].probes[0].command.argv, ['pg_isready']);
    const env = (section(service, 'Service').get('Environment') ?? []).map((v) => JSON.parse(v) as string);
    const path = env.find((v) => v.startsWith('PATH='))?.slice('PATH='.length).split(':') ?? [];
    // `pg_isready` (the option's own example), `curl` or `bash` for `#!/usr/bin/env bash` are found
    // only in the generation the agent switched to, as in the unit for images without the module.
    assert.ok(path.includes('/run/current-system/sw/bin'), `PATH: ${path.join(':')}`);
    const rebuild = path.findIndex((d) => /-nixos-rebuild-ng-[^/]*\/bin$/.test(d));
    assert.ok(rebuild >= 0 && rebuild < path.indexOf('/run/current-system/sw/bin'), 'the system\'s own nixos-rebuild comes first');
    // A `#!/bin/bash` user-data script runs with bash from PATH, NixOS having no /bin/bash.
    const bash = path.findIndex((d) => /-bash-[^/]*\/bin$/.test(d));
    assert.ok(bash >= 0 && bash < path.indexOf('/run/current-system/sw/bin'), `bash, as amazon-init's: ${path.join(':')}`);
  });

  it('switch-to-configuration does not start the converged target: a restarted agent would wait on its own start job', () => {
    // switch-to-configuration-ng (pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs)
    // starts every active target unless it has RefuseManualStart or X-OnlyManualStart. After the
    // first convergence the target stays active; when the agent is restarted it converges again
    // while its start job runs (until READY=1), and a start job for a target ordered after it
    // waits for that job (systemd's job_is_runnable), while switch-to-configuration waits for
    // the target's job (block_on_jobs) and the agent for switch-to-configuration.
    const { target } = assertGood(evaluate(ENABLE));
    assert.deepEqual(section(target, 'Unit').get('After'), ['nixos-ec2-agent.service']);
    assert.deepEqual(section(target, 'Unit').get('X-OnlyManualStart'), ['true']);
    assert.equal(section(target, 'Unit').get('RefuseManualStart'), undefined, 'multi-user.target still pulls it in at boot');
  });

  it('settings wins over a typed option, and reaches fields no option types', () => {
    const e = evaluate(ENABLE, `{
      services.nixos-ec2-agent = {
        logLevel = "warn";
        rebuild.mode = "switch";
        settings = { logLevel = "debug"; kernel.policy = "reboot"; kernel.rebootWindow = { lower = "01:00"; upper = "05:00"; }; };
      };
    }`);
    const { settings } = assertGood(e);
    assert.equal(settings['logLevel'], 'debug');
    assert.equal(settings['rebuild'].mode, 'switch');
    assert.deepEqual(settings['kernel'], { policy: 'reboot', rebootWindow: { lower: '01:00', upper: '05:00' } });
    // check-config is what catches a wrong field: the check is able to fail.
    assert.notEqual(checkConfig(JSON.stringify({ ...settings, logLevel: 'loud' })).status, 0);
  });

  it('`before`: the converged target wants and precedes those units; one multi-user.target also wants is refused', () => {
    const ok = evaluate(ENABLE, `{
      services.nixos-ec2-agent.before = [ "app.service" ];
      systemd.services.app = { wantedBy = [ "nixos-ec2-agent-converged.target" ]; serviceConfig.ExecStart = "/bin/true"; };
    }`);
    const { target } = assertGood(ok);
    assert.deepEqual(section(target, 'Unit').get('Wants'), ['app.service']);
    assert.deepEqual(section(target, 'Unit').get('Before'), ['app.service']);
    const cyclic = evaluate(ENABLE, `{
      services.nixos-ec2-agent.before = [ "app.service" ];
      systemd.services.app = { wantedBy = [ "multi-user.target" ]; serviceConfig.ExecStart = "/bin/true"; };
    }`);
    assert.equal(cyclic.failedAssertions.length, 1);
    assert.ok(orderingCycle(cyclic.units, cyclic.wantedBy)?.includes('app.service'), 'the assertion stands for a real cycle');
    assert.match(cyclic.failedAssertions[0]!, /app\.service[\s\S]*ordering cycle/);
  });
});

describe('flake.nix outputs, with the real nixpkgs lib', { skip }, () => {
  interface FlakeShape {
    systems: string[];
    package: { isDerivation: boolean; from: string };
    overlay: string;
    module: string;
    vm: { name: string; nodes: string[]; script: boolean; machineImports: string[]; packageIsDerivation: boolean; sharedImports: string[] };
  }

  it('packages, overlay, module and the VM check; the test node gets the package as a derivation, imports no generated file', () => {
    const shape = nixEval<FlakeShape>(`
      let
        lib = ${LIB()};
        flake = import ${nixString(join(ROOT, 'flake.nix'))};
        stubPkgs = system: rec {
          inherit lib;
          stdenv.hostPlatform.system = system;
          path = "/nix/store/00000000000000000000000000000000-nixpkgs";
          callPackage = fn: args: { type = "derivation"; name = "nixos-ec2-agent-0.1.0"; outPath = "/nix/store/00000000000000000000000000000001-nixos-ec2-agent"; from = toString fn; };
          writeText = name: text: { type = "derivation"; inherit name text; outPath = "/nix/store/00000000000000000000000000000002-" + name; };
          testers.runNixOSTest = t: t;
        };
        nixpkgs = { inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs; };
        self = flake.outputs { inherit self nixpkgs; };
        vm = self.checks.x86_64-linux.vm;
        machine = vm.nodes.machine { inherit lib; };
        shared = builtins.head machine.imports;
        sharedConfig = shared { inherit lib; };
      in {
        systems = builtins.attrNames self.packages;
        package = { isDerivation = lib.isDerivation self.packages.x86_64-linux.default; inherit (self.packages.x86_64-linux.default) from; };
        overlay = builtins.typeOf self.overlays.default;
        module = toString self.nixosModules.default;
        vm = {
          inherit (vm) name;
          nodes = builtins.attrNames vm.nodes;
          script = lib.hasInfix "wait_for_unit" vm.testScript;
          machineImports = map builtins.typeOf machine.imports;
          packageIsDerivation = lib.isDerivation sharedConfig.services.nixos-ec2-agent.package;
          sharedImports = map builtins.typeOf sharedConfig.imports;
        };
      }
    `);
    assert.deepEqual(shape.systems, ['aarch64-linux', 'x86_64-linux']);
    assert.equal(shape.package.isDerivation, true);
    assert.match(shape.package.from, /\/nix\/package\.nix$/);
    assert.equal(shape.overlay, 'lambda');
    assert.match(shape.module, /\/nix\/module\.nix$/);
    assert.equal(shape.vm.name, 'nixos-ec2-agent');
    assert.deepEqual(shape.vm.nodes, ['aws', 'machine']);
    assert.equal(shape.vm.script, true);
    // A string here would be a generated file read back (import from derivation); a store-path
    // string as the package would go through builtins.storePath: both fail `nix flake check`.
    assert.deepEqual(shape.vm.machineImports, ['lambda']);
    assert.equal(shape.vm.packageIsDerivation, true);
    assert.deepEqual(shape.vm.sharedImports, ['path']);
  });
});
