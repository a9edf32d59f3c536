// The render plan (pure) and the writer (files under a temporary root): what configuration.nix
// imports, the Nix parser gate, the commit point, and the secrets directory.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, chmod, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidInputError } from '../../agent/errors.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import {
  CONFIGURATION_NIX,
  HEADER,
  PREVIOUS_CONFIGURATION,
  SECRETS_DIR,
  importPath,
  renderChannels,
  renderPlan,
} from '../../agent/render/render.js';
import { nixString } from '../../agent/render/nix.js';
import { NixParser } from '../../agent/render/validate.js';
import { RenderWriter } from '../../agent/render/write.js';
import { ProcessRunner } from '../../agent/runner.js';
import { desired, param, ssm } from '../support/desired.js';
import { evalNixJson, NIX_MISSING, nixAvailable } from '../support/nix.js';

const FLEET = '/nixos/fleet';
const HAVE_NIX = nixAvailable();

function sample(extra: { module?: string; moduleVersion?: number } = {}) {
  return desired({
    userData: '### https://nixos.org/channels/nixos-24.05 nixos\n{ ... }: { networking.hostName = "from-user-data"; }\n',
    ssm: ssm([
      FLEET,
      [
        param(`${FLEET}/options/services.nginx.enable`, 'true', { version: 2 }),
        param(`${FLEET}/modules/web`, extra.module ?? '{ ... }: { services.nginx.enable = true; }', { version: extra.moduleVersion ?? 4 }),
        param(`${FLEET}/secrets/db-password`, 'correct horse battery staple', { type: 'SecureString', version: 3 }),
      ],
    ]),
    local: {
      baseConfiguration: { path: '/etc/nixos/base.nix', digest: 'b' },
      modules: [{ path: '/etc/nixos-ec2-agent/local.d/site.nix', digest: 'l' }],
    },
  });
}

async function tempRoot(): Promise<{ dir: string; fs: RootFs }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'render-test-'));
  return { dir, fs: new RootFs(dir) };
}

describe('renderPlan', () => {
  it('imports the base configuration, every part and every local module, by absolute path under the root', () => {
    const d = sample();
    const plan = renderPlan(d);
    assert.equal(plan.configuration.path, CONFIGURATION_NIX);
    assert.ok(plan.configuration.text.startsWith(`${HEADER}\n`));
    assert.equal(plan.dir, `/etc/nixos/ec2-agent/${d.hash.slice(0, 12)}`);
    const short = d.hash.slice(0, 12);
    const imports = (p: typeof plan) => [...p.configuration.text.matchAll(/^ {4}(\S+)/gm)].map((m) => m[1]);
    assert.deepEqual(imports(plan), [
      '/etc/nixos/base.nix',
      `/etc/nixos/ec2-agent/${short}/user-data.nix`,
      `/etc/nixos/ec2-agent/${short}/options.nix`,
      `/etc/nixos/ec2-agent/${short}/secrets.nix`,
      `/etc/nixos/ec2-agent/${short}/modules/web.nix`,
      '/etc/nixos-ec2-agent/local.d/site.nix',
    ]);
    // Under a sandbox root, the same files there; the plan's own paths stay the system's.
    const sandboxed = renderPlan(d, '/srv/sandbox/root');
    assert.deepEqual(imports(sandboxed), imports(plan).map((i) => `/srv/sandbox/root${i}`));
    assert.deepEqual(sandboxed.parts.map((p) => p.path), plan.parts.map((p) => p.path));
    assert.deepEqual(
      plan.parts.map((p) => p.path),
      [`${plan.dir}/user-data.nix`, `${plan.dir}/options.nix`, `${plan.dir}/secrets.nix`, `${plan.dir}/modules/web.nix`],
    );
    assert.deepEqual(plan.imported.map((f) => f.path), ['/etc/nixos/base.nix', '/etc/nixos-ec2-agent/local.d/site.nix']);
    // Each part names its source, for errors.
    assert.equal(plan.parts.find((p) => p.path.endsWith('web.nix'))?.source, `SSM parameter ${FLEET}/modules/web (version 4)`);
    assert.match(plan.configuration.text, new RegExp(`${FLEET}/modules/web@4`));
  });

  it('gives a secret to Nix only as its path under /run, never its value', () => {
    const plan = renderPlan(sample());
    const everything = [plan.configuration.text, ...plan.parts.map((p) => p.text)].join('\n');
    assert.ok(!everything.includes('correct horse'), 'the secret value is in a rendered file');
    const secrets = plan.parts.find((p) => p.path.endsWith('/secrets.nix'));
    assert.ok(secrets?.text.includes(`"${SECRETS_DIR}/db-password"`), secrets?.text);
  });

  it('is deterministic: the same desired state renders the same files', () => {
    assert.deepEqual(renderPlan(sample()), renderPlan(sample()));
  });

  it('renders an empty secrets module even with no secrets, and no options file without options', () => {
    const plan = renderPlan(desired({}));
    assert.deepEqual(plan.parts.map((p) => path.basename(p.path)), ['secrets.nix']);
  });

  it('writes imports that cannot be path literals as /. + "…"', () => {
    assert.equal(importPath('/etc/nixos/base.nix'), '/etc/nixos/base.nix');
    assert.equal(importPath('/etc/nixos/base.nix', '/tmp/root/'), '/tmp/root/etc/nixos/base.nix');
    assert.equal(importPath('/etc/nixos/with space.nix'), '(/. + "/etc/nixos/with space.nix")');
    assert.equal(importPath('/etc/nixos/x${y}.nix'), '(/. + "/etc/nixos/x\\${y}.nix")');
    assert.equal(importPath('/etc/nixos/base.nix', '/tmp/a root'), '(/. + "/tmp/a root/etc/nixos/base.nix")');
  });

  it('renders amazon-init\'s channels file from ### lines', () => {
    assert.equal(renderChannels(sample()), 'https://nixos.org/channels/nixos-24.05 nixos\n');
    assert.equal(renderChannels(desired({})), undefined);
  });
});

