// The daemon (`run`) over a sandboxed instance, end to end: pushes through the emulated SSM and
// files dropped into local.d converge; bursts collapse into one rebuild; a change during a slow
// pass gives exactly one more; a newer state cancels a hung build; a terminating instance starts
// no rebuild; SIGHUP reloads the configuration; SIGTERM exits 0.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { controlSocketPath, parseConfig } from '../../agent/config.js';
import { hasNix, Instance, LiveLog, markerModule, waitFor, type Running, type StatusJson } from '../support/e2e.js';

const DAEMON_CONFIG = {
  ssm: { pollIntervalSeconds: 0.5, pollJitter: 0 },
  watch: { quietPeriodMs: 300, cancelCheckSeconds: 0.2 },
  termination: { checkSeconds: 0.2 },
  http: { listen: null },
};


async function converged(inst: Instance, what: string, check: (s: StatusJson) => boolean = () => true): Promise<StatusJson> {
  return waitFor(what, async () => {
    const s = await inst.statusFile();
    return s && s.firstConvergenceDone && s.phase === 'idle' && s.condition === 'converged' && check(s) ? s : undefined;
  });
}

const hasParam = (name: string) => (s: StatusJson) => s.desired?.sources.parameters.some((p) => p.name === name) ?? false;

async function daemon(t: { after: (fn: () => Promise<void>) => void }, options: Parameters<typeof Instance.launch>[0] = {}): Promise<{ inst: Instance; run: Running; log: LiveLog }> {
  const inst = await Instance.launch({ ...options, config: { ...DAEMON_CONFIG, ...(options.config ?? {}) } });
  const run = inst.daemon(t);
  const log = new LiveLog(run);
  await converged(inst, 'the first convergence');
  return { inst, run, log };
}

/**
 * Waits until the daemon has polled SSM `n` more times (any read call counts as one): a window in
 * which a spurious rebuild would have started, measured in the daemon's own events, not in time.
 */
async function polls(inst: Instance, n: number): Promise<void> {
  const reads = () => Object.entries(inst.world.ssm.callCounts()).filter(([op]) => op.startsWith('GetParameter')).reduce((a, [, c]) => a + c, 0);
  const start = reads();
  await waitFor(`${n} more SSM polls`, async () => (reads() >= start + n ? true : undefined), 60_000, 20);
}

const opts = { skip: hasNix ? false : 'nix-instantiate is not installed' } as const;
const option = (name: string) => `/nixos/fleet/options/${name}`;

