// suspend, resume and rollback change the state only through the daemon, or with no daemon at all:
// a daemon that is there but cannot be reached, or a caller who may not use its socket, gets exit
// 2 and the state is left alone (the daemon would overwrite it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { control, NO_AGENT_GRACE_MS, status, unreachable } from '../../agent/commands.js';
import { controlSocketPath, parseConfig } from '../../agent/config.js';
import { RootFs } from '../../agent/fs.js';
import { ControlClient, ControlServer } from '../../agent/report/control.js';
import { readStatusFile } from '../../agent/report/status-file.js';
import { lockRoot } from '../../agent/lock.js';
import { StatusFile } from '../../agent/report/status-file.js';
import { STATE_FILE } from '../../agent/state.js';
import { deriveStatus, passExitCode, statusExitCode, type Outcome, type Status } from '../../agent/status.js';
import { ManualClock } from '../support/clock.js';

describe('control commands', () => {
  let dir: string;
  let server: net.Server;
  let socket: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-control-'));
    socket = path.join(dir, 'ctl.sock');
    // A daemon that takes the connection and hangs up without an answer.
    server = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });

  after(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('tells the three ways a socket can fail apart', () => {
    assert.equal(unreachable(Object.assign(new Error('connect ENOENT'), { code: 'ENOENT' })), 'no-daemon');
    assert.equal(unreachable(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })), 'no-daemon');
    assert.equal(unreachable(Object.assign(new Error('connect EACCES'), { code: 'EACCES' })), 'needs-root');
    assert.equal(unreachable(new Error('no answer from ctl.sock')), 'unreachable');
  });

  for (const op of ['suspend', 'resume', 'rollback'] as const) {
    it(`${op}: a daemon that cannot be reached means exit 2 and no state written`, async () => {
      const root = path.join(dir, `root-${op}`);
      const code = await control(parseConfig({ root }), op, true, new ControlClient(socket));
      assert.equal(code, 2);
      assert.equal(await new RootFs(root).exists(STATE_FILE), false);
    });

    it(`${op}: a socket this user may not open means exit 2 (needs root)`, async () => {
      const root = path.join(dir, `root-eacces-${op}`);
      const refused = { request: async () => Promise.reject(Object.assign(new Error(`connect EACCES ${socket}`), { code: 'EACCES' })) };
      assert.equal(await control(parseConfig({ root }), op, true, refused), 2);
      assert.equal(await new RootFs(root).exists(STATE_FILE), false);
    });
  }
});

