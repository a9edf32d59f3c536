// The package's bin runs as a program of its own (npx and the Nix wrapper exec it directly), not
// only as `node dist/agent/cli.js`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

describe('the bin', () => {
  const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { bin: Record<string, string> };
  const bin = `${ROOT}${pkg.bin['nixos-ec2-agent']}`;

  it('is executable, with a node shebang', () => {
    assert.ok((statSync(bin).mode & 0o111) !== 0, `${bin} has an execute bit`);
    assert.match(readFileSync(bin, 'utf8').split('\n')[0] ?? '', /^#!\/usr\/bin\/env node$/);
  });

  // Node's default directory for it, /tmp/node-compile-cache, is one any user can make first and
  // fill with code for the root agent to run: the cache is on only where NODE_COMPILE_CACHE names a
  // directory (the package's wrapper: its own, in the store).
  it("never turns Node's compile cache on in its default directory, only in the user's own cache directory", () => {
    // Node's default is /tmp/node-compile-cache, which any user can make first (agent/cli.ts, userCompileCache).
    const dist = path.dirname(bin);
    const calls: string[] = [];
    for (const file of readdirSync(dist).filter((f) => f.endsWith('.js'))) {
      calls.push(...(readFileSync(path.join(dist, file), 'utf8').match(/enableCompileCache\([^)]*\)/g) ?? []));
    }
    assert.deepEqual(calls, ['enableCompileCache(`${base}/nixos-ec2-agent/compile-cache`)']);
  });

  it('runs directly and prints its help', () => {
    const run = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /usage: nixos-ec2-agent COMMAND/);
  });
});
