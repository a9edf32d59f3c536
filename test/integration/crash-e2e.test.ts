// The agent killed (SIGKILL, with everything it started, as systemd ends a crashed unit's control
// group) at each phase of a pass, then run again: the next `converge --once` finishes the job or
// rolls back, configuration.nix and the profile agree, and nothing half-written is left. Also a
// corrupt state file: set aside, reported, and convergence goes on.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { LiveDaemon } from '../support/daemon.js';
import { Instance, isAlive, killTree, processes, markerModule, unparsableNixFiles, waitFor, type DurableStateJson } from '../support/e2e.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const SLOW_PROBE = [{ name: 'slow', command: { argv: ['sleep', '4'], timeoutMs: 10_000 } }];
const QUICK_PROBE = [{ name: 'quick', command: { argv: ['true'], timeoutMs: 10_000 } }];

/** Runs `converge --once` and kills the agent once its durable journal reaches `phase`. */
async function killAt(i: Instance, phase: string): Promise<void> {
  const run = i.start(['converge', '--once', '--json']);
  const stateFile = i.file('var/lib/nixos-ec2-agent/state.json');
  let exited = false;
  void run.done.then(() => (exited = true));
  await waitFor(`journal phase ${phase}`, async () => {
    if (exited) throw new Error(`the agent ended before reaching ${phase}`);
    const state = JSON.parse(await readFile(stateFile, 'utf8')) as DurableStateJson;
    return state.journal.phase === phase ? true : undefined;
  }, 45_000, 2).catch(async (err: unknown) => {
    const r = await run.done;
    throw new Error(`${(err as Error).message}; exit ${r.code}\n${r.stderr.slice(-2000)}`);
  });
  await killTree(run.child.pid as number);
  const result = await run.done;
  assert.equal(result.signal, 'SIGKILL', `the agent was killed at ${phase}, not ended (${result.code})`);
}

/**
 * Activating and rolling back last a blink, too short to catch by polling on a loaded machine: a
 * preload (the agent passes NODE_OPTIONS on to the stand-in) holds the stand-in's
 * `switch-to-configuration` while the journal is in `phase`, until the test has killed the agent,
 * so the kill lands inside that phase every time.
 */
async function killHeldIn(i: Instance, phase: 'activating' | 'rolling-back'): Promise<void> {
  const gate = path.join(i.dir, 'activation-gate');
  const preload = path.join(i.dir, 'activation-gate.cjs');
  await writeFile(
    preload,
    `const fs = require('node:fs');
const phase = () => { try { return JSON.parse(fs.readFileSync(${JSON.stringify(i.file('var/lib/nixos-ec2-agent/state.json'))}, 'utf8')).journal.phase; } catch { return undefined; } };
if (process.argv.includes('switch-to-configuration') && fs.existsSync(${JSON.stringify(gate)}) && phase() === ${JSON.stringify(phase)}) {
  fs.writeFileSync(${JSON.stringify(`${gate}.reached`)}, String(process.pid));
  const cell = new Int32Array(new SharedArrayBuffer(4));
  while (fs.existsSync(${JSON.stringify(gate)})) Atomics.wait(cell, 0, 0, 20);
}
`,
  );
  await writeFile(gate, '');
  const run = i.start(['converge', '--once', '--json'], { NODE_OPTIONS: `--require ${preload}` });
  let exited = false;
  void run.done.then(() => (exited = true));
  try {
    await waitFor(`switch-to-configuration in ${phase}`, async () => {
      if (exited) return 'exited';
      return existsSync(`${gate}.reached`) ? 'reached' : undefined;
    }, 120_000, 10);
    if (exited) throw new Error(`the agent ended before reaching ${phase}: ${(await run.done).stderr.slice(-2000)}`);
    const state = await i.durableState();
    assert.equal(state.journal.phase, phase, `held inside ${phase}`);
    await killTree(run.child.pid as number);
    const result = await run.done;
    assert.equal(result.signal, 'SIGKILL');
  } finally {
    await rm(gate, { force: true });
  }
}

/** The pid of a process group leader at work under `dir` with a `nixos-config=` argument: a build the agent started. */
async function buildLeaderWithin(dir: string): Promise<number | undefined> {
  for (const p of await processes()) {
    if (p.pgid !== p.pid || !/(^| )nixos-config=/.test(p.cmdline)) continue;
    if ((await readlink(`/proc/${p.pid}/cwd`).catch(() => '')).startsWith(`${dir}/`)) return p.pid;
  }
  return undefined;
}