describe('RenderWriter', () => {
  let dir: string;
  let fs: RootFs;
  const parser = HAVE_NIX ? new NixParser(new ProcessRunner(process.env)) : undefined;

  before(async () => {
    ({ dir, fs } = await tempRoot());
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prepares the parts, and the plan parses with the real Nix parser', { skip: HAVE_NIX ? false : NIX_MISSING }, async () => {
    const { dir: root, fs: rootFs } = await tempRoot();
    try {
      await rootFs.writeAtomic('/etc/nixos/base.nix', '{ ... }: { }\n');
      await rootFs.writeAtomic('/etc/nixos-ec2-agent/local.d/site.nix', '{ ... }: { }\n');
      const plan = renderPlan(sample());
      await new RenderWriter(rootFs, parser, silentLogger()).prepare(plan);
      for (const part of plan.parts) assert.equal(await rootFs.readText(part.path), part.text);
      assert.equal(await rootFs.readText(CONFIGURATION_NIX), undefined, 'prepare switched configuration.nix');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  for (const rootName of ['root', 'a root with ${odd} "names"']) {
    it(`configuration.nix and the copy the parser checks import the same files, as Nix evaluates them (${rootName})`, { skip: HAVE_NIX ? false : NIX_MISSING }, async () => {
      const top = await mkdtemp(path.join(tmpdir(), 'render-copy-'));
      try {
        const root = path.join(top, rootName);
        const rootFs = new RootFs(root);
        await rootFs.writeAtomic('/etc/nixos/base.nix', '{ ... }: { }\n');
        await rootFs.writeAtomic('/etc/nixos-ec2-agent/local.d/site.nix', '{ ... }: { }\n');
        const plan = renderPlan(sample(), rootFs.root);
        let checked: string | undefined;
        const writer = new RenderWriter(rootFs, parser, silentLogger());
        await writer.prepare(plan, {
          launch: async (copy) => {
            checked = copy;
          },
        });
        assert.equal(checked, `${plan.dir}/configuration.nix`);
        await writer.commit(plan);
        const importsOf = (file: string) => evalNixJson(`map toString ((import ${nixString(file)}) { }).imports`);
        const fromCopy = await importsOf(rootFs.resolve(checked));
        assert.deepEqual(fromCopy, await importsOf(rootFs.resolve(CONFIGURATION_NIX)));
        assert.deepEqual(fromCopy, [...plan.imported.slice(0, 1), ...plan.parts, ...plan.imported.slice(1)].map((f) => rootFs.resolve(f.path)));
      } finally {
        await rm(top, { recursive: true, force: true });
      }
    });
  }

  it(
    'rejects a module that does not parse, naming the SSM parameter, version, line and column, and leaves configuration.nix alone',
    { skip: HAVE_NIX ? false : NIX_MISSING },
    async () => {
      const { dir: root, fs: rootFs } = await tempRoot();
      try {
        await rootFs.writeAtomic(CONFIGURATION_NIX, '{ ... }: { } # the image\n');
        await rootFs.writeAtomic('/etc/nixos/base.nix', '{ ... }: { }\n');
        await rootFs.writeAtomic('/etc/nixos-ec2-agent/local.d/site.nix', '{ ... }: { }\n');
        const bad = '{ config, ... }:\n{\n  services.nginx.enable = true\n}\n';
        const plan = renderPlan(sample({ module: bad, moduleVersion: 6 }));
        const writer = new RenderWriter(rootFs, parser, silentLogger());
        const err = await writer.prepare(plan).then(
          () => assert.fail('prepare accepted a module that does not parse'),
          (e: unknown) => e,
        );
        assert.ok(err instanceof InvalidInputError, String(err));
        assert.equal(err.where, `SSM parameter ${FLEET}/modules/web (version 6)`);
        // Nix 2.8: "syntax error, unexpected '}', expecting ';'" at 4:1 (the missing `;`).
        assert.match(err.message, /line 4, column 1\b/);
        assert.match(err.message, /syntax error/);
        assert.equal(await rootFs.readText(CONFIGURATION_NIX), '{ ... }: { } # the image\n');
        assert.equal(await rootFs.exists(PREVIOUS_CONFIGURATION), false);
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },
  );

  it('rejects a local module that does not parse, naming its file', { skip: HAVE_NIX ? false : NIX_MISSING }, async () => {
    const { dir: root, fs: rootFs } = await tempRoot();
    try {
      await rootFs.writeAtomic('/etc/nixos/base.nix', '{ ... }: { }\n');
      await rootFs.writeAtomic('/etc/nixos-ec2-agent/local.d/site.nix', '{ ... }: {\n');
      const err = await new RenderWriter(rootFs, parser, silentLogger()).prepare(renderPlan(sample())).then(
        () => assert.fail('accepted'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof InvalidInputError);
      assert.match(err.where, /local module \/etc\/nixos-ec2-agent\/local\.d\/site\.nix/);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('commits: the old configuration.nix is kept as previous-configuration.nix', async () => {
    const writer = new RenderWriter(fs, undefined, silentLogger());
    await fs.writeAtomic(CONFIGURATION_NIX, 'old\n');
    const plan = renderPlan(sample());
    await writer.commit(plan);
    assert.equal(await fs.readText(CONFIGURATION_NIX), plan.configuration.text);
    assert.equal(await fs.readText(PREVIOUS_CONFIGURATION), 'old\n');
    // Committing the same plan again keeps the real previous one.
    await writer.commit(plan);
    assert.equal(await fs.readText(PREVIOUS_CONFIGURATION), 'old\n');
    assert.deepEqual((await readdir(path.join(dir, 'etc/nixos'))).filter((n) => n.includes('.tmp')), []);
  });

  it('writes secrets to a 0700 directory as 0400 files, atomically, and prunes the ones no longer set', async () => {
    const { dir: root, fs: rootFs } = await tempRoot();
    try {
      const writer = new RenderWriter(rootFs, undefined, silentLogger());
      const d = sample();
      await writer.writeSecrets(d.secrets);
      const secretsDir = rootFs.resolve(SECRETS_DIR);
      assert.equal((await stat(secretsDir)).mode & 0o777, 0o700);
      const file = path.join(secretsDir, 'db-password');
      assert.equal(await readFile(file, 'utf8'), 'correct horse battery staple');
      assert.equal((await stat(file)).mode & 0o777, 0o400);
      // The agent's run directory stays readable: status.json lives there.
      assert.equal((await stat(rootFs.resolve('/run/nixos-ec2-agent'))).mode & 0o777, 0o755);

      // Rewriting replaces the 0400 file (rename, not an in-place write) and leaves no temp file.
      const rotated = desired({ ssm: ssm([FLEET, [param(`${FLEET}/secrets/db-password`, 'rotated', { type: 'SecureString', version: 4 })]]) });
      await writer.writeSecrets(rotated.secrets);
      assert.equal(await readFile(file, 'utf8'), 'rotated');
      assert.deepEqual(await readdir(secretsDir), ['db-password']);

      await rootFs.writeAtomic(`${SECRETS_DIR}/old-token`, 'x', { mode: 0o400 });
      assert.deepEqual(await writer.pruneSecrets(['db-password']), ['old-token']);
      assert.deepEqual(await readdir(secretsDir), ['db-password']);
      assert.deepEqual(await writer.pruneSecrets([]), ['db-password']);
      assert.deepEqual(await writer.pruneSecrets([]), []);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('tightens a secrets directory that already exists with a wider mode', async () => {
    const { dir: root, fs: rootFs } = await tempRoot();
    try {
      await mkdir(rootFs.resolve(SECRETS_DIR), { recursive: true });
      await chmod(rootFs.resolve(SECRETS_DIR), 0o755);
      await new RenderWriter(rootFs, undefined, silentLogger()).writeSecrets(sample().secrets);
      assert.equal((await stat(rootFs.resolve(SECRETS_DIR))).mode & 0o777, 0o700);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('flushes what configuration.nix will name before prepare resolves, after the build is launched; an adopted base configuration too, again if its flush failed', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'render-durable-'));
    // Records the order of writes, launches and flushes; the first flush of base.nix fails.
    const events: string[] = [];
    let failBase = true;
    class RecordingFs extends RootFs {
      override async writeAtomic(p: string, data: string | Uint8Array, options?: Parameters<RootFs['writeAtomic']>[2]): Promise<void> {
        events.push(`write ${p}${options?.durable === false ? '' : ' durable'}`);
        await super.writeAtomic(p, data, options);
      }
      override async sync(files: readonly string[], dirs: readonly string[] = []): Promise<void> {
        if (failBase && files.includes('/etc/nixos/base.nix')) {
          failBase = false;
          throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
        }
        await super.sync(files, dirs);
        events.push(`sync ${[...files, ...dirs].join(' ')}`);
      }
    }
    try {
      const rootFs = new RecordingFs(root);
      await rootFs.writeAtomic(CONFIGURATION_NIX, '{ ... }: { }\n');
      await rootFs.writeAtomic('/etc/nixos-ec2-agent/local.d/site.nix', '{ ... }: { }\n');
      const passing = { check: async () => [] };
      const writer = new RenderWriter(rootFs, passing, silentLogger());
      assert.equal(await writer.adoptImageConfiguration('/etc/nixos/base.nix'), true);
      events.length = 0;
      const plan = renderPlan(sample(), rootFs.root);
      await writer.prepare(plan, { launch: async () => void events.push('launch') });
      const parts = plan.parts.map((p) => p.path);
      for (const p of parts) assert.ok(events.includes(`write ${p}`), `${p} written without a flush of its own: ${events.join('; ')}`);
      const launch = events.indexOf('launch');
      const synced = events.findIndex((e) => e.startsWith(`sync ${parts.join(' ')} /etc/nixos/ec2-agent`));
      assert.ok(launch >= 0 && synced > launch, `flushed after the launch: ${events.join('; ')}`);
      assert.ok(events.includes('sync /etc/nixos/base.nix'), `the base configuration flushed again: ${events.join('; ')}`);
      assert.equal(failBase, false);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("adopts the image's own configuration.nix as the base configuration, once", async () => {
    const { dir: root, fs: rootFs } = await tempRoot();
    try {
      const writer = new RenderWriter(rootFs, undefined, silentLogger());
      assert.equal(await writer.adoptImageConfiguration('/etc/nixos/base.nix'), false, 'nothing to adopt');
      await rootFs.writeAtomic(CONFIGURATION_NIX, '{ ... }: { imports = [ ./hardware.nix ]; }\n');
      assert.equal(await writer.adoptImageConfiguration('/etc/nixos/base.nix'), true);
      assert.equal(await rootFs.readText('/etc/nixos/base.nix'), '{ ... }: { imports = [ ./hardware.nix ]; }\n');
      // Our own configuration.nix is never adopted, nor is an existing base overwritten.
      await writer.commit(renderPlan(sample()));
      assert.equal(await writer.adoptImageConfiguration('/etc/nixos/base.nix'), false);
      await rootFs.writeAtomic(CONFIGURATION_NIX, '{ ... }: { } # edited by hand\n');
      assert.equal(await writer.adoptImageConfiguration('/etc/nixos/base.nix'), false);
      assert.equal(await rootFs.readText('/etc/nixos/base.nix'), '{ ... }: { imports = [ ./hardware.nix ]; }\n');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
