// The daemon's HTTP endpoints over a sandboxed instance: health checks answer during the first
// rebuild, readiness follows convergence, a bad change rolls back and stays healthy but not ready,
// metrics count it, the post-convergence command sees it, and SIGTERM ends the daemon cleanly.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { Status } from '../../agent/status.js';
import { cleanEnv, openSandbox, runAgent, type Sandbox } from '../../sandbox/sandbox.js';
import { freePort } from '../../sandbox/emulators/server.js';

const CLI = fileURLToPath(new URL('../../agent/cli.js', import.meta.url));
const DEMO_SECRET = 'sandbox-demo-token-0f3c9a';
const nix = existsSync('/usr/bin/nix-instantiate');

interface Answer {
  status: number;
  contentType: string;
  body: string;
}

function get(url: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 2_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type']), body }));
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer`)));
    req.on('error', reject);
    req.end();
  });
}


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

describe('the daemon over HTTP', { skip: nix ? false : 'needs /usr/bin/nix-instantiate for the sandbox\'s parser gate', timeout: 300_000 }, () => {
  let dir = '';
  let sandbox: Sandbox;
  let url = '';
  let hookLog = '';
  let daemon: ReturnType<typeof spawn>;
  let exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'report-http-'));
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    hookLog = path.join(dir, 'hook.log');
    const hook = path.join(dir, 'hook.sh');
    await writeFile(hook, `#!/bin/sh\n{ echo "$NIXOS_EC2_AGENT_OUTCOME $NIXOS_EC2_AGENT_GENERATION $NIXOS_EC2_AGENT_INSTANCE_ID"; } >> "${hookLog}"\n`, { mode: 0o755 });
    sandbox = await openSandbox(path.join(dir, 'sandbox'), {}, {
      http: { listen: `127.0.0.1:${port}` },
      // Only the test says when to converge again: no poll races the pushed change.
      ssm: { pollIntervalSeconds: 3_600, pollJitter: 0 },
      lifecycle: { enabled: false },
      postConvergeCommand: { argv: [hook], timeoutSeconds: 10 },
    });
    const log = await open(sandbox.layout.log, 'a');
    daemon = spawn(process.execPath, [CLI, 'run', '--config', sandbox.layout.config], {
      env: { ...cleanEnv(process.env), ...sandbox.env },
      stdio: ['ignore', log.fd, log.fd],
    });
    exited = new Promise((resolve) => daemon.once('exit', (code, signal) => resolve({ code, signal })));
    void exited.then(() => log.close());
  });

  after(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    await sandbox?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const tail = async () => (await readFile(sandbox.layout.log, 'utf8').catch(() => '')).split('\n').slice(-30).join('\n');

  it('answers health checks during the first convergence, and readiness once converged', async () => {
    const during: { healthz: number; readyz: number; phase: string }[] = [];
    let converged: Status | undefined;
    for (const deadline = Date.now() + 180_000; Date.now() < deadline && !converged; ) {
      // Readiness first, then the status: a status that says "not done yet" was not done when
      // readiness was asked either.
      const readyz = await get(`${url}/readyz`).catch(() => undefined);
      if (!readyz) {
        assert.equal(daemon.exitCode, null, `the daemon exited early:\n${await tail()}`);
        await sleep(20);
        continue;
      }
      const healthz = await get(`${url}/healthz`);
      const status = JSON.parse((await get(`${url}/status`)).body) as Status;
      if (!status.firstConvergenceDone) during.push({ healthz: healthz.status, readyz: readyz.status, phase: status.phase });
      else if (readyz.status === 200) converged = status;
      await sleep(20);
    }
    assert.ok(converged, `never ready:\n${await tail()}`);
    assert.equal(converged.condition, 'converged');
    assert.ok(during.length > 0, 'the endpoints answered before the first convergence ended');
    for (const d of during) {
      assert.equal(d.healthz, 200, `healthz during ${d.phase}: the image's good generation runs`);
      assert.equal(d.readyz, 503, `readyz during ${d.phase}`);
    }

    const status = await get(`${url}/status`);
    assert.equal(status.contentType, 'application/json; charset=utf-8');
    assert.ok(status.body.includes('/nixos/fleet/secrets/api-token'), 'the secret parameter is named in the sources');
    assert.ok(!status.body.includes(DEMO_SECRET), 'its value is not');

    // The loop counts a pass when it hears the pass's result, just after the status the pass ended
    // with (which readiness answers from): wait for the count, not for luck.
    let metrics = await get(`${url}/metrics`);
    for (const deadline = Date.now() + 30_000; (metric(metrics.body, 'nixos_ec2_agent_converge_passes_total', { outcome: 'converged' }) ?? 0) < 1 && Date.now() < deadline; ) {
      await sleep(20);
      metrics = await get(`${url}/metrics`);
    }
    assert.equal(metrics.status, 200);
    assert.match(metrics.contentType, /^text\/plain; version=0\.0\.4/);
    assert.equal(metric(metrics.body, 'nixos_ec2_agent_converge_passes_total', { outcome: 'converged' }), 1);
    assert.equal(metric(metrics.body, 'nixos_ec2_agent_condition', { condition: 'converged' }), 1);
    assert.equal(metric(metrics.body, 'nixos_ec2_agent_running_generation'), converged.running?.generation);
    assert.equal(metric(metrics.body, 'nixos_ec2_agent_rebuild_duration_seconds_count', { step: 'build' }), 1);
    assert.equal(metric(metrics.body, 'nixos_ec2_agent_desired_info', { hash: converged.desired?.hash ?? '?' }), 1);
    assert.ok(!metrics.body.includes(DEMO_SECRET));

    const log = await readFile(sandbox.layout.log, 'utf8');
    const phases = log.split('\n').filter((l) => l.includes('"event":"phase"')).map((l) => JSON.parse(l) as { phase: string; durationMs: number; desiredHash?: string });
    const building = phases.find((p) => p.phase === 'building');
    assert.ok(building, 'a phase event when building ended');
    assert.equal(typeof building.durationMs, 'number');
    assert.equal(building.desiredHash, converged.desired?.hash);
  });

  it('a pushed bad change rolls back: healthy, not ready, counted, and the hook told', async () => {
    sandbox.world.ssm.put({ Name: '/nixos/fleet/modules/bad', Value: '{ ... }: { } # sandbox-fail-unit', Type: 'String' });
    const { code } = await runAgent(sandbox, ['converge', '--now']);
    assert.equal(code, 1, 'converge --now reports the rollback as a failure');

    const healthz = await get(`${url}/healthz`);
    const readyz = await get(`${url}/readyz`);
    assert.equal(healthz.status, 200, healthz.body);
    assert.equal(readyz.status, 503, readyz.body);
    assert.equal((JSON.parse(readyz.body) as { condition: string }).condition, 'degraded');
    const status = JSON.parse((await get(`${url}/status`)).body) as Status;
    assert.equal(status.lastResult?.outcome, 'rolled-back');

    const metrics = (await get(`${url}/metrics`)).body;
    assert.equal(metric(metrics, 'nixos_ec2_agent_converge_passes_total', { outcome: 'rolled-back' }), 1);
    assert.equal(metric(metrics, 'nixos_ec2_agent_rollbacks_total'), 1);
    assert.equal(metric(metrics, 'nixos_ec2_agent_condition', { condition: 'degraded' }), 1);
    assert.equal(metric(metrics, 'nixos_ec2_agent_no_good_generation'), 0);

    let lines: string[] = [];
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; ) {
      lines = (await readFile(hookLog, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean);
      if (lines.length >= 2) break;
      await sleep(25);
    }
    const instanceId = sandbox.world.instance.instanceId;
    assert.match(lines[0] ?? '', new RegExp(`^converged \\d+ ${instanceId}$`));
    assert.match(lines[1] ?? '', new RegExp(`^rolled-back \\d+ ${instanceId}$`));
  });

  it('nothing over HTTP changes state', async () => {
    const answer = await new Promise<number>((resolve, reject) => {
      const req = request(`${url}/readyz`, { method: 'POST', agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end('{}');
    });
    assert.equal(answer, 405);
  });

  it('SIGTERM stops the daemon with exit 0', async () => {
    daemon.kill('SIGTERM');
    const timeout = sleep(30_000).then(() => 'timeout' as const);
    const result = await Promise.race([exited, timeout]);
    assert.notEqual(result, 'timeout', `the daemon did not exit after SIGTERM:\n${await tail()}`);
    assert.deepEqual(result, { code: 0, signal: null });
    await assert.rejects(get(`${url}/healthz`), 'the HTTP server is gone');
  });
});
