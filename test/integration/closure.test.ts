// The closure realiser against the real Nix: a signed closure in a binary cache served over HTTP on
// 127.0.0.1, substituted into a chroot store under a temporary root with the trusted key alone.
// Every refusal leaves the root's store without the system.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ClosureRealiser, ClosureRefusedError, GC_ROOTS, type ClosureOptions } from '../../agent/apply/closure.js';
import type { FsProbe } from '../../agent/apply/space.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import type { Runner } from '../../agent/ports.js';
import { ProcessRunner } from '../../agent/runner.js';
import { parseSystemClosure, type SystemClosure } from '../../agent/sources/system.js';
import { buildSystem, closedPort, generateKey, hashPart, narFile, nixRun, nixStoreMissing, publish, serveCache, systemValue, type CacheServer, type Key } from '../support/binary-cache.js';

const missing = nixStoreMissing();

describe('closure realiser with the real Nix', { skip: missing ? `skipped: ${missing}` : false }, () => {
  let work: string;
  let key: Key;
  let otherKey: Key;
  let cacheDir: string;
  let server: CacheServer;
  let good: string;

  before(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'nea-closure-'));
    key = await generateKey(work, 'ci-1');
    otherKey = await generateKey(work, 'someone-else-1');
    cacheDir = path.join(work, 'cache');
    good = await buildSystem(work);
    await publish(good, key, cacheDir);
    server = await serveCache(cacheDir);
  });

  after(async () => {
    await server?.close();
    await rm(work, { recursive: true, force: true });
  });

  /**
   * A fresh root and a private Nix cache directory: no test sees another's .narinfo cache. `runs`:
   * every command the realiser ran, with its exit code.
   */
  async function realiser(
    probe?: FsProbe,
    over: Partial<ClosureOptions> = {},
    at?: string,
  ): Promise<{ realiser: ClosureRealiser; root: string; runs: { argv: string[]; code: number | null }[] }> {
    const root = at ?? (await mkdtemp(path.join(work, 'root-')));
    const xdg = path.join(root, '.xdg-cache');
    await mkdir(xdg, { recursive: true });
    const options = { nix: 'nix', nixStore: 'nix-store', timeoutMs: 120_000, reserveBytes: 0, gcWhenShort: false, env: { XDG_CACHE_HOME: xdg }, ...over };
    const runs: { argv: string[]; code: number | null }[] = [];
    const processes = new ProcessRunner(process.env);
    const runner: Runner = {
      run: async (request) => {
        const result = await processes.run(request);
        runs.push({ argv: [request.command, ...request.args], code: result.code });
        return result;
      },
    };
    return { realiser: new ClosureRealiser(runner, new RootFs(root), options, silentLogger(), ...(probe ? [probe] : [])), root, runs };
  }

  function closure(storePath: string, substituter: string, keys: readonly Key[]): SystemClosure {
    return parseSystemClosure(systemValue(storePath, substituter, keys), 'test', 'user-data');
  }

  /** The paths among `paths` that the root's Nix store holds as valid, one a line. */
  async function validPaths(root: string, paths: readonly string[]): Promise<string> {
    const invalid = (await nixRun('nix-store', ['--store', root, '--check-validity', '--print-invalid', ...paths])).split('\n');
    return paths.filter((p) => !invalid.includes(p)).join('\n');
  }

  async function refusal(p: Promise<unknown>): Promise<ClosureRefusedError> {
    try {
      await p;
    } catch (err) {
      if (err instanceof ClosureRefusedError) return err;
      throw err;
    }
    assert.fail('the closure was accepted');
  }

  test('a closure signed by the trusted key is substituted into the root\'s store and rooted', async () => {
    const { realiser: r, root } = await realiser();
    const done = await r.realise(closure(good, server.url, [key]));
    assert.equal(done.storePath, path.join(root, good));
    assert.ok(existsSync(path.join(root, good, 'bin/switch-to-configuration')));
    assert.equal(done.substituted, 2, 'the system and its kernel');
    assert.ok(done.narBytes > 4096, `NarSize of both paths, got ${done.narBytes}`);
    await r.pinRoots({ current: done.storePath, lastGood: done.storePath });
    assert.equal(await readlink(path.join(root, GC_ROOTS, 'current-system')), good, 'the root names the store path as Nix sees it');
    assert.equal(await readlink(path.join(root, GC_ROOTS, 'last-good-system')), good);

    const again = await r.realise(closure(good, server.url, [key]));
    assert.equal(again.substituted, 0, 'already in the store: nothing fetched');
  });

  test('a closure signed by another key is refused before anything is fetched', async () => {
    const { realiser: r, root } = await realiser();
    const before = server.narBytesServed;
    const err = await refusal(r.realise(closure(good, server.url, [otherKey])));
    assert.equal(err.refusal, 'unsigned');
    assert.match(err.message, /not signed by a trusted key \(someone-else-1\); it is signed by ci-1/);
    assert.equal(server.narBytesServed, before, 'no NAR was downloaded');
    assert.ok(!existsSync(path.join(root, good)));
  });

  test('a tampered .narinfo is refused', async () => {
    const tamperedDir = path.join(work, 'tampered-cache');
    await publish(good, key, tamperedDir);
    const narinfo = path.join(tamperedDir, `${hashPart(good)}.narinfo`);
    const text = await readFile(narinfo, 'utf8');
    // A smaller NarSize: the kind of edit that would slip a closure past a space check.
    await writeFile(narinfo, text.replace(/^NarSize: (\d+)$/m, (_, n: string) => `NarSize: ${Number(n) - 8}`));
    const tampered = await serveCache(tamperedDir);
    try {
      const { realiser: r, root } = await realiser();
      const err = await refusal(r.realise(closure(good, tampered.url, [key])));
      assert.equal(err.refusal, 'tampered');
      assert.match(err.message, /does not match its signature by ci-1/);
      assert.ok(!existsSync(path.join(root, good)));
    } finally {
      await tampered.close();
    }
  });

  test('a tampered NAR (its bytes changed, its .narinfo intact) is refused by Nix, and nothing of it enters the store', async () => {
    const fresh = await buildSystem(work);
    const dir = path.join(work, 'tampered-nar-cache');
    await publish(fresh, key, dir, { compression: 'none' });
    const nar = await narFile(dir, fresh);
    const bytes = await readFile(nar);
    // One file's contents inside the NAR, same length: a well-formed NAR whose hash is not NarHash.
    const at = bytes.indexOf('24.11.test');
    assert.ok(at > 0, 'the NAR holds nixos-version');
    bytes.write('24.11.evil', at);
    await writeFile(nar, bytes);
    const s = await serveCache(dir);
    try {
      const { realiser: r, root } = await realiser();
      const err = await refusal(r.realise(closure(fresh, s.url, [key])));
      assert.equal(err.refusal, 'tampered', err.message);
      assert.match(err.message, /^the cache's content does not match its \.narinfo: .*hash mismatch/);
      assert.ok(s.requests.some((q) => q.startsWith('GET /nar/')), 'the NAR was fetched: the signature checks passed, Nix refused its content');
      // Nix unpacked the NAR before it hashed it, and left the tree behind, invalid: a later pass
      // must not take that tree for the system, already there.
      const again = await refusal(r.realise(closure(fresh, s.url, [key])));
      assert.equal(again.refusal, 'tampered', again.message);
      assert.equal(await validPaths(root, [fresh]), '', 'the system is not a valid path of the store');
    } finally {
      await s.close();
    }
  });

  test('short of space with gcWhenShort: garbage is collected (roots kept), then the closure is substituted', async () => {
    const old = await buildSystem(work);
    const kept = await buildSystem(work);
    const wanted = await buildSystem(work);
    for (const p of [old, kept, wanted]) await publish(p, key, cacheDir);
    // Yesterday's systems: `old` left unrooted, `kept` rooted as the last good one.
    const { realiser: plenty, root } = await realiser();
    await plenty.realise(closure(old, server.url, [key]));
    const keptReal = (await plenty.realise(closure(kept, server.url, [key]))).storePath;
    await plenty.pinRoots({ lastGood: keptReal });
    // The store is full for as long as the garbage is there: only a real collection frees it.
    const shortWhileGarbage: FsProbe = { free: async () => ({ bytes: existsSync(path.join(root, old)) ? 1000 : 1e12, device: 1 }) };
    const { realiser: r, runs } = await realiser(shortWhileGarbage, { gcWhenShort: true }, root);
    const done = await r.realise(closure(wanted, server.url, [key]));
    assert.equal(done.storePath, path.join(root, wanted));
    const gc = runs.filter((run) => run.argv.includes('--gc'));
    assert.deepEqual(gc, [{ argv: ['nix-store', '--store', root, '--gc'], code: 0 }]);
    assert.ok(!existsSync(path.join(root, old)), 'the unrooted system was collected');
    assert.ok(existsSync(path.join(root, kept, 'nixos-version')), 'the rooted last good system was kept');
  });

  test('still short after collecting garbage: refused with the figures, saying garbage was collected, before downloading', async () => {
    const small: FsProbe = { free: async () => ({ bytes: 1000, device: 1 }) };
    const before = server.narBytesServed;
    const { realiser: r, root, runs } = await realiser(small, { gcWhenShort: true });
    const err = await refusal(r.realise(closure(good, server.url, [key])));
    assert.equal(err.refusal, 'no-space');
    assert.match(err.message, /^not enough space: the store needs \d+ bytes .* and has 1000 bytes free \(after collecting garbage\)$/);
    assert.equal(runs.filter((run) => run.argv.includes('--gc')).length, 1, 'one collection');
    assert.equal(server.narBytesServed, before, 'no NAR was downloaded');
    assert.ok(!existsSync(path.join(root, good)));

    // A collection that fails is named in the refusal: a nix-store whose --gc exits 1.
    const gcFails = path.join(work, 'nix-store-gc-fails');
    await writeFile(gcFails, '#!/bin/sh\nfor a; do [ "$a" = --gc ] && exit 1; done\nexec nix-store "$@"\n');
    await chmod(gcFails, 0o755);
    const { realiser: failing } = await realiser(small, { gcWhenShort: true, nixStore: gcFails });
    const failed = await refusal(failing.realise(closure(good, server.url, [key])));
    assert.equal(failed.refusal, 'no-space');
    assert.match(failed.message, /\(after nix-store --gc, which exited with 1\)$/);
  });

  test('a cache that answered 404 is asked again once it has the path (no negative caching)', async () => {
    const fresh = await buildSystem(work);
    const dir = path.join(work, 'late-cache');
    await publish(fresh, key, dir);
    const late = await serveCache(dir);
    try {
      late.hide(fresh);
      const { realiser: r, root } = await realiser();
      const err = await refusal(r.realise(closure(fresh, late.url, [key])));
      assert.equal(err.refusal, 'missing');
      assert.match(err.message, /does not have/);
      late.reveal(fresh);
      // Same root, same Nix cache directory: a remembered 404 would refuse again.
      const done = await r.realise(closure(fresh, late.url, [key]));
      assert.equal(done.storePath, path.join(root, fresh));
      assert.equal(late.requests.filter((q) => q.includes(`${hashPart(fresh)}.narinfo`)).length >= 2, true);
    } finally {
      await late.close();
    }
  });

  test('an unreachable cache is refused with that reason', async () => {
    const { realiser: r, root } = await realiser();
    const err = await refusal(r.realise(closure(good, `http://127.0.0.1:${await closedPort()}`, [key])));
    assert.equal(err.refusal, 'unreachable');
    assert.match(err.message, /unreachable/);
    assert.ok(!existsSync(path.join(root, good)));
  });

  test('too little space in the store is refused with the figures, before downloading', async () => {
    const small: FsProbe = { free: async () => ({ bytes: 1000, device: 1 }) };
    const { realiser: r, root } = await realiser(small);
    const before = server.narBytesServed;
    const err = await refusal(r.realise(closure(good, server.url, [key])));
    assert.equal(err.refusal, 'no-space');
    assert.match(err.message, /not enough space: the store needs \d+ bytes .* and has 1000 bytes free/);
    assert.equal(server.narBytesServed, before);
    assert.equal(await validPaths(root, [good]), '');
  });

  test('a store path that is not a NixOS system is refused', async () => {
    const plain = await buildSystem(work, { notNixos: true });
    const dir = path.join(work, 'plain-cache');
    await publish(plain, key, dir);
    const s = await serveCache(dir);
    try {
      const { realiser: r } = await realiser();
      const err = await refusal(r.realise(closure(plain, s.url, [key])));
      assert.equal(err.refusal, 'not-nixos');
      assert.match(err.message, /is not a NixOS system \(no nixos-version\)/);
    } finally {
      await s.close();
    }
  });
});
