// sd_notify against a real AF_UNIX datagram socket that reads the sender's credentials the way
// systemd does, and the watchdog against a hand-driven clock and scheduler.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

import { childEnv } from '../../agent/env.js';
import { createNotify, NotifyError, type NativeSend, type Notify } from '../../agent/report/notify.js';
import { beatEveryMs, Watchdog, watchdogIntervalUsec, watchedClock, watchedRunner } from '../../agent/report/watchdog.js';
import { systemClock, type Clock, type RunResult } from '../../agent/ports.js';
import { ManualClock, settle } from '../support/clock.js';

// Compiled to dist/test/unit/; the listener and the addon stay at the package root.
const LISTENER = fileURLToPath(new URL('../../../test/support/dgram-listener.py', import.meta.url));
const ADDON = fileURLToPath(new URL('../../../build/Release/sd_notify.node', import.meta.url));
const NOTIFY_MODULE = new URL('../../agent/report/notify.js', import.meta.url).href;

const hasPython = spawnSync('python3', ['-c', 'import socket; socket.SCM_CREDENTIALS'], { stdio: 'ignore' }).status === 0;
const hasAddon = existsSync(ADDON);
const socketSkip = !hasPython
  ? 'python3 (with socket.SCM_CREDENTIALS) is not on PATH: no datagram listener'
  : !hasAddon
    ? `${ADDON} is missing: run \`npm install\` (or node-gyp rebuild) first`
    : false;

/** Wait for real I/O this long at most before failing, so a lost datagram fails instead of hanging. */
const IO_DEADLINE_MS = 5_000;

interface Datagram {
  readonly pid: number | null;
  readonly uid: number | null;
  readonly gid: number | null;
  readonly data: string;
  readonly monotonic_usec: number;
}

class Listener {
  readonly received: Datagram[] = [];
  #waiters: Array<() => void> = [];

