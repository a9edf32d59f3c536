// The long-running sandbox: the agent's daemon (`run`) over the sandbox, the endpoints printed,
// until SIGINT/SIGTERM. Operators' commands work against it as they would on an instance.
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../agent/fs.js';
import { envLines, waitForSignal } from './emulate.js';
import { cleanEnv, lastErrorSince, logSize, type Sandbox } from './sandbox.js';
import { readFile } from 'node:fs/promises';
import { freePort } from './emulators/server.js';

const CLI = fileURLToPath(new URL('../agent/cli.js', import.meta.url));


export async function runLive(sandbox: Sandbox): Promise<number> {
  const { layout, world } = sandbox;
  const port = await freePort();
  const config = JSON.parse(await readFile(layout.config, 'utf8')) as Record<string, unknown>;
  await writeFileAtomic(layout.config, `${JSON.stringify({ ...config, http: { listen: `127.0.0.1:${port}` } }, null, 2)}\n`);
  const from = await logSize(layout.log);
  const log = await open(layout.log, 'a');
  const child = spawn(process.execPath, [CLI, 'run', '--config', layout.config], {
    env: { ...cleanEnv(process.env), ...sandbox.env },
    stdio: ['ignore', log.fd, log.fd],
  });
  const url = `http://127.0.0.1:${port}`;
  process.stdout.write(
    envLines({
      ...world.env(),
      AWS_ACCESS_KEY_ID: 'AKIDSANDBOXEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'sandbox-secret-access-key',
      NIXOS_EC2_AGENT_URL: url,
      NIXOS_EC2_AGENT_ROOT: layout.root,
    }),
  );
  process.stderr.write(
    [
      '',
      `The agent is running over ${layout.root} (log: ${layout.log}).`,
      'Push a change as an operator would, from another shell with the lines above exported:',
      `  aws --endpoint-url "$AWS_ENDPOINT_URL_SSM" ssm put-parameter --overwrite --type String \\`,
      `      --name /nixos/fleet/options/services.nginx.enable --value true`,
      '  # Each poll reads only the revision when one exists (one GetParameters call; none with the',
      '  # revision tag): create or bump it after a change, or the next poll fetches the whole tree.',
      `  aws --endpoint-url "$AWS_ENDPOINT_URL_SSM" ssm put-parameter --overwrite --type String \\`,
      `      --name /nixos/fleet/revision --value "$(date +%s)"`,
      '  # (The revision tag, nixos-ec2-agent-revision, is read from IMDS; the emulated IMDS changes',
      '  # tags only in-process, so here the revision parameter or converge --now is the way.)',
      `  npx nixos-ec2-agent converge --now --root "$NIXOS_EC2_AGENT_ROOT"     # instead of waiting for the next poll`,
      `  echo '{ ... }: { environment.etc."hello".text = "hi"; }' > ${path.relative(process.cwd(), path.join(layout.root, 'etc/nixos-ec2-agent/local.d')) || '.'}/hello.nix   # a watched drop-in`,
      `  npx nixos-ec2-agent status --root "$NIXOS_EC2_AGENT_ROOT"`,
      `  curl "$NIXOS_EC2_AGENT_URL/healthz" "$NIXOS_EC2_AGENT_URL/status"`,
      'Stop with Ctrl-C.',
      '',
    ].join('\n'),
  );
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  const first = await Promise.race([waitForSignal().then(() => 'signal' as const), exited.then(() => 'exited' as const)]);
  if (first === 'signal') child.kill('SIGTERM');
  const code = await exited;
  await log.close();
  if (first === 'exited') {
    // The banner said the agent is running: say that it stopped, and why, rather than end quietly.
    const why = await lastErrorSince(layout.log, from);
    process.stderr.write(`nixos-ec2-agent sandbox: the agent exited (code ${code})${why ? `: ${why}` : ''}; see ${layout.log}\n`);
  }
  await sandbox.close();
  return first === 'signal' ? 0 : code;
}
