// The stand-ins against what the real tools do: the NixOS on-disk layout (checked against the real
// nix-env where it is installed), legacy nixos-rebuild's exit codes and messages, and each marker.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lutimes, mkdir, mkdtemp, readFile, readdir, readlink, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ProcessRunner } from '../../agent/runner.js';
import type { RunResult } from '../../agent/ports.js';
import { type StandinPaths, bootMachine, installStandins } from '../../sandbox/standin/install.js';
import { pathLiterals } from '../../sandbox/standin/nixpaths.js';
import { findNixInstantiate, nixBase32 } from '../../sandbox/standin/system.js';

const runner = new ProcessRunner(process.env, 200);
const scratch: string[] = [];
after(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

const STORE_NAME = /^[0-9abcdfghijklmnpqrsvwxyz]{32}-nixos-system-[a-z0-9-]+-[0-9][^/]*$/;

interface Machine {
  readonly root: string;
  readonly cwd: string;
  readonly tools: StandinPaths;
  readonly profile: string;
  run(command: string, args: readonly string[], env?: Record<string, string>): Promise<RunResult>;
  /** Writes a file under ROOT/etc/nixos. */
  write(rel: string, text: string): Promise<string>;
  storeEntries(): Promise<string[]>;
  link(rel: string): Promise<string>;
}

async function machine(): Promise<Machine> {
  const dir = await mkdtemp(join(tmpdir(), 'standin-'));
  scratch.push(dir);
  const root = join(dir, 'root');
  const cwd = join(dir, 'work');
  await mkdir(cwd, { recursive: true });
  const tools = await installStandins({ binDir: join(dir, 'bin'), root });
  await bootMachine(root);
  return {
    root,
    cwd,
    tools,
    profile: join(root, 'nix/var/nix/profiles/system'),
    run: (command, args, env) => runner.run({ command, args, cwd, env: { TZ: 'UTC', ...env }, timeoutMs: 20_000 }),
    async write(rel, text) {
      const path = join(root, 'etc/nixos', rel);
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, text);
      return path;
    },
    async storeEntries() {
      return (await readdir(join(root, 'nix/store'))).sort();
    },
    link: (rel) => readlink(join(root, rel)),
  };
}

function lastLine(text: string): string {
  return text.trimEnd().split('\n').at(-1) ?? '';
}

const MAIN = (imports: string) => `{ lib, ... }:\n{\n  imports = [ ${imports} ];\n  system.stateVersion = "24.11";\n}\n`;

describe('boot', () => {
  test('a fresh machine runs generation 1, booted and current, with no failed units', async () => {
    const m = await machine();
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
    const gen1 = await m.link('nix/var/nix/profiles/system-1-link');
    assert.match(gen1.slice(join(m.root, 'nix/store/').length), STORE_NAME);
    assert.ok(gen1.startsWith(join(m.root, 'nix/store/')));
    assert.equal(await m.link('run/booted-system'), gen1);
    assert.equal(await m.link('run/current-system'), gen1);
    const running = await m.run(m.tools.systemctl, ['is-system-running']);
    assert.equal(running.code, 0);
    assert.equal(running.stdout, 'running\n');

    // The image's configuration is on disk: rebuilding it yields generation 1 again, not a new one.
    const again = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
    assert.deepEqual((await readdir(dirname(m.profile))).sort(), ['system', 'system-1-link']);
  });

  test('rebooting boots the profile and empties /run', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('') + '# sandbox-kernel-6.12.1\n');
    assert.equal((await m.run(m.tools.nixosRebuild, ['boot'])).code, 0);
    const gen2 = await m.link('nix/var/nix/profiles/system-2-link');
    assert.notEqual(await m.link('run/current-system'), gen2, 'boot does not activate');
    await writeFile(join(m.root, 'run/leftover'), 'x');
    await bootMachine(m.root);
    assert.equal(await m.link('run/booted-system'), gen2);
    assert.equal(await m.link('run/current-system'), gen2);
    assert.equal(existsSync(join(m.root, 'run/leftover')), false);
  });
});

