// What `npm pack` publishes: the agent and the sandbox (the README's first command runs the
// sandbox from the package), and nothing of test/.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

describe('the published package', () => {
  const run = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
  const files = run.status === 0 ? ((JSON.parse(run.stdout) as Array<{ files: Array<{ path: string }> }>)[0]?.files ?? []).map((f) => f.path) : [];

  it('packs', () => assert.equal(run.status, 0, run.stderr));

  it('holds the agent, its bin and the sandbox', () => {
    for (const want of ['dist/agent/cli.js', 'dist/agent/daemon.js', 'dist/sandbox/index.js', 'dist/sandbox/emulators/ssm.js', 'dist/sandbox/standin/cli.js', 'systemd/nixos-ec2-agent.service', 'native/sd_notify.c']) {
      assert.ok(files.includes(want), `${want} is published`);
    }
  });

  it('holds no test, no type declarations and no build info', () => {
    const stray = files.filter((f) => f.startsWith('dist/test/') || f.startsWith('test/') || f.includes('.tsbuildinfo') || f.endsWith('.d.ts'));
    assert.deepEqual(stray, []);
  });

  it('the agent never imports the sandbox or the tests', () => {
    const grep = spawnSync('grep', ['-rlE', "from '(\\.\\./)+(sandbox|test)/", `${ROOT}agent`], { encoding: 'utf8' });
    assert.equal(grep.stdout, '', 'agent/ files importing sandbox/ or test/');
  });
});
