// The local watcher on a real directory: a new, changed or removed drop-in module and a changed base
// file are reported; what the agent writes beside them, temporary files, and a rewrite with the same
// content are not.
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile, rename, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { RootFs } from '../../agent/fs.js';
import { readLocal } from '../../agent/sources/local.js';
import { isWatchedInput, LocalWatcher } from '../../agent/sources/watch.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test('isWatchedInput takes the base file and *.nix directly in the drop-in directory only', () => {
  const base = '/r/etc/nixos/base.nix';
  const dir = '/r/etc/nixos-ec2-agent/local.d';
  assert.equal(isWatchedInput(base, base, dir), true);
  assert.equal(isWatchedInput(`${dir}/a.nix`, base, dir), true);
  assert.equal(isWatchedInput('/r/etc/nixos/configuration.nix', base, dir), false);
  assert.equal(isWatchedInput('/r/etc/nixos/ec2-agent/ssm-options.nix', base, dir), false);
  assert.equal(isWatchedInput(`${dir}/notes.txt`, base, dir), false);
  assert.equal(isWatchedInput(`${dir}/.a.nix.tmp`, base, dir), false);
  assert.equal(isWatchedInput(`${dir}/sub/a.nix`, base, dir), false);
});

test('changes to inputs trigger; the agent\'s own files and same-content rewrites do not', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-watch-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const nixos = path.join(root, 'etc/nixos');
  const dropin = path.join(root, 'etc/nixos-ec2-agent/local.d');
  await mkdir(nixos, { recursive: true });
  const base = path.join(nixos, 'base.nix');
  await writeFile(base, '{ ... }: { }\n');
  const reasons: string[] = [];
  const watcher = new LocalWatcher({ baseConfiguration: base, modulesDir: dropin, onChange: (r) => reasons.push(r) });
  await watcher.start();
  t.after(() => watcher.stop());

  // The agent's own writes beside the inputs.
  await writeFile(path.join(nixos, 'configuration.nix'), '# rendered\n');
  await mkdir(path.join(nixos, 'ec2-agent'), { recursive: true });
  await writeFile(path.join(nixos, 'ec2-agent', 'ssm-options.nix'), '{ }\n');
  await writeFile(base, '{ ... }: { }\n'); // same content
  await sleep(300);
  assert.deepEqual(reasons, []);

  // A drop-in written atomically (temporary file, then rename), as tools do.
  await writeFile(path.join(dropin, '.web.nix.tmp'), '{ ... }: { services.nginx.enable = true; }\n');
  await rename(path.join(dropin, '.web.nix.tmp'), path.join(dropin, 'web.nix'));
  await until('the new module', () => reasons.length === 1);
  assert.match(reasons[0]!, /web\.nix$/);

  await writeFile(base, '{ ... }: { networking.hostName = "x"; }\n');
  await until('the base change', () => reasons.length === 2);
  assert.match(reasons[1]!, /changed .*base\.nix$/);

  await unlink(path.join(dropin, 'web.nix'));
  await until('the removal', () => reasons.length === 3);
  assert.match(reasons[2]!, /removed .*web\.nix$/);
  await writeFile(path.join(dropin, 'README'), 'not a module');
  await sleep(200);
  assert.equal(reasons.length, 3);
  assert.equal(watcher.stats.changes, 3);
});

test('keeps watching a drop-in directory that is removed and made again, or swapped in by a rename', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-watch-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const base = path.join(root, 'etc/nixos/base.nix');
  await mkdir(path.dirname(base), { recursive: true });
  const dropin = path.join(root, 'etc/nixos-ec2-agent/local.d');
  const reasons: string[] = [];
  const watcher = new LocalWatcher({ baseConfiguration: base, modulesDir: dropin, onChange: (r) => reasons.push(r) });
  await watcher.start();
  t.after(() => watcher.stop());

  // A tool that replaces the directory rather than the files in it.
  await rm(dropin, { recursive: true });
  await sleep(200);
  await mkdir(dropin);
  await sleep(200);
  await writeFile(path.join(dropin, 'web.nix'), '{ ... }: { services.nginx.enable = true; }\n');
  await until('the module in the directory made again', () => reasons.some((r) => /added .*web\.nix$/.test(r)));

  const staging = `${dropin}.new`;
  await mkdir(staging);
  await writeFile(path.join(staging, 'db.nix'), '{ ... }: { services.postgresql.enable = true; }\n');
  await rm(dropin, { recursive: true });
  await rename(staging, dropin);
  await until('the module in the directory renamed in', () => reasons.some((r) => /added .*db\.nix$/.test(r)));
});

