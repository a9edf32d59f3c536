// The README's operator commands, run as written against a live sandbox: every ```sh sandbox
// block, line by line, with `aws` pointed at the emulators and `nixos-ec2-agent` at the sandbox's
// configuration, exactly as the README tells a person to try them.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cleanEnv, openSandbox, type Sandbox } from '../../sandbox/sandbox.js';
import { freePort } from '../../sandbox/emulators/server.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = fileURLToPath(new URL('../../agent/cli.js', import.meta.url));
const AWS = '/usr/bin/aws';

/** The commands of every ```sh sandbox block, in order, with the heading they stand under. */
export function sandboxBlocks(markdown: string): { heading: string; commands: string[] }[] {
  const blocks: { heading: string; commands: string[] }[] = [];
  let heading = '';
  let inBlock: string[] | undefined;
  for (const line of markdown.split('\n')) {
    if (inBlock) {
      if (line.startsWith('```')) {
        blocks.push({ heading, commands: inBlock });
        inBlock = undefined;
      } else if (line.trim() && !line.trim().startsWith('#')) inBlock.push(line.replace(/\s+#.*$/, '').trim());
      continue;
    }
    if (line.startsWith('#')) heading = line.replace(/^#+\s*/, '');
    else if (/^```sh sandbox\s*$/.test(line)) inBlock = [];
  }
  return blocks;
}


const skip = existsSync(AWS) ? false : `${AWS} (Debian's awscli) is not installed`;

describe('the README, run against a live sandbox', { skip, timeout: 180_000 }, () => {
  let dir: string;
  let sandbox: Sandbox;
  let daemon: ReturnType<typeof spawn>;
  let port: number;
  let blocks: { heading: string; commands: string[] }[];

  before(async () => {
    blocks = sandboxBlocks(await readFile(path.join(REPO, 'README.md'), 'utf8'));
    dir = await mkdtemp(path.join(tmpdir(), 'nea-readme-'));
    port = await freePort();
    sandbox = await openSandbox(dir, {}, {
      http: { listen: `127.0.0.1:${port}` },
      ssm: { pollIntervalSeconds: 1, pollJitter: 0 },
      watch: { quietPeriodMs: 100 },
      lifecycle: { enabled: false },
    });
    const log = await open(sandbox.layout.log, 'a');
    daemon = spawn(process.execPath, [CLI, 'run', '--config', sandbox.layout.config], {
      env: { ...cleanEnv(process.env), ...sandbox.env },
      stdio: ['ignore', log.fd, log.fd],
    });
    await log.close();
    const wait = await runLine('nixos-ec2-agent status --wait');
    assert.equal(wait.status, 0, `the daemon's first convergence: ${wait.stdout}${wait.stderr}`);
  });

  after(async () => {
    if (daemon && daemon.exitCode === null) {
      const exited = new Promise((resolve) => daemon.once('close', resolve));
      daemon.kill('SIGTERM');
      await exited;
    }
    await sandbox?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // Asynchronous: the emulators answer from this very process, so it must never block.
  function runLine(command: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
    const prelude = [
      `nixos-ec2-agent() { ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} "$@" --config ${JSON.stringify(sandbox.layout.config)}; }`,
      `aws() { local service="$1"; shift; case "$service" in`,
      `  ssm) ${AWS} --endpoint-url "$AWS_ENDPOINT_URL_SSM" ssm "$@" ;;`,
      `  autoscaling) ${AWS} --endpoint-url "$AWS_ENDPOINT_URL_AUTO_SCALING" autoscaling "$@" ;;`,
      `  *) echo "not emulated: $service" >&2; return 99 ;;`,
      'esac; }',
    ].join('\n');
    const script = `${prelude}\n${command.replaceAll('localhost:9731', `127.0.0.1:${port}`)}\n`;
    return new Promise((resolve, reject) => {
      const child = spawn('bash', ['-c', script], { env: { ...cleanEnv(process.env), ...sandbox.world.cliEnv(), HOME: dir } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      child.on('error', reject);
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
  }

  it('has sandbox blocks for pushing, status, and rollback', () => {
    const headings = blocks.map((b) => b.heading);
    assert.ok(headings.some((h) => /push/i.test(h)), `blocks under: ${headings.join(', ')}`);
    assert.ok(headings.some((h) => /status/i.test(h)));
    assert.ok(headings.some((h) => /roll back/i.test(h)));
    assert.ok(blocks.every((b) => b.commands.length > 0));
  });

  it('runs every command of every block, in order, each exiting 0', async () => {
    for (const block of blocks) {
      for (const command of block.commands) {
        const result = await runLine(command);
        assert.equal(result.status, 0, `${block.heading}: \`${command}\` exited ${result.status}\n${result.stdout}\n${result.stderr}`);
        assert.doesNotMatch(result.stdout, /s3cret-value/, `${command} printed the secret`);
      }
      if (/push/i.test(block.heading)) {
        const now = await runLine('nixos-ec2-agent converge --now');
        assert.equal(now.status, 0, `converge --now after the pushes: ${now.stdout}${now.stderr}`);
      }
    }
  });

  it('left what the README says: the pushed option rendered, the secret only in its file', async () => {
    const parts = spawnSync('grep', ['-rl', 'Europe/Paris', path.join(sandbox.layout.root, 'etc/nixos/ec2-agent')], { encoding: 'utf8' });
    assert.equal(parts.status, 0, 'the pushed time zone is in a rendered part');
    const secret = spawnSync('grep', ['-rl', 's3cret-value', sandbox.layout.root], { encoding: 'utf8' });
    assert.deepEqual(secret.stdout.trim().split('\n'), [path.join(sandbox.layout.root, 'run/nixos-ec2-agent/secrets/db-password')]);
  });
});
