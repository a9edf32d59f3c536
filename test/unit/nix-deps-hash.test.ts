// The npmDepsHash pipeline: nix/fill-lockfile.mjs (what the Nix build runs in postPatch) and
// tools/ (what `npm run nix-deps-hash` runs), checked piece by piece against Nix itself (the NAR
// hash against nix-store --dump) and end to end against nixpkgs' own hashes for three of its
// packages (test/fixtures/npm-deps-hash/README.md). The end-to-end tests need the npm registry.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { cachedPackages, narHashSri, npmDepsTree, NpmDepsError, type Tree } from '../../tools/npm-deps.js';
import { configuredRegistry, fetcherLockfile, httpDownload, npmDepsHash, sha256Hex, viaRegistry, HASH_FILE, LOCK_DIGEST_FILE } from '../../tools/nix-deps-hash.js';

// Compiled to dist/test/unit/; the sources stay at the repository root.
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const FILL = join(ROOT, 'nix/fill-lockfile.mjs');
const FIXTURES = join(ROOT, 'test/fixtures/npm-deps-hash');
const CLI = join(ROOT, 'dist/tools/nix-deps-hash.js');

type FillModule = typeof import('../../nix/fill-lockfile.mjs');
const fill = (await import(new URL('../../../nix/fill-lockfile.mjs', import.meta.url).href)) as FillModule;
const REGISTRY = fill.npmDefaultRegistry();

const lockfile = (packages: Record<string, unknown>): string =>
  `${JSON.stringify({ name: 'x', version: '1.0.0', lockfileVersion: 3, requires: true, packages: { '': { name: 'x', version: '1.0.0' }, ...packages } }, null, 2)}\n`;
const sri = (algo: string, data: string | Uint8Array): string => `${algo}-${createHash(algo).update(data).digest('base64')}`;

