// The daemon's composition root and SIGHUP, in this process. SIGHUP rebuilds every part that
// depends on the configuration and stops the old ones first: after a reload that points the agent
// at another IMDS, nothing (leaving monitors, reconciler, reporters) asks the old one again. And
// `runDaemon` removes the signal handlers it installed once it has stopped.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { parseConfig, type Config } from '../../agent/config.js';
import { runDaemon } from '../../agent/daemon.js';
import { LOCK_FILE, lockRoot, RootBusyError } from '../../agent/lock.js';
import { createLogger, silentLogger, type Logger } from '../../agent/log.js';
import { startDaemon } from '../../agent/loop.js';
import { realClock } from '../../agent/ports.js';
import { createNotify, type Notify } from '../../agent/report/notify.js';
import { Watchdog } from '../../agent/report/watchdog.js';
import type { Status } from '../../agent/status.js';
import { defaultInstance, ImdsEmulator } from '../../sandbox/emulators/imds.js';
import { bootMachine, installStandins, type StandinPaths } from '../../sandbox/standin/install.js';
import { waitUntil } from '../support/e2e.js';

const USER_DATA = Buffer.from('{ ... }: { time.timeZone = "UTC"; }\n');
const LEAVING_PATH = '/latest/meta-data/autoscaling/target-lifecycle-state';