/** What must hold after any recovery: one consistent, parseable, good system. */
async function assertConsistent(i: Instance): Promise<DurableStateJson> {
  const state = await i.durableState();
  assert.equal(state.journal.phase, 'idle', 'the journal is closed');
  assert.ok(state.lastGood, 'a last good generation is recorded');
  assert.equal(await i.running(), state.lastGood.storePath, 'the last good system runs');
  assert.equal(await i.profileSystem(), state.lastGood.storePath, 'the profile (boot default) is the last good system');
  assert.equal(await i.configuration(), await i.read('var/lib/nixos-ec2-agent/last-good-configuration.nix'), 'configuration.nix is the last good one');
  assert.deepEqual(await unparsableNixFiles(i.file('etc/nixos')), [], 'every file under etc/nixos parses');
  const leftovers = (await readdir(i.file('etc/nixos'), { recursive: true })).filter((n) => /\.tmp|~$/.test(String(n)));
  assert.deepEqual(leftovers, [], 'no temporary file is left');
  return state;
}

/** A converged instance; `config` applies from the run after the first convergence on. */
async function withGoodInstance(config: Record<string, unknown>, body: (i: Instance, goodRunning: string) => Promise<void>): Promise<void> {
  const i = await Instance.launch({ parameters: [FLEET_TZ] });
  try {
    const first = await i.converge();
    assert.equal(first.code, 0, first.stderr);
    await i.configure(config);
    await body(i, await i.running());
  } finally {
    await i.close();
  }
}

