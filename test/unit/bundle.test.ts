// The bundle as tools/bundle.mjs writes it (`npm test` bundles before it tests).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const OUT = fileURLToPath(new URL('../../agent/', import.meta.url));

async function bundleFiles(): Promise<{ name: string; text: string }[]> {
  const names = (await readdir(OUT)).filter((n) => n === 'nixos-ec2-agent.js' || /^chunk-[A-Z0-9]+\.js$/.test(n));
  assert.ok(names.includes('nixos-ec2-agent.js'), `no bundle in ${OUT}: run node tools/bundle.mjs`);
  return Promise.all(names.map(async (name) => ({ name, text: await readFile(OUT + name, 'utf8') })));
}

describe('the bundle', () => {
  // An ES module import of a built-in reads all its exports, and some are lazy getters that load
  // more of Node: node:http's undici WebSocket on Node 22 (whose WebAssembly parser killed the
  // process under --lite-mode or --jitless), node:process's diagnostic report, node:util's (on Node
  // 22) worker_threads. tools/bundle.mjs takes these from process.getBuiltinModule.
  for (const builtin of ['http', 'process', 'util', 'net']) {
    test(`never imports node:${builtin} as an ES module, statically or dynamically`, async () => {
      const files = await bundleFiles();
      const b = `["'](node:)?${builtin}["']`;
      const esm = new RegExp(`\\bfrom\\s*${b}|\\bimport\\s*\\(\\s*${b}\\s*\\)|\\bimport\\s*${b}`);
      assert.deepEqual(files.filter((f) => esm.test(f.text)).map((f) => f.name), []);
      assert.ok(files.some((f) => f.text.includes(`process.getBuiltinModule("node:${builtin}")`) || f.text.includes(`process.getBuiltinModule('node:${builtin}')`)), `node:${builtin} comes from process.getBuiltinModule`);
    });
  }

  // tools/bundle.mjs drops the 24 methods zod v3 binds to every schema as it is made.
  test("zod's schemas bind none of their methods to themselves, and the bundled agent still checks its configuration with them", { timeout: 60_000 }, async () => {
    const files = await bundleFiles();
    const zod = files.filter((f) => f.text.includes('vendor:"zod"'));
    assert.equal(zod.length, 1, 'one chunk holds zod');
    assert.ok((zod[0] as { text: string }).text.includes('this.spa=this.safeParseAsync'), "zod's constructor is there");
    assert.doesNotMatch((zod[0] as { text: string }).text, /this\.(\w+)=this\.\1\.bind\(this\)/);

    const dir = await mkdtemp(path.join(tmpdir(), 'bundle-zod-'));
    try {
      const checkConfig = (config: unknown) =>
        new Promise<{ code: number | null; out: string }>((resolve) => {
          const file = path.join(dir, 'agent.json');
          void writeFile(file, JSON.stringify(config)).then(() =>
            execFile(process.execPath, [path.join(OUT, 'cli.js'), 'check-config', file], (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout + stderr })),
          );
        });
      const good = await checkConfig({ ssm: { pollIntervalSeconds: 30, prefixes: ['/nixos/fleet/'] }, logLevel: 'debug' });
      assert.equal(good.code, 0, good.out);
      const bad = await checkConfig({ ssm: { pollIntervalSeconds: 'often' } });
      assert.equal(bad.code, 2, bad.out);
      assert.match(bad.out, /pollIntervalSeconds/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