  private constructor(
    readonly address: string,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {}

  static async start(address: string): Promise<Listener> {
    const child = spawn('python3', [LISTENER, address], { stdio: ['pipe', 'pipe', 'pipe'] });
    const listener = new Listener(address, child);
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const lines = createInterface({ input: child.stdout });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`listener did not start on ${address}: ${stderr}`)), IO_DEADLINE_MS);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`listener exited (${code}) on ${address}: ${stderr}`));
      });
      lines.on('line', (line) => {
        const record = JSON.parse(line) as Partial<Datagram> & { listening?: string };
        if (record.listening !== undefined) {
          clearTimeout(timer);
          resolve();
          return;
        }
        listener.received.push(record as Datagram);
        for (const wake of listener.#waiters.splice(0)) wake();
      });
    });
    return listener;
  }

  /** Resolves with the first `count` datagrams once they have all arrived. */
  async take(count: number): Promise<Datagram[]> {
    const deadline = Date.now() + IO_DEADLINE_MS;
    while (this.received.length < count) {
      const left = deadline - Date.now();
      if (left <= 0) {
        assert.fail(`expected ${count} datagrams on ${this.address}, got ${JSON.stringify(this.received)}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.received.slice(0, count);
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    await exited;
  }
}

function abstractName(): string {
  return `@nixos-ec2-agent-notify-test-${process.pid}-${randomBytes(4).toString('hex')}`;
}

function collectErrors(): { errors: Error[]; onError: (err: Error) => void } {
  const errors: Error[] = [];
  return { errors, onError: (err) => errors.push(err) };
}

describe('sd_notify over a real unix datagram socket', { skip: socketSkip }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'notify-test-'));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  for (const variant of ['filesystem path', 'abstract @name'] as const) {
    it(`delivers READY, STATUS and WATCHDOG in order from this process's pid (${variant})`, async () => {
      const address = variant === 'filesystem path' ? join(dir, 'notify.sock') : abstractName();
      const listener = await Listener.start(address);
      try {
        const { errors, onError } = collectErrors();
        const notify = createNotify({ NOTIFY_SOCKET: address }, { onError });
        assert.equal(notify.enabled, true);
        notify.ready();
        notify.status('converging: build');
        notify.watchdog();
        const got = await listener.take(3);
        assert.deepEqual(
          got.map((d) => d.data),
          ['READY=1\n', 'STATUS=converging: build\n', 'WATCHDOG=1\n'],
        );
        // NotifyAccess=main accepts a datagram only when the kernel-attested sender is the main pid.
        for (const d of got) assert.equal(d.pid, process.pid);
        assert.equal(got[0]!.uid, process.getuid!());
        assert.deepEqual(errors, []);
      } finally {
        await listener.close();
      }
    });
  }

  it('a child node process reading NOTIFY_SOCKET from its environment sends under its own pid', async () => {
    const listener = await Listener.start(abstractName());
    try {
      const script =
        `import { createNotify } from ${JSON.stringify(NOTIFY_MODULE)};` +
        `const n = createNotify(process.env, { onError: (e) => { console.error(e.message); process.exitCode = 1; } });` +
        `n.ready('child up'); console.log(process.pid);`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...childEnv(process.env), NOTIFY_SOCKET: listener.address },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const code = await new Promise((resolve) => child.once('exit', resolve));
      assert.equal(code, 0, stderr);
      const [d] = await listener.take(1);
      assert.equal(d!.data, 'READY=1\nSTATUS=child up\n');
      assert.equal(d!.pid, child.pid);
      assert.equal(Number(stdout.trim()), child.pid);
      assert.notEqual(d!.pid, process.pid);
    } finally {
      await listener.close();
    }
  });

  it('flattens newlines so a STATUS cannot smuggle in another assignment', async () => {
    const listener = await Listener.start(abstractName());
    try {
      const notify = createNotify({ NOTIFY_SOCKET: listener.address });
      notify.status('build failed:\nREADY=1\r\nSTOPPING=1');
      const [d] = await listener.take(1);
      assert.equal(d!.data, 'STATUS=build failed: READY=1 STOPPING=1\n');
      assert.deepEqual(d!.data.split('\n').filter(Boolean), ['STATUS=build failed: READY=1 STOPPING=1']);
    } finally {
      await listener.close();
    }
  });

  it('sends EXTEND_TIMEOUT_USEC, STOPPING and RELOADING with a CLOCK_MONOTONIC timestamp', async () => {
    const listener = await Listener.start(abstractName());
    try {
      const { errors, onError } = collectErrors();
      const notify = createNotify({ NOTIFY_SOCKET: listener.address }, { onError });
      notify.extendTimeout(90_000_000);
      notify.stopping('shutting down');
      notify.reloading();
      const got = await listener.take(3);
      assert.equal(got[0]!.data, 'EXTEND_TIMEOUT_USEC=90000000\n');
      assert.equal(got[1]!.data, 'STOPPING=1\nSTATUS=shutting down\n');
      const lines = got[2]!.data.split('\n');
      assert.equal(lines[0], 'RELOADING=1');
      const match = /^MONOTONIC_USEC=([0-9]+)$/.exec(lines[1] ?? '');
      assert.ok(match, `no MONOTONIC_USEC in ${JSON.stringify(got[2]!.data)}`);
      // The listener read CLOCK_MONOTONIC itself on receipt: the stamp must come from the same
      // clock (not the epoch, not a process-relative timer), taken before the datagram arrived.
      const stamp = BigInt(match[1]!);
      const received = BigInt(got[2]!.monotonic_usec);
      assert.ok(stamp <= received, `MONOTONIC_USEC ${stamp} is after receipt ${received}`);
      assert.ok(received - stamp < 60_000_000n, `MONOTONIC_USEC ${stamp} is not CLOCK_MONOTONIC (receipt ${received})`);
      assert.deepEqual(errors, []);
    } finally {
      await listener.close();
    }
  });

  it('reports ENOENT through onError, never throwing, when the socket path does not exist', () => {
    const { errors, onError } = collectErrors();
    const socket = join(dir, 'missing.sock');
    const notify = createNotify({ NOTIFY_SOCKET: socket }, { onError });
    assert.doesNotThrow(() => notify.ready());
    assert.doesNotThrow(() => notify.watchdog());
    assert.equal(errors.length, 2);
    for (const err of errors) {
      assert.ok(err instanceof NotifyError);
      assert.equal(err.code, 'ENOENT');
      assert.equal(err.socket, socket);
    }
  });

  it('reports ECONNREFUSED when nothing is bound to the socket any more', async () => {
    const path = join(dir, 'stale.sock');
    const listener = await Listener.start(path);
    await listener.close();
    assert.ok(existsSync(path), 'a unix socket file outlives its listener');
    for (const socket of [path, abstractName()]) {
      const { errors, onError } = collectErrors();
      createNotify({ NOTIFY_SOCKET: socket }, { onError }).watchdog();
      assert.equal(errors.length, 1, socket);
      assert.equal((errors[0] as NotifyError).code, 'ECONNREFUSED', socket);
    }
  });

  it('rejects a socket path longer than sun_path holds', () => {
    const { errors, onError } = collectErrors();
    const socket = '/' + 'x'.repeat(120);
    createNotify({ NOTIFY_SOCKET: socket }, { onError }).ready();
    assert.equal(errors.length, 1);
    assert.equal((errors[0] as NotifyError).code, 'ENAMETOOLONG');
  });
});