describe('killed and restarted at each phase', { concurrency: true }, () => {
  test('building: nothing was switched; the next pass builds what the sources say now', async () => {
    await withGoodInstance({}, async (i, goodRunning) => {
      i.put('/nixos/fleet/modules/slow', markerModule('sandbox-hang'));
      await killAt(i, 'building');
      assert.equal(await i.running(), goodRunning);
      // The operator fixes the module; the restarted agent starts over from the journal.
      i.put('/nixos/fleet/modules/slow', '{ ... }:\n{\n  users.motd = "fixed";\n}\n');
      const again = await i.converge();
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.status.lastResult?.outcome, 'converged');
      assert.ok((await i.logEvents()).some((e) => e.event === 'recover' && e.phase === 'building'), 'the recovery is logged');
      const state = await assertConsistent(i);
      assert.notEqual(state.lastGood?.storePath, goodRunning);
      assert.match(await i.configuration(), /modules\/slow\.nix/);
    });
  });

  // The unit's KillMode=process: a stop, a restart or a crash ends the agent alone, and the build it
  // had started runs on. The next agent's build stops it; its result is never taken for the new one.
  // Once restarted as `converge --once`, and once as the unit restarts it: the daemon.
  for (const restart of ['converge --once', 'run'] as const) {
    test(`building, the agent alone killed: the next build (${restart}) stops the one left running and builds what the sources say now`, async () => {
      await withGoodInstance({}, async (i) => {
        i.put('/nixos/fleet/modules/slow', markerModule('sandbox-hang'));
        const run = i.start(['converge', '--once', '--json']);
        const builds = i.file('var/lib/nixos-ec2-agent/build');
        let stray: number | undefined;
        try {
          // Killed once the build has printed its last line and hangs: a build writing to the pipe of
          // an agent that is gone dies of it, as nix-build does at its next line of output.
          let output = '';
          run.child.stderr?.on('data', (c: Buffer) => (output += c.toString('utf8')));
          await waitFor('the build to hang', async () => (output.includes("building '") ? true : undefined), 45_000, 2);
          stray = await waitFor('the build process', () => buildLeaderWithin(builds), 45_000, 2);
          process.kill(run.child.pid as number, 'SIGKILL');
          assert.equal((await run.done).signal, 'SIGKILL');
          assert.ok(isAlive(stray), 'the build outlived its agent');

          i.put('/nixos/fleet/modules/slow', '{ ... }:\n{\n  users.motd = "fixed";\n}\n');
          let events: readonly Record<string, unknown>[];
          if (restart === 'run') {
            const daemon = LiveDaemon.start(i);
            try {
              assert.equal((await daemon.passAfter(0)).outcome, 'converged');
            } finally {
              await daemon.stop();
            }
            events = daemon.log.events;
          } else {
            const again = await i.converge();
            assert.equal(again.code, 0, again.stderr);
            assert.equal(again.status.lastResult?.outcome, 'converged');
            events = await i.logEvents();
          }
          const stopped = events.find((e) => e.event === 'build.stray-stopped');
          assert.deepEqual(stopped?.processGroups, [stray], 'the build the killed agent left was stopped');
          await waitFor('the stopped build to end', async () => (isAlive(stray as number) ? undefined : true), 60_000, 10);
          assert.equal((await readdir(builds)).length, 1, "one build's directory is left: the last one");
          const state = await assertConsistent(i);
          assert.equal(state.running?.storePath, await i.running());
          assert.match(await i.configuration(), /modules\/slow\.nix/);
        } finally {
          if (stray !== undefined && isAlive(stray)) process.kill(-stray, 'SIGKILL');
          if (run.child.exitCode === null && run.child.signalCode === null) await killTree(run.child.pid as number);
        }
      });
    });
  }

  test('activating: finished or rolled back, never half done', async () => {
    await withGoodInstance({}, async (i, goodRunning) => {
      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      await killHeldIn(i, 'activating');
      const again = await i.converge();
      const state = await assertConsistent(i);
      const hash = again.status.desired?.hash as string;
      if (again.code === 0) {
        // The activation had finished: recovery verified the new system and committed it.
        assert.equal(state.running?.desiredHash, hash);
        assert.notEqual(state.lastGood?.storePath, goodRunning);
        assert.equal(again.status.condition, 'converged');
      } else {
        // It had not: recovery rolled back, and the interrupted desired state waits for its retry.
        assert.equal(again.code, 1, again.stderr.slice(-2000));
        assert.equal(state.lastGood?.storePath, goodRunning);
        assert.equal(state.failed[hash]?.stage, 'activate');
        assert.equal(again.status.condition, 'degraded');
      }
    });
  });

  test('verifying: verified now and committed', async () => {
    await withGoodInstance({ health: { probes: SLOW_PROBE } }, async (i, goodRunning) => {
      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      await killAt(i, 'verifying');
      const killedAt = await i.durableState();
      assert.equal(killedAt.journal.phase, 'verifying');
      const building = killedAt.journal.storePath as string;
      await i.setConfig(['health', 'probes'], QUICK_PROBE);
      const steps = await i.steps('build');
      const again = await i.converge();
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.status.condition, 'converged');
      assert.equal(await i.steps('build'), steps, 'the system activated before the kill is verified, not rebuilt');
      const state = await assertConsistent(i);
      assert.equal(state.lastGood?.storePath, building);
      assert.notEqual(building, goodRunning);
      assert.equal(await i.profileGeneration(), 3);
    });
  });

  test('verifying an unhealthy system: the restarted agent rolls back', async () => {
    await withGoodInstance({ health: { probes: SLOW_PROBE } }, async (i, goodRunning) => {
      i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-unit'));
      await killAt(i, 'verifying');
      await i.setConfig(['health', 'probes'], QUICK_PROBE);
      const again = await i.converge();
      assert.equal(again.code, 1, again.stderr);
      const state = await assertConsistent(i);
      assert.equal(state.lastGood?.storePath, goodRunning);
      assert.ok(Object.keys(state.failed).length > 0, 'the failed desired state is remembered');
      const { code, status } = await i.status();
      assert.equal(code, 2, 'degraded');
      assert.ok(status.reasons.length > 0, 'status says why');
    });
  });

  test('rolling back: the rollback is finished', async () => {
    await withGoodInstance({ health: { probes: SLOW_PROBE } }, async (i, goodRunning) => {
      i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-switch'));
      await killHeldIn(i, 'rolling-back');
      await i.setConfig(['health', 'probes'], QUICK_PROBE);
      const again = await i.converge();
      assert.notEqual(again.code, 0, 'the bad desired state is not converged');
      const state = await assertConsistent(i);
      assert.equal(state.lastGood?.storePath, goodRunning);
      assert.equal(await i.profileGeneration(), 2);
      assert.ok((await i.logEvents()).some((e) => e.event === 'recover' && e.phase === 'rolling-back'), 'the recovery is logged');
    });
  });

  test("generations beside a daemon of another version reads state.json and never sets it aside", async () => {
    await withGoodInstance({}, async (i) => {
      const stateFile = i.file('var/lib/nixos-ec2-agent/state.json');
      const newer = JSON.stringify({ ...JSON.parse(await readFile(stateFile, 'utf8')), version: 7 });
      await writeFile(stateFile, newer);
      const result = await i.run(['generations', '--json']);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stderr, /^nixos-ec2-agent generations: \S*state\.json was written by a newer agent in format 7, which agents of format 7 and later read; this agent reads format 1; listed without what it records$/m);
      assert.ok((JSON.parse(result.stdout) as unknown[]).length > 0, 'the generations are listed');
      assert.equal(await readFile(stateFile, 'utf8'), newer, 'state.json as it was');
      assert.deepEqual((await readdir(path.dirname(stateFile))).filter((n) => n.startsWith('state.json.')), []);
    });
  });

  test('a corrupt state file is set aside, reported, and the agent still converges', async () => {
    await withGoodInstance({}, async (i) => {
      const stateFile = i.file('var/lib/nixos-ec2-agent/state.json');
      await writeFile(stateFile, Buffer.from([0x00, 0xff, 0x7b, 0x22, 0x9c, 0x13, 0x37, 0x0a]));
      const again = await i.converge();
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.status.condition, 'converged');
      const aside = (await readdir(path.dirname(stateFile))).filter((n) => n.startsWith('state.json.corrupt-'));
      assert.equal(aside.length, 1, 'the corrupt file is set aside');
      assert.ok(again.status.reasons.some((r) => /state\.json/.test(r) && /set aside/.test(r)), JSON.stringify(again.status.reasons));
      const { status } = await i.status();
      assert.ok(status.reasons.some((r) => /set aside/.test(r)), 'status --json shows it too');
      await assertConsistent(i);
    });
  });
});
