// Faults that must not wedge the daemon: a write error under the root (a full disk, an immutable
// directory), a hung build while a newer desired state arrives, an SSM call that never answers.
// In each: the pass ends (failed, naming what), nothing is switched, the daemon stays alive and
// SIGTERM still ends it promptly. Mounting a tmpfs and `chattr +i` need root.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { markerModule, waitFor, type Instance } from '../support/e2e.js';
import { type LiveDaemon, withDaemon } from '../support/daemon.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const TZ = '/nixos/fleet/options/time.timeZone';
const isRoot = process.getuid?.() === 0;
const canMount = isRoot && spawnSync('mount', ['--version']).status === 0;
const canChattr = isRoot && spawnSync('chattr', ['--help']).error === undefined;

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** The pass under the fault ended, not converged, and the instance is where it was. */
async function assertFailedSafely(d: LiveDaemon, i: Instance, good: string, what: RegExp): Promise<void> {
  const end = d.passes().at(-1);
  assert.notEqual(end?.outcome, 'converged');
  assert.ok(d.alive, 'the daemon is alive');
  assert.equal(await i.running(), good, 'nothing was switched');
  assert.equal(await i.profileSystem(), good, 'the boot default did not move');
  // status.json is rewritten at each step by its own writer: wait for the one after the pass.
  const named = await waitFor('status to name the failure', async () => {
    const status = await d.status();
    const text = JSON.stringify({ lastResult: status.lastResult, reasons: status.reasons });
    return what.test(text) ? text : undefined;
  }, 30_000).catch(() => undefined);
  const status = await d.status();
  assert.match(named ?? JSON.stringify({ lastResult: status.lastResult, reasons: status.reasons }), what, 'status names the failure');
}

async function assertStopsPromptly(d: LiveDaemon): Promise<void> {
  const { forced } = await d.stop();
  assert.equal(forced, false, 'SIGTERM ended the daemon within 15 s');
}

/** The daemon under a write fault on `dir` (relative to root), set up by `arm` and undone by `disarm`. */
async function writeFault(arm: (dir: string) => Promise<void>, disarm: (dir: string) => void, rel: string, what: RegExp): Promise<void> {
  await withDaemon({ parameters: [FLEET_TZ], config: { rebuild: { buildTimeoutSeconds: 60 } } }, async (d, i) => {
    const good = await i.running();
    const dir = i.file(rel);
    await arm(dir);
    try {
      i.put(TZ, '"Europe/Paris"');
      // A poll that was already under way when the change landed ends unchanged: the pass that
      // reads the change is the next one.
      let end = await d.pass(45_000);
      for (let tries = 0; end.outcome === 'unchanged' && tries < 3; tries++) end = await d.passAfter(d.passes().length, 45_000);
      await assertFailedSafely(d, i, good, what);
      await assertStopsPromptly(d);
    } finally {
      disarm(dir);
    }
  });
}

describe('write errors under the root', { concurrency: true }, () => {
  test('ENOSPC: a full filesystem under etc/nixos/ec2-agent', { skip: !canMount && 'needs root and mount' }, async () => {
    await writeFault(
      async (dir) => {
        const keep = `${dir}.saved`;
        await cp(dir, keep, { recursive: true });
        sh('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir]);
        await cp(keep, dir, { recursive: true });
        // Fill it: the next render has no room.
        spawnSync('sh', ['-c', `head -c 1000000 /dev/zero > '${dir}/filler'`]);
      },
      (dir) => spawnSync('umount', ['-l', dir]),
      'etc/nixos/ec2-agent',
      /ENOSPC|no space/i,
    );
  });

  for (const rel of ['etc/nixos/ec2-agent', 'var/lib/nixos-ec2-agent']) {
    test(`EACCES/EPERM: ${rel} made immutable`, { skip: !canChattr && 'needs root and chattr' }, async () => {
      await writeFault(
        async (dir) => sh('chattr', ['+i', dir]),
        (dir) => spawnSync('chattr', ['-i', dir]),
        rel,
        /EACCES|EPERM|permitted|denied/i,
      );
    });
  }
});

describe('hung calls', { concurrency: true }, () => {
  test('a hung build is cancelled by a newer desired state (no revision parameter, no converge --now)', async () => {
    await withDaemon({ parameters: [FLEET_TZ], config: { rebuild: { buildTimeoutSeconds: 300 }, ssm: { pollIntervalSeconds: 1, pollJitter: 0 } } }, async (d, i) => {
      const before = d.passes().length;
      const from = d.log.events.length;
      i.put('/nixos/fleet/modules/slow', markerModule('sandbox-hang'));
      d.run.child.kill('SIGHUP');
      await waitFor('the hanging build to start', async () => (d.log.events.slice(from).some((e) => e.event === 'step.start' && e.stage === 'build') ? true : undefined), 60_000, 10);
      // The operator fixes it; the next poll sees a newer desired state.
      i.world.ssm.delete('/nixos/fleet/modules/slow');
      i.put(TZ, '"Europe/Paris"');
      await waitFor('a converged pass', async () => (d.passes().some((p, k) => k >= before && p.outcome === 'converged') ? true : undefined), 90_000, 20);
      assert.ok(d.alive);
      await assertStopsPromptly(d);
    });
  });

  test('an SSM call that never answers: the pass fails on a timeout, SIGTERM still ends the daemon', async () => {
    await withDaemon({ parameters: [FLEET_TZ] }, async (d, i) => {
      const good = await i.running();
      i.world.ssm.injectFault({ operation: 'GetParametersByPath', delayMs: Infinity, times: Infinity });
      i.put(TZ, '"Europe/Paris"');
      await d.pass(120_000);
      await assertFailedSafely(d, i, good, /time/i);
      await assertStopsPromptly(d);
    });
  });
});