describe('the daemon in this process', { timeout: 180_000 }, () => {
  let dir: string;
  let root: string;
  let tools: StandinPaths;
  let first: ImdsEmulator;
  let second: ImdsEmulator;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-reload-'));
    root = path.join(dir, 'root');
    tools = await installStandins({ binDir: path.join(dir, 'bin'), root });
    await bootMachine(root);
    // Spot instances: only they are sent interruption notices, and only theirs are watched.
    first = await ImdsEmulator.start({ instance: defaultInstance({ userData: USER_DATA, instanceLifeCycle: 'spot' }) });
    second = await ImdsEmulator.start({ instance: defaultInstance({ userData: USER_DATA, instanceLifeCycle: 'spot' }) });
  });

  after(async () => {
    await first?.close();
    await second?.close();
    await rm(dir, { recursive: true, force: true });
  });

  function config(imds: ImdsEmulator, extra: Record<string, unknown> = {}): Config {
    return parseConfig({
      root,
      logLevel: 'error',
      imds: { endpoint: imds.url, retries: 2, timeoutMs: 5_000 },
      rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available' },
      health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
      ssm: { enabled: false },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      lifecycle: { enabled: false },
      termination: { enabled: true, checkSeconds: 0.05 },
      ...extra,
    });
  }

  /** A notifier that keeps what it would tell systemd: each message's fields, READY, STOPPING, RELOADING. */
  function recordingNotify(sent: string[]): Notify {
    return {
      enabled: true,
      send: (fields) => sent.push(Object.keys(fields).join(',')),
      ready: () => sent.push('READY'),
      status() {},
      watchdog() {},
      extendTimeout() {},
      stopping: () => sent.push('STOPPING'),
      reloading: () => sent.push('RELOADING'),
    };
  }

  /** A daemon in this process, each status it reports kept. */
  async function startHere(configured: Config, options: { notify?: Notify; reload?: () => Promise<Config>; log?: Logger } = {}) {
    const statuses: Status[] = [];
    const clock = realClock();
    const notify = options.notify ?? createNotify({});
    const daemon = await startDaemon(configured, {
      log: options.log ?? silentLogger(),
      clock,
      env: {},
      notify,
      watchdog: new Watchdog(notify, {}, clock),
      ...(options.reload ? { reload: options.reload } : {}),
      onStatus: (s) => statuses.push(s),
    });
    return { daemon, statuses };
  }

  it('SIGHUP stops every part of the old configuration before the new one starts', async () => {
    // What the configuration file says: another IMDS once the test rewrites it.
    let file = config(first);
    const { daemon, statuses } = await startHere(config(first), { reload: async () => file });
    try {
      await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
      assert.equal(daemon.status.condition, 'converged', daemon.status.message);
      await waitUntil('the leaving monitor on the first IMDS', () => first.requests.some((r) => r.path === LEAVING_PATH));
      file = config(second);
      daemon.signal('SIGHUP');
      await waitUntil('the leaving monitor on the second IMDS', () => second.requests.some((r) => r.path === LEAVING_PATH));
      const askedFirst = first.requests.length;
      const seen = second.requests.filter((r) => r.path === LEAVING_PATH).length;
      await waitUntil('more checks on the second IMDS', () => second.requests.filter((r) => r.path === LEAVING_PATH).length >= seen + 5);
      assert.equal(first.requests.length, askedFirst, 'the first IMDS was asked again after the reload');
    } finally {
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
    }
  });

  it('SIGHUP keeps what the status knows: a converged agent stays converged and ready through the reload', async () => {
    const { daemon, statuses } = await startHere(config(first, { termination: { enabled: false } }), { reload: async () => config(first, { termination: { enabled: false } }) });
    try {
      await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
      assert.equal(daemon.status.condition, 'converged', daemon.status.message);
      const before = statuses.length;
      const passes = () => statuses.slice(before).filter((s) => s.lastResult !== undefined && s.lastResult.at !== statuses[before - 1]!.lastResult?.at);
      daemon.signal('SIGHUP');
      await waitUntil('the pass after the reload', () => passes().length > 0);
      const after = statuses.slice(before);
      const lost = after.filter((s) => !s.firstConvergenceDone || s.condition !== 'converged');
      assert.deepEqual(lost.map((s) => `${s.condition} firstConvergenceDone=${s.firstConvergenceDone}: ${s.message}`), [], 'status --wait, /readyz and status.json went back to the start');
      assert.equal(passes()[0]?.lastResult?.outcome, 'unchanged');
    } finally {
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
    }
  });

  // The NixOS module writes the agent's configuration into /etc: a switch can change it (user
  // data or SSM setting the agent's own options), and the daemon takes it without a restart.
  it("a switch that rewrites the agent's own configuration is taken as SIGHUP takes it; one that leaves it as it was reloads nothing", async () => {
    for (const rewritten of [true, false]) {
      const sent: string[] = [];
      const lines: string[] = [];
      const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString('utf8')), done()) });
      const notify = recordingNotify(sent);
      let reads = 0;
      const secondBefore = second.requests.length;
      // A desired state this root has not run yet: the first convergence switches.
      first.setUserData(`{ ... }: { networking.hostName = "reload-${rewritten}"; }\n`);
      // The file as the first convergence's switch leaves it: another IMDS, or the same configuration.
      const info = { logLevel: 'info' };
      const { daemon, statuses } = await startHere(config(first, info), {
        notify,
        log: createLogger({ destination: sink, level: 'info' }),
        reload: async () => (reads++, rewritten ? config(second, info) : config(first, info)),
      });
      try {
        await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
        assert.equal(statuses.find((s) => s.firstConvergenceDone)?.lastResult?.outcome, 'converged', 'the first convergence switched');
        await waitUntil('the file read again after the switch', () => reads >= 1);
        if (rewritten) {
          await waitUntil('the leaving monitor on the IMDS the new file names', () => second.requests.some((r) => r.path === LEAVING_PATH));
          await waitUntil('READY=1 after the pass that follows the reload', () => sent.filter((m) => m === 'READY').length >= 2);
          assert.deepEqual(sent.filter((m) => /READY|RELOADING/.test(m)), ['READY', 'RELOADING', 'READY'], sent.join(' | '));
          const askedFirst = first.requests.length;
          const seen = second.requests.filter((r) => r.path === LEAVING_PATH).length;
          await waitUntil('more checks on the second IMDS', () => second.requests.filter((r) => r.path === LEAVING_PATH).length >= seen + 3);
          assert.equal(first.requests.length, askedFirst, 'the first IMDS was asked again after the reload');
          const reload = lines.map((l) => JSON.parse(l) as { event?: string; cause?: string; msg: string }).find((l) => l.event === 'reload');
          assert.equal(reload?.cause, 'switch');
          assert.match(reload?.msg ?? '', /^switch: configuration reloaded/);
        } else {
          const checks = first.requests.filter((r) => r.path === LEAVING_PATH).length;
          await waitUntil('the leaving monitor still on the first IMDS', () => first.requests.filter((r) => r.path === LEAVING_PATH).length >= checks + 3);
          assert.equal(reads, 1, 'read once, after the switch');
          assert.equal(second.requests.length, secondBefore, 'the other IMDS never asked');
          assert.deepEqual(sent.filter((m) => /READY|RELOADING/.test(m)), ['READY'], sent.join(' | '));
          assert.equal(lines.some((l) => l.includes('"event":"reload"')), false);
        }
      } finally {
        first.setUserData(USER_DATA);
        daemon.signal('SIGTERM');
        assert.equal(await daemon.done, 0);
      }
    }
  });

  it("a configuration whose generations each write the other's settings is taken twice, then kept: no rebuild loop", async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString('utf8')), done()) });
    const tag = Math.random().toString(36).slice(2, 8);
    // Each IMDS's user data converges to a generation whose agent configuration names the other IMDS.
    first.setUserData(`{ ... }: { networking.hostName = "flip-a-${tag}"; }\n`);
    second.setUserData(`{ ... }: { networking.hostName = "flip-b-${tag}"; }\n`);
    const info = { logLevel: 'info' };
    let fromFirst: string | undefined;
    const reload = async () => {
      const running = await readlink(path.join(root, 'run/current-system'));
      fromFirst ??= running;
      return running === fromFirst ? config(second, info) : config(first, info);
    };
    const { daemon, statuses } = await startHere(config(first, info), { log: createLogger({ destination: sink, level: 'info' }), reload });
    const events = () => lines.map((l) => JSON.parse(l) as { event?: string; cause?: string; msg: string; settings?: string[] });
    try {
      await waitUntil('the third reload refused', () => events().some((e) => e.event === 'reload.refused'));
      const refused = events().find((e) => e.event === 'reload.refused');
      assert.deepEqual(refused?.settings, ['imds']);
      assert.match(refused?.msg ?? '', /^switch: the configuration was not reloaded: it would flip back and forth \(imds\)/);
      assert.equal(events().filter((e) => e.event === 'reload' && e.cause === 'switch').length, 2, 'A→B and B→A were taken');
      // Kept on the first configuration, whose sources converge to what runs: nothing more changes.
      const converged = statuses.filter((s) => s.lastResult?.outcome === 'converged').length;
      const checks = first.requests.filter((r) => r.path === LEAVING_PATH).length;
      await waitUntil('the first IMDS still watched', () => first.requests.filter((r) => r.path === LEAVING_PATH).length >= checks + 3);
      assert.equal(await readlink(path.join(root, 'run/current-system')), fromFirst);
      assert.equal(statuses.filter((s) => s.lastResult?.outcome === 'converged').length, converged, 'no switch after the refusal');
      assert.equal(events().filter((e) => e.event === 'reload.refused').length, 1);
    } finally {
      first.setUserData(USER_DATA);
      second.setUserData(USER_DATA);
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
    }
  });

  it('a spot notice that comes and goes is no shutdown: STOPPING=1 only on SIGTERM, READY=1 once', async () => {
    const sent: string[] = [];
    const notify = recordingNotify(sent);
    const { daemon, statuses } = await startHere(config(first), { notify });
    try {
      await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
      first.setSpotInstanceAction({ action: 'stop', time: new Date(Date.now() + 120_000).toISOString() });
      await waitUntil('the spot notice', () => daemon.status.phase === 'stopping');
      first.setSpotInstanceAction(undefined);
      await waitUntil('the notice withdrawn', () => daemon.status.phase !== 'stopping');
      // systemd takes STOPPING=1 from a running service as the start of its stop: TimeoutStopSec
      // later it kills an agent that was never asked to stop, and ignores READY=1 meanwhile.
      assert.deepEqual(sent.filter((m) => /STOPPING|READY/.test(m)), ['READY'], sent.join(' | '));
    } finally {
      first.setSpotInstanceAction(undefined);
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
    }
    assert.deepEqual(sent.filter((m) => /STOPPING|READY/.test(m)), ['READY', 'STOPPING'], sent.join(' | '));
  });

  it('on an on-demand instance the spot notice is never asked for; the target state still is', async () => {
    const onDemand = await ImdsEmulator.start({ instance: defaultInstance({ userData: USER_DATA }) });
    const { daemon, statuses } = await startHere(config(onDemand));
    try {
      await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
      // At checkSeconds 0.05 the spot notice would have been asked for some 20 times meanwhile.
      await waitUntil('three looks at the target state', () => onDemand.requests.filter((r) => r.path === LEAVING_PATH).length >= 3);
      assert.ok(onDemand.requests.some((r) => r.path === '/latest/meta-data/instance-life-cycle'), 'the purchasing option was read');
      assert.deepEqual(onDemand.requests.filter((r) => r.path.startsWith('/latest/meta-data/spot/')).map((r) => r.path), []);
    } finally {
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
      await onDemand.close();
    }
  });

  it('a reload while leaving: the new watch ends the notice when its IMDS has none, or when nothing watches any more', async () => {
    for (const next of [config(second), config(first, { termination: { enabled: false } })]) {
      let file = config(first);
      const { daemon, statuses } = await startHere(config(first), { reload: async () => file });
      try {
        await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
        first.setSpotInstanceAction({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString() });
        await waitUntil('the spot notice', () => daemon.status.phase === 'stopping');
        file = next;
        daemon.signal('SIGHUP');
        await waitUntil('the notice ended by the reloaded watch', () => daemon.status.phase !== 'stopping');
      } finally {
        first.setSpotInstanceAction(undefined);
        daemon.signal('SIGTERM');
        assert.equal(await daemon.done, 0);
      }
    }
  });

  it('a write error under the root fails the pass naming path and errno, and SIGTERM still stops the daemon', async () => {
    // A fresh machine, with a file where the agent's render directory goes: every write under it
    // fails (ENOTDIR).
    const root = path.join(dir, 'blocked-root');
    const tools = await installStandins({ binDir: path.join(dir, 'blocked-bin'), root });
    await bootMachine(root);
    const blocked = path.join(root, 'etc/nixos/ec2-agent');
    await writeFile(blocked, 'not a directory\n');
    const running = await readlink(path.join(root, 'run/current-system'));
    const { daemon, statuses } = await startHere(
      config(first, {
        root,
        termination: { enabled: false },
        rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available' },
        health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
      }),
    );
    try {
      await waitUntil('the first pass', () => statuses.some((s) => s.firstConvergenceDone));
      const result = daemon.status.lastResult;
      assert.equal(result?.outcome, 'failed', JSON.stringify(daemon.status));
      assert.match(result?.error?.message ?? '', /E[A-Z]+/);
      assert.ok(result?.error?.message.includes(blocked), result?.error?.message);
      assert.equal(daemon.status.phase, 'idle');
      assert.equal(await readlink(path.join(root, 'run/current-system')), running, 'nothing switched');
    } finally {
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
      await rm(blocked, { force: true });
    }
  });

  /** How many listeners each signal the daemon handles has in this process. */
  const handlerCounts = () => (['SIGTERM', 'SIGINT', 'SIGHUP'] as const).map((s) => process.listenerCount(s));

  /** runDaemon in this process, once its signal handlers are in place. */
  async function runHere(): Promise<{ running: Promise<number>; before: number[] }> {
    const before = handlerCounts();
    const running = runDaemon(config(first, { termination: { enabled: false } }));
    await waitUntil('the signal handlers', () => handlerCounts().every((n, i) => n === before[i]! + 1));
    return { running, before };
  }

  it('runDaemon installs its signal handlers and removes them when it stops', async () => {
    const { running, before } = await runHere();
    const counts = handlerCounts;
    process.emit('SIGTERM', 'SIGTERM');
    assert.equal(await running, 0);
    assert.deepEqual(counts(), before);
  });

  it('runDaemon holds the root\'s lock while it runs, refuses to start on a held root, and lets go when it stops', async () => {
    const { running, before } = await runHere();
    const counts = handlerCounts;
    await assert.rejects(lockRoot(root, 1), (err: unknown) => err instanceof RootBusyError && err.holder === process.pid);
    // A second daemon on the held root stops before it reads or writes anything there.
    await assert.rejects(runDaemon(config(first, { termination: { enabled: false } })), (err: unknown) => err instanceof RootBusyError && err.file === path.join(root, LOCK_FILE));
    assert.deepEqual(counts(), before.map((n) => n + 1), 'the refused daemon installed no signal handler');
    process.emit('SIGTERM', 'SIGTERM');
    assert.equal(await running, 0);
    const free = await lockRoot(root, 1);
    await free.release();
  });

  it('SIGHUP to a configuration on another root is refused: the daemon stays on its own root', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString('utf8')), done()) });
    const elsewhere = path.join(dir, 'elsewhere');
    const { daemon, statuses } = await startHere(config(first, { termination: { enabled: false } }), {
      log: createLogger({ level: 'error', destination: sink }),
      reload: async () => ({ ...config(first, { termination: { enabled: false } }), root: elsewhere }),
    });
    try {
      await waitUntil('the first convergence', () => statuses.some((s) => s.firstConvergenceDone));
      const seen = statuses.length;
      daemon.signal('SIGHUP');
      await waitUntil('the refusal', () => lines.some((l) => l.includes('"reload.failed"')));
      assert.match(lines.join(''), new RegExp(`root changed from ${root} to ${elsewhere}, which applies only at restart`));
      await waitUntil('the pass after SIGHUP', () => statuses.slice(seen).some((s) => s.lastResult !== undefined && s.lastResult.at !== statuses[seen - 1]!.lastResult?.at));
      assert.equal(existsSync(elsewhere), false, 'nothing was written under the other root');
    } finally {
      daemon.signal('SIGTERM');
      assert.equal(await daemon.done, 0);
    }
  });
});
