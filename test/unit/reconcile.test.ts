// Every transition of a pass, on plain-value fakes: a fake machine with NixOS's generation layout
// under a temporary root, fake sources and health, the real RenderWriter and StateStore. "Killed"
// means the fake threw a non-agent error mid-step, as SIGKILL would leave things; a new Reconciler
// over the same root then recovers from the journal.
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { rollbackAnswer } from '../../agent/reconcile.js';
import { CONFIGURATION_NIX, SECRETS_DIR } from '../../agent/render/render.js';
import { LAST_GOOD_CONFIGURATION, STATE_DIR, STATE_FILE } from '../../agent/state.js';
import { IMAGE_CONFIGURATION, IMAGE_SYSTEM, Killed, storePathOf, stateOf, worldPerTest, type World } from '../support/reconcile-fakes.js';

const DAY = 24 * 3600 * 1000;
const setup = worldPerTest();

/** Converges to a desired state naming `host`; returns its hash and system. */
async function convergeTo(w: World, agent: Awaited<ReturnType<World['agent']>>, host: string) {
  w.sources.set('options/networking.hostName', JSON.stringify(host));
  const result = await agent.converge('test');
  assert.equal(result.outcome, 'converged', JSON.stringify(result.error));
  assert.ok(result.desiredHash);
  return { hash: result.desiredHash, system: storePathOf(result.desiredHash) };
}

