// `nixos-ec2-agent rollout …` against the SSM emulator, through the real SDK client and the
// default credentials chain, and the same rollout driven with the plain AWS CLI.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { splitSnapshot } from '../../agent/rollout/spec.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { AWS_CLI, CLI, hasAwsCli } from '../support/e2e.js';

const FLEET = '/nixos/fleet';

/** The agent's own last line (Node 20 may get the SDK's node-version warning before it). */
/**
 * The command's own last line. The runtime's warnings (the SDK's Node-version notice) come as JSON
 * log lines, on stderr too and at a time of the runtime's choosing, before or after it.
 */
function lastLine(text: string): string {
  return text.trim().split('\n').filter((line) => !line.startsWith('{"level":')).at(-1) ?? '';
}

interface Result {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

describe('rollout commands', () => {
  let ssm: SsmEmulator;
  let home: string;

  before(async () => {
    ssm = await SsmEmulator.start({ region: 'eu-west-1', throughput: null });
    home = await mkdtemp(join(tmpdir(), 'rollout-cmd-'));
  });
  after(async () => {
    await ssm?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });
  beforeEach(() => {
    for (const name of ssm.names()) ssm.delete(name);
    ssm.put({ Name: `${FLEET}/options/services.demo.version`, Value: '"1"', Type: 'String' });
  });

  const env = () => ({
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: home,
    AWS_ENDPOINT_URL_SSM: ssm.url,
    AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
    AWS_SECRET_ACCESS_KEY: 'secret',
    AWS_REGION: 'eu-west-1',
    AWS_DEFAULT_REGION: 'eu-west-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_PAGER: '',
    AWS_CONFIG_FILE: join(home, 'config'),
    AWS_SHARED_CREDENTIALS_FILE: join(home, 'credentials'),
  });
  const exec = (file: string, args: string[]): Promise<Result> =>
    new Promise((resolve) => {
      execFile(file, args, { env: env(), timeout: 60_000 }, (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
      });
    });
  const agent = (...args: string[]) => exec(process.execPath, [CLI, 'rollout', ...args]);
  const aws = (...args: string[]) => exec(AWS_CLI, ['--endpoint-url', ssm.url, '--output', 'json', 'ssm', ...args]);
  const rollout = () => splitSnapshot({ prefixes: [{ prefix: FLEET, parameters: ssm.names().filter((n) => n.startsWith(`${FLEET}/`)).map((n) => stored(n)) }], skipped: [], calls: 0 }).rollouts[0];
  const stored = (name: string) => {
    const p = ssm.get(name);
    assert.ok(p);
    return { name, type: p.Type, value: p.Value, version: p.Version, lastModified: undefined };
  };

  it('refuses to start without a candidate, and bad flags, in one line each, exit 2', async () => {
    const none = await agent('start');
    assert.equal(none.code, 2, none.stderr);
    assert.match(lastLine(none.stderr), /^nixos-ec2-agent rollout: rollout start: nothing under \/nixos\/fleet\/rollout\/candidate\/: publish the candidate first/);
    // A bad flag is named as such before SSM is read, candidate or not.
    const early = await agent('start', '--step', '0');
    assert.equal(early.code, 2, early.stderr);
    assert.match(lastLine(early.stderr), /^nixos-ec2-agent rollout: --step: /);
    ssm.put({ Name: `${FLEET}/rollout/candidate/options/services.demo.version`, Value: '"2"', Type: 'String' });
    const bad = await agent('start', '--strategy', 'random');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--strategy: Invalid enum value/);
    assert.match(lastLine(bad.stderr), /^nixos-ec2-agent rollout: --strategy: /);
    assert.doesNotMatch(bad.stderr, /^\s+at /m, 'no stack trace');
    const step = await agent('start', '--step', 'ten');
    assert.match(step.stderr, /--step: "ten" is not a number/);
    const alarms = await agent('start', '--alarms', 'web-5xx,');
    assert.equal(alarms.code, 2);
    assert.match(alarms.stderr, /--alarms: /);
    for (const size of ['0', '2.5', 'many']) {
      const fleet = await agent('start', '--alarms', 'web-5xx', '--fleet-size', size);
      assert.equal(fleet.code, 2, size);
      assert.match(lastLine(fleet.stderr), /^nixos-ec2-agent rollout: --fleet-size: /, size);
    }
    const bake = await agent('start', '--bake', '99999999999');
    assert.equal(bake.code, 2, bake.stderr);
    assert.match(lastLine(bake.stderr), /^nixos-ec2-agent rollout: --bake: at most 2592000 seconds \(30 days\)/);
    const verb = await agent('launch');
    assert.equal(verb.code, 2);
    assert.match(verb.stderr, /expected one of start\|status\|halt\|resume\|abandon\|promote, got launch/);
    assert.equal(rollout()?.strategy, undefined, 'nothing was written');
  });

  it('start, status, halt, resume, abandon', async () => {
    ssm.put({ Name: `${FLEET}/rollout/candidate/options/services.demo.version`, Value: '"2"', Type: 'String' });
    ssm.put({ Name: `${FLEET}/rollout/failures/i-old`, Value: JSON.stringify({ candidate: 'older', stage: 'build', reason: 'x', at: '' }), Type: 'String' });
    const start = await agent('start', '--step', '25', '--interval', '600', '--bake', '60', '--threshold', '2', '--alarms', 'web-5xx,web-latency', '--fleet-size', '12000');
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, /wrote \/nixos\/fleet\/rollout\/strategy/);
    assert.match(start.stdout, /wrote \/nixos\/fleet\/revision/);
    assert.match(start.stdout, /progressing at 25% \(step 1\/4, 0\/2 failures/);
    assert.equal(rollout()?.strategy?.stepPercent, 25);
    assert.deepEqual(rollout()?.strategy?.alarms, ['web-5xx', 'web-latency']);
    assert.equal(rollout()?.strategy?.fleetSize, 12_000);
    assert.match(start.stdout, /^  alarms   web-5xx, web-latency \(read by turns across a fleet of 12000\)$/m);
    assert.equal(ssm.get(`${FLEET}/rollout/failures/i-old`), undefined, 'a restart clears old records');

    // Two instances report failures (as the agent's reporter writes them).
    const candidate = rollout()?.candidateId ?? '';
    for (const id of ['i-a', 'i-b']) {
      ssm.put({ Name: `${FLEET}/rollout/failures/${id}`, Value: JSON.stringify({ candidate, stage: 'verify', reason: 'unit failed', at: new Date().toISOString() }), Type: 'String' });
    }
    const status = await agent('status', '--json');
    assert.equal(status.code, 0, status.stderr);
    const report = JSON.parse(status.stdout) as { rollout: { state: string; haltedBy: string }; cohorts: { step: number; failures: string[] }[] };
    assert.equal(report.rollout.state, 'halted');
    assert.equal(report.rollout.haltedBy, 'failures');
    assert.equal(report.cohorts.length, 4);
    assert.deepEqual(report.cohorts.flatMap((c) => c.failures).sort(), ['i-a', 'i-b']);
    const text = await agent('status');
    assert.match(text.stdout, /HALTED \(failures\): 2 instance\(s\) failed the candidate/);
    assert.match(text.stdout, /step {2}1 {2}up to {4}25%/);

    const resume = await agent('resume');
    assert.equal(resume.code, 0, resume.stderr);
    assert.equal(rollout()?.failures.length, 0);
    assert.match(resume.stdout, /progressing/);

    const halt = await agent('halt', '--reason', 'p99 latency doubled');
    assert.equal(halt.code, 0, halt.stderr);
    assert.match(halt.stdout, /HALTED \(operator\): p99 latency doubled/);

    const promote = await agent('promote');
    assert.equal(promote.code, 2);
    assert.match(promote.stderr, /the rollout is halted, not complete/);

    const abandon = await agent('abandon');
    assert.equal(abandon.code, 0, abandon.stderr);
    assert.match(abandon.stdout, /no rollout/);
    assert.deepEqual(ssm.names().filter((n) => n.includes('/rollout/')), []);
    assert.equal(ssm.get(`${FLEET}/options/services.demo.version`)?.Value, '"1"', 'stable untouched');
  });

  it('promote copies the candidate over the stable parameters once complete, SecureStrings included', async () => {
    ssm.put({ Name: `${FLEET}/rollout/candidate/options/services.demo.version`, Value: '"2"', Type: 'String' });
    ssm.put({ Name: `${FLEET}/rollout/candidate/secrets/token`, Value: 's3cret', Type: 'SecureString' });
    const past = new Date(Date.now() - 3 * 3600_000).toISOString();
    const start = await agent('start', '--step', '50', '--interval', '60', '--bake', '60', '--at', past);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, /complete at 100%/);
    const promote = await agent('promote');
    assert.equal(promote.code, 0, promote.stderr);
    assert.equal(ssm.get(`${FLEET}/options/services.demo.version`)?.Value, '"2"');
    assert.equal(ssm.get(`${FLEET}/secrets/token`)?.Type, 'SecureString');
    assert.equal(ssm.get(`${FLEET}/secrets/token`)?.Value, 's3cret');
    assert.deepEqual(ssm.names().filter((n) => n.includes('/rollout/')), []);
  });