describe('boot loader', () => {
  test('rebooting boots what switch-to-configuration last made the boot default, not merely the profile', async () => {
    // The boot menu is written only by switch-to-configuration boot|switch (its INSTALL_BOOTLOADER):
    // a profile moved by nix-env --set alone is not booted.
    const m = await machine();
    const gen1 = await m.link('nix/var/nix/profiles/system-1-link');
    await m.write('configuration.nix', MAIN('') + '# v2\n');
    const built = await m.run(m.tools.nixosRebuild, ['build']);
    assert.equal(built.code, 0, built.stderr);
    const gen2System = lastLine(built.stdout);
    assert.equal((await m.run(m.tools.nixEnv, ['-p', m.profile, '--set', gen2System])).code, 0);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-2-link');
    await bootMachine(m.root);
    assert.equal(await m.link('run/booted-system'), gen1);
    assert.equal(await m.link('run/current-system'), gen1);

    assert.equal((await m.run(join(gen2System, 'bin/switch-to-configuration'), ['boot'])).code, 0);
    await bootMachine(m.root);
    assert.equal(await m.link('run/booted-system'), gen2System);
  });
});

describe('nixos-rebuild build', () => {
  test('builds a deterministic system from the configuration and what it imports', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./ec2-agent ./hosts/web.nix') + '# ./not-imported.nix\n');
    await m.write('ec2-agent/default.nix', '{ imports = [ ./user-data.nix ]; }\n');
    await m.write('ec2-agent/user-data.nix', '{ services.nginx.enable = true; }\n');
    await m.write('hosts/web.nix', '{ networking.hostName = "web1"; x = "./in-a-string.nix"; }\n');
    const before = await m.storeEntries();

    const built = await m.run(m.tools.nixosRebuild, ['build', '--show-trace', '--option', 'sandbox', 'false']);
    assert.equal(built.code, 0, built.stderr);
    assert.match(built.stderr, /building the system configuration\.\.\./);
    const path = lastLine(built.stdout);
    assert.equal(dirname(path), join(m.root, 'nix/store'));
    assert.match(path.slice(dirname(path).length + 1), STORE_NAME);
    assert.match(path, /-nixos-system-web1-/);
    assert.equal(await readlink(join(m.cwd, 'result')), path);
    assert.deepEqual(
      (await readdir(join(path, 'configuration'), { recursive: true })).filter((f) => f.endsWith('.nix')).sort(),
      ['configuration.nix', 'imports/ec2-agent/default.nix', 'imports/ec2-agent/user-data.nix', 'imports/hosts/web.nix'],
    );
    assert.equal(await readFile(join(path, 'kernel'), 'utf8'), '6.6.0');
    assert.equal(await readFile(join(path, 'failed-units'), 'utf8'), '');
    assert.equal(existsSync(join(path, 'activation-fails')), false);
    // Building changes no generation and activates nothing.
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
    assert.notEqual(await m.link('run/current-system'), path);
    assert.deepEqual((await m.storeEntries()).filter((e) => !before.includes(e)), [path.slice(dirname(path).length + 1)]);

    const again = await m.run(m.tools.nixosRebuild, ['build']);
    assert.equal(lastLine(again.stdout), path, 'same content, same store path');

    // The same files on another machine name the same system; a change in an imported file does not.
    const other = await machine();
    for (const f of ['configuration.nix', 'ec2-agent/default.nix', 'ec2-agent/user-data.nix', 'hosts/web.nix']) {
      await other.write(f, await readFile(join(m.root, 'etc/nixos', f), 'utf8'));
    }
    const there = await other.run(other.tools.nixosRebuild, ['build']);
    assert.equal(lastLine(there.stdout).slice(other.root.length), path.slice(m.root.length));
    await m.write('ec2-agent/user-data.nix', '{ services.nginx.enable = false; }\n');
    const changed = await m.run(m.tools.nixosRebuild, ['build']);
    assert.notEqual(lastLine(changed.stdout), path);
  });

  test('-I nixos-config= and the local.d directory import', async () => {
    const m = await machine();
    const local = join(m.root, 'etc/nixos-ec2-agent/local.d');
    await mkdir(local, { recursive: true });
    await writeFile(join(local, 'a.nix'), '{ }\n');
    await writeFile(join(local, 'b.nix'), '{ } # sandbox-kernel-6.12.1\n');
    // Absolute paths are the machine's: /etc/... is the sandbox's /etc.
    const config = await m.write('alt.nix', MAIN('/etc/nixos-ec2-agent/local.d'));
    const built = await m.run(m.tools.nixosRebuild, ['build', '-I', `nixos-config=${config}`]);
    assert.equal(built.code, 0, built.stderr);
    assert.equal(await readFile(join(lastLine(built.stdout), 'kernel'), 'utf8'), '6.12.1');
  });

  test('a copy of configuration.nix that imports by absolute path builds the same system, wherever it lies', async () => {
    const m = await machine();
    await m.write('parts/user-data.nix', '{ services.nginx.enable = true; }\n');
    const text = MAIN(join(m.root, 'etc/nixos/parts/user-data.nix'));
    await m.write('configuration.nix', text);
    const copy = await m.write('ec2-agent/abc/configuration.nix', text);
    const fromMain = lastLine((await m.run(m.tools.nixosRebuild, ['build'])).stdout);
    const fromCopy = await m.run(m.tools.nixosRebuild, ['build', '-I', `nixos-config=${copy}`]);
    assert.equal(fromCopy.code, 0, fromCopy.stderr);
    assert.equal(lastLine(fromCopy.stdout), fromMain);
    // A copy that differs does not.
    const other = await m.write('ec2-agent/def/configuration.nix', `${text}# another\n`);
    assert.notEqual(lastLine((await m.run(m.tools.nixosRebuild, ['build', '-I', `nixos-config=${other}`])).stdout), fromMain);
  });

  test('sandbox-kernel-<version> changes kernel, initrd and kernel-modules', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./kernel.nix'));
    await m.write('kernel.nix', '{ }\n');
    const plain = lastLine((await m.run(m.tools.nixosRebuild, ['build'])).stdout);
    await m.write('kernel.nix', '{ boot.kernelPackages = "sandbox-kernel-6.12.1"; }\n');
    const newer = lastLine((await m.run(m.tools.nixosRebuild, ['build'])).stdout);
    assert.notEqual(plain, newer);
    assert.equal(await readFile(join(plain, 'kernel'), 'utf8'), '6.6.0');
    for (const f of ['kernel', 'initrd', 'kernel-modules']) assert.equal(await readFile(join(newer, f), 'utf8'), '6.12.1');
  });

  test('sandbox-fail-build in an imported file fails the build and builds nothing', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./broken.nix'));
    await m.write('broken.nix', '{ environment.etc.x.text = "sandbox-fail-build"; }\n');
    const before = await m.storeEntries();
    for (const action of ['build', 'switch']) {
      const r = await m.run(m.tools.nixosRebuild, [action]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /error: builder for '\/\S+-nixos-system-sandbox-[^']+\.drv' failed with exit code 1/);
      assert.equal(r.stdout, '');
    }
    assert.deepEqual(await m.storeEntries(), before);
    assert.equal(existsSync(join(m.cwd, 'result')), false);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
  });

  test('a syntax error in an imported file fails with Nix\'s own message', { skip: findNixInstantiate() === null ? 'nix-instantiate is not installed' : false }, async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./modules/bad.nix'));
    const bad = await m.write('modules/bad.nix', '{ a = 1;\n b = ; }\n');
    const r = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error: syntax error, unexpected ';'/);
    const at = /at (.+):(\d+):(\d+):/.exec(r.stderr);
    assert.deepEqual(at?.slice(1), [bad, '2', '6']);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
  });

  test('sandbox-hang never returns; a timeout kills it and everything it started', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./slow.nix'));
    await m.write('slow.nix', '{ } # sandbox-hang\n');
    const r = await runner.run({ command: m.tools.nixosRebuild, args: ['switch'], cwd: m.cwd, timeoutMs: 10_000 });
    assert.equal(r.timedOut, true);
    assert.equal(r.code, null);
    assert.match(r.stderr, /building '.*\.drv'\.\.\./, 'it hung in the build, not before');
    let left: string[] = [];
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
      left = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.includes(m.root));
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(left, []);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
  });
});

