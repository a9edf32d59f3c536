// A killed writer's temp files are removed at the next start; a live writer's, and anything not of
// the agent's own temp naming, are left alone.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createAgent } from '../../agent/agent.js';
import { GC_ROOTS } from '../../agent/apply/closure.js';
import { parseConfig } from '../../agent/config.js';
import { RootFs, temporaryWriter, writeFileAtomic } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import { realClock } from '../../agent/ports.js';

test('removeTemporaries removes only dead writers\' temp files, recursing only where asked', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-fs-'));
  try {
    const dead = spawnSync('true').pid as number;
    const fs = new RootFs(root);
    await mkdir(path.join(root, 'etc/nixos/ec2-agent/abc'), { recursive: true });
    await mkdir(path.join(root, 'etc/nixos/sub'), { recursive: true });
    const files = {
      deadTop: `etc/nixos/.configuration.nix.tmp-${dead}-0123456789ab`,
      deadDeep: `etc/nixos/ec2-agent/abc/.options.nix.tmp-${dead}-0123456789ab`,
      deadUnswept: `etc/nixos/sub/.x.nix.tmp-${dead}-0123456789ab`,
      live: `etc/nixos/.configuration.nix.tmp-${process.pid}-0123456789ab`,
      foreign: 'etc/nixos/.hardware.nix.tmp-0123456789ab',
      plain: 'etc/nixos/configuration.nix',
    };
    for (const f of Object.values(files)) await writeFile(path.join(root, f), 'x');
    const removed = await fs.removeTemporaries([{ path: '/etc/nixos' }, { path: '/etc/nixos/ec2-agent', recursive: true }, { path: '/absent' }]);
    assert.deepEqual(removed.map((f) => path.relative(root, f)).sort(), [files.deadDeep, files.deadTop].sort());
    const left = (await readdir(path.join(root, 'etc/nixos'), { recursive: true })).map(String);
    for (const f of [files.deadUnswept, files.live, files.foreign, files.plain]) assert.ok(left.includes(path.relative('etc/nixos', f)), f);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("the agent's start removes a killed run's temp files wherever it writes: the closure's GC roots, a base configuration outside /etc/nixos", async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'nea-fs-'));
  try {
    const dead = spawnSync('true').pid as number;
    const files = [`${GC_ROOTS}/.current-system.tmp-${dead}-0123456789ab`, `/etc/nixos-base/.base.nix.tmp-${dead}-0123456789ab`, `/etc/nixos/.configuration.nix.tmp-${dead}-0123456789ab`];
    for (const f of files) {
      await mkdir(path.join(root, path.dirname(f)), { recursive: true });
      await writeFile(path.join(root, f), 'x');
    }
    const config = parseConfig({ root, ssm: { enabled: false }, rebuild: { validate: 'if-available' }, http: { listen: null }, local: { baseConfiguration: '/etc/nixos-base/base.nix' } });
    await createAgent(config, silentLogger(), { clock: realClock({ unref: true }), env: {} });
    for (const f of files) assert.equal(existsSync(path.join(root, f)), false, `${f} is left`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('writeFileAtomic names its temp file so that its writer can be told', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nea-fs-'));
  try {
    const seen: string[] = [];
    const write = writeFileAtomic(path.join(dir, 'f.nix'), 'x'.repeat(8 << 20));
    // The temp name is visible for the duration of the write; poll the directory until it is done.
    let done = false;
    void write.then(() => (done = true));
    while (!done) {
      seen.push(...(await readdir(dir)));
      await new Promise((r) => setImmediate(r));
    }
    assert.deepEqual(await readdir(dir), ['f.nix']);
    const temps = seen.filter((n) => n !== 'f.nix');
    assert.ok(temps.length > 0, 'the temp file was seen while an 8 MiB write was in flight');
    for (const name of temps) assert.equal(temporaryWriter(name), process.pid, name);
    assert.equal(temporaryWriter('f.nix'), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
