// The source reader: where `{asg}` comes from, and a peek (the scheduler's probe) serving the pass
// that follows it at once, so a poll reads SSM once; and which local files it takes.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { RootFs } from '../../agent/fs.js';
import { SourceReader } from '../../agent/sources/index.js';
import { readLocal } from '../../agent/sources/local.js';
import type { Placeholders, SsmSnapshot } from '../../agent/sources/ssm.js';

const PREFIXES = ['/nixos/fleet', '/nixos/asg/{asg}'];

async function reader(options: { group?: () => Promise<string | undefined>; now?: () => number; reuseMs?: number } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'nea-sources-'));
  const fetches: Placeholders[] = [];
  const imds = {
    get: async () => undefined,
    getBytes: async () => undefined,
    identity: async () => ({ instanceId: 'i-0abc', region: 'eu-west-1', accountId: '123456789012', availabilityZone: 'eu-west-1a', instanceType: 't3.micro', imageId: 'ami-1' }),
  };
  const ssm = {
    fetch: async (_prefixes: readonly string[], values: Placeholders): Promise<SsmSnapshot> => {
      fetches.push(values);
      return { prefixes: [], skipped: [], calls: 1 };
    },
  };
  const sources = new SourceReader(
    imds as never,
    async () => ssm,
    new RootFs(dir),
    { userData: true, ssmPrefixes: PREFIXES, baseConfiguration: '/etc/nixos/base.nix', modulesDir: '/etc/nixos-ec2-agent/local.d', ...(options.reuseMs !== undefined ? { reuseMs: options.reuseMs } : {}), ...(options.now ? { now: options.now } : {}) },
    options.group ? { group: options.group } : undefined,
  );
  return { sources, fetches, dir, done: () => rm(dir, { recursive: true, force: true }) };
}

test('{asg} comes from the group locator when a prefix names it', async () => {
  const r = await reader({ group: async () => 'web' });
  try {
    const s = await r.sources.read();
    assert.equal(s.asg, 'web');
    assert.equal(r.fetches[0]?.asg, 'web');
  } finally {
    await r.done();
  }
});

test('a group that cannot be found out fails the read, naming the prefix and the reason', async () => {
  const r = await reader({ group: async () => Promise.reject(new Error('Auto Scaling DescribeAutoScalingInstances failed: AccessDenied')) });
  try {
    await assert.rejects(r.sources.read(), (err: Error & { kind?: string }) => {
      assert.equal(err.kind, 'transient');
      assert.match(err.message, /cannot resolve \{asg\} in SSM prefix \/nixos\/asg\/\{asg\}.*AccessDenied/);
      return true;
    });
    assert.equal(r.fetches.length, 0, 'SSM is not read without the layer');
  } finally {
    await r.done();
  }
});

test('a peek serves the next read while it is fresh, once; forget() drops it', async () => {
  let now = 1_000;
  const r = await reader({ group: async () => 'web', now: () => now, reuseMs: 250 });
  try {
    await r.sources.peek();
    await r.sources.read();
    assert.equal(r.fetches.length, 1, 'the read right after a peek reuses it');
    await r.sources.read();
    assert.equal(r.fetches.length, 2, 'only once');
    await r.sources.peek();
    now += 251;
    await r.sources.read();
    assert.equal(r.fetches.length, 4, 'a stale peek is not reused');
    await r.sources.peek();
    r.sources.forget();
    await r.sources.read();
    assert.equal(r.fetches.length, 6);
  } finally {
    await r.done();
  }
});

test('a failed peek fails the read right after it, without reading again', async () => {
  let now = 1_000;
  let looks = 0;
  const r = await reader({ group: async () => (looks++, Promise.reject(new Error('Auto Scaling is down'))), now: () => now, reuseMs: 250 });
  try {
    await assert.rejects(r.sources.peek(), /Auto Scaling is down/);
    await assert.rejects(r.sources.read(), /Auto Scaling is down/);
    assert.equal(looks, 1, 'the pass reports the failed look');
    now += 1;
    await assert.rejects(r.sources.read(), /Auto Scaling is down/);
    assert.equal(looks, 2, 'once only');
  } finally {
    await r.done();
  }
});