describe('nix/fill-lockfile.mjs', () => {
  it("reads npm's built-in default registry from the npm beside node", () => {
    assert.match(REGISTRY, /^https:\/\/[^/]+\/$/);
    assert.throws(() => fill.npmDefaultRegistry('/nonexistent/bin/node'), /cannot read npm's default registry/);
  });

  it('puts resolved right after version, as npm writes it, and keeps everything else', () => {
    const text = lockfile({
      'node_modules/a': { version: '1.2.3', integrity: 'sha512-AAAA', license: 'MIT' },
      'node_modules/@s/b': { version: '2.0.0-rc.1', integrity: 'sha512-BBBB', dev: true },
      'node_modules/a/node_modules/c': { version: '0.0.1', integrity: 'sha1-CCCC' },
      'node_modules/alias': { name: 'real', version: '3.0.0', integrity: 'sha512-DDDD' },
      'node_modules/kept': { version: '1.0.0', resolved: 'https://example.org/kept.tgz', integrity: 'sha512-EEEE' },
      'node_modules/linked': { resolved: 'packages/linked', link: true },
      'node_modules/bundled': { version: '1.0.0', integrity: 'sha512-FFFF', inBundle: true },
      'node_modules/fromgit': { version: 'git+ssh://git@example.org/x.git#abc', integrity: 'sha512-GGGG' },
    });
    const out = JSON.parse(fill.fillLockfile(text, REGISTRY)) as { packages: Record<string, Record<string, unknown>> };
    const p = out.packages;
    assert.deepEqual(Object.keys(p['node_modules/a']!), ['version', 'resolved', 'integrity', 'license']);
    assert.equal(p['node_modules/a']!['resolved'], `${REGISTRY}a/-/a-1.2.3.tgz`);
    assert.equal(p['node_modules/@s/b']!['resolved'], `${REGISTRY}@s/b/-/b-2.0.0-rc.1.tgz`);
    assert.equal(p['node_modules/a/node_modules/c']!['resolved'], `${REGISTRY}c/-/c-0.0.1.tgz`);
    assert.equal(p['node_modules/alias']!['resolved'], `${REGISTRY}real/-/real-3.0.0.tgz`);
    assert.equal(p['node_modules/kept']!['resolved'], 'https://example.org/kept.tgz');
    for (const key of ['', 'node_modules/bundled', 'node_modules/fromgit']) assert.equal(p[key]!['resolved'], undefined, key);
    assert.equal(p['node_modules/linked']!['resolved'], 'packages/linked');
  });

  it('is deterministic and idempotent, and leaves a complete file byte for byte', () => {
    const text = readFileSync(join(ROOT, 'package-lock.json'), 'utf8');
    const once = fill.fillLockfile(text, REGISTRY);
    assert.notEqual(once, text);
    assert.equal(fill.fillLockfile(text, REGISTRY), once);
    assert.equal(fill.fillLockfile(once, REGISTRY), once);
    const missing = Object.entries((JSON.parse(once) as { packages: Record<string, { resolved?: string; integrity?: string }> }).packages)
      .filter(([key, entry]) => key !== '' && entry.integrity && !entry.resolved);
    assert.deepEqual(missing, [], 'every registry package of package-lock.json gets a resolved URL');
    // Only `resolved` lines were added.
    const added = once.split('\n').filter((line) => !text.includes(`${line}\n`));
    assert.ok(added.length > 0 && added.every((line) => /^\s+"resolved": "[^"]+\.tgz",$/.test(line)), added.slice(0, 3).join('\n'));
  });

  it('refuses what it cannot rewrite faithfully: another layout, another lockfile version, not JSON', () => {
    const entry = { 'node_modules/a': { version: '1.0.0', integrity: 'sha512-AAAA' } };
    assert.throws(() => fill.fillLockfile(lockfile(entry).replace(/\n {2}"/, '\n    "'), REGISTRY), /layout npm writes/);
    assert.throws(() => fill.fillLockfile(JSON.stringify({ lockfileVersion: 1, dependencies: {} }), REGISTRY), /lockfileVersion 1/);
    assert.throws(() => fill.fillLockfile('{', REGISTRY, 'x.json'), (err: Error) => err instanceof fill.LockfileError && /^x\.json: not JSON/.test(err.message));
  });

  it('as a command: rewrites the file in place, or says in one line what is wrong (exit 2)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fill-'));
    try {
      const file = join(dir, 'package-lock.json');
      writeFileSync(file, lockfile({ 'node_modules/a': { version: '1.0.0', integrity: 'sha512-AAAA' } }));
      const ok = spawnSync(process.execPath, [FILL, file], { encoding: 'utf8' });
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(readFileSync(file, 'utf8'), /"resolved": ".*\/a\/-\/a-1\.0\.0\.tgz",\n/);
      writeFileSync(file, '{ not json');
      const bad = spawnSync(process.execPath, [FILL, file], { encoding: 'utf8' });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /^fill-lockfile: .*package-lock\.json: not JSON.*\n$/);
      assert.equal(readFileSync(file, 'utf8'), '{ not json', 'a refused file is left as it was');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('tools/npm-deps: what fetchNpmDeps caches and how', () => {
  it('caches each URL once with its strongest integrity, skips file: and the root, refuses git', () => {
    const text = lockfile({
      'node_modules/a': { version: '1.0.0', resolved: 'https://r.test/a-1.0.0.tgz', integrity: 'sha1-AAAA' },
      'node_modules/x/node_modules/a': { version: '1.0.0', resolved: 'https://r.test/a-1.0.0.tgz', integrity: 'sha512-BBBB sha1-AAAA' },
      'node_modules/local': { version: '1.0.0', resolved: 'file:../local', integrity: 'sha512-CCCC' },
      'node_modules/rel': { resolved: 'packages/rel', link: true },
      'node_modules/b': { version: '1.0.0', resolved: 'https://r.test/b-1.0.0.tgz', integrity: 'sha512-DDDD' },
    });
    assert.deepEqual(cachedPackages(text), [
      { name: 'node_modules/x/node_modules/a', url: 'https://r.test/a-1.0.0.tgz', integrity: 'sha512-BBBB' },
      { name: 'node_modules/b', url: 'https://r.test/b-1.0.0.tgz', integrity: 'sha512-DDDD' },
    ]);
    const git = lockfile({ 'node_modules/g': { version: '1.0.0', resolved: 'git+ssh://git@github.com/o/r.git#abc', integrity: 'sha512-A' } });
    assert.throws(() => cachedPackages(git), (err: Error) => err instanceof NpmDepsError && /git dependency/.test(err.message));
    // What the fetcher says about a lockfile like this repository's before filling.
    const unfilled = lockfile({ 'node_modules/a': { version: '1.0.0', integrity: 'sha512-AAAA' } });
    assert.throws(() => cachedPackages(unfilled), /no cacheable dependencies/);
  });

  it('lays out _cacache as cacache.rs writes it: content by digest, index lines `sha1<TAB>json`', () => {
    const data = Buffer.from('tarball bytes');
    const url = 'https://r.test/a/-/a-1.0.0.tgz';
    const integrity = sri('sha512', data);
    const lock = lockfile({ 'node_modules/a': { version: '1.0.0', resolved: url, integrity } });
    const tree = npmDepsTree(lock, new Map([[url, data]]), cachedPackages(lock));
    assert.deepEqual(Object.keys(tree).sort(), ['_cacache', 'package-lock.json']);
    assert.equal(Buffer.from(tree['package-lock.json'] as Uint8Array).toString(), lock);
    const at = (...path: string[]): Uint8Array => path.reduce<Tree | Uint8Array>((node, name) => (node as Tree)[name]!, tree) as Uint8Array;
    const split = (hex: string): string[] => [hex.slice(0, 2), hex.slice(2, 4), hex.slice(4)];
    const hex = createHash('sha512').update(data).digest('hex');
    assert.deepEqual(Buffer.from(at('_cacache', 'content-v2', 'sha512', ...split(hex))), data);
    const key = `make-fetch-happen:request-cache:${url}`;
    const index = Buffer.from(at('_cacache', 'index-v5', ...split(createHash('sha256').update(key).digest('hex')))).toString();
    const json = `{"key":"${key}","integrity":"${integrity}","time":0,"size":${data.length},"metadata":{"url":"${url}","options":{"compress":true}}}`;
    assert.equal(index, `${createHash('sha1').update(json).digest('hex')}\t${json}`);
  });

  const hasNixStore = spawnSync('nix-store', ['--version'], { stdio: 'ignore' }).status === 0;
  it('hashes a tree exactly as Nix does (nix-store --dump | sha256)', { skip: hasNixStore ? false : 'nix-store is not on PATH (Debian: apt-get install nix-bin)' }, () => {
    const tree: Tree = {
      'b dir': { 'x y': Buffer.from('hello'), empty: {}, 'Z.json': Buffer.from('{}') },
      'a.json': Buffer.from('123456789'),
      zero: Buffer.alloc(0),
      'é': Buffer.alloc(8, 1),
    };
    const dir = mkdtempSync(join(tmpdir(), 'nar-'));
    try {
      const write = (path: string, node: Tree): void => {
        mkdirSync(path, { recursive: true });
        for (const [name, child] of Object.entries(node)) {
          if (child instanceof Uint8Array) writeFileSync(join(path, name), child);
          else write(join(path, name), child);
        }
      };
      write(join(dir, 'out'), tree);
      const dump = spawnSync('nix-store', ['--dump', join(dir, 'out')], { maxBuffer: 1 << 24 });
      assert.equal(dump.status, 0, dump.stderr?.toString());
      assert.equal(narHashSri(tree), `sha256-${createHash('sha256').update(dump.stdout).digest('base64')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a download that does not match its integrity', async () => {
    const url = 'https://r.test/a/-/a-1.0.0.tgz';
    const lock = lockfile({ 'node_modules/a': { version: '1.0.0', resolved: url, integrity: sri('sha512', 'the real bytes') } });
    await assert.rejects(
      npmDepsHash(lock, async () => Buffer.from('other bytes')),
      (err: Error) => err instanceof NpmDepsError && err.kind === 'integrity' && err.message.includes(url),
    );
    assert.match(await npmDepsHash(lock, async () => Buffer.from('the real bytes')), /^sha256-[A-Za-z0-9+/]{43}=$/);
  });

  it('downloads through the configured registry but keys the cache by the lockfile URL', async () => {
    const seen: string[] = [];
    const download = viaRegistry(async (u) => (seen.push(u), Buffer.from('x')), 'https://default.test/', 'https://mirror.test/npm');
    await download('https://default.test/a/-/a-1.0.0.tgz');
    await download('https://elsewhere.test/b.tgz');
    assert.deepEqual(seen, ['https://mirror.test/npm/a/-/a-1.0.0.tgz', 'https://elsewhere.test/b.tgz']);
  });
});

describe('npm run nix-deps-hash', () => {
  it('refuses a fetcher version it cannot reproduce, and a missing file, in one line (exit 2)', () => {
    const v2 = spawnSync(process.execPath, [CLI, '--fetcher-version', '2'], { encoding: 'utf8' });
    assert.equal(v2.status, 2);
    assert.match(v2.stderr, /^nix-deps-hash: fetcher version 2 is not supported[^\n]*\n$/);
    const missing = spawnSync(process.execPath, [CLI, '/nonexistent/package-lock.json'], { encoding: 'utf8' });
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^nix-deps-hash: \/nonexistent\/package-lock\.json: cannot read: ENOENT\n$/);
    const unknown = spawnSync(process.execPath, [CLI, '--frobnicate'], { encoding: 'utf8' });
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /^nix-deps-hash: unexpected argument --frobnicate; usage: /);
  });

  it('--help prints the usage, exit 0', () => {
    const help = spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /^usage: nix-deps-hash \[LOCKFILE\] \[--fetcher-version N\] \[--update\]\n/);
  });
});

describe('nix/npm-deps-hash.txt belongs to package-lock.json', () => {
  it('was computed for the lockfile as it is now (else: npm run nix-deps-hash -- --update)', () => {
    const digest = readFileSync(LOCK_DIGEST_FILE, 'utf8').trim();
    assert.equal(
      digest,
      sha256Hex(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')),
      'package-lock.json changed after nix/npm-deps-hash.txt was computed: run `npm run nix-deps-hash -- --update`',
    );
    assert.match(readFileSync(HASH_FILE, 'utf8'), /^sha256-[A-Za-z0-9+/]{43}=\n$/);
  });
});

// --- against the registry ---
let registryReachable: string | false = 'not probed';
// As `npm run nix-deps-hash` does: through npm's configured registry (a mirror, maybe).
const CONFIGURED = configuredRegistry(REGISTRY);
const download = viaRegistry(httpDownload(), REGISTRY, CONFIGURED);

describe('against the npm registry', () => {
  before(async () => {
    try {
      await fetch(CONFIGURED, { method: 'HEAD', signal: AbortSignal.timeout(15_000) });
      registryReachable = false;
    } catch (err) {
      registryReachable = `the npm registry ${CONFIGURED} cannot be reached (${(err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message}); nixpkgs' hashes cannot be checked here`;
    }
  });

  const expected = JSON.parse(readFileSync(join(FIXTURES, 'hashes.json'), 'utf8')) as Record<string, string>;
  for (const [name, hash] of Object.entries(expected)) {
    it(`prints nixpkgs' npmDepsHash for ${name}`, async (t) => {
      if (registryReachable) return t.skip(registryReachable);
      const file = join(FIXTURES, name, 'package-lock.json');
      const text = readFileSync(file, 'utf8');
      assert.ok(!text.includes('"resolved"'), 'the fixture carries no resolved URL; filling restores them');
      assert.equal(await npmDepsHash(await fetcherLockfile(text, file), download, file), hash);
    });
  }

  it('gives nix/npm-deps-hash.txt for package-lock.json', async (t) => {
    if (registryReachable) return t.skip(registryReachable);
    const file = join(ROOT, 'package-lock.json');
    const hash = await npmDepsHash(await fetcherLockfile(readFileSync(file, 'utf8'), file), download, file);
    assert.equal(readFileSync(HASH_FILE, 'utf8').trim(), hash, 'run `npm run nix-deps-hash -- --update`');
  });
});
