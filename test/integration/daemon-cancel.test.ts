// A build that hangs, and what may end it early: a newer desired state cancels it even with no
// revision tag or parameter to compare; `converge --now` with the sources unchanged lets it run
// (and is answered with what the passes did, never "cancelled"). In this process, against the
// emulators and the stand-in nixos-rebuild.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { createLogger, silentLogger, type Logger } from '../../agent/log.js';
import { startDaemon, type Daemon } from '../../agent/loop.js';
import { realClock } from '../../agent/ports.js';
import { ControlClient } from '../../agent/report/control.js';
import { createNotify, type Notify } from '../../agent/report/notify.js';
import { Watchdog } from '../../agent/report/watchdog.js';
import type { Outcome, Status } from '../../agent/status.js';
import { World } from '../../sandbox/world.js';
import { markerModule, waitUntil } from '../support/e2e.js';
import { sandboxedMachine } from '../support/machine.js';

const MODULE = '/nixos/fleet/modules/app';
const CREDENTIALS = { accessKeyId: 'AKIDCANCEL', secretAccessKey: 'cancel-secret' };

interface Running {
  readonly world: World;
  readonly daemon: Daemon;
  readonly root: string;
  readonly statuses: Status[];
  readonly outcomes: () => Outcome[];
  readonly control: ControlClient;
}