test('a prefetch serves the first read: its remote reads, once; the local files are read by the read', async () => {
  let now = 1_000;
  const r = await reader({ group: async () => 'web', now: () => now, reuseMs: 0 });
  try {
    r.sources.prefetch();
    // The start adopts the image's configuration after the prefetch began: the pass still sees it.
    const fs = new RootFs(r.dir);
    await fs.writeAtomic('/etc/nixos/base.nix', '{ ... }: { }\n');
    now += 100;
    const first = await r.sources.read();
    assert.equal(r.fetches.length, 1, 'the read took the prefetched SSM snapshot');
    assert.equal(first.asg, 'web');
    assert.ok(first.local.baseConfiguration, 'base.nix, written after the prefetch, is in the snapshot');
    await r.sources.read();
    assert.equal(r.fetches.length, 2, 'only the first read');
  } finally {
    await r.done();
  }
});

test('a failed prefetch fails the first read without asking again; a stale or forgotten one is dropped', async () => {
  let now = 1_000;
  let looks = 0;
  let down = true;
  const r = await reader({ group: async () => (looks++, down ? Promise.reject(new Error('IMDS is off')) : 'web'), now: () => now });
  try {
    r.sources.prefetch();
    await assert.rejects(r.sources.read(), /IMDS is off/);
    assert.equal(looks, 1, 'the read reported the prefetch');
    down = false;
    r.sources.prefetch();
    now += 10_001;
    await r.sources.read();
    assert.equal(looks, 3, 'a prefetch older than 10 s is read again');
    r.sources.prefetch();
    r.sources.forget();
    await r.sources.read();
    assert.equal(looks, 5, 'forget() drops it');
  } finally {
    await r.done();
  }
});

test('a read waiting on a prefetch stops with its signal', async () => {
  const r = await reader({ group: () => new Promise<string>(() => undefined) });
  try {
    r.sources.prefetch();
    const stop = new AbortController();
    const read = r.sources.read(stop.signal);
    stop.abort(new Error('stopping'));
    await assert.rejects(read, /stopping/);
  } finally {
    await r.done();
  }
});

test('a drop-in name that is not a regular file is ignored with a note naming it; a link to a file is read', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-local-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const fs = new RootFs(root);
  const DROP_IN = '/etc/nixos-ec2-agent/local.d';
  await mkdir(fs.resolve(`${DROP_IN}/dir.nix`), { recursive: true });
  await writeFile(fs.resolve(`${DROP_IN}/web.nix`), '{ ... }: { }\n');
  await symlink('web.nix', fs.resolve(`${DROP_IN}/linked.nix`));
  await symlink('missing.nix', fs.resolve(`${DROP_IN}/x.nix`));
  const fifo = spawnSync('mkfifo', [fs.resolve(`${DROP_IN}/pipe.nix`)]);

  const { snapshot, notes } = await readLocal(fs, '/etc/nixos/base.nix', DROP_IN);
  assert.deepEqual(
    snapshot.modules.map((m) => m.path),
    [`${DROP_IN}/linked.nix`, `${DROP_IN}/web.nix`],
  );
  assert.deepEqual(notes, [
    `local module ${DROP_IN}/dir.nix: a directory, not a regular file; ignored`,
    ...(fifo.status === 0 ? [`local module ${DROP_IN}/pipe.nix: a FIFO, not a regular file; ignored`] : []),
    `local module ${DROP_IN}/x.nix: a symbolic link to missing.nix, which does not exist; ignored`,
  ]);
});

test('a drop-in that exists but cannot be read fails the read, naming the file', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-local-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const DROP_IN = '/etc/nixos-ec2-agent/local.d';
  // Root reads a file whatever its mode: the refusal is the file system's.
  class Refusing extends RootFs {
    override async read(systemPath: string): Promise<Buffer | undefined> {
      if (systemPath.endsWith('/secret.nix')) throw Object.assign(new Error(`EACCES: permission denied, open '${this.resolve(systemPath)}'`), { code: 'EACCES' });
      return super.read(systemPath);
    }
  }
  const fs = new Refusing(root);
  await mkdir(fs.resolve(DROP_IN), { recursive: true });
  await writeFile(fs.resolve(`${DROP_IN}/secret.nix`), '{ }\n');
  await assert.rejects(readLocal(fs, '/etc/nixos/base.nix', DROP_IN), (err: Error & { kind?: string }) => {
    assert.equal(err.kind, 'transient');
    assert.equal(err.message, `cannot read local input ${DROP_IN}/secret.nix: EACCES`);
    return true;
  });
});