  it('promote copies a candidate larger than a Standard parameter holds', async () => {
    const module = `{ ... }: {\n${'  # padding\n'.repeat(500)}}\n`;
    ssm.put({ Name: `${FLEET}/rollout/candidate/modules/big`, Value: module, Type: 'String', Tier: 'Advanced' });
    const past = new Date(Date.now() - 3 * 3600_000).toISOString();
    const start = await agent('start', '--step', '50', '--interval', '60', '--bake', '60', '--at', past);
    assert.equal(start.code, 0, start.stderr);
    const promote = await agent('promote');
    assert.equal(promote.code, 0, promote.stderr);
    assert.equal(ssm.get(`${FLEET}/modules/big`)?.Value, module);
    assert.deepEqual(ssm.names().filter((n) => n.includes('/rollout/')), []);
  });

  it('an SSM endpoint that takes the connection and never answers: exit 1 in one line, no hang', { timeout: 150_000 }, async () => {
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      // Two attempts of 10 s each, rather than the default ten.
      const config = join(home, 'two-attempts.json');
      await writeFile(config, JSON.stringify({ ssm: { maxAttempts: 2 } }));
      const ended = await new Promise<Result & { hung: boolean }>((resolve) => {
        execFile(process.execPath, [CLI, 'rollout', 'status', '--config', config], { env: { ...env(), AWS_ENDPOINT_URL_SSM: url }, timeout: 120_000 }, (error, stdout, stderr) => {
          resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr, hung: error?.killed === true });
        });
      });
      assert.equal(ended.hung, false, 'still running after 120 s');
      assert.equal(ended.code, 1, ended.stderr);
      assert.match(lastLine(ended.stderr), /^nixos-ec2-agent rollout: SSM GetParametersByPath \/nixos\/fleet\/rollout/);
    } finally {
      silent.close();
    }
  });

  it('the same rollout with the plain AWS CLI, read back by `rollout status`', { skip: hasAwsCli ? false : `${AWS_CLI} is not installed` }, async () => {
    const put = async (name: string, value: string) => {
      const r = await aws('put-parameter', '--overwrite', '--type', 'String', '--name', name, '--value', value);
      assert.equal(r.code, 0, r.stderr);
    };
    await put(`${FLEET}/rollout/candidate/options/services.demo.version`, '"2"');
    const startAt = new Date().toISOString();
    await put(`${FLEET}/rollout/strategy`, JSON.stringify({ type: 'exponential', stepPercent: 5, intervalSeconds: 900, bakeSeconds: 3600, errorThreshold: 3, startAt }));
    await put(`${FLEET}/revision`, String(Date.now()));
    let status = await agent('status', '--json');
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { rollout: { state: string; percent: number; steps: number } }).rollout.percent, 5);
    await put(`${FLEET}/rollout/halt`, 'stopped from the console');
    status = await agent('status');
    assert.match(status.stdout, /HALTED \(operator\): stopped from the console/);
    const del = await aws('delete-parameters', '--names', `${FLEET}/rollout/halt`, `${FLEET}/rollout/strategy`, `${FLEET}/rollout/candidate/options/services.demo.version`);
    assert.equal(del.code, 0, del.stderr);
    status = await agent('status');
    assert.match(status.stdout, /\/nixos\/fleet: no rollout/);
  });
});