describe('createNotify without a usable socket', () => {
  it('is a no-op, and never loads the addon, when NOTIFY_SOCKET is unset or empty', () => {
    for (const env of [{}, { NOTIFY_SOCKET: '' }]) {
      let loads = 0;
      const { errors, onError } = collectErrors();
      const notify = createNotify(env, {
        onError,
        load: () => {
          loads += 1;
          return () => {};
        },
      });
      assert.equal(notify.enabled, false);
      notify.ready('up');
      notify.status('x');
      notify.watchdog();
      notify.extendTimeout(1);
      notify.stopping();
      notify.reloading();
      notify.send({ FOO: 'bar' });
      assert.equal(loads, 0);
      assert.deepEqual(errors, []);
    }
  });

  it('reports a missing addon once, with a message that names it, and drops later sends', () => {
    const { errors, onError } = collectErrors();
    let loads = 0;
    const notify = createNotify(
      { NOTIFY_SOCKET: '/run/systemd/notify' },
      {
        onError,
        load: () => {
          loads += 1;
          throw Object.assign(new Error("Cannot find module '../../../build/Release/sd_notify.node'"), { code: 'MODULE_NOT_FOUND' });
        },
      },
    );
    notify.ready();
    notify.watchdog();
    notify.status('still here');
    assert.equal(loads, 1);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof NotifyError);
    assert.match(errors[0].message, /sd_notify\.node/);
    assert.match(errors[0].message, /NOTIFY_SOCKET/);
  });

  it('reports an address the addon cannot speak (vsock) once, without loading it', () => {
    const { errors, onError } = collectErrors();
    let loads = 0;
    const notify = createNotify({ NOTIFY_SOCKET: 'vsock:2:1234' }, { onError, load: () => (loads++, () => {}) });
    notify.ready();
    notify.watchdog();
    assert.equal(loads, 0);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /vsock:2:1234/);
  });

  it('hands the sender one datagram of KEY=VALUE lines, and refuses malformed keys via onError', () => {
    const sent: Array<[string, string]> = [];
    const send: NativeSend = (socket, message) => void sent.push([socket, message]);
    const { errors, onError } = collectErrors();
    const notify = createNotify({ NOTIFY_SOCKET: '@bus' }, { onError, load: () => send });
    notify.send({ STATUS: 'a', ERRNO: 5 });
    notify.send({ 'bad key': 1 });
    notify.send({ EXTEND_TIMEOUT_USEC: Number.NaN });
    notify.extendTimeout(0);
    assert.deepEqual(sent, [['@bus', 'STATUS=a\nERRNO=5\n']]);
    assert.equal(errors.length, 3);
  });

  it('childEnv drops the variables that describe this service, keeping everything else', () => {
    const env = childEnv({
      PATH: '/run/current-system/sw/bin',
      NOTIFY_SOCKET: '/run/systemd/notify',
      WATCHDOG_USEC: '30000000',
      WATCHDOG_PID: '1',
      LISTEN_FDS: '1',
      LISTEN_PID: '1',
      LISTEN_FDNAMES: 'http',
      INVOCATION_ID: 'abc',
      UNSET: undefined,
    });
    assert.deepEqual(env, { PATH: '/run/current-system/sw/bin', INVOCATION_ID: 'abc' });
  });
});