test('the watcher uses inotify, not polling, unless asked or forced by CHOKIDAR_USEPOLLING, and says which', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-watch-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const base = path.join(root, 'etc/nixos/base.nix');
  await mkdir(path.dirname(base), { recursive: true });
  const options = { baseConfiguration: base, modulesDir: path.join(root, 'etc/nixos-ec2-agent/local.d'), onChange: () => undefined };

  const quiet = new LocalWatcher(options);
  await quiet.start();
  t.after(() => quiet.stop());
  assert.deepEqual({ watching: quiet.stats.watching, polling: quiet.stats.polling }, { watching: true, polling: false });

  const polled = new LocalWatcher({ ...options, usePolling: true });
  await polled.start();
  t.after(() => polled.stop());
  assert.equal(polled.stats.polling, true);

  // chokidar lets the environment override its options; this file runs in a process of its own.
  process.env.CHOKIDAR_USEPOLLING = '1';
  const forced = new LocalWatcher(options);
  try {
    await forced.start();
    assert.equal(forced.stats.polling, true);
  } finally {
    delete process.env.CHOKIDAR_USEPOLLING;
    await forced.stop();
  }
});

test('a stop at any moment of a start ends both: the start does not wait for a scan that never comes', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-watch-stop-'));
  try {
    const base = path.join(root, 'etc/nixos/base.nix');
    await mkdir(path.dirname(base), { recursive: true });
    await writeFile(base, '{ ... }: { }\n');
    // Stopped after 0, 1, 2 … turns of the event loop: before the import, during the mkdir, with
    // the watcher made and its initial scan under way, and after it.
    for (let turns = 0; turns < 40; turns++) {
      const watcher = new LocalWatcher({ baseConfiguration: base, modulesDir: path.join(root, 'etc/nixos-ec2-agent/local.d'), onChange: () => undefined });
      const starting = watcher.start();
      for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
      await watcher.stop();
      let bound: NodeJS.Timeout | undefined;
      const ended = await Promise.race([starting.then(() => true), new Promise<false>((r) => (bound = setTimeout(() => r(false), 20_000)))]);
      clearTimeout(bound);
      assert.ok(ended, `a start stopped after ${turns} turns never ended`);
      assert.equal(watcher.stats.watching, false, `still watching after a stop ${turns} turns into the start`);
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('a watch that starts after the agent read the inputs reports what changed in between, once, and nothing when they are as read', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-watch-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const fs = new RootFs(root);
  const BASE = '/etc/nixos/base.nix';
  const DROP_IN = '/etc/nixos-ec2-agent/local.d';
  await mkdir(fs.resolve(DROP_IN), { recursive: true });
  await mkdir(fs.resolve('/etc/nixos'), { recursive: true });
  await writeFile(fs.resolve(BASE), '{ ... }: { }\n');
  await writeFile(fs.resolve(`${DROP_IN}/web.nix`), '{ ... }: { services.nginx.enable = true; }\n');
  // A name the render ignores (and notes): no difference either way.
  await writeFile(fs.resolve(`${DROP_IN}/my module.nix`), '{ }\n');
  const read = (await readLocal(fs, BASE, DROP_IN)).snapshot;
  const baseline = new Map([...(read.baseConfiguration ? [read.baseConfiguration] : []), ...read.modules].map((f) => [fs.resolve(f.path), f.digest]));
  const watchFrom = async () => {
    const reasons: string[] = [];
    const watcher = new LocalWatcher({ baseConfiguration: fs.resolve(BASE), modulesDir: fs.resolve(DROP_IN), baseline: () => baseline, onChange: (r) => reasons.push(r) });
    await watcher.start();
    await watcher.stop();
    return reasons;
  };

  assert.deepEqual(await watchFrom(), [], 'the inputs as the pass read them');
  await writeFile(fs.resolve(`${DROP_IN}/db.nix`), '{ ... }: { services.postgresql.enable = true; }\n');
  assert.deepEqual(await watchFrom(), ['local inputs changed while their watch started'], 'a drop-in added after the read');
  await unlink(fs.resolve(`${DROP_IN}/db.nix`));
  await writeFile(fs.resolve(BASE), '{ ... }: { networking.hostName = "x"; }\n');
  assert.deepEqual(await watchFrom(), ['local inputs changed while their watch started'], 'the base file changed after the read');
  await unlink(fs.resolve(BASE));
  assert.deepEqual(await watchFrom(), ['local inputs changed while their watch started'], 'the base file removed after the read');
});