describe('a hung build', { timeout: 240_000 }, () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function start(
    buildTimeoutSeconds: number,
    options: { notify?: Notify; module?: string; userData?: string; log?: Logger } = {},
  ): Promise<Running> {
    const { notify = createNotify({}), module = markerModule('sandbox-hang') } = options;
    const { root, tools, remove } = await sandboxedMachine('nea-cancel');
    cleanups.push(remove);
    const world = await World.start({ ssmThroughput: null, instance: { autoScaling: null }, ...(options.userData !== undefined ? { userData: Buffer.from(options.userData) } : {}) });
    cleanups.push(() => world.close());
    world.ssm.load([{ Name: MODULE, Value: module, Type: 'String' }]);
    const config = parseConfig({
      root,
      logLevel: 'error',
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available', buildTimeoutSeconds, activateTimeoutSeconds: 60 },
      health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
      imds: { retries: 2, timeoutMs: 5_000 },
      // No revision to compare: only reading the sources whole can tell the desired state moved.
      ssm: { pollIntervalSeconds: 0.5, pollJitter: 0, revisionTag: null, revisionParameter: null, maxAttempts: 2 },
      watch: { cancelCheckSeconds: 0.2 },
      retry: { failedBackoffSeconds: 3_600 },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      lifecycle: { enabled: false },
      termination: { enabled: false },
    });
    const clock = realClock();
    const env = world.env();
    const statuses: Status[] = [];
    const daemon = await startDaemon(config, {
      log: options.log ?? silentLogger(),
      clock,
      env,
      notify,
      watchdog: new Watchdog(notify, {}, clock),
      edges: { credentials: async () => async () => CREDENTIALS },
      onStatus: (s) => statuses.push(s),
    });
    cleanups.push(async () => {
      daemon.signal('SIGTERM');
      await daemon.done;
    });
    const outcomes = () => [...new Set(statuses.map((s) => s.lastResult).filter((r) => r !== undefined))].map((r) => r.outcome);
    return { world, daemon, root, statuses, outcomes, control: new ControlClient(path.join(root, 'run/ctl.sock')) };
  }

  it('is cancelled by a newer desired state, with no revision to compare', async () => {
    const r = await start(120);
    await waitUntil('the hung build', () => r.daemon.status.phase === 'building');
    const hung = r.daemon.status.desired?.hash;
    r.world.ssm.load([{ Name: MODULE, Value: markerModule('fixed'), Type: 'String', Overwrite: true }]);
    await waitUntil('the fixed module converged', () => r.daemon.status.condition === 'converged' && r.daemon.status.desired?.hash !== hung);
    assert.ok(r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    const configuration = await readFile(path.join(r.root, 'etc/nixos/configuration.nix'), 'utf8');
    assert.match(configuration, new RegExp(`Desired state ${r.daemon.status.desired?.hash}`));
  });

  it('cancelled on a first boot, does not end the first convergence: READY=1 and the launch decision wait for the pass that follows', async () => {
    const ready: Status[] = [];
    let r: Running | undefined;
    const notify: Notify = { enabled: false, send() {}, ready: () => ready.push(r!.daemon.status), status() {}, watchdog() {}, extendTimeout() {}, stopping() {}, reloading() {} };
    r = await start(120, { notify });
    await waitUntil('the hung build', () => r!.daemon.status.phase === 'building');
    const hung = r.daemon.status.desired?.hash;
    r.world.ssm.load([{ Name: MODULE, Value: markerModule('fixed'), Type: 'String', Overwrite: true }]);
    await waitUntil('the fixed module converged', () => r!.daemon.status.condition === 'converged' && r!.daemon.status.desired?.hash !== hung);
    assert.ok(r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    const first = r.statuses.find((s) => s.firstConvergenceDone);
    assert.equal(first?.lastResult?.outcome, 'converged', `the first convergence ended ${first?.lastResult?.outcome}: ${first?.message}`);
    assert.ok(r.statuses.filter((s) => s.lastResult?.outcome === 'cancelled').every((s) => s.condition === 'converging'), 'converging while the cancelled build is followed by the next pass');
    // The status turns converged as the pass ends; READY=1 follows from the loop's own handler.
    await waitUntil('READY=1', () => ready.length > 0);
    assert.deepEqual(ready.map((s) => s.lastResult?.outcome), ['converged'], 'READY=1 once, when the first convergence ended');
  });

  it('is given up for a suspend, which is answered without waiting for the build', async () => {
    const r = await start(120);
    await waitUntil('the hung build', () => r.daemon.status.phase === 'building');
    const running = await readlink(path.join(r.root, 'run/current-system'));
    // Far less than the build's 120 s: waiting for the build is the failure.
    const client = new ControlClient(path.join(r.root, 'run/ctl.sock'), 30_000);
    const answer = (await client.request('suspend')) as { ok: boolean; status: Status };
    assert.equal(answer.ok, true);
    assert.ok(answer.status.suspended, JSON.stringify(answer.status));
    assert.ok(r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    // The pass that follows is suspended at once, and ends the first convergence.
    await waitUntil('the suspended pass', () => r.daemon.status.firstConvergenceDone);
    assert.equal(r.daemon.status.lastResult?.outcome, 'suspended');
    assert.equal(r.daemon.status.phase, 'suspended');
    assert.equal(await readlink(path.join(r.root, 'run/current-system')), running, 'nothing was switched');
  });

  it("is given up for an operator's rollback, which switches to the previous good generation without waiting for the build", async () => {
    const r = await start(120, { module: markerModule('good-a') });
    const converged = async (what: string, hash?: string) => {
      const done = () => r.daemon.status.lastResult;
      await waitUntil(what, () => done()?.outcome === 'converged' && done()?.desiredHash !== hash);
      return { hash: done()?.desiredHash, system: await readlink(path.join(r.root, 'run/current-system')) };
    };
    const a = await converged('good-a converged');
    r.world.ssm.load([{ Name: MODULE, Value: markerModule('good-b'), Type: 'String', Overwrite: true }]);
    const b = await converged('good-b converged', a.hash);
    assert.notEqual(b.system, a.system);
    r.world.ssm.load([{ Name: MODULE, Value: markerModule('sandbox-hang'), Type: 'String', Overwrite: true }]);
    await waitUntil('the hung build', () => r.daemon.status.phase === 'building');
    const hung = r.daemon.status.desired?.hash;

    // Far less than the build's 120 s: waiting for the build is the failure.
    const client = new ControlClient(path.join(r.root, 'run/ctl.sock'), 30_000);
    const answer = (await client.request('rollback')) as { ok: boolean; status: Status };
    assert.equal(answer.ok, true, JSON.stringify(answer));
    assert.ok(r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    assert.equal(await readlink(path.join(r.root, 'run/current-system')), a.system, 'back on the generation before good-b');
    assert.equal(answer.status.held?.desiredHash, hung, 'held on what was being built, not building it again');
    // The pass that follows holds on the rollback: nothing is built.
    await waitUntil('the held pass', () => r.daemon.status.lastResult?.outcome === 'held');
    assert.equal(r.daemon.status.phase, 'held');
    assert.equal(await readlink(path.join(r.root, 'run/current-system')), a.system);
  });

  it('is not given up for a rollback with nothing to go back to, which is refused at once', async () => {
    const r = await start(120);
    await waitUntil('the hung build', () => r.daemon.status.phase === 'building');
    // Far less than the build's 120 s: waiting for the build is the failure.
    const client = new ControlClient(path.join(r.root, 'run/ctl.sock'), 30_000);
    const answer = (await client.request('rollback')) as { ok: boolean; error?: string; status: Status };
    assert.equal(answer.ok, false);
    assert.equal(answer.error, 'there is no previous good generation to roll back to');
    assert.equal(r.daemon.status.phase, 'building', 'the first build goes on');
    assert.ok(!r.outcomes().includes('cancelled'), r.outcomes().join(', '));
  });

  it('is given up for a suspend that came while the pass still read its sources, as soon as the build starts', async () => {
    // The user-data script holds the pass in its first step until the test writes to the FIFO.
    const fifo = path.join(await mkdtemp(path.join(tmpdir(), 'nea-fifo-')), 'go');
    cleanups.push(() => rm(path.dirname(fifo), { recursive: true, force: true }));
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
    const lines: string[] = [];
    const log = createLogger({ level: 'info', destination: new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString('utf8')), done()) }) });
    const r = await start(120, { userData: `#!/bin/sh\nread go < ${fifo}\n`, log });
    await waitUntil('the user-data script running', () => r.daemon.status.message === 'running the user-data script');
    const running = await readlink(path.join(r.root, 'run/current-system'));
    const client = new ControlClient(path.join(r.root, 'run/ctl.sock'), 60_000);
    const asked = client.request('suspend') as Promise<{ ok: boolean; status: Status }>;
    await waitUntil('the suspend taken by the daemon', () => lines.some((l) => l.includes('"event":"control.request"') && l.includes('"op":"suspend"')));
    await writeFile(fifo, 'go\n');
    // The build hangs for 120 s: an answer before that is the build given up.
    const answer = await asked;
    assert.equal(answer.ok, true);
    assert.ok(answer.status.suspended, JSON.stringify(answer.status));
    assert.ok(r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    assert.ok(r.statuses.some((s) => s.phase === 'building'), 'the pass reached its build before it was given up');
    await waitUntil('the suspended pass', () => r.daemon.status.firstConvergenceDone);
    assert.equal(r.daemon.status.lastResult?.outcome, 'suspended');
    assert.equal(await readlink(path.join(r.root, 'run/current-system')), running, 'nothing was switched');
  });

  it('is not cancelled by converge --now when the sources still say the same', async () => {
    const r = await start(4);
    await waitUntil('the hung build', () => r.daemon.status.phase === 'building');
    const answer = (await r.control.request('converge')) as { ok: boolean; outcome?: Outcome };
    assert.notEqual(answer.outcome, 'cancelled');
    assert.ok(!r.outcomes().includes('cancelled'), r.outcomes().join(', '));
    // The build ran to its timeout: the pass failed on it, then the asked-for pass held on that failure.
    assert.ok(r.outcomes().includes('failed'), r.outcomes().join(', '));
    assert.equal(answer.outcome, 'held');
    assert.equal(answer.ok, false, 'a held pass did not converge');
  });
});
