// The command line as operators and scripts use it: help and usage errors, `render` (switches
// nothing), `status` exit codes (an API, as cloud-init's), `status --wait` against the daemon,
// `emulate` with the AWS CLI, `sandbox --once` run twice on one directory, and a sandbox refused
// on a directory whose agent runs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { lockRoot } from '../../agent/lock.js';
import { cleanEnv, openSandbox, runAgent } from '../../sandbox/sandbox.js';
import { AWS_CLI, CLI, hasAwsCli, hasNix, markerModule, parseJson, terminate, type CliResult, type StatusJson, withInstance } from '../support/e2e.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const COMMANDS = ['run', 'converge', 'render', 'status', 'generations', 'rollback', 'suspend', 'resume', 'emulate', 'sandbox'];

function cli(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...cleanEnv(process.env), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

function run(command: string, args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}


describe('the command line', { concurrency: true }, () => {
  test('--help of every command exits 0; usage errors exit 2', async () => {
    const top = await cli(['--help']);
    assert.equal(top.code, 0);
    for (const c of COMMANDS) assert.match(top.stdout, new RegExp(`^\\s+${c}\\s`, 'm'), `top-level help lists ${c}`);
    const helps = await Promise.all(COMMANDS.map((c) => cli([c, '--help'])));
    helps.forEach((h, k) => {
      assert.equal(h.code, 0, `${COMMANDS[k]} --help: ${h.stderr}`);
      assert.match(h.stdout, new RegExp(`usage: nixos-ec2-agent ${COMMANDS[k]}\\b`));
    });
    const bad = await Promise.all([cli(['frobnicate']), cli(['status', '--no-such-flag']), cli(['converge']), cli(['render', '--out']), cli(['converge', '--once', '--now'])]);
    for (const b of bad) {
      assert.equal(b.code, 2, `${b.stdout}${b.stderr}`);
      assert.ok(b.stderr.length > 0, 'a usage error says what is wrong');
    }
    assert.match(bad[0]!.stderr, /unknown command "frobnicate"/);
    assert.match(bad[1]!.stderr, /no-such-flag/);
    assert.match(bad[4]!.stderr, /^nixos-ec2-agent converge: --once .* and --now .* exclude each other$/m);
  });

  const SITE = '{ ... }: { environment.etc."site".text = "local"; }\n';

  test('render prints and writes what would be rendered, and switches nothing', async () => {
    await withInstance({ userData: '{ ... }:\n{\n  services.nginx.enable = true;\n}\n', parameters: [FLEET_TZ] }, async (i) => {
      await mkdir(i.file('etc/nixos-ec2-agent/local.d'), { recursive: true });
      await writeFile(i.file('etc/nixos-ec2-agent/local.d/site.nix'), SITE);
      const before = await i.configuration();
      const running = await i.running();
      const out = path.join(i.dir, 'rendered');
      const printed = await i.run(['render', '--out', out]);
      assert.equal(printed.code, 0, printed.stderr);
      assert.match(printed.stdout, /services\.nginx\.enable = true/);
      assert.match(printed.stdout, /time\.timeZone/);
      const written = (await readdir(out, { recursive: true })).map(String);
      assert.ok(written.some((f) => f.endsWith('configuration.nix')), written.join(', '));
      assert.ok(written.some((f) => f.endsWith('user-data.nix')), written.join(', '));
      // The tree written imports its own files, as configuration.nix would on the instance.
      const imports = [...(await readFile(path.join(out, 'etc/nixos/configuration.nix'), 'utf8')).matchAll(/^\s*(\/\S+\.nix)/gm)].map((m) => m[1] as string);
      assert.ok(imports.some((f) => f === path.join(out, 'etc/nixos/ec2-agent', path.basename(path.dirname(f)), 'user-data.nix')), imports.join(', '));
      // Every file it imports is in the tree, the local ones (local.d here) copied as they are.
      assert.ok(imports.some((f) => f === path.join(out, 'etc/nixos-ec2-agent/local.d/site.nix')), imports.join(', '));
      for (const f of imports) assert.ok(existsSync(f), `${f} was not written`);
      assert.equal(await readFile(path.join(out, 'etc/nixos-ec2-agent/local.d/site.nix'), 'utf8'), SITE);
      const json = await i.run(['render', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const rendered = parseJson(json.stdout, 'render --json', json) as { desiredHash: string; files: { path: string; text: string }[] };
      assert.match(rendered.desiredHash, /^[0-9a-f]{64}$/);
      assert.ok(rendered.files.some((f) => f.path.endsWith('configuration.nix')));
      assert.equal(await i.configuration(), before, 'configuration.nix is unchanged');
      assert.equal(await i.running(), running);
      assert.deepEqual(await i.generationLinks(), ['system-1-link']);
      assert.equal(await i.steps(), 0, 'no rebuild step');
    });
  });

  test('render refuses, exit 2, what the parser gate of a pass would refuse, naming where', { skip: hasNix ? false : 'nix-instantiate is not installed' }, async () => {
    await withInstance({ parameters: [FLEET_TZ, { Name: '/nixos/fleet/modules/broken', Value: '{ ... }: { services.nginx.enable = ; }', Type: 'String' }] }, async (i) => {
      const before = await i.configuration();
      const printed = await i.run(['render']);
      assert.equal(printed.code, 2, printed.stderr);
      assert.match(printed.stdout, /services\.nginx\.enable = ;/, 'the render is still shown');
      const lines = printed.stderr.trim().split('\n').filter((l) => !l.startsWith('{'));
      assert.equal(lines.length, 1, printed.stderr);
      assert.match(lines[0]!, /^nixos-ec2-agent render: .*\/nixos\/fleet\/modules\/broken.*: does not parse as Nix: line 1, column \d+: /);
      const json = await i.run(['render', '--json']);
      assert.equal(json.code, 2, json.stderr);
      const rendered = parseJson(json.stdout, 'render --json', json) as { parseErrors: { source: string; line: number }[] };
      assert.equal(rendered.parseErrors.length, 1, JSON.stringify(rendered.parseErrors));
      assert.match(rendered.parseErrors[0]!.source, /\/nixos\/fleet\/modules\/broken/);
      assert.equal(await i.configuration(), before, 'configuration.nix is unchanged');
      assert.equal(await i.steps(), 0, 'no rebuild step');
      // Nothing refused is written: a new DIR is not made, an existing one is left as it was.
      const fresh = path.join(i.dir, 'rendered');
      const refused = await i.run(['render', '--out', fresh]);
      assert.equal(refused.code, 2, refused.stderr);
      assert.doesNotMatch(refused.stdout, /written under/);
      assert.deepEqual(await readdir(i.dir).then((names) => names.filter((n) => n.includes('rendered'))), [], 'no DIR, and no staging directory beside it');
      const kept = path.join(i.dir, 'kept');
      await mkdir(path.join(kept, 'etc/nixos'), { recursive: true });
      await writeFile(path.join(kept, 'etc/nixos/configuration.nix'), '{ }\n');
      assert.equal((await i.run(['render', '--out', kept])).code, 2);
      assert.deepEqual((await readdir(kept, { recursive: true })).map(String).sort(), ['etc', 'etc/nixos', 'etc/nixos/configuration.nix']);
      assert.equal(await readFile(path.join(kept, 'etc/nixos/configuration.nix'), 'utf8'), '{ }\n');

      i.put('/nixos/fleet/modules/broken', '{ ... }: { services.nginx.enable = true; }');
      const fixed = await i.run(['render', '--json']);
      assert.equal(fixed.code, 0, fixed.stderr);
      assert.deepEqual((parseJson(fixed.stdout, 'render --json', fixed) as { parseErrors: unknown[] }).parseErrors, []);
      const into = await i.run(['render', '--out', kept]);
      assert.equal(into.code, 0, into.stderr);
      assert.match(await readFile(path.join(kept, 'etc/nixos/configuration.nix'), 'utf8'), /nixos-ec2-agent/, 'replaced by the render');
      assert.deepEqual((await readdir(kept)).filter((n) => n.startsWith('.')), [], 'no staging directory left inside DIR');
    });
  });

  test('status exit codes: 0 converged, 2 degraded, 1 failed with no good generation', async () => {
    await withInstance({ parameters: [FLEET_TZ] }, async (i) => {
      const none = await i.run(['status']);
      assert.equal(none.code, 1, 'before the agent ever ran');

      assert.equal((await i.converge()).code, 0);
      const converged = await i.status();
      assert.equal(converged.code, 0);
      assert.equal(converged.status.condition, 'converged');
      assert.equal((await i.run(['status'])).code, 0, 'the same without --json');

      i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-switch'));
      assert.equal((await i.converge()).code, 1);
      const degraded = await i.status();
      assert.equal(degraded.code, 2, JSON.stringify(degraded.status));
      assert.equal(degraded.status.condition, 'degraded');
      assert.equal(degraded.status.noGoodGeneration, false);

      // The last good generation turns unhealthy too (a probe that always fails): a bad push is
      // rolled back to a generation that fails verification as well.
      await i.setConfig(['health', 'probes'], [{ name: 'always-fails', command: { argv: ['false'], timeoutMs: 5_000 } }]);
      i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-unit'));
      assert.equal((await i.converge()).code, 1);
      const failed = await i.status();
      assert.equal(failed.code, 1, JSON.stringify(failed.status));
      assert.equal(failed.status.condition, 'failed');
      assert.equal(failed.status.noGoodGeneration, true);
    });
  });

  test('status --wait returns once the daemon has ended its first convergence', async () => {
    await withInstance({ parameters: [FLEET_TZ], config: { ssm: { pollIntervalSeconds: 300 } } }, async (i) => {
      const daemon = i.start(['run']);
      try {
        const waiting = i.start(['status', '--wait', '--json']);
        const bound = setTimeout(() => waiting.child.kill('SIGKILL'), 40_000);
        const waited = await waiting.done.finally(() => clearTimeout(bound));
        assert.equal(waited.signal, null, 'status --wait returned by itself');
        assert.equal(waited.code, 0, `${waited.stdout}\n${waited.stderr}`);
        const status = parseJson(waited.stdout, 'status --wait --json', waited) as StatusJson;
        assert.equal(status.firstConvergenceDone, true);
        assert.equal(status.condition, 'converged');
        const onDisk = JSON.parse(await i.read('run/nixos-ec2-agent/status.json')) as StatusJson;
        assert.equal(onDisk.firstConvergenceDone, true);
      } finally {
        const ended = await terminate(daemon);
        assert.equal(ended.forced, false, 'the daemon stops on SIGTERM');
        assert.equal(ended.code, 0, `the daemon stops cleanly on SIGTERM: ${ended.stderr.slice(-2000)}`);
      }
    });
  });

  test('emulate prints NAME=VALUE lines and serves the AWS CLI until SIGTERM', { skip: hasAwsCli ? false : `${AWS_CLI} is not installed` }, async () => {
    const child = spawn(process.execPath, [CLI, 'emulate'], { env: cleanEnv(process.env), stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let stdout = '';
      const vars = await new Promise<Record<string, string>>((resolve, reject) => {
        child.on('error', reject);
        child.on('close', (code) => reject(new Error(`emulate ended early (${code})`)));
        child.stdout.on('data', (c: Buffer) => {
          stdout += c.toString('utf8');
          const parsed = Object.fromEntries(stdout.split('\n').filter((l) => /^[A-Z0-9_]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
          if (parsed.AWS_ENDPOINT_URL_AUTO_SCALING && parsed.AWS_ENDPOINT_URL_SSM && parsed.AWS_EC2_METADATA_SERVICE_ENDPOINT) resolve(parsed);
        });
      });
      for (const line of stdout.split('\n').filter(Boolean)) assert.match(line, /^[A-Z][A-Z0-9_]*=\S+$/, 'every line is NAME=VALUE');
      for (const url of [vars.AWS_ENDPOINT_URL_SSM, vars.AWS_ENDPOINT_URL_AUTO_SCALING, vars.AWS_EC2_METADATA_SERVICE_ENDPOINT]) {
        assert.match(url ?? '', /^http:\/\/127\.0\.0\.1:\d+$/);
      }
      const scratch = await mkdtemp(path.join(tmpdir(), 'nea-e2e-aws-'));
      try {
        const env = {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: scratch,
          ...vars,
          AWS_CONFIG_FILE: path.join(scratch, 'config'),
          AWS_SHARED_CREDENTIALS_FILE: path.join(scratch, 'credentials'),
          AWS_EC2_METADATA_DISABLED: 'true',
          AWS_PAGER: '',
        };
        const endpoint = ['--endpoint-url', vars.AWS_ENDPOINT_URL_SSM as string];
        const put = await run(AWS_CLI, ['ssm', 'put-parameter', ...endpoint, '--name', '/nixos/fleet/options/time.timeZone', '--type', 'String', '--value', '"UTC"', '--output', 'json'], env);
        assert.equal(put.code, 0, put.stderr);
        assert.equal((JSON.parse(put.stdout) as { Version: number }).Version, 1);
        const get = await run(AWS_CLI, ['ssm', 'get-parameter', ...endpoint, '--name', '/nixos/fleet/options/time.timeZone', '--output', 'json'], env);
        assert.equal(get.code, 0, get.stderr);
        const got = JSON.parse(get.stdout) as { Parameter: { Name: string; Value: string; Version: number; Type: string } };
        assert.equal(got.Parameter.Value, '"UTC"');
        assert.equal(got.Parameter.Type, 'String');
        assert.equal(got.Parameter.Version, 1);
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    } finally {
      const ended = new Promise<number | null>((resolve) => {
        if (child.exitCode !== null) resolve(child.exitCode);
        else child.once('exit', (code) => resolve(code));
      });
      child.kill('SIGTERM');
      const bound = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await ended;
      clearTimeout(bound);
      assert.equal(code, 0, 'emulate ends cleanly on SIGTERM');
    }
  });

  test('sandbox --once twice on one directory: the same instance, unchanged the second time', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-e2e-sandbox-'));
    try {
      const first = await cli(['sandbox', '--dir', dir, '--once', '--json']);
      assert.equal(first.code, 0, first.stderr.slice(-3000));
      const a = parseJson(first.stdout, 'sandbox --once --json', first) as StatusJson & { instanceId: string };
      assert.equal(a.lastResult?.outcome, 'converged');
      const second = await cli(['sandbox', '--dir', dir, '--once', '--json']);
      assert.equal(second.code, 0, second.stderr.slice(-3000));
      const b = parseJson(second.stdout, 'sandbox --once --json', second) as StatusJson & { instanceId: string };
      assert.equal(b.instanceId, a.instanceId, 'the same instance id');
      assert.equal(b.lastResult?.outcome, 'unchanged');
      assert.equal(b.desired?.hash, a.desired?.hash);
      assert.equal(b.running?.storePath, a.running?.storePath);
      const summary = await cli(['sandbox', '--dir', dir, '--once']);
      assert.equal(summary.code, 0);
      assert.match(summary.stdout, new RegExp(a.instanceId));
      const links = (await readdir(path.join(dir, 'root/nix/var/nix/profiles'))).filter((n) => /^system-\d+-link$/.test(n));
      assert.deepEqual(links.sort(), ['system-1-link', 'system-2-link']);
      assert.ok((await readFile(path.join(dir, 'agent.log'), 'utf8')).length > 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('sandbox: an agent that printed no status is answered with its own last error, not only "see the log"', async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-e2e-sandbox-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const sandbox = await openSandbox(dir, {});
    t.after(() => sandbox.close());
    // Taken here, after the sandbox let go: the agent it starts finds the root held.
    const lock = await lockRoot(sandbox.layout.root, process.pid);
    t.after(() => lock.release());
    const ran = await runAgent(sandbox, ['converge', '--once', '--json']);
    assert.equal(ran.code, 2);
    assert.equal(ran.stdout, '');
    assert.equal(ran.lastError, `another nixos-ec2-agent (pid ${process.pid}) is working on this root (it holds ${lock.file}); nothing was changed`);
  });

  test('a live sandbox: status, converge --now and suspend/resume reach its daemon with --root alone', async () => {
    // Deep enough that the socket under root would not fit a unix socket path.
    const dir = path.join(await mkdtemp(path.join(tmpdir(), 'nea-e2e-live-')), 'a-directory-name-long-enough-to-push-the-socket-path-past-its-limit');
    const child = spawn(process.execPath, [CLI, 'sandbox', '--dir', dir], { env: cleanEnv(process.env), stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      let stdout = '';
      const root = await new Promise<string>((resolve, reject) => {
        child.on('error', reject);
        void exited.then((code) => reject(new Error(`sandbox ended early (${code})`)));
        child.stdout.on('data', (c: Buffer) => {
          stdout += c.toString('utf8');
          const line = stdout.split('\n').find((l) => l.startsWith('NIXOS_EC2_AGENT_ROOT='));
          if (line && stdout.includes('NIXOS_EC2_AGENT_URL=')) resolve(line.slice('NIXOS_EC2_AGENT_ROOT='.length));
        });
      });
      assert.equal(root, path.join(dir, 'root'));
      const waited = await cli(['status', '--wait', '--json', '--root', root]);
      assert.equal(waited.code, 0, waited.stdout + waited.stderr);
      // Another sandbox on the same directory would boot the machine under the running daemon
      // (emptying /run: its socket, its status, its secrets); it is refused before it touches anything.
      for (const again of [['sandbox', '--dir', dir, '--once'], ['sandbox', '--dir', dir]]) {
        const refused = await cli(again);
        assert.equal(refused.code, 2, `${again.join(' ')}: ${refused.stdout}${refused.stderr}`);
        assert.equal(refused.stdout, '', 'no banner');
        assert.match(refused.stderr, /^nixos-ec2-agent sandbox: another nixos-ec2-agent \(pid \d+\) is working on this root \(it holds .*\/root\/var\/lib\/nixos-ec2-agent\/lock\); nothing was changed\n$/);
      }
      assert.ok(existsSync(path.join(root, 'run/nixos-ec2-agent/status.json')), 'the daemon\'s status is still there');
      const now = await cli(['converge', '--now', '--json', '--root', root]);
      assert.equal(now.code, 0, now.stdout + now.stderr);
      const answer = parseJson(now.stdout, 'converge --now --json', now) as { ok: boolean; outcome: string };
      assert.equal(answer.ok, true);
      assert.equal(answer.outcome, 'unchanged', 'the daemon ran the pass');
      const suspended = await cli(['suspend', '--json', '--root', root]);
      assert.equal(suspended.code, 0, suspended.stderr);
      const status = parseJson((await cli(['status', '--json', '--root', root])).stdout, 'status --json', now) as StatusJson & { suspended?: unknown };
      assert.ok(status.suspended, 'the running daemon took the suspend');
      assert.equal((await cli(['resume', '--root', root])).code, 0);
    } finally {
      child.kill('SIGTERM');
      const bound = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(bound);
      await rm(path.dirname(dir), { recursive: true, force: true });
      assert.equal(code, 0, 'the sandbox ends cleanly on SIGTERM');
    }
  });
});