describe('Reconciler passes', () => {
  it("a first start saves no state before the pass; a start killed then finds the same last good; the pass's journal saves it", async () => {
    const w = await setup();
    const first = await w.agent();
    assert.equal(first.durable.lastGood?.storePath, IMAGE_SYSTEM);
    assert.equal(await w.fs.readText(STATE_FILE), undefined, 'no disk flush for state the image already tells');
    const again = await w.agent();
    assert.equal(again.durable.lastGood?.storePath, IMAGE_SYSTEM);
    w.sources.set('options/networking.hostName', '"web-1"');
    w.machine.kill = 'build';
    await assert.rejects(again.converge('start'), Killed);
    const saved = await stateOf(w);
    assert.equal(saved.journal.phase, 'building', 'a build with no channels to update is journaled as building at once');
    assert.equal(saved.lastGood?.storePath, IMAGE_SYSTEM);
  });

  it('converges: build, test, verify, then profile + boot; the image system is the first good one', async () => {
    const w = await setup();
    const agent = await w.agent();
    assert.equal(agent.durable.lastGood?.storePath, IMAGE_SYSTEM);
    w.sources.set('options/networking.hostName', '"web-1"');
    const result = await agent.converge('start');
    assert.equal(result.outcome, 'converged');
    const system = storePathOf(w.sources.desiredHash());
    assert.equal(result.desiredHash, w.sources.desiredHash());
    assert.deepEqual(w.machine.calls, ['build', `activate test ${system}`, `verify ${system}`, `setProfile ${system}`, `activate boot ${system}`]);
    assert.equal(await w.machine.running(), system);
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: system });
    assert.equal(agent.durable.lastGood?.storePath, system);
    assert.equal(agent.durable.previousGood?.storePath, IMAGE_SYSTEM);
    assert.equal(agent.durable.journal.phase, 'idle');
    assert.match((await w.fs.readText(CONFIGURATION_NIX)) ?? '', new RegExp(`Desired state ${result.desiredHash}`));
    assert.equal(await w.fs.readText('/etc/nixos/base.nix'), IMAGE_CONFIGURATION, "the image's configuration.nix was not kept");
    assert.equal(await w.fs.readText(LAST_GOOD_CONFIGURATION), await w.fs.readText(CONFIGURATION_NIX));
    assert.equal(agent.status.condition, 'converged');
    assert.equal(agent.status.firstConvergenceDone, true);
    assert.equal(agent.status.noGoodGeneration, false);
    assert.equal(agent.status.running?.storePath, system);
  });

  it('starts the build before the parser checks, from the copy it checks; activation waits for the verdict', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    const result = await agent.converge('start');
    assert.equal(result.outcome, 'converged');
    const hash = w.sources.desiredHash();
    assert.equal(w.machine.builds.length, 1);
    const [build] = w.machine.builds;
    assert.equal(build?.parserAnswers, w.parser.answers - 1, 'the build waited for the parser');
    assert.equal(build?.configuration, `/etc/nixos/ec2-agent/${hash.slice(0, 12)}/configuration.nix`);
    assert.equal(await w.fs.readText(build?.configuration ?? ''), await w.fs.readText(CONFIGURATION_NIX), 'the copy built is configuration.nix');
    assert.equal(await w.machine.running(), storePathOf(hash));
  });

  for (const [what, arrange] of [
    ['the legacy `nixos-rebuild switch` order', (_w: World) => ({ config: { rebuild: { mode: 'switch' as const } }, calls: ['switchLegacy'] })],
    ['a channel update first', (w: World) => ((w.sources.userDataText = '### https://nixos.org/channels/nixos-24.05 nixos\n{ ... }: { }\n'), { config: {}, calls: ['updateChannels', 'build'] })],
  ] as const) {
    it(`builds only after the verdict with ${what}`, async () => {
      const w = await setup();
      const { config, calls } = arrange(w);
      const agent = await w.agent(config);
      w.sources.set('options/networking.hostName', '"web-1"');
      assert.equal((await agent.converge('start')).outcome, 'converged');
      assert.deepEqual(w.machine.calls.slice(0, calls.length).map((c) => c.split(' ')[0]), calls);
      for (const build of w.machine.builds) {
        assert.equal(build.parserAnswers, w.parser.answers, 'the build began before the verdict');
        assert.equal(build.configuration, CONFIGURATION_NIX);
      }
    });
  }

  it('does nothing when the desired hash equals the running one', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.machine.calls.length = 0;
    const again = await agent.converge('poll');
    assert.equal(again.outcome, 'unchanged');
    assert.equal(again.desiredHash, a.hash);
    assert.deepEqual(w.machine.calls, []);
    assert.equal(agent.status.condition, 'converged');
  });

  it('builds again when the running system is not the one it switched to (changed by hand)', async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    await w.fs.symlinkAtomic(IMAGE_SYSTEM, '/run/current-system');
    w.machine.calls.length = 0;
    assert.equal((await agent.converge('poll')).outcome, 'converged');
    assert.ok(w.machine.calls.includes('build'));
  });

  it('on a failed build switches nothing, restores configuration.nix and holds that desired state until retryAt, doubling', async () => {
    const w = await setup();
    const agent = await w.agent({ retry: { failedBackoffSeconds: 600, maxBackoffSeconds: 6 * 3600 } });
    const a = await convergeTo(w, agent, 'a');
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);
    const generations = await w.machine.generations();

    w.sources.set('options/networking.hostName', '"b"');
    const b = w.sources.desiredHash();
    w.machine.failBuild.add(b);
    w.machine.calls.length = 0;
    const failed = await agent.converge('poll');
    assert.equal(failed.outcome, 'failed');
    assert.equal(failed.error?.kind, 'apply-failed');
    assert.deepEqual(w.machine.calls, ['build'], 'something ran after the build failed');
    assert.equal(await w.machine.running(), a.system);
    assert.deepEqual(await w.machine.generations(), generations);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig, 'configuration.nix was left on the failed desired state');
    const record = (await stateOf(w)).failed[b];
    assert.equal(record.stage, 'build');
    assert.equal(record.attempts, 1);
    assert.equal(record.retryAt - record.at, 600_000);
    assert.equal(agent.status.condition, 'degraded');
    assert.equal(agent.status.noGoodGeneration, false);
    assert.equal(agent.status.lastResult?.error?.stage, 'build');

    // The same desired state again: held, not retried.
    w.machine.calls.length = 0;
    w.clock.advance(599_999);
    const held = await agent.converge('poll');
    assert.equal(held.outcome, 'held');
    assert.deepEqual(w.machine.calls, []);
    assert.equal(agent.status.phase, 'held');

    // At retryAt it is tried again, and the next wait doubles.
    w.clock.advance(1);
    assert.equal((await agent.converge('poll')).outcome, 'failed');
    assert.deepEqual(w.machine.calls, ['build']);
    const second = (await stateOf(w)).failed[b];
    assert.equal(second.attempts, 2);
    assert.equal(second.retryAt - second.at, 1_200_000);

    // A change of the sources is tried at once.
    w.machine.calls.length = 0;
    const c = await convergeTo(w, agent, 'c');
    assert.equal(await w.machine.running(), c.system);
  });

  it('writes the secrets again after a reboot while it holds a failed desired state or an operator\'s rollback', async () => {
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('secrets/token', 's3cret', 'SecureString');
    await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    w.machine.failBuild.add(w.sources.desiredHash());
    assert.equal((await agent.converge('poll')).outcome, 'failed');
    assert.equal(await w.fs.readText(`${SECRETS_DIR}/token`), 's3cret');

    // A reboot empties /run.
    await w.fs.remove('/run/nixos-ec2-agent');
    const rebooted = await w.agent();
    assert.equal((await rebooted.converge('start')).outcome, 'held');
    assert.equal(await w.fs.readText(`${SECRETS_DIR}/token`), 's3cret', 'the running system lost its secrets');

    w.machine.failBuild.clear();
    await convergeTo(w, rebooted, 'c');
    assert.equal((await rebooted.rollback()).outcome, 'rolled-back');
    await w.fs.remove('/run/nixos-ec2-agent');
    const again = await w.agent();
    assert.equal((await again.converge('start')).outcome, 'held');
    assert.equal(await w.fs.readText(`${SECRETS_DIR}/token`), 's3cret', 'the rolled-back system lost its secrets');
  });

  it('caps the failure backoff at maxBackoffSeconds', async () => {
    const w = await setup();
    const agent = await w.agent({ retry: { failedBackoffSeconds: 600, maxBackoffSeconds: 1000 } });
    w.sources.set('options/x.y', '1');
    w.machine.failBuild.add(w.sources.desiredHash());
    for (let i = 0; i < 3; i++) {
      assert.equal((await agent.converge('poll')).outcome, 'failed');
      w.clock.advance(DAY);
    }
    const record = (await stateOf(w)).failed[w.sources.desiredHash()];
    assert.equal(record.attempts, 3);
    assert.equal(record.retryAt - record.at, 1_000_000);
  });

  it('a system switch-to-configuration can only activate by a reboot (exit 100) is committed and needs a reboot', async () => {
    // switch-to-configuration-ng exits 100 before it activates anything when the new init is
    // incompatible with the running one ("won't take effect until you reboot"), whatever the kernel.
    const w = await setup();
    const agent = await w.agent();
    w.sources.set('options/networking.hostName', '"web-1"');
    const system = storePathOf(w.sources.desiredHash());
    w.machine.needReboot.add(system);
    const result = await agent.converge('start');
    assert.equal(result.outcome, 'converged', JSON.stringify(result.error));
    assert.equal(await w.machine.running(), IMAGE_SYSTEM, 'nothing was activated');
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: system }, 'the boot default, for the reboot to apply it');
    assert.equal(agent.durable.rebootRequired?.storePath, system);
    assert.equal(agent.status.rebootRequired, true);
  });

  it('when activation fails, rolls back to the recorded last good generation, not merely the previous number', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    // Generations made by hand after A (e.g. `nixos-rebuild boot`), the profile left on the newest:
    // `nix-env --rollback` would go to 3, which was never verified.
    const x = '/nix/store/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-nixos-system-x';
    const y = '/nix/store/yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy-nixos-system-y';
    await w.machine.rebuilder.setProfile(x);
    await w.machine.rebuilder.setProfile(y);
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);

    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.failActivate.add(b);
    w.machine.calls.length = 0;
    const result = await agent.converge('poll');
    assert.equal(result.outcome, 'rolled-back');
    assert.equal(result.error?.kind, 'apply-failed');
    assert.deepEqual(w.machine.calls, ['build', `activate test ${b}`, 'switchGeneration 2', `activate switch ${a.system}`, `verify ${a.system}`]);
    assert.equal(await w.machine.running(), a.system);
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: a.system });
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig);
    assert.equal(agent.durable.lastGood?.storePath, a.system);
    assert.equal(agent.durable.journal.phase, 'idle');
    assert.equal((await stateOf(w)).failed[w.sources.desiredHash()].stage, 'activate');
    assert.equal(agent.status.condition, 'degraded');
    assert.equal(agent.status.noGoodGeneration, false);

    // Held: the same desired state is not tried again before retryAt.
    w.machine.calls.length = 0;
    assert.equal((await agent.converge('poll')).outcome, 'held');
    assert.deepEqual(w.machine.calls, []);
  });

  it('when verification fails, rolls back and verifies the last good generation again', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.unhealthy.add(b);
    w.machine.calls.length = 0;
    const result = await agent.converge('poll');
    assert.equal(result.outcome, 'rolled-back');
    assert.equal(result.error?.context.stage, 'verify');
    assert.deepEqual(w.machine.calls, ['build', `activate test ${b}`, `verify ${b}`, `activate switch ${a.system}`, `verify ${a.system}`]);
    // The rollback's verdict leaves the endpoints out: an outage on AWS's side must not make the
    // last good generation look bad (health.ts, verify).
    assert.deepEqual(w.machine.reachAsked.slice(-2), [true, false]);
    assert.equal(await w.machine.running(), a.system);
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: a.system }, 'the unverified system became the boot default');
    assert.equal(agent.durable.lastGood?.storePath, a.system);
    assert.equal(agent.status.noGoodGeneration, false);
    assert.ok(agent.status.reasons.some((r) => /app\.service/.test(r)), JSON.stringify(agent.status.reasons));
  });

  it('reports noGoodGeneration when the rollback target is unhealthy too', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.unhealthy.add(b);
    w.machine.unhealthy.add(a.system);
    const result = await agent.converge('poll');
    assert.equal(result.outcome, 'rolled-back');
    assert.equal(await w.machine.running(), a.system);
    assert.equal(agent.status.noGoodGeneration, true);
    assert.equal(agent.status.condition, 'failed');

    // A restart still says so while that system runs: the held pass does not take it for good.
    const restarted = await w.agent();
    assert.equal(restarted.status.noGoodGeneration, true, 'known at start');
    assert.equal((await restarted.converge('poll')).outcome, 'held');
    assert.equal(restarted.status.noGoodGeneration, true, 'after the held pass');
    assert.equal(restarted.status.condition, 'failed');

    // A convergence ends it, for good.
    w.machine.unhealthy.clear();
    w.sources.set('options/networking.hostName', '"c"');
    assert.equal((await restarted.converge('poll')).outcome, 'converged');
    assert.equal(restarted.status.noGoodGeneration, false);
    assert.equal((await w.agent()).status.noGoodGeneration, false, 'and after another restart');
  });

  it('rejects invalid input with outcome invalid-input, writing and switching nothing', async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    const config = await w.fs.readText(CONFIGURATION_NIX);
    const before = await readdir(w.fs.resolve('/etc/nixos/ec2-agent'));
    w.machine.calls.length = 0;
    w.sources.set('options/networking.hostName', 'web-1'); // not JSON
    const result = await agent.converge('poll');
    assert.equal(result.outcome, 'invalid-input');
    assert.equal(result.error?.kind, 'invalid-input');
    assert.match(result.error?.message ?? '', /\/nixos\/fleet\/options\/networking\.hostName \(version 2\)/);
    assert.deepEqual(w.machine.calls, []);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), config);
    assert.deepEqual(await readdir(w.fs.resolve('/etc/nixos/ec2-agent')), before);
    assert.equal(agent.status.lastResult?.outcome, 'invalid-input');
    assert.equal(agent.status.lastResult?.error?.where, 'SSM parameter /nixos/fleet/options/networking.hostName (version 2)');
    assert.equal(agent.status.condition, 'degraded');
  });

  it('rejects a module the parser refuses: configuration.nix, secrets and the system untouched', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const config = await w.fs.readText(CONFIGURATION_NIX);
    w.sources.set('modules/web', '{ ... }: {');
    w.sources.set('secrets/token', 'never-written', 'SecureString');
    w.parser.errors.set('/modules/web.nix', { line: 1, column: 11, message: 'syntax error, unexpected end of file' });
    w.machine.calls.length = 0;
    w.machine.hangBuild = true;
    const result = await agent.converge('poll');
    assert.equal(result.outcome, 'invalid-input');
    assert.match(result.error?.message ?? '', /SSM parameter \/nixos\/fleet\/modules\/web \(version 1\).*line 1, column 11/);
    // The build begun beside the parser was stopped, and the pass waited for it; nothing switched.
    assert.deepEqual(w.machine.calls, ['build']);
    assert.equal(w.machine.builds.at(-1)?.aborted, true);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), config);
    assert.equal(await w.fs.exists(`${SECRETS_DIR}/token`), false);
    assert.equal((await agent.converge('poll')).outcome, 'held');
    assert.equal(await w.fs.exists(`${SECRETS_DIR}/token`), false, 'a hold on the refused desired state wrote its secrets');
    assert.equal(await w.machine.running(), a.system);
    // The journal entry written while the parser ran is ended: a restart finds nothing to recover.
    assert.equal((await stateOf(w)).journal.phase, 'idle');
  });

  it('does nothing while suspended, remembers it across a restart, and converges after resume', async () => {
    const w = await setup();
    const agent = await w.agent();
    await agent.suspend('operator');
    assert.equal(agent.status.phase, 'suspended');
    w.sources.set('options/networking.hostName', '"a"');
    assert.equal((await agent.converge('poll')).outcome, 'suspended');
    assert.equal(w.sources.reads, 0);
    assert.deepEqual(w.machine.calls, []);
    assert.equal(agent.status.phase, 'suspended');
    assert.ok(agent.status.suspended);

    const restarted = await w.agent();
    assert.ok(restarted.status.suspended, 'suspension was lost on restart');
    assert.equal((await restarted.converge('start')).outcome, 'suspended');
    await restarted.resume();
    assert.equal(restarted.status.suspended, undefined);
    assert.equal((await restarted.converge('resume')).outcome, 'converged');
  });

  it('refuses a rollback with nowhere to go, leaving the status as it was', async () => {
    const w = await setup();
    // The image's own system runs, and is the only good generation there is.
    const agent = await w.agent();
    const before = agent.status;
    w.machine.calls.length = 0;
    const refused = await agent.rollback();
    assert.equal(refused.outcome, 'failed');
    assert.equal(refused.refused, true);
    assert.match(refused.error?.message ?? '', /no previous good generation/);
    assert.deepEqual(w.machine.calls, [], 'nothing tried');
    assert.equal(agent.status.condition, before.condition, '/readyz and status stay as they were');
    assert.equal(agent.status.lastResult, undefined, 'no pass recorded');
  });

  it("answers an operator's rollback ok only when a good generation runs after it", async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    await convergeTo(w, agent, 'b');
    w.machine.unhealthy.add(a.system);
    const unhealthy = await agent.rollback();
    assert.equal(unhealthy.outcome, 'rolled-back');
    assert.equal(agent.status.noGoodGeneration, true);
    assert.equal(rollbackAnswer(unhealthy, agent.status).ok, false, 'exit 1: the work failed');
    w.machine.unhealthy.clear();
    const healthy = await agent.rollback();
    assert.equal(healthy.outcome, 'rolled-back');
    assert.equal(rollbackAnswer(healthy, agent.status).ok, true);
  });

  it("after an operator's rollback, holds until the desired hash changes", async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const aConfig = await w.fs.readText(CONFIGURATION_NIX);
    const b = await convergeTo(w, agent, 'b');
    assert.deepEqual(await w.machine.profile(), { generation: 3, storePath: b.system });

    const rolled = await agent.rollback();
    assert.equal(rolled.outcome, 'rolled-back');
    assert.equal(await w.machine.running(), a.system);
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: a.system });
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), aConfig, "configuration.nix does not match the system rolled back to");
    assert.equal(agent.status.held?.desiredHash, b.hash);

    w.machine.calls.length = 0;
    const held = await agent.converge('poll');
    assert.equal(held.outcome, 'held');
    assert.deepEqual(w.machine.calls, []);
    assert.equal(await w.machine.running(), a.system);
    // Still held after a restart.
    const restarted = await w.agent();
    assert.equal((await restarted.converge('start')).outcome, 'held');

    const c = await convergeTo(w, restarted, 'c');
    assert.equal(await w.machine.running(), c.system);
    assert.equal(restarted.status.held, undefined);
  });
  it("an operator's rollback interrupted and finished by the restart still holds", async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const b = await convergeTo(w, agent, 'b');
    // Dies verifying A, switched back to.
    w.machine.verifyCount = 0;
    w.machine.kill = 'verify#1';
    await assert.rejects(agent.rollback(), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'rolling-back');

    const restarted = await w.agent();
    assert.equal(await w.machine.running(), a.system);
    assert.equal(restarted.status.held?.desiredHash, b.hash);
    w.machine.calls.length = 0;
    assert.equal((await restarted.converge('start')).outcome, 'held', 'the restart undid the rollback');
    assert.deepEqual(w.machine.calls, []);
    assert.equal(await w.machine.running(), a.system);
  });

  it("an operator's rollback to the image's own system puts the image's configuration.nix back", async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    assert.equal((await agent.rollback()).outcome, 'rolled-back');
    assert.equal(await w.machine.running(), IMAGE_SYSTEM);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), IMAGE_CONFIGURATION, 'configuration.nix does not match the system rolled back to');
    assert.equal(await w.fs.readText(LAST_GOOD_CONFIGURATION), IMAGE_CONFIGURATION);
  });
});