describe('nixos-rebuild switch/test/boot and switch-to-configuration', () => {
  test('switch moves the profile and current-system; boot records the boot default', async () => {
    const m = await machine();
    const booted = await m.link('run/booted-system');
    await m.write('configuration.nix', MAIN('') + '# v2\n');
    const r = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    const gen2 = await m.link('nix/var/nix/profiles/system-2-link');
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-2-link');
    assert.equal(await m.link('run/current-system'), gen2);
    assert.equal(await m.link('run/booted-system'), booted, 'booted-system is set only at boot');
    assert.equal(await m.link('boot/default-system'), gen2);
  });

  test('sandbox-fail-switch: switch exits 1 after the profile moved; switch-to-configuration test exits 2', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./bad.nix'));
    await m.write('bad.nix', '{ system.activationScripts.x = "sandbox-fail-switch"; }\n');
    const r = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Activation script snippet 'sandbox' failed \(1\)/);
    assert.match(lastLine(r.stderr), /^warning: error\(s\) occurred while switching to the new configuration$/);
    const gen2 = await m.link('nix/var/nix/profiles/system-2-link');
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-2-link');
    assert.equal(await m.link('run/current-system'), gen2);

    const fresh = await machine();
    await fresh.write('configuration.nix', MAIN('./bad.nix'));
    await fresh.write('bad.nix', '{ system.activationScripts.x = "sandbox-fail-switch"; }\n');
    const built = await fresh.run(fresh.tools.nixosRebuild, ['build']);
    const system = lastLine(built.stdout);
    const t = await fresh.run(join(fresh.cwd, 'result/bin/switch-to-configuration'), ['test']);
    assert.equal(t.code, 2);
    assert.equal(await fresh.link('nix/var/nix/profiles/system'), 'system-1-link');
    assert.equal(await fresh.link('run/current-system'), system);
    // boot does not run the activation script, so it succeeds.
    assert.equal((await fresh.run(join(system, 'bin/switch-to-configuration'), ['boot'])).code, 0);
    const usage = await fresh.run(join(system, 'bin/switch-to-configuration'), ['reboot-now']);
    assert.equal(usage.code, 1);
  });

  test('sandbox-unit-fails-in-switch: switch-to-configuration names the failed unit and exits 4 after switching; systemctl reports it', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./demo.nix'));
    await m.write('demo.nix', '{ systemd.services.sandbox-demo.script = "sandbox-unit-fails-in-switch"; }\n');
    const built = await m.run(m.tools.nixosRebuild, ['build']);
    const system = lastLine(built.stdout);
    const t = await m.run(join(system, 'bin/switch-to-configuration'), ['test']);
    assert.equal(t.code, 4, t.stderr);
    assert.match(t.stderr, /^warning: the following units failed: sandbox-demo\.service$/m);
    assert.doesNotMatch(t.stderr, /new units were started: .*sandbox-demo/);
    assert.equal(await m.link('run/current-system'), system, 'the rest of the switch happened');
    // The legacy nixos-rebuild turns any failed activation into exit 1, after moving the profile.
    const r = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^warning: the following units failed: sandbox-demo\.service$/m);
    assert.match(lastLine(r.stderr), /^warning: error\(s\) occurred while switching to the new configuration$/);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-2-link');
    for (const args of [
      ['--failed', '--no-legend', '--plain'],
      ['list-units', '--state=failed', '--no-legend', '--plain'],
    ]) {
      const failed = await m.run(m.tools.systemctl, args);
      assert.equal(failed.code, 0);
      assert.deepEqual(
        failed.stdout.trimEnd().split('\n').map((l) => l.split(/\s+/).slice(0, 4)),
        [['sandbox-demo.service', 'loaded', 'failed', 'failed']],
      );
    }
    const state = await m.run(m.tools.systemctl, ['is-system-running']);
    assert.deepEqual([state.code, state.stdout], [1, 'degraded\n']);
    assert.equal((await m.run(m.tools.systemctl, ['is-failed', 'sandbox-demo.service'])).code, 0);
    assert.equal((await m.run(m.tools.systemctl, ['is-failed', 'sshd.service'])).code, 1);
    assert.equal((await m.run(m.tools.systemctl, ['frobnicate'])).code, 1);

    // Going back to a good generation leaves nothing failed.
    const back = await m.run(m.tools.nixosRebuild, ['switch', '--rollback']);
    assert.equal(back.code, 0, back.stderr);
    const after = await m.run(m.tools.systemctl, ['is-system-running']);
    assert.deepEqual([after.code, after.stdout], [0, 'running\n']);
    assert.equal((await m.run(m.tools.systemctl, ['--failed', '--no-legend', '--plain'])).stdout, '');
  });

  test('sandbox-fail-unit: the unit fails after switch-to-configuration returned 0; systemctl reports it', async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('./demo.nix'));
    await m.write('demo.nix', '{ systemd.services.sandbox-demo.script = "sandbox-fail-unit"; }\n');
    const r = await m.run(m.tools.nixosRebuild, ['switch']);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /units failed/);
    assert.match(r.stderr, /the following new units were started: sandbox-demo\.service/);
    assert.equal((await m.run(m.tools.systemctl, ['is-failed', 'sandbox-demo.service'])).code, 0);
    assert.deepEqual((await m.run(m.tools.systemctl, ['is-system-running'])).stdout, 'degraded\n');
  });

  test('--rollback: switch moves the profile back; test activates the previous generation only', async () => {
    const m = await machine();
    const gen1 = await m.link('nix/var/nix/profiles/system-1-link');
    const noOlder = await m.run(m.tools.nixosRebuild, ['switch', '--rollback']);
    assert.equal(noOlder.code, 1);
    assert.match(noOlder.stderr, /error: no profile version older than the current \(1\) exists/);

    await m.write('configuration.nix', MAIN('') + '# v2\n');
    assert.equal((await m.run(m.tools.nixosRebuild, ['switch'])).code, 0);
    const gen2 = await m.link('nix/var/nix/profiles/system-2-link');

    const t = await m.run(m.tools.nixosRebuild, ['test', '--rollback']);
    assert.equal(t.code, 0, t.stderr);
    assert.equal(await m.link('run/current-system'), gen1);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-2-link');

    const s = await m.run(m.tools.nixosRebuild, ['switch', '--rollback']);
    assert.equal(s.code, 0, s.stderr);
    assert.match(s.stderr, /switching profile from version 2 to 1/);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-1-link');
    assert.equal(await m.link('run/current-system'), gen1);
    assert.equal(await m.link('boot/default-system'), gen1);
    assert.notEqual(gen1, gen2);
  });

  test('bad usage exits 1', async () => {
    const m = await machine();
    assert.equal((await m.run(m.tools.nixosRebuild, [])).code, 1);
    assert.equal((await m.run(m.tools.nixosRebuild, ['frobnicate'])).code, 1);
    assert.equal((await m.run(m.tools.nixosRebuild, ['build', '-I', `nixos-config=${join(m.root, 'missing.nix')}`])).code, 1);
  });
});

