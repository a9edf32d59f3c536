// A prebuilt closure end to end: an operator puts the `system` parameter, the agent in the sandbox
// substitutes it from a real signed binary cache on 127.0.0.1, activates it with `test`, verifies
// it, and only then makes it the boot default. A bad parameter is rejected naming it; a closure not
// signed by the trusted key is refused with nothing switched.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GC_ROOTS } from '../../agent/apply/closure.js';
import { buildSystem, generateKey, narFile, nixStoreMissing, publish, serveCache, systemValue, type CacheServer, type Key } from '../support/binary-cache.js';
import { Instance, type StatusJson } from '../support/e2e.js';

const missing = nixStoreMissing();
const PARAMETER = '/nixos/fleet/system';

type ClosureStatus = StatusJson & { desired?: StatusJson['desired'] & { runs?: string; closure?: { storePath: string } } };

describe('prebuilt closures in the sandbox', { skip: missing ? `skipped: ${missing}` : false }, () => {
  let work: string;
  let key: Key;
  let otherKey: Key;
  let server: CacheServer;
  let system: string;

  before(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'nea-closure-e2e-'));
    key = await generateKey(work, 'ci-1');
    otherKey = await generateKey(work, 'other-1');
    system = await buildSystem(work);
    await publish(system, key, path.join(work, 'cache'));
    server = await serveCache(path.join(work, 'cache'));
  });

  after(async () => {
    await server?.close();
    await rm(work, { recursive: true, force: true });
  });

  async function converge(i: Instance): Promise<{ code: number | null; stderr: string; status: ClosureStatus }> {
    // A Nix cache directory of the instance's own: nothing remembered from another test.
    const result = await i.run(['converge', '--once', '--json'], { XDG_CACHE_HOME: path.join(i.dir, 'xdg-cache') });
    return { ...result, status: JSON.parse(result.stdout) as ClosureStatus };
  }

  test('the system parameter is substituted, activated, verified and made the boot default', async () => {
    const i = await Instance.launch({});
    try {
      const first = await converge(i);
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.desired?.runs, 'configuration');
      const built = await i.running();

      i.put(PARAMETER, systemValue(system, server.url, [key]));
      const result = await converge(i);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.status.condition, 'converged');
      assert.equal(result.status.desired?.runs, 'closure', 'status says the closure runs, not the configuration');
      assert.equal(result.status.desired?.closure?.storePath, system);
      const real = path.join(i.root, system);
      assert.equal(await i.running(), real, 'activated');
      assert.equal(await i.profileSystem(), real, 'the boot default, after verification');
      assert.notEqual(real, built);
      assert.equal(await readlink(path.join(i.root, GC_ROOTS, 'last-good-system')), system);
      const text = await i.run(['status']);
      assert.match(text.stdout, new RegExp(`runs: +prebuilt closure ${system} from ${server.url}`));
      const steps = (await i.logEvents()).filter((e) => e.event === 'step.start').map((e) => `${String(e.stage)} ${String(e.command)}`);
      assert.ok(!steps.slice(-6).some((s) => s.includes('nixos-rebuild')), `no build for the closure: ${steps.join(', ')}`);

      // Deleting the parameter goes back to building the configuration.
      i.world.ssm.delete(PARAMETER);
      const back = await converge(i);
      assert.equal(back.code, 0, back.stderr);
      assert.equal(back.status.desired?.runs, 'configuration');
      assert.equal(await i.running(), built);
    } finally {
      await i.close();
    }
  });

  test('a closure not signed by the trusted key is refused and nothing is switched', async () => {
    const i = await Instance.launch({});
    try {
      assert.equal((await converge(i)).code, 0);
      const before = await i.running();
      const generation = await i.profileGeneration();
      i.put(PARAMETER, systemValue(system, server.url, [otherKey]));
      const result = await converge(i);
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.status.message, /not signed by a trusted key \(other-1\)/);
      assert.equal(await i.running(), before);
      assert.equal(await i.profileGeneration(), generation);
    } finally {
      await i.close();
    }
  });

  test('a closure whose NAR was tampered with is refused, and stays refused at the next pass; nothing is switched', async () => {
    const tampered = await buildSystem(work);
    const dir = path.join(work, 'tampered-nar-cache');
    await publish(tampered, key, dir, { compression: 'none' });
    const nar = await narFile(dir, tampered);
    const bytes = await readFile(nar);
    bytes.write('24.11.evil', bytes.indexOf('24.11.test'));
    await writeFile(nar, bytes);
    const s = await serveCache(dir);
    const i = await Instance.launch({});
    try {
      assert.equal((await converge(i)).code, 0);
      const before = await i.running();
      const generation = await i.profileGeneration();
      // Retried at once, as if its backoff had passed: the second pass must fetch and refuse again.
      await i.configure({ retry: { failedBackoffSeconds: 0.001 } });
      i.put(PARAMETER, systemValue(tampered, s.url, [key]));
      const narRequest = `GET /${path.relative(dir, nar)}`;
      for (const [n, pass] of ['first', 'second'].entries()) {
        const result = await converge(i);
        assert.equal(result.code, 1, `${pass} pass: ${result.stderr}`);
        assert.match(result.status.message, /the cache's content does not match its \.narinfo: .*hash mismatch/, `${pass} pass`);
        assert.equal(await i.running(), before, `${pass} pass: nothing activated`);
        assert.equal(await i.profileGeneration(), generation, `${pass} pass: the boot default never moved`);
        assert.equal(s.requests.filter((q) => q === narRequest).length, n + 1, `${pass} pass: the NAR was fetched again, not taken from what the refused one left`);
      }
    } finally {
      await i.close();
      await s.close();
    }
  });

  test('a closure whose units fail on activation (switch-to-configuration exits 4) is rolled back to the exact previous system', async () => {
    const failing = await buildSystem(work, { failedUnit: 'sandbox-demo.service' });
    await publish(failing, key, path.join(work, 'cache'));
    const i = await Instance.launch({});
    try {
      assert.equal((await converge(i)).code, 0);
      const before = await i.running();
      const generation = await i.profileGeneration();
      i.put(PARAMETER, systemValue(failing, server.url, [key]));
      const result = await converge(i);
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.status.lastResult?.outcome, 'rolled-back');
      assert.equal(result.status.lastResult?.error?.stage, 'activate');
      assert.match(result.status.message, /switch-to-configuration test exited with 4 \(units failed: sandbox-demo\.service\)/);
      assert.equal(await i.running(), before, 'the previous system runs again');
      assert.equal(await i.profileGeneration(), generation, 'the boot default never moved');
      assert.equal(await readlink(path.join(i.root, GC_ROOTS, 'current-system')), path.relative(i.root, before).replace(/^/, '/'));
    } finally {
      await i.close();
    }
  });

  test('a malformed system parameter is rejected naming the parameter', async () => {
    const i = await Instance.launch({});
    try {
      assert.equal((await converge(i)).code, 0);
      i.put(PARAMETER, JSON.stringify({ storePath: system, substituter: 'ftp://cache.example', trustedPublicKeys: [key.publicKey] }));
      const result = await converge(i);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.status.message, /SSM parameter \/nixos\/fleet\/system \(version \d+\): substituter has scheme ftp:/);
    } finally {
      await i.close();
    }
  });
});
