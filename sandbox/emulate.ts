// `emulate`: the IMDS, SSM, Auto Scaling and CloudWatch emulators on loopback until SIGINT/SIGTERM, with one
// NAME=VALUE line for each endpoint so a shell can `eval` or `export` them.
import { readWorldFiles, World, WorldInputError } from './world.js';

export function envLines(vars: Record<string, string>): string {
  return Object.entries(vars)
    .map(([k, v]) => `${k}=${v}\n`)
    .join('');
}

function port(value: string | boolean | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw Object.assign(new Error(`--${flag} ${String(value)} is not a port number`), { kind: 'invalid-input' });
  return n;
}

export async function emulateCommand(flags: Record<string, string | boolean | undefined>): Promise<number> {
  const files = await readWorldFiles(flags as { 'user-data'?: string; parameters?: string; instance?: string });
  const ports = {
    ...(port(flags['imds-port'], 'imds-port') !== undefined ? { imds: port(flags['imds-port'], 'imds-port') as number } : {}),
    ...(port(flags['ssm-port'], 'ssm-port') !== undefined ? { ssm: port(flags['ssm-port'], 'ssm-port') as number } : {}),
    ...(port(flags['autoscaling-port'], 'autoscaling-port') !== undefined ? { autoscaling: port(flags['autoscaling-port'], 'autoscaling-port') as number } : {}),
  };
  const host = typeof flags.host === 'string' ? flags.host : undefined;
  const world = await World.start({ ...files, ...(host !== undefined ? { host } : {}), ports }).catch((err: unknown) => {
    throw host !== undefined ? hostRefused(host, err) : err;
  });
  process.stdout.write(
    envLines({
      ...world.env(),
      // For the AWS CLI and other tools: the emulators check that requests are signed, not by whom.
      AWS_ACCESS_KEY_ID: 'AKIDEMULATOREXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'emulator-secret-access-key',
    }),
  );
  await waitForSignal();
  await world.close();
  return 0;
}

/**
 * A --host that names no address (getaddrinfo: ENOTFOUND), or none of this machine's
 * (EADDRNOTAVAIL), is the caller's mistake, not the machine's; a port already taken stays the
 * machine's refusal (exit 1).
 */
function hostRefused(host: string, err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOTFOUND' || code === 'EADDRNOTAVAIL') return new WorldInputError(`--host ${host}: ${code === 'ENOTFOUND' ? 'no such host' : 'not an address of this machine'} (${(err as Error).message})`, { cause: err });
  return err;
}

export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const done = (sig: NodeJS.Signals) => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve(sig);
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}