describe('nix-env profiles', () => {
  async function storePath(m: Machine, name: string): Promise<string> {
    const hash = nixBase32(createHash('sha256').update(name).digest().subarray(0, 20));
    const path = join(m.root, 'nix/store', `${hash}-${name}`);
    await mkdir(path, { recursive: true });
    return path;
  }

  test('--set, --list-generations, --rollback, --switch-generation, --delete-generations', async () => {
    const m = await machine();
    const env = (...args: string[]) => m.run(m.tools.nixEnv, ['-p', m.profile, ...args]);
    const a = await storePath(m, 'a');
    const b = await storePath(m, 'b');
    assert.equal((await env('--set', a)).code, 0);
    assert.equal((await env('--set', a)).code, 0, 'the newest generation is reused');
    // A machine path, as the real tools see it, is the sandbox's.
    assert.equal((await m.run(m.tools.nixEnv, ['-p', '/nix/var/nix/profiles/system', '--set', b.slice(m.root.length)])).code, 0);
    assert.deepEqual((await readdir(dirname(m.profile))).sort(), ['system', 'system-1-link', 'system-2-link', 'system-3-link']);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-3-link');
    assert.equal(await m.link('nix/var/nix/profiles/system-3-link'), b);

    const times = ['2024-01-02T03:04:05Z', '2024-02-03T04:05:06Z', '2024-03-04T05:06:07Z'];
    for (const [k, t] of times.entries()) {
      const when = new Date(t);
      await lutimes(join(dirname(m.profile), `system-${k + 1}-link`), when, when);
    }
    const expected = ['   1   2024-01-02 03:04:05   ', '   2   2024-02-03 04:05:06   ', '   3   2024-03-04 05:06:07   (current)'];
    const listed = await env('--list-generations');
    assert.equal(listed.stdout, expected.join('\n') + '\n');

    const back = await env('--rollback');
    assert.equal(back.code, 0);
    assert.match(back.stderr, /switching profile from version 3 to 2/);
    assert.equal((await env('--list-generations')).stdout.split('\n')[1], '   2   2024-02-03 04:05:06   (current)');
    assert.equal((await env('--switch-generation', '3')).code, 0);
    assert.equal(await m.link('nix/var/nix/profiles/system'), 'system-3-link');
    const missing = await env('--switch-generation', '9');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /profile version 9 does not exist/);

    const current = await env('--delete-generations', '3');
    assert.equal(current.code, 1);
    assert.equal((await env('--delete-generations', '2')).code, 0);
    assert.deepEqual((await readdir(dirname(m.profile))).sort(), ['system', 'system-1-link', 'system-3-link']);
    assert.equal((await env('--delete-generations', 'old')).code, 0);
    assert.deepEqual((await readdir(dirname(m.profile))).sort(), ['system', 'system-3-link']);
    const none = await env('--rollback');
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no profile version older than the current \(3\) exists/);
    assert.equal(await realpath(m.profile), b);
  });

  const realNixEnv = ['/usr/bin/nix-env'].find((p) => existsSync(p));
  test('the real nix-env reads the same generations', { skip: realNixEnv === undefined || process.getuid?.() !== 0 ? 'needs the real nix-env, as root' : false }, async () => {
    const m = await machine();
    await m.write('configuration.nix', MAIN('') + '# v2\n');
    assert.equal((await m.run(m.tools.nixosRebuild, ['switch'])).code, 0);
    assert.equal((await m.run(m.tools.nixEnv, ['-p', m.profile, '--rollback'])).code, 0);
    const ours = await m.run(m.tools.nixEnv, ['-p', m.profile, '--list-generations']);
    const theirs = await m.run(realNixEnv as string, ['-p', m.profile, '--list-generations']);
    assert.equal(theirs.code, 0, theirs.stderr);
    assert.equal(ours.stdout, theirs.stdout);
  });
});

