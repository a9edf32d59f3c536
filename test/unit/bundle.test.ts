// The bundle as tools/bundle.mjs writes it (`npm test` bundles before it tests).
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const OUT = fileURLToPath(new URL('../../agent/', import.meta.url));

async function bundleFiles(): Promise<{ name: string; text: string }[]> {
  const names = (await readdir(OUT)).filter((n) => n === 'nixos-ec2-agent.js' || /^chunk-[A-Z0-9]+\.js$/.test(n));
  assert.ok(names.includes('nixos-ec2-agent.js'), `no bundle in ${OUT}: run node tools/bundle.mjs`);
  return Promise.all(names.map(async (name) => ({ name, text: await readFile(OUT + name, 'utf8') })));
}

describe('the bundle', () => {
  // Node 22 (the Nix package's runtime) gives node:http lazy getters for undici's WebSocket; an ES
  // module import of it reads them and loads undici at every start, whose WebAssembly parser kills
  // the process under --lite-mode or --jitless. tools/bundle.mjs takes node:http from
  // process.getBuiltinModule.
  test('never imports node:http as an ES module, statically or dynamically', async () => {
    const files = await bundleFiles();
    const esmHttp = /\bfrom\s*["'](node:)?http["']|\bimport\s*\(\s*["'](node:)?http["']\s*\)|\bimport\s*["'](node:)?http["']/;
    assert.deepEqual(files.filter((f) => esmHttp.test(f.text)).map((f) => f.name), []);
    assert.ok(files.some((f) => f.text.includes('process.getBuiltinModule("node:http")')), 'node:http comes from process.getBuiltinModule');
  });
});