// Each test is its own instance (own emulators on port 0, own root): they run side by side.
describe('the daemon over a sandbox', { concurrency: true }, () => {
  test('a parameter pushed through SSM converges at the next poll, and an idle poll costs one SSM call', opts, async (t) => {
    const { inst, log } = await daemon(t, { parameters: [{ Name: '/nixos/fleet/revision', Value: '1', Type: 'String' }] });
    const builds = log.builds().length;
    inst.world.ssm.resetCounters();
    await waitFor('two idle polls', async () => ((inst.world.ssm.callCounts().GetParameters ?? 0) >= 2 ? true : undefined), 60_000, 20);
    const idle = inst.world.ssm.callCounts();
    assert.equal(idle.GetParametersByPath ?? 0, 0, `no tree fetch while idle: ${JSON.stringify(idle)}`);
    assert.ok((idle.GetParameters ?? 0) >= 1, 'the revision parameter is read at each poll');
    inst.put(option('networking.hostName'), '"web-1"');
    inst.put('/nixos/fleet/revision', '2');
    await converged(inst, 'the pushed parameter', hasParam(option('networking.hostName')));
    assert.equal(log.builds().length, builds + 1);
    const lastPass = log.of('pass.start').at(-1);
    assert.equal(lastPass?.trigger, 'poll');
  });

  test('20 pushes at once give one rebuild; a push without a revision parameter is still seen (full fetch)', opts, async (t) => {
    const { inst, log } = await daemon(t);
    const builds = log.builds().length;
    for (let i = 0; i < 20; i++) inst.put(option(`environment.variables.V${i}`), `"${i}"`);
    await converged(inst, 'all 20', (s) => (s.desired?.sources.parameters.length ?? 0) === 20);
    await polls(inst, 2);
    assert.equal(log.builds().length, builds + 1);
  });

  test('a change during a slow pass gives exactly one more rebuild, of the latest state', opts, async (t) => {
    const { inst, log } = await daemon(t, {
      parameters: [{ Name: '/nixos/fleet/revision', Value: '1', Type: 'String' }],
      config: { health: { probes: [{ name: 'slow', command: { argv: ['sleep', '1'] } }] } },
    });
    const builds = log.builds().length;
    inst.put(option('networking.hostName'), '"a"');
    inst.put('/nixos/fleet/revision', '2');
    await waitFor('verifying', async () => ((await inst.statusFile())?.phase === 'verifying' ? true : undefined));
    for (let i = 0; i < 5; i++) inst.put(option('networking.hostName'), `"b${i}"`);
    inst.put('/nixos/fleet/revision', '3');
    await converged(inst, 'the latest state', (s) => s.desired?.sources.parameters.some((p) => p.name === option('networking.hostName') && p.version === 6) ?? false);
    await polls(inst, 2);
    assert.equal(log.builds().length, builds + 2);
  });

  test('a newer state cancels a hung build and converges to it', opts, async (t) => {
    const { inst, log } = await daemon(t, { parameters: [{ Name: '/nixos/fleet/revision', Value: '1', Type: 'String' }] });
    const builds = log.builds().length;
    inst.put('/nixos/fleet/modules/app', markerModule('sandbox-hang'));
    inst.put('/nixos/fleet/revision', '2');
    await waitFor('the hung build', async () => ((await inst.statusFile())?.phase === 'building' ? true : undefined));
    inst.put('/nixos/fleet/modules/app', markerModule('fixed'));
    inst.put('/nixos/fleet/revision', '3');
    const s = await converged(inst, 'the fixed module', (x) => x.desired?.sources.parameters.some((p) => p.name === '/nixos/fleet/modules/app' && p.version === 2) ?? false);
    assert.equal(s.lastResult?.outcome, 'converged');
    assert.equal(log.builds().length, builds + 2);
    const outcomes = log.of('pass.end').map((e) => e.outcome);
    assert.ok(outcomes.includes('cancelled'), `a pass was cancelled: ${outcomes.join(', ')}`);
    assert.doesNotMatch(await inst.configuration(), /sandbox-hang/);
  });

  test('a file dropped into local.d converges', opts, async (t) => {
    // No poll to race the watcher: only the file event can start the pass.
    const { inst, log } = await daemon(t, { config: { ssm: { pollIntervalSeconds: 3_600 } } });
    const builds = log.builds().length;
    const dir = inst.file('etc/nixos-ec2-agent/local.d');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'extra.nix'), '{ ... }: { environment.etc."extra".text = "x"; }\n');
    await waitFor('the local module rebuilt', async () => (log.builds().length > builds ? true : undefined));
    await converged(inst, 'after the local change');
    assert.match(await inst.configuration(), /extra\.nix/);
    const triggers = log.of('pass.start').map((e) => String(e.trigger));
    assert.ok(triggers.some((r) => r.includes('extra.nix')), triggers.join(' | '));
  });

  // At boot the watch of local.d starts only once the first rebuild is under way; a file dropped
  // in as it starts is seen by the watch, or, when the watch is not in place yet, by the
  // comparison with what the first pass read that the watch makes as it starts.
  test('a file dropped into local.d as the first build starts converges after it', opts, async (t) => {
    const inst = await Instance.launch({ config: { ...DAEMON_CONFIG, ssm: { pollIntervalSeconds: 3_600 } } });
    const run = inst.daemon(t);
    const log = new LiveLog(run);
    await waitFor('the first build', async () => (log.builds().length > 0 ? true : undefined), 60_000, 2);
    const dir = inst.file('etc/nixos-ec2-agent/local.d');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'early.nix'), '{ ... }: { environment.etc."early".text = "x"; }\n');
    await waitFor('the drop-in in configuration.nix', async () => ((await inst.configuration()).includes('early.nix') ? true : undefined));
    await converged(inst, 'the drop-in converged');
    assert.ok(log.of('pass.start').length >= 2, 'a pass of its own after the first');
  });

  test('a terminating instance starts no new rebuild and says so', opts, async (t) => {
    const { inst, log } = await daemon(t);
    const builds = log.builds().length;
    inst.world.imds.setTargetLifecycleState('Terminated');
    await waitFor('stopping in status', async () => ((await inst.statusFile())?.phase === 'stopping' ? true : undefined));
    inst.put(option('networking.hostName'), '"late"');
    const now = await inst.run(['converge', '--now', '--json']);
    assert.equal(now.code, 1);
    assert.match(now.stdout, /leaving/);
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(log.builds().length, builds);
    const s = await inst.statusFile();
    assert.equal(s?.phase, 'stopping');
    assert.match(s?.message ?? '', /Terminated/);
  });

  test('converge --now returns the pass result; suspend and resume pause convergence', opts, async (t) => {
    const { inst, log } = await daemon(t, { config: { ssm: { pollIntervalSeconds: 3_600 } } });
    inst.put(option('networking.hostName'), '"now"');
    const now = await inst.run(['converge', '--now', '--json']);
    assert.equal(now.code, 0, now.stderr);
    const answer = JSON.parse(now.stdout) as { outcome: string; status: StatusJson };
    assert.equal(answer.outcome, 'converged');
    assert.ok(hasParam(option('networking.hostName'))(answer.status));
    const suspended = await inst.run(['suspend', '--json']);
    assert.equal(suspended.code, 0);
    const s = (JSON.parse(suspended.stdout) as { status: StatusJson }).status;
    assert.ok(s.suspended?.since, 'status says since when');
    const builds = log.builds().length;
    inst.put(option('networking.hostName'), '"while suspended"');
    const suspendedNow = await inst.run(['converge', '--now', '--json']);
    const during = JSON.parse(suspendedNow.stdout) as { outcome: string; ok: boolean };
    assert.equal(during.outcome, 'suspended');
    assert.equal(during.ok, false, 'a suspended pass did not converge');
    assert.equal(suspendedNow.code, 1, 'as converge --once exits for a suspended pass');
    assert.equal(log.builds().length, builds);
    assert.equal((await inst.run(['resume'])).code, 0);
    await converged(inst, 'after resume', (x) => x.desired?.sources.parameters.some((p) => p.version === 2) ?? false);
    assert.equal(log.builds().length, builds + 1);
  });

  test('SIGHUP rereads the configuration and converges; SIGTERM exits 0', opts, async (t) => {
    const { inst, run } = await daemon(t, { parameters: [{ Name: '/nixos/other/options/networking.hostName', Value: '"other"', Type: 'String' }] });
    assert.equal(hasParam('/nixos/other/options/networking.hostName')((await inst.statusFile())!), false);
    await inst.configure({ ssm: { prefixes: ['/nixos/other'] } });
    run.child.kill('SIGHUP');
    await converged(inst, 'the new prefix', hasParam('/nixos/other/options/networking.hostName'));
    run.child.kill('SIGTERM');
    const result = await run.done;
    assert.equal(result.code, 0, result.stderr.slice(-2000));
    const socket = controlSocketPath(parseConfig(JSON.parse(await readFile(inst.sandbox.layout.config, 'utf8'))));
    assert.equal(existsSync(socket), false, 'the control socket is removed');
  });
});