describe('a daemon that takes the request and does not answer in time', () => {
  // It waits for the pass under way (a rollback after a build's activation) and still carries the
  // request out when that ends: the command must not say that nothing was changed.
  for (const op of ['suspend', 'rollback'] as const) {
    it(`${op}: exit 1, saying it may still be carried out`, async () => {
      const dir = await mkdtemp(path.join(tmpdir(), 'nea-busy-'));
      const socket = path.join(dir, 'ctl.sock');
      const taken: string[] = [];
      const held: net.Socket[] = [];
      const busy = net.createServer((c) => {
        held.push(c);
        c.on('data', (d) => taken.push(d.toString('utf8')));
      });
      await new Promise<void>((resolve) => busy.listen(socket, resolve));
      const said: string[] = [];
      const write = process.stderr.write;
      process.stderr.write = ((chunk: string | Uint8Array) => said.push(String(chunk)) > 0) as typeof process.stderr.write;
      try {
        const code = await control(parseConfig({ root: dir }), op, false, new ControlClient(socket, 200));
        process.stderr.write = write;
        assert.equal(code, 1);
        assert.deepEqual(taken, [`${JSON.stringify({ op })}\n`], 'the daemon has the request');
        assert.equal(said.length, 1, said.join(''));
        assert.match(said[0]!, new RegExp(`^${op}: the daemon took the request but gave no answer from .*ctl\\.sock within 200 ms: it waits for the pass under way to end and may still carry it out then \\(see \`status\`\\)\n$`));
        assert.doesNotMatch(said[0]!, /nothing was changed/);
        assert.equal(await new RootFs(dir).exists(STATE_FILE), false, 'not acted on here as if no daemon ran');
      } finally {
        process.stderr.write = write;
        for (const c of held) c.destroy();
        busy.close();
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});

describe('converge --now', () => {
  // A fleet-wide `converge --now` (aws ssm send-command) counts as converged the instances that
  // exit 0: only those that run the desired state, as for converge --once.
  it('exits as converge --once would for the outcome of the daemon\'s pass, whatever `ok` it says', async () => {
    const expected: Record<Outcome, number> = { converged: 0, unchanged: 0, 'invalid-input': 2, failed: 1, 'rolled-back': 1, held: 1, suspended: 1, cancelled: 1 };
    const config = parseConfig({ root: tmpdir() });
    for (const [outcome, code] of Object.entries(expected)) {
      // A daemon from before the mapping answered ok: true for a held, suspended or cancelled pass.
      const daemon = { request: async () => ({ ok: true, outcome }) };
      assert.equal(await control(config, 'converge', true, daemon), code, outcome);
      assert.equal(passExitCode(outcome as Outcome), code, `converge --once, ${outcome}`);
    }
  });
});

describe("the control socket's directory", () => {
  // Another user's directory, or one anyone may write, could hold a socket of theirs in the
  // daemon's place: the daemon does not listen there, and commands do not ask there.
  it("must be root's or this user's, writable by no one else, for the daemon and for commands", async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-control-dir-'));
    try {
      const open = path.join(dir, 'open');
      await mkdir(open);
      await chmod(open, 0o777);
      const cases: [string, string][] = [[open, 'mode 777']];
      if (process.getuid?.() === 0) {
        const theirs = path.join(dir, 'theirs');
        await mkdir(theirs, { mode: 0o755 });
        await chown(theirs, 65534, 65534);
        cases.push([theirs, 'owned by uid 65534']);
      } else {
        t.diagnostic('not root: the other-owner case needs chown');
      }
      for (const [where, why] of cases) {
        const socket = path.join(where, 'ctl.sock');
        const server = new ControlServer(socket, async () => ({ ok: true }));
        // Stopped whatever happens: a server that did listen would hold the test open.
        await assert.rejects(server.start().finally(() => server.stop()), (err: Error) => err.message.includes(where) && err.message.includes(why));
        await assert.rejects(new ControlClient(socket).request('status'), (err: Error) => err.message.includes(where));
        const root = path.join(dir, `root-${path.basename(where)}`);
        assert.equal(await control(parseConfig({ root }), 'suspend', true, new ControlClient(socket)), 2, 'refused, nothing changed');
        assert.equal(await new RootFs(root).exists(STATE_FILE), false);
      }
      // Its own directory: it listens and answers.
      const own = path.join(dir, 'own');
      const server = new ControlServer(path.join(own, 'ctl.sock'), async (op) => ({ ok: true, op }));
      await server.start();
      try {
        assert.deepEqual(await new ControlClient(path.join(own, 'ctl.sock')).request('status'), { ok: true, op: 'status' });
      } finally {
        await server.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('status', () => {
  // The daemon answers `status` from memory at once; one that takes the connection and says
  // nothing (stopped, or its loop wedged until the watchdog restarts it) must not hold the command.
  it('a daemon that accepts and never answers: status.json is shown, within seconds', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-status-'));
    const config = parseConfig({ root: dir });
    const noDaemon = { request: async () => Promise.reject(Object.assign(new Error('connect ENOENT'), { code: 'ENOENT' })) };
    assert.equal(await control(config, 'suspend', true, noDaemon), 0);
    const socket = controlSocketPath(config);
    await mkdir(path.dirname(socket), { recursive: true, mode: 0o755 });
    const held: net.Socket[] = [];
    const wedged = net.createServer((c) => void held.push(c));
    await new Promise<void>((resolve) => wedged.listen(socket, resolve));
    try {
      const started = Date.now();
      const code = await status(config, true, false);
      assert.ok(Date.now() - started < 30_000, `took ${Date.now() - started} ms`);
      assert.equal(code, statusExitCode((await readStatusFile(new RootFs(dir)))!));
    } finally {
      for (const c of held) c.destroy();
      wedged.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  // Bounded: a wait that never ends is the failure.
  describe('--wait', { timeout: 60_000 }, () => {
    const GRACE = NO_AGENT_GRACE_MS;
    let dir: string;
    before(async () => {
      dir = await mkdtemp(path.join(tmpdir(), 'nea-status-wait-'));
    });
    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    /** A status as an agent writes it, `pid` its writer. */
    function written(pid: number, done: boolean): Status {
      const now = Date.now();
      return deriveStatus(undefined, done ? { pid, activity: { kind: 'ended' }, lastPass: { outcome: 'converged', at: now, durationMs: 1 }, noGoodGeneration: false } : { pid, activity: { kind: 'starting' }, noGoodGeneration: false }, now);
    }
    async function writeStatus(root: string, s: Status): Promise<void> {
      const file = new StatusFile(new RootFs(root));
      file.update(s);
      await file.flush();
    }
    /** The wait, and whether it has ended; `clock` moves only when the test moves it. */
    function waiting(root: string, clock: ManualClock) {
      const state = { ended: false };
      const done = status(parseConfig({ root }), true, true, { clock }).finally(() => (state.ended = true));
      done.catch(() => undefined);
      return { done, state };
    }
    /** Moves the clock `ms` on, one look of the wait at a time: resolves once the wait sleeps again, or ended. */
    async function pass(clock: ManualClock, w: { done: Promise<unknown>; state: { ended: boolean } }, ms: number): Promise<void> {
      const target = clock.now() + ms;
      while (clock.now() < target && !w.state.ended) {
        await Promise.race([clock.whenSleeping(), w.done.catch(() => undefined)]);
        if (w.state.ended) return;
        clock.advance(Math.min(clock.nextDeadline()! - clock.now(), target - clock.now()));
      }
      await Promise.race([clock.whenSleeping(), w.done.catch(() => undefined)]);
    }
    const noAgent = (root: string) => (err: unknown) => err instanceof Error && err.message.startsWith(`no nixos-ec2-agent is running on ${root} (`) && err.message.endsWith('and the first convergence has not ended');

    it('no agent and no status.json: ends after the grace, exit 1 with one line', async () => {
      const root = path.join(dir, 'empty');
      await mkdir(root);
      const clock = new ManualClock();
      const w = waiting(root, clock);
      await pass(clock, w, GRACE - 1_000);
      assert.equal(w.state.ended, false, 'a daemon starting at boot has the grace to take the root');
      await pass(clock, w, 2_000);
      await assert.rejects(w.done, noAgent(root));
    });

    it('a status.json whose writer is gone, the lock free: ends after the grace', async () => {
      const root = path.join(dir, 'dead');
      const gone = spawnSync(process.execPath, ['-e', '0']).pid;
      await writeStatus(root, written(gone, false));
      await (await lockRoot(root, gone)).release();
      const clock = new ManualClock();
      const w = waiting(root, clock);
      await pass(clock, w, GRACE + 1_000);
      await assert.rejects(w.done, noAgent(root));
    });

    it('while an agent holds the root, waits on past the grace until the first convergence ends', async () => {
      const root = path.join(dir, 'held');
      await writeStatus(root, written(process.pid, false));
      const lock = await lockRoot(root, process.pid);
      try {
        const clock = new ManualClock();
        const w = waiting(root, clock);
        await pass(clock, w, 3 * GRACE);
        assert.equal(w.state.ended, false, 'still waiting while the lock is held');
        await writeStatus(root, written(process.pid, true));
        await pass(clock, w, 1_000);
        assert.equal(await w.done, 0);
      } finally {
        await lock.release();
      }
    });
  });
});
