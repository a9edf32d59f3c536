// The root's lock (agent/lock.ts): flock(2) through native/flock.c, checked against util-linux's
// flock(1), the tool an operator's own scripts would take the same lock with.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LOCK_FILE, lockHolder, lockRoot, RootBusyError } from '../../agent/lock.js';

const FLOCK = '/usr/bin/flock';

describe('the root lock', () => {
  let dir: string;
  let n = 0;
  const freshRoot = () => path.join(dir, `root-${n++}`);

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-lock-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is taken once per root, names its holder to the next one, and is free again once released', async () => {
    const root = freshRoot();
    const held = await lockRoot(root, 4242);
    assert.equal(held.unheld, undefined);
    assert.equal(held.file, path.join(root, LOCK_FILE));
    assert.equal(await readFile(held.file, 'utf8'), '4242\n');
    assert.equal((await lstat(held.file)).mode & 0o777, 0o600);
    // A second open file in the same process is refused as another process would be.
    await assert.rejects(lockRoot(root, 1), (err: unknown) => err instanceof RootBusyError && err.holder === 4242 && /another nixos-ec2-agent \(pid 4242\)/.test(err.message) && err.kind === 'transient');
    // Another root is another lock.
    const other = await lockRoot(freshRoot(), 1);
    await other.release();
    await held.release();
    await held.release();
    assert.equal(await readFile(held.file, 'utf8'), '', 'a released lock names nobody');
    const again = await lockRoot(root, 7);
    assert.equal(await readFile(again.file, 'utf8'), '7\n');
    await again.release();
  });

  it('is seen held, and by whom, without being taken (lockHolder)', async () => {
    const root = freshRoot();
    assert.deepEqual(await lockHolder(root), { held: false }, 'never taken: no lock file');
    const held = await lockRoot(root, 4242);
    // The kernel names the process holding it, whatever PID the holder wrote into the file.
    assert.deepEqual(await lockHolder(root), { held: true, pid: process.pid });
    await held.release();
    assert.deepEqual(await lockHolder(root), { held: false });
    const again = await lockRoot(root, 1);
    await again.release();
    assert.deepEqual(await lockHolder(root, async () => Promise.reject(new Error('ENOENT: /proc/locks'))), { held: undefined, why: "cannot read the kernel's locks: ENOENT: /proc/locks" });
  });

  it('is the lock flock(1) takes: refused while flock(1) holds it, free once that process is gone, and held against it', { skip: existsSync(FLOCK) ? false : `${FLOCK} not found (util-linux)` }, async () => {
    const root = freshRoot();
    const file = path.join(root, LOCK_FILE);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, '');
    // flock(1) takes the lock, then runs the command, which prints: read the line and the lock is
    // held. -o: the lock is flock(1)'s own, not inherited by the command; its group is killed whole.
    const holder = spawn(FLOCK, ['-n', '-o', file, 'sh', '-c', 'echo held; exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`flock(1) exited ${code} before it held the lock`)));
      });
      await assert.rejects(lockRoot(root, 1), RootBusyError);
    } finally {
      const exited = new Promise((r) => (holder.exitCode !== null || holder.signalCode !== null ? r(undefined) : holder.once('exit', r)));
      process.kill(-(holder.pid as number), 'SIGKILL');
      await exited;
    }
    // Killed, not released: the kernel let go with its last descriptor.
    const mine = await lockRoot(root, 1);
    assert.equal(spawnSync(FLOCK, ['-n', file, 'true']).status, 1, 'flock(1) is refused while the agent holds the root');
    await mine.release();
    assert.equal(spawnSync(FLOCK, ['-n', file, 'true']).status, 0);
  });

  it('follows no symlink planted where the lock goes', async () => {
    const root = freshRoot();
    const file = path.join(root, LOCK_FILE);
    await mkdir(path.dirname(file), { recursive: true });
    const target = path.join(dir, 'elsewhere');
    await writeFile(target, 'keep\n');
    await symlink(target, file);
    await assert.rejects(lockRoot(root, 1), (err: NodeJS.ErrnoException) => err.code === 'ELOOP');
    assert.equal(await readFile(target, 'utf8'), 'keep\n');
  });

  it('without the addon, holds nothing, says why, and touches nothing', async () => {
    const root = freshRoot();
    const lock = await lockRoot(root, 1, new Error("Cannot find module '../../build/Release/flock.node'\nRequire stack: ..."));
    assert.match(lock.unheld ?? '', /^the flock addon could not be loaded \(build it with `npm install` at the package root\): Cannot find module '..\/..\/build\/Release\/flock.node'$/);
    await lock.release();
    assert.equal(existsSync(root), false);
  });

  it('reports a refusal the kernel gives for any other reason as itself, and closes what it opened', async () => {
    const root = freshRoot();
    const file = path.join(root, LOCK_FILE);
    const opened = async () => {
      const fds = await readdir('/proc/self/fd');
      const targets = await Promise.all(fds.map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')));
      return targets.filter((t) => t === file).length;
    };
    await assert.rejects(
      lockRoot(root, 1, () => {
        throw Object.assign(new Error('flock ENOLCK: No locks available'), { code: 'ENOLCK' });
      }),
      (err: NodeJS.ErrnoException) => err.code === 'ENOLCK',
    );
    // Closed at once, not left to the garbage collector (which closes it with a warning, whenever).
    assert.equal(await opened(), 0);
    const lock = await lockRoot(root, 2);
    assert.equal(await opened(), 1);
    await lock.release();
    assert.equal(await opened(), 0);
  });
});