describe('nix-channel', () => {
  test('--add, --list, --update, and sandbox-fail-channel', async () => {
    const m = await machine();
    assert.equal((await m.run(m.tools.nixChannel, ['--add', 'https://nixos.org/channels/nixos-24.11', 'nixos'])).code, 0);
    assert.equal((await m.run(m.tools.nixChannel, ['--list'])).stdout, 'nixos https://nixos.org/channels/nixos-24.11\n');
    const ok = await m.run(m.tools.nixChannel, ['--update']);
    assert.equal(ok.code, 0);
    assert.match(ok.stderr, /unpacking channels\.\.\./);
    await writeFile(join(m.root, 'root/.nix-channels'), 'https://example.invalid/sandbox-fail-channel broken\n');
    assert.equal((await m.run(m.tools.nixChannel, ['--update'])).code, 1);
    assert.equal((await m.run(m.tools.nixosRebuild, ['switch', '--upgrade'])).code, 1);
  });
});

describe('pieces', () => {
  test('nix-base32 matches Nix for sha256("hello")', () => {
    // `printf hello | sha256sum` then `nix-hash --type sha256 --to-base32`.
    assert.equal(nixBase32(createHash('sha256').update('hello').digest()), '094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic');
  });

  test('path literals outside strings and comments, including inside interpolations', () => {
    const src = `{ a = ./a.nix; b = "./no.nix \${toString ./c.nix}"; /* ./no2.nix */ d = ''x \${./e} ''; # ./no3.nix
      f = <nixpkgs/lib>; g = https://x.org/y; h = ./local.d + "/\${n}"; i = ./dir/\${n}; j = x / 2; k = a//b; l = /etc/x.nix; }`;
    assert.deepEqual(
      pathLiterals(src).map((p) => [p.text, p.interpolated]),
      [['./a.nix', false], ['./c.nix', false], ['./e', false], ['./local.d', false], ['./dir/', true], ['/etc/x.nix', false]],
    );
  });
});
