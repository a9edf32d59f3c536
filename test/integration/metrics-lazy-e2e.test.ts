// prom-client stays unloaded in a daemon nobody scrapes (agent/report/metrics.ts): its modules and
// registry are ~2 MiB of an idle daemon's resident memory. Its default-metrics modules require
// node:perf_hooks when prom-client loads, and nothing else in the agent does, so a preload that
// records the built-ins the bundle asks process.getBuiltinModule for sees when it loads.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { withDaemon } from '../support/daemon.js';

const PRELOAD = `
import { appendFileSync } from 'node:fs';
const get = process.getBuiltinModule;
process.getBuiltinModule = function (id) {
  appendFileSync(process.env.RECORD, id + '\\n');
  return get.call(this, id);
};
`;

test('the daemon loads prom-client at the first scrape of /metrics, not before; what it counted before is there', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'metrics-lazy-'));
  const preload = path.join(dir, 'preload.mjs');
  const record = path.join(dir, 'builtins');
  await writeFile(preload, PRELOAD);
  await writeFile(record, '');
  const asked = async () => (await readFile(record, 'utf8')).split('\n');
  try {
    await withDaemon(
      { userData: '{ ... }:\n{\n  networking.hostName = "metrics-lazy";\n}\n', env: { NODE_OPTIONS: `--import ${preload}`, RECORD: record } },
      async (d) => {
        assert.equal((await d.pass()).outcome, 'unchanged');
        // The check can see what it looks for: the bundle's built-ins go through the recorder.
        assert.ok((await asked()).includes('node:http'), (await asked()).join(' '));
        assert.ok(!(await asked()).includes('perf_hooks'), 'prom-client loaded before any scrape');
        const url = String(d.log.of('http.listening').at(-1)?.url);
        const body = await (await fetch(`${url}/metrics`)).text();
        // The answer waited for the load.
        assert.ok((await asked()).includes('perf_hooks'), 'prom-client loaded for the scrape');
        assert.match(body, /^nixos_ec2_agent_converge_passes_total\{outcome="converged"\} 1$/m);
        assert.match(body, /^nixos_ec2_agent_converge_passes_total\{outcome="unchanged"\} 1$/m);
        assert.match(body, /^nixos_ec2_agent_rebuild_duration_seconds_count\{step="build"\} 1$/m);
      },
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
