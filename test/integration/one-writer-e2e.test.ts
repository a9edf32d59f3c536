// One agent at a time on a root: a process that would run a pass of its own (`converge --once`, a
// second `run`) while the daemon works on the same root would take the daemon's journal entry for a killed
// agent's, put configuration.nix back under the daemon's build and write state.json over it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { copyFile, mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { killTree, markerModule, waitFor, withInstance, type Instance, type OtherLaunch } from '../support/e2e.js';
import { withDaemon, type LiveDaemon } from '../support/daemon.js';

const MODULE = '/nixos/fleet/modules/app';

/**
 * `body` while a daemon builds a desired state that hangs, given the journal entry and the
 * configuration.nix of that build: what a second agent must leave as they are.
 */
async function whileTheDaemonBuilds(body: (d: LiveDaemon, i: Instance, building: { journal: unknown; configuration: string }) => Promise<void>): Promise<void> {
  await withDaemon({ config: { rebuild: { buildTimeoutSeconds: 120 } } }, async (d, i) => {
    i.put(MODULE, markerModule('sandbox-hang'));
    d.run.child.kill('SIGHUP');
    // configuration.nix is committed once the parser has passed it, with the build under way.
    await waitFor('the daemon to build', async () => ((await i.durableState()).journal.phase === 'building' && (await i.configuration()).includes('modules/app.nix') ? true : undefined), 90_000, 20);
    await body(d, i, { journal: (await i.durableState()).journal, configuration: await i.configuration() });
  });
}

describe('a second agent while the daemon runs', { timeout: 240_000 }, () => {
  test('converge --once is refused, and the daemon\'s pass, journal and configuration.nix are left alone', async () => {
    await whileTheDaemonBuilds(async (d, i, { journal, configuration }) => {
      const once = await i.run(['converge', '--once']);
      assert.equal(once.code, 2, `converge --once exited ${once.code}: ${once.stderr.slice(-2000)}`);
      assert.match(once.stderr, /daemon/);
      assert.deepEqual((await i.durableState()).journal, journal, 'the daemon\'s journal entry stands');
      assert.equal(await i.configuration(), configuration, 'configuration.nix is the daemon\'s');
      assert.ok(d.alive);
      assert.equal(d.passes().length, 1, 'the daemon\'s build is still under way');
    });
  });

  test('a second run is refused before it touches anything, and the first keeps its socket', async () => {
    await whileTheDaemonBuilds(async (d, i, { journal, configuration }) => {
      const second = await i.run(['run']);
      assert.notEqual(second.code, 0, `the second run exited ${second.code}`);
      // Refused by the root's lock, which names the daemon that holds it.
      assert.match(second.stderr, new RegExp(`another nixos-ec2-agent \\(pid ${d.run.child.pid}\\) is working on this root`));
      assert.doesNotMatch(second.stderr, /"event":"recover"/);
      assert.deepEqual((await i.durableState()).journal, journal, 'the daemon\'s journal entry stands');
      assert.equal(await i.configuration(), configuration, 'configuration.nix is the daemon\'s');
      assert.ok(d.alive);
      assert.equal(d.passes().length, 1, 'the daemon\'s build is still under way');
      const status = await i.run(['status', '--json']);
      assert.equal((JSON.parse(status.stdout) as { pid?: number }).pid, d.run.child.pid, 'the first daemon still answers on its socket');
    });
  });
});

/**
 * The package installed without its addons (no build/Release, as where node-gyp could not run): its
 * dist/ linked into a directory of its own, the links kept as the paths the modules know themselves
 * by, so that agent/native.ts looks for the addons there and finds none.
 */
async function installWithoutAddons(dir: string): Promise<OtherLaunch> {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  await mkdir(dir, { recursive: true });
  await symlink(path.join(root, 'dist'), path.join(dir, 'dist'));
  await copyFile(path.join(root, 'package.json'), path.join(dir, 'package.json'));
  return { cli: path.join(dir, 'dist/agent/cli.js'), nodeFlags: ['--preserve-symlinks-main'] };
}

describe('an install without the flock addon', { timeout: 240_000 }, () => {
  test("converge --once takes no lock and asks the daemon's socket instead: refused while the daemon builds, and alone it converges, saying why the root is not locked", async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-no-addon-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const bare = await installWithoutAddons(dir);
    await whileTheDaemonBuilds(async (d, i, { journal, configuration }) => {
      const once = await i.run(['converge', '--once'], {}, bare);
      assert.equal(once.code, 2, `converge --once exited ${once.code}: ${once.stderr.slice(-2000)}`);
      assert.match(once.stderr, /the flock addon could not be loaded/, 'it says why it holds no lock');
      assert.match(once.stderr, /^the daemon is running on this root; use converge --now$/m);
      assert.deepEqual((await i.durableState()).journal, journal, "the daemon's journal entry stands");
      assert.equal(await i.configuration(), configuration, "configuration.nix is the daemon's");
      assert.ok(d.alive);
      assert.equal(d.passes().length, 1, "the daemon's build is still under way");
    });
    await withInstance({}, async (i) => {
      const once = await i.run(['converge', '--once', '--json'], {}, bare);
      assert.equal(once.code, 0, once.stderr.slice(-2000));
      assert.equal((JSON.parse(once.stdout) as { condition: string }).condition, 'converged');
      assert.match(once.stderr, /"event":"lock\.unheld"/);
    });
  });
});

describe('two commands on one root with no daemon', { timeout: 240_000 }, () => {
  test('rollback and a second converge --once wait for nothing and change nothing while converge --once builds; once it is killed, the root is free', async () => {
    await withInstance({ config: { rebuild: { buildTimeoutSeconds: 120 } } }, async (i) => {
      i.put(MODULE, markerModule('sandbox-hang'));
      const once = i.start(['converge', '--once']);
      try {
        await waitFor('converge --once to build', async () => ((await i.durableState()).journal.phase === 'building' && (await i.configuration()).includes('modules/app.nix') ? true : undefined), 90_000, 20);
        const journal = (await i.durableState()).journal;
        const configuration = await i.configuration();
        for (const args of [['rollback'], ['converge', '--once'], ['suspend']]) {
          const other = await i.run(args);
          assert.equal(other.code, 2, `${args.join(' ')} exited ${other.code}: ${other.stderr.slice(-2000)}`);
          assert.match(other.stderr, new RegExp(`another nixos-ec2-agent \\(pid ${once.child.pid}\\) is working on this root.*; nothing was changed`), args.join(' '));
          assert.deepEqual((await i.durableState()).journal, journal, `${args.join(' ')} left the journal entry alone`);
          assert.equal(await i.configuration(), configuration, `${args.join(' ')} left configuration.nix alone`);
        }
        assert.equal(once.child.exitCode, null, 'converge --once is still building');
      } finally {
        // As systemd kills a unit's control group, or the OOM killer the agent: no release, no cleanup.
        await killTree(once.child.pid as number);
        await once.done;
      }
      const suspended = await i.run(['suspend', '--json']);
      assert.equal(suspended.code, 0, `suspend after the holder was killed exited ${suspended.code}: ${suspended.stderr.slice(-2000)}`);
    });
  });
});
