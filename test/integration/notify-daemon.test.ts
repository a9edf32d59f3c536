// The daemon under a systemd-like NOTIFY_SOCKET: a real unix datagram listener receives what the
// agent's own process sends, in order: STATUS= at each step, EXTEND_TIMEOUT_USEC= while the first
// rebuild runs, READY=1 when the first convergence ends, WATCHDOG=1 while the loop lives, and
// STOPPING=1 on SIGTERM. The kernel-reported sender pid is the daemon's (NotifyAccess=main).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cleanEnv, openSandbox, type Sandbox } from '../../sandbox/sandbox.js';

const LISTENER = fileURLToPath(new URL('../../../test/support/dgram-listener.py', import.meta.url));
const ADDON = fileURLToPath(new URL('../../../build/Release/sd_notify.node', import.meta.url));
const CLI = fileURLToPath(new URL('../../agent/cli.js', import.meta.url));

const hasPython = spawnSync('python3', ['-c', 'import socket; socket.SCM_CREDENTIALS'], { stdio: 'ignore' }).status === 0;
const skip = !hasPython ? 'python3 with SCM_CREDENTIALS is missing: no datagram listener' : !existsSync(ADDON) ? `${ADDON} is not built` : false;

interface Datagram {
  readonly pid: number | null;
  readonly data: string;
}

describe('the daemon under systemd notification', { skip, timeout: 120_000 }, () => {
  let dir: string;
  let sandbox: Sandbox;
  const received: Datagram[] = [];
  let listener: ReturnType<typeof spawn>;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-notify-'));
    sandbox = await openSandbox(dir, {}, { http: { listen: null }, lifecycle: { enabled: false }, ssm: { pollIntervalSeconds: 3600 } });
  });

  after(async () => {
    listener?.stdin?.end();
    await sandbox?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('sends STATUS, EXTEND_TIMEOUT_USEC, READY, WATCHDOG and STOPPING from its own pid', async () => {
    const address = `@nixos-ec2-agent-daemon-${process.pid}-${randomBytes(4).toString('hex')}`;
    listener = spawn('python3', [LISTENER, address], { stdio: ['pipe', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: listener.stdout! });
      lines.on('line', (line) => {
        const record = JSON.parse(line) as Datagram & { listening?: string };
        if (record.listening !== undefined) resolve();
        else received.push(record);
      });
      listener.once('exit', (code) => reject(new Error(`listener exited with ${code}`)));
    });

    const log = await open(sandbox.layout.log, 'a');
    const daemon = spawn(process.execPath, [CLI, 'run', '--config', sandbox.layout.config], {
      env: { ...cleanEnv(process.env), ...sandbox.env, NOTIFY_SOCKET: address, WATCHDOG_USEC: '600000' },
      stdio: ['ignore', log.fd, log.fd],
    });
    await log.close();
    const exited = new Promise<number | null>((resolve) => daemon.once('exit', (code) => resolve(code)));

    const until = async (what: string, test: () => boolean, ms = 60_000) => {
      const deadline = Date.now() + ms;
      while (!test()) {
        assert.ok(Date.now() < deadline, `${what}; received: ${JSON.stringify(received.map((d) => d.data))}`);
        assert.equal(daemon.exitCode, null, 'the daemon is still running');
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const has = (prefix: string) => received.findIndex((d) => d.data.split('\n').some((l) => l.startsWith(prefix)));

    await until('READY=1 after the first convergence', () => has('READY=1') >= 0);
    const readyAt = has('READY=1');
    const readyCount = received.filter((d) => d.data.includes('READY=1')).length;
    await until('two WATCHDOG=1 pings after READY', () => received.slice(readyAt).filter((d) => d.data.includes('WATCHDOG=1')).length >= 2);
    daemon.kill('SIGTERM');
    await until('STOPPING=1 on SIGTERM', () => has('STOPPING=1') >= 0);
    assert.equal(await exited, 0, 'exits 0 on SIGTERM');

    for (const d of received) assert.equal(d.pid, daemon.pid, `sent by the daemon's own process: ${d.data}`);
    const statuses = received.filter((d) => d.data.includes('STATUS=')).map((d) => d.data);
    assert.ok(statuses.some((s) => /STATUS=building generation \d+ \(desired [0-9a-f]{12}\)/.test(s)), `a human status while building: ${statuses.join(' | ')}`);
    assert.ok(has('EXTEND_TIMEOUT_USEC=') >= 0 && has('EXTEND_TIMEOUT_USEC=') < readyAt, 'more start time asked for during the first rebuild, before READY');
    assert.ok(has('STATUS=') < readyAt, 'STATUS before READY');
    assert.ok(received.slice(readyAt).some((d) => /STATUS=converged/.test(d.data)) || /STATUS=converged/.test(received[readyAt]?.data ?? ''), 'READY says converged');
    assert.equal(readyCount, 1, 'READY=1 once for one convergence');
  });
});