class RecordingNotify implements Notify {
  readonly enabled = true;
  pings = 0;
  send(): void {}
  ready(): void {}
  status(): void {}
  watchdog(): void {
    this.pings += 1;
  }
  extendTimeout(): void {}
  stopping(): void {}
  reloading(): void {}
}

/** An interval scheduler a test fires by hand. */
class ManualScheduler {
  readonly intervals = new Map<number, { fn: () => void; ms: number }>();
  #next = 1;
  readonly setInterval = (fn: () => void, ms: number): unknown => {
    const id = this.#next++;
    this.intervals.set(id, { fn, ms });
    return id;
  };
  readonly clearInterval = (handle: unknown): void => {
    this.intervals.delete(handle as number);
  };
  fire(): void {
    for (const { fn } of [...this.intervals.values()]) fn();
  }
}

describe('Watchdog', () => {
  it('pings every half interval while the loop beats, and stops once the heartbeat is stale', () => {
    const clock = new ManualClock(1_000_000);
    const scheduler = new ManualScheduler();
    const notify = new RecordingNotify();
    const dog = new Watchdog(notify, { WATCHDOG_USEC: '10000000' }, clock, scheduler);
    assert.equal(dog.intervalUsec, 10_000_000);

    dog.start();
    assert.equal(scheduler.intervals.size, 1);
    assert.equal([...scheduler.intervals.values()][0]!.ms, 5_000);
    const atStart = notify.pings;

    const step = (ms: number) => {
      clock.advance(ms);
      scheduler.fire();
    };
    step(5_000); // 5 s since start: younger than WatchdogSec
    assert.equal(notify.pings, atStart + 1);
    step(5_000); // 10 s without a beat: as old as WatchdogSec, the loop counts as wedged
    assert.equal(notify.pings, atStart + 1);
    dog.alive();
    step(5_000);
    assert.equal(notify.pings, atStart + 2);
    dog.alive();
    step(5_000);
    assert.equal(notify.pings, atStart + 3);
    step(4_000); // 9 s since the last beat: still fresh
    assert.equal(notify.pings, atStart + 4);
    for (let i = 0; i < 5; i++) step(5_000);
    assert.equal(notify.pings, atStart + 4, 'a wedged loop must let systemd fire');

    dog.stop();
    assert.equal(scheduler.intervals.size, 0);
  });

  it('counts a watched sleep or child as progress until it is due, and no longer', async () => {
    const clock = new ManualClock(0);
    const scheduler = new ManualScheduler();
    const notify = new RecordingNotify();
    const dog = new Watchdog(notify, { WATCHDOG_USEC: '10000000' }, clock, scheduler);
    dog.start();
    const step = async (ms: number) => {
      clock.advance(ms);
      await settle();
      scheduler.fire();
    };

    // A five-minute wait on a busy account: longer than WatchdogSec, with no beat of the loop.
    const before = notify.pings;
    const slept = watchedClock(clock, dog).sleep(300_000);
    for (let i = 0; i < 59; i++) await step(5_000);
    assert.equal(notify.pings, before + 59, 'pinged all through the wait');
    await step(5_000);
    await slept;
    const woken = notify.pings;
    // Its end is the loop going on: fresh for one more WatchdogSec, then stale.
    for (let i = 0; i < 4; i++) await step(5_000);
    assert.equal(notify.pings, woken + 1);

    // A wait that never ends (a lost promise behind the sleep) counts until it was due, and a few
    // seconds more for a late timer: after that the loop is wedged.
    dog.alive();
    const never: Clock = { now: () => clock.now(), sleep: () => new Promise<void>(() => {}) };
    void watchedClock(never, dog).sleep(60_000);
    const at = notify.pings;
    for (let i = 0; i < 12; i++) await step(5_000);
    assert.equal(notify.pings, at + 12, 'pinged until the sleep was due, and its late margin');
    for (let i = 0; i < 4; i++) await step(5_000);
    assert.equal(notify.pings, at + 12, 'then no more');

    // A child within its timeout, the same.
    dog.alive();
    let exit!: (r: RunResult) => void;
    const runner = watchedRunner({ run: () => new Promise<RunResult>((resolve) => (exit = resolve)) }, dog, clock);
    const run = runner.run({ command: 'nixos-rebuild', args: ['build'], timeoutMs: 3_600_000 });
    const building = notify.pings;
    for (let i = 0; i < 100; i++) await step(5_000);
    assert.equal(notify.pings, building + 100, 'pinged all through a build longer than WatchdogSec');
    exit({ code: 0, signal: null, stdout: '', stderr: '', tail: [], timedOut: false, aborted: false, durationMs: 500_000 });
    await run;
    dog.stop();
  });

  it('start is idempotent and stop ends the pings', () => {
    const clock = new ManualClock(0);
    const scheduler = new ManualScheduler();
    const notify = new RecordingNotify();
    const dog = new Watchdog(notify, { WATCHDOG_USEC: '2000000' }, clock, scheduler);
    dog.start();
    dog.start();
    assert.equal(scheduler.intervals.size, 1);
    dog.stop();
    const before = notify.pings;
    dog.alive();
    scheduler.fire();
    assert.equal(notify.pings, before);
  });

  it('is disabled when WATCHDOG_PID names another process', () => {
    const scheduler = new ManualScheduler();
    const notify = new RecordingNotify();
    const other = new Watchdog(notify, { WATCHDOG_USEC: '10000000', WATCHDOG_PID: String(process.pid + 1) }, new ManualClock(0), scheduler);
    assert.equal(other.intervalUsec, undefined);
    other.start();
    other.alive();
    scheduler.fire();
    assert.equal(scheduler.intervals.size, 0);
    assert.equal(notify.pings, 0);

    const mine = new Watchdog(notify, { WATCHDOG_USEC: '10000000', WATCHDOG_PID: String(process.pid) }, new ManualClock(0), scheduler);
    assert.equal(mine.intervalUsec, 10_000_000);
  });

  it('reads WATCHDOG_USEC as sd_watchdog_enabled does', () => {
    assert.equal(watchdogIntervalUsec({}), undefined);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '' }), undefined);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '0' }), undefined);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '-5' }), undefined);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '3s' }), undefined);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '30000000' }), 30_000_000);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42), 30_000_000);
    assert.equal(watchdogIntervalUsec({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 43), undefined);
  });

  it('an idle loop beats four times per watchdog interval, at most a minute apart, and every minute with none', () => {
    assert.equal(beatEveryMs(120_000_000), 30_000, "the unit's WatchdogSec=120s");
    assert.equal(beatEveryMs(2_000_000), 500);
    assert.equal(beatEveryMs(3_600_000_000), 60_000);
    assert.equal(beatEveryMs(1), 1);
    assert.equal(beatEveryMs(undefined), 60_000);
  });

  it('with real timers, feeds a real socket from this process until stopped', { skip: socketSkip }, async () => {
    const listener = await Listener.start(abstractName());
    try {
      const { errors, onError } = collectErrors();
      const notify = createNotify({ NOTIFY_SOCKET: listener.address }, { onError });
      // 20 ms interval, so pings every 10 ms; the heartbeat below keeps it fed.
      const dog = new Watchdog(notify, { WATCHDOG_USEC: '20000', WATCHDOG_PID: String(process.pid) }, systemClock);
      const beat = setInterval(() => dog.alive(), 2);
      dog.start();
      const got = await listener.take(3);
      dog.stop();
      clearInterval(beat);
      for (const d of got) {
        assert.equal(d.data, 'WATCHDOG=1\n');
        assert.equal(d.pid, process.pid);
      }
      assert.deepEqual(errors, []);
    } finally {
      await listener.close();
    }
  });
});