describe('Reconciler recovery from the journal', () => {
  it('rendered: puts the last good configuration.nix back; the next pass renders again', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);
    w.sources.userDataText = '### https://nixos.org/channels/nixos-24.05 nixos\n{ ... }: { }\n';
    w.machine.kill = 'updateChannels';
    await assert.rejects(agent.converge('poll'), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'rendered');
    assert.notEqual(await w.fs.readText(CONFIGURATION_NIX), goodConfig);

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, [], 'recovery from rendered ran a step');
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig);
    assert.equal(await w.machine.running(), a.system);
    assert.equal((await restarted.converge('start')).outcome, 'converged');
  });

  it('building: nothing was switched; configuration.nix goes back, the journal to idle', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);
    w.sources.set('options/networking.hostName', '"b"');
    w.machine.kill = 'build';
    await assert.rejects(agent.converge('poll'), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'building');

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, []);
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig);
    assert.equal(await w.machine.running(), a.system);
    assert.equal(restarted.durable.failed[w.sources.desiredHash()], undefined, 'an interrupted build is not a failure');
  });

  it('activating, the new system running and healthy: verifies and commits it', async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.kill = 'activate test:after';
    await assert.rejects(agent.converge('poll'), Killed);
    const journal = (await stateOf(w)).journal;
    assert.equal(journal.phase, 'activating');
    assert.equal(journal.storePath, b);
    assert.equal(await w.machine.running(), b);

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, [`verify ${b}`, `setProfile ${b}`, `activate boot ${b}`]);
    assert.equal(restarted.durable.lastGood?.storePath, b);
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.deepEqual(await w.machine.profile(), { generation: 3, storePath: b });
    // The render it committed is the running one: nothing to do.
    w.machine.calls.length = 0;
    assert.equal((await restarted.converge('start')).outcome, 'unchanged');
    assert.deepEqual(w.machine.calls, []);
  });

  it('activating, then finished by the restart: the render configuration.nix imports is kept', async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = w.sources.desiredHash();
    w.machine.kill = 'activate test:after';
    await assert.rejects(agent.converge('poll'), Killed);

    const restarted = await w.agent();
    assert.equal(restarted.durable.lastGood?.storePath, storePathOf(b));
    assert.equal(restarted.durable.lastGood?.renderDir, `/etc/nixos/ec2-agent/${b.slice(0, 12)}`);
    const config = (await w.fs.readText(CONFIGURATION_NIX)) ?? '';
    const imports = [...config.matchAll(/^\s+(\/\S+\.nix) #/gm)].map((m) => m[1]!);
    assert.ok(imports.length > 0, config);
    for (const file of imports) assert.ok(await w.fs.exists(path.relative(w.dir, file).replace(/^/, '/')), `configuration.nix imports ${file}, which is gone`);
  });

  it('activating, the new system unhealthy: rolls back to the last good generation', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.unhealthy.add(b);
    w.machine.kill = 'activate test:after';
    await assert.rejects(agent.converge('poll'), Killed);

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, [`verify ${b}`, `activate switch ${a.system}`, `verify ${a.system}`]);
    assert.equal(await w.machine.running(), a.system);
    assert.equal(restarted.durable.lastGood?.storePath, a.system);
    assert.ok(restarted.durable.failed[w.sources.desiredHash()], 'the failure was not recorded');
  });

  it('activating, the system never switched: rolls back to the last good generation and records the failure', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    const goodConfig = await w.fs.readText(CONFIGURATION_NIX);
    w.sources.set('options/networking.hostName', '"b"');
    w.machine.kill = 'activate test:before';
    await assert.rejects(agent.converge('poll'), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'activating');
    assert.equal(await w.machine.running(), a.system);

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, [`activate switch ${a.system}`, `verify ${a.system}`]);
    assert.equal(await w.machine.running(), a.system);
    assert.equal(await w.fs.readText(CONFIGURATION_NIX), goodConfig);
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.ok(restarted.durable.failed[w.sources.desiredHash()]);
    assert.equal(restarted.status.noGoodGeneration, false);
  });

  it('committing: finishes making the verified system the boot default', async () => {
    const w = await setup();
    const agent = await w.agent();
    await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.kill = 'setProfile';
    await assert.rejects(agent.converge('poll'), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'committing');

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.ok(w.machine.calls.includes(`setProfile ${b}`), JSON.stringify(w.machine.calls));
    assert.ok(w.machine.calls.includes(`activate boot ${b}`));
    assert.equal(restarted.durable.lastGood?.storePath, b);
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.deepEqual(await w.machine.profile(), { generation: 3, storePath: b });
  });

  it('committing, then a reboot into the last good system: everything goes back to it, and the next pass applies the desired state again', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    // Killed after nix-env --set, before switch-to-configuration boot; the machine then reboots
    // into what its boot loader still names: a.
    w.machine.kill = 'activate boot:before';
    await assert.rejects(agent.converge('poll'), Killed);
    assert.equal((await stateOf(w)).journal.phase, 'committing');
    assert.equal((await w.machine.profile()).storePath, b, 'the profile had moved');
    await w.fs.symlinkAtomic(a.system, '/run/current-system');

    const restarted = await w.agent();
    assert.equal(await w.machine.running(), a.system);
    assert.equal(restarted.durable.lastGood?.storePath, a.system, 'not the system that no longer runs');
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.equal((await w.machine.profile()).storePath, a.system, 'the boot default is the system that runs');
    assert.equal(restarted.status.condition === 'converged' && restarted.status.running?.storePath === b, false);

    const again = await restarted.converge('poll');
    assert.equal(again.outcome, 'converged', JSON.stringify(again.error));
    assert.equal(await w.machine.running(), b);
    assert.equal(restarted.durable.lastGood?.storePath, b);
  });

  it('a prebuilt closure under rebuild.mode = switch, activated: the restart makes it the boot default', async () => {
    const w = await setup();
    // The closure takes the safe order whatever the mode: `test`, verify, then profile and `boot`.
    const closure = '/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-prebuilt';
    const closures = { realise: async () => ({ storePath: closure, substituted: 0, narBytes: 0, downloadBytes: 0 }), pinRoots: async () => {} };
    const config = { rebuild: { mode: 'switch' as const } };
    const agent = await w.agent(config, { closures });
    w.sources.set('system', JSON.stringify({ storePath: closure, substituter: 'https://cache.example.org', trustedPublicKeys: [`ci-1:${Buffer.alloc(32).toString('base64')}`] }));
    w.machine.kill = 'activate test:after';
    await assert.rejects(agent.converge('start'), Killed);
    assert.equal(await w.machine.running(), closure);

    w.machine.calls.length = 0;
    const restarted = await w.agent(config, { closures });
    assert.deepEqual(w.machine.calls, [`verify ${closure}`, `setProfile ${closure}`, `activate boot ${closure}`]);
    assert.equal(restarted.durable.lastGood?.storePath, closure);
    assert.deepEqual(await w.machine.profile(), { generation: 2, storePath: closure }, 'the verified closure is not what the instance boots');
  });

  it('rolling-back: finishes the rollback to the last good generation', async () => {
    const w = await setup();
    const agent = await w.agent();
    const a = await convergeTo(w, agent, 'a');
    w.sources.set('options/networking.hostName', '"b"');
    const b = storePathOf(w.sources.desiredHash());
    w.machine.unhealthy.add(b);
    // Dies verifying A after switching back to it (the second verify of this pass).
    w.machine.verifyCount = 0;
    w.machine.kill = 'verify#2';
    await assert.rejects(agent.converge('poll'), Killed);
    const journal = (await stateOf(w)).journal;
    assert.equal(journal.phase, 'rolling-back');
    assert.equal(journal.storePath, a.system);

    w.machine.calls.length = 0;
    const restarted = await w.agent();
    assert.deepEqual(w.machine.calls, [`activate switch ${a.system}`, `verify ${a.system}`]);
    assert.equal(await w.machine.running(), a.system);
    assert.equal(restarted.durable.journal.phase, 'idle');
    assert.equal(restarted.status.noGoodGeneration, false);
  });

  it('sets a corrupt state file aside with a clear problem, and carries on', async () => {
    const w = await setup();
    await w.fs.writeAtomic(STATE_FILE, '{"version": 1, "journal": {"phase": "activ');
    const agent = await w.agent();
    const aside = (await readdir(w.fs.resolve(STATE_DIR))).filter((n) => n.startsWith('state.json.corrupt-'));
    assert.equal(aside.length, 1);
    assert.equal(await w.fs.readText(path.posix.join(STATE_DIR, aside[0]!)), '{"version": 1, "journal": {"phase": "activ');
    assert.equal(agent.durable.journal.phase, 'idle');
    w.sources.set('options/networking.hostName', '"a"');
    assert.equal((await agent.converge('start')).outcome, 'converged');
    assert.ok(agent.status.reasons.some((r) => /state\.json.*not JSON.*set aside/.test(r)), JSON.stringify(agent.status.reasons));

    // A file that is JSON but not a state file is set aside the same way.
    await w.fs.writeAtomic(STATE_FILE, '{"version": 1, "journal": 3}');
    w.clock.advance(1000);
    const again = await w.agent();
    assert.equal(again.durable.journal.phase, 'idle');
    assert.equal((await readdir(w.fs.resolve(STATE_DIR))).filter((n) => n.startsWith('state.json.corrupt-')).length, 2);
  });

  // The agent is part of the system it switches: a rollback brings an older agent back to the files
  // of a newer one (state.ts, readVersioned).
  it("takes a newer agent's state file that its format can still read, and writes the newer fields back as they were", async () => {
    const w = await setup();
    const first = await w.agent();
    await first.suspend('operator');
    const written = await stateOf(w);
    const newer = { ...written, version: 3, minReaderVersion: 1, rolloutHistory: [{ candidate: 'c1', at: 5 }], journal: { ...written.journal } };
    await w.fs.writeAtomic(STATE_FILE, JSON.stringify(newer));

    const older = await w.agent();
    assert.ok(older.status.suspended, "the newer agent's suspension holds");
    assert.equal(older.status.reasons.some((r) => /set aside/.test(r)), false, JSON.stringify(older.status.reasons));
    assert.deepEqual((await readdir(w.fs.resolve(STATE_DIR))).filter((n) => n.startsWith('state.json.')), [], 'nothing set aside');
    await older.resume();
    const after = await stateOf(w);
    assert.equal(after.suspended, undefined, 'what this agent knows, it changes');
    assert.deepEqual(after.rolloutHistory, [{ candidate: 'c1', at: 5 }], 'what it does not know, it keeps');
    assert.equal(after.version, 1, 'and says that an agent of format 1 wrote last');
    assert.equal('minReaderVersion' in after, false);
    assert.equal((await older.converge('resume')).outcome, 'converged');
    assert.deepEqual((await stateOf(w)).rolloutHistory, [{ candidate: 'c1', at: 5 }], 'kept through a convergence');
  });

  it("sets a newer agent's state file it cannot read aside as newer, not corrupt, and carries on", async () => {
    const w = await setup();
    const unreadable = '{"version": 4, "minReaderVersion": 3, "journal": {"phase": "idle", "since": 1}, "failed": {}, "builds": {}}';
    await w.fs.writeAtomic(STATE_FILE, unreadable);
    const agent = await w.agent();
    const names = (await readdir(w.fs.resolve(STATE_DIR))).filter((n) => n.startsWith('state.json.'));
    assert.equal(names.length, 1, names.join(' '));
    assert.match(names[0] as string, /^state\.json\.newer-\d+$/);
    assert.equal(await w.fs.readText(path.posix.join(STATE_DIR, names[0]!)), unreadable, 'kept whole for the newer agent and the operator');
    w.sources.set('options/networking.hostName', '"a"');
    assert.equal((await agent.converge('start')).outcome, 'converged');
    const reason = agent.status.reasons.find((r) => /set aside/.test(r));
    assert.match(reason ?? '', /state\.json was written by a newer agent in format 4, which agents of format 3 and later read; this agent reads format 1; set aside as \S+state\.json\.newer-\d+, starting with empty state/);

    // Without minReaderVersion a newer file is its own format's alone.
    await w.fs.writeAtomic(STATE_FILE, '{"version": 2}');
    w.clock.advance(1000);
    await w.agent();
    assert.equal((await readdir(w.fs.resolve(STATE_DIR))).filter((n) => n.startsWith('state.json.newer-')).length, 2);
  });
});
