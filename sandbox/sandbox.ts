// `sandbox`: the emulated AWS, the stand-in nixos-rebuild and the real agent (its own process, its
// own sd_notify and control socket) over a sandboxed root. The same DIR again is the same
// instance: its id, its parameters, its generations and the agent's state survive, like a reboot.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../agent/fs.js';
import { LOCK_FILE, lockRoot, RootBusyError, type RootLock } from '../agent/lock.js';
import type { AutoScalingSnapshot } from './emulators/autoscaling.js';
import type { SsmSnapshot } from './emulators/ssm.js';
import { bootMachine, installStandins } from './standin/install.js';
import { layoutOf } from './standin/layout.js';
import { networkUp } from './standin/machine.js';
import { DEMO_USER_DATA, demoParameters } from './demo.js';
import { readWorldFiles, seedParameters, World, WorldInputError, type InstanceSpec } from './world.js';

const CLI = fileURLToPath(new URL('../agent/cli.js', import.meta.url));

export interface SandboxLayout {
  readonly dir: string;
  readonly root: string;
  readonly bin: string;
  readonly config: string;
  readonly log: string;
  readonly saved: string;
}

export function sandboxLayout(dir: string): SandboxLayout {
  const abs = path.resolve(dir);
  return {
    dir: abs,
    root: path.join(abs, 'root'),
    bin: path.join(abs, 'bin'),
    config: path.join(abs, 'agent.json'),
    log: path.join(abs, 'agent.log'),
    saved: path.join(abs, 'world.json'),
  };
}

interface Saved {
  readonly instance: InstanceSpec;
  readonly userData?: string;
  readonly ssm?: SsmSnapshot;
  readonly autoscaling?: AutoScalingSnapshot;
}

export interface Sandbox {
  readonly layout: SandboxLayout;
  readonly world: World;
  /** The environment the agent runs with. */
  readonly env: Record<string, string>;
  save(): Promise<void>;
  close(): Promise<void>;
}

/** Starts the world for DIR (creating or rebooting the instance) and writes the agent's config. */
export async function openSandbox(
  dir: string,
  flags: { 'user-data'?: string; parameters?: string; instance?: string },
  agentConfig: Record<string, unknown> = {},
): Promise<Sandbox> {
  const layout = sandboxLayout(dir);
  await mkdir(layout.dir, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
    // A file in the way (the path, or a directory above it) is the caller's mistake, not the machine's.
    if (err.code === 'EEXIST' || err.code === 'ENOTDIR') throw new WorldInputError(`--dir ${dir}: not a directory, nor one that can be made (${err.message})`, { cause: err });
    throw err;
  });
  // Held while the machine is set up: a boot empties /run under an agent that works on the root
  // (its control socket, its status, its secrets), and the world file would be written twice.
  // Let go before the agent starts, which takes it for itself.
  const lock = await holdRoot(layout.root);
  try {
    return await startSandbox(layout, flags, agentConfig);
  } finally {
    await lock.release();
  }
}

/** The root's lock, or the agent's own refusal naming the process that holds it (exit 2). */
async function holdRoot(root: string): Promise<RootLock> {
  // Made as an instance has them; the lock makes only its own directory, root's alone.
  await mkdir(path.dirname(path.dirname(path.join(root, LOCK_FILE))), { recursive: true, mode: 0o755 });
  try {
    return await lockRoot(root, process.pid);
  } catch (err) {
    if (err instanceof RootBusyError) throw new WorldInputError(`${err.message}; nothing was changed`, { cause: err });
    throw err;
  }
}

async function startSandbox(layout: SandboxLayout, flags: { 'user-data'?: string; parameters?: string; instance?: string }, agentConfig: Record<string, unknown>): Promise<Sandbox> {
  const files = await readWorldFiles(flags);
  const saved = await readSaved(layout.saved);
  const fresh = saved === undefined;
  const instance: InstanceSpec = files.instance ?? saved?.instance ?? { instanceId: `i-${randomBytes(9).toString('hex').slice(0, 17)}` };
  const userData = files.userData ?? (saved ? (saved.userData !== undefined ? Buffer.from(saved.userData, 'base64') : undefined) : Buffer.from(DEMO_USER_DATA));

  // The instance reaches the emulators as long as the system it runs leaves its network up.
  const machine = layoutOf(layout.root);
  const world = await World.start({ instance, ...(userData ? { userData } : {}), ssmThroughput: null, admit: () => networkUp(machine) });
  let standins: Awaited<ReturnType<typeof installStandins>>;
  try {
    try {
      if (saved?.ssm) world.ssm.restore(saved.ssm);
      if (saved?.autoscaling) world.autoscaling.restore(saved.autoscaling);
    } catch (err) {
      throw new WorldInputError(`${layout.saved}: not a sandbox's saved world (${(err as Error).message}); remove it to start a new instance`);
    }
    // The file states what SSM holds: applying it again to the same instance changes nothing.
    if (files.parameters) seedParameters(world.ssm, files.parameters, flags.parameters ?? '--parameters');
    else if (fresh) seedParameters(world.ssm, demoParameters(world.instance.instanceId, world.group), 'the demo parameters');

    // A reboot: /run starts empty, the profile's system is booted.
    standins = await installStandins({ binDir: layout.bin, root: layout.root });
    await bootMachine(layout.root);
  } catch (err) {
    // Nothing may keep the process alive after a failed start.
    await world.close();
    throw err;
  }

  const config = {
    root: layout.root,
    logLevel: 'info',
    rebuild: {
      nixosRebuild: standins.nixosRebuild,
      nixEnv: standins.nixEnv,
      nixChannel: standins.nixChannel,
      validate: 'if-available',
      buildTimeoutSeconds: 60,
      activateTimeoutSeconds: 60,
    },
    health: { systemctl: standins.systemctl, graceSeconds: 2, intervalSeconds: 0.5 },
    ssm: { pollIntervalSeconds: 2, pollJitter: 0.2 },
    retry: { failedBackoffSeconds: 30 },
    http: { listen: '127.0.0.1:0' },
    lifecycle: { heartbeatSeconds: 10, budgetSeconds: 300 },
    ...agentConfig,
  };
  await writeFileAtomic(layout.config, `${JSON.stringify(config, null, 2)}\n`);

  const env = {
    ...world.env(),
    // The agent's SDK clients take role credentials from the emulated IMDS, as on EC2: no
    // credentials of this machine's user may leak in.
    AWS_SHARED_CREDENTIALS_FILE: path.join(layout.dir, 'no-aws-credentials'),
    AWS_CONFIG_FILE: path.join(layout.dir, 'no-aws-config'),
  };
  const sandbox: Sandbox = {
    layout,
    world,
    env,
    save: async () => {
      const next: Saved = {
        instance,
        ...(userData ? { userData: userData.toString('base64') } : {}),
        ssm: world.ssm.snapshot(),
        autoscaling: world.autoscaling.snapshot(),
      };
      // The emulated SSM keeps SecureString values in plain text: the file is the owner's alone.
      await writeFileAtomic(layout.saved, `${JSON.stringify(next, null, 2)}\n`, { mode: 0o600 });
    },
    close: async () => {
      await sandbox.save();
      await world.close();
    },
  };
  await sandbox.save();
  return sandbox;
}

async function readSaved(file: string): Promise<Saved | undefined> {
  if (!existsSync(file)) return undefined;
  try {
    const saved = JSON.parse(await readFile(file, 'utf8')) as Saved;
    if (typeof saved !== 'object' || saved === null || typeof saved.instance !== 'object') throw new Error('no instance');
    return saved;
  } catch (err) {
    throw new WorldInputError(`${file}: not a sandbox's saved world (${(err as Error).message}); remove it to start a new instance`);
  }
}

/**
 * Runs the agent CLI in its own process against the sandbox, its log appended to agent.log;
 * `lastError` is the last error it wrote there, for a caller that got no status from it.
 */
export async function runAgent(sandbox: Sandbox, args: readonly string[], extraEnv: Record<string, string> = {}): Promise<{ code: number; stdout: string; lastError?: string }> {
  const from = await logSize(sandbox.layout.log);
  const log = await open(sandbox.layout.log, 'a');
  try {
    const ended = await new Promise<{ code: number; stdout: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, ...args, '--config', sandbox.layout.config], {
        env: { ...cleanEnv(process.env), ...sandbox.env, ...extraEnv },
        stdio: ['ignore', 'pipe', log.fd],
      });
      let stdout = '';
      child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code: code ?? 1, stdout }));
    });
    const lastError = await lastErrorSince(sandbox.layout.log, from);
    return { ...ended, ...(lastError ? { lastError } : {}) };
  } finally {
    await log.close();
  }
}

export async function logSize(file: string): Promise<number> {
  return stat(file).then(
    (s) => s.size,
    () => 0,
  );
}

/**
 * The last error an agent wrote to `file` from byte `from` on: its one-line refusal (a command's
 * last words on stderr), else the message of its last structured entry at level error or above.
 */
export async function lastErrorSince(file: string, from: number): Promise<string | undefined> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) return undefined;
  let text: string;
  try {
    const { size } = await handle.stat();
    const bytes = Buffer.alloc(Math.max(0, size - from));
    await handle.read(bytes, 0, bytes.length, from);
    text = bytes.toString('utf8');
  } finally {
    await handle.close();
  }
  let logged: string | undefined;
  for (const line of text.split('\n').reverse()) {
    const trimmed = line.trim();
    if (trimmed === '') continue;
    if (!trimmed.startsWith('{')) return trimmed;
    if (logged !== undefined) continue;
    try {
      const entry = JSON.parse(trimmed) as { level?: unknown; msg?: unknown };
      if (typeof entry.level === 'number' && entry.level >= 50 && typeof entry.msg === 'string') logged = entry.msg;
    } catch {
      // Half a line from a process killed mid-write: not an entry.
    }
  }
  return logged;
}

/** The agent must see the sandbox's AWS, not the caller's. */
export function cleanEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || k.startsWith('AWS_') || k === 'NOTIFY_SOCKET' || k.startsWith('WATCHDOG_')) continue;
    out[k] = v;
  }
  return out;
}

export async function sandboxCommand(flags: Record<string, string | boolean | undefined>): Promise<number> {
  const dir = typeof flags.dir === 'string' ? flags.dir : '.sandbox';
  const sandbox = await openSandbox(dir, flags as { 'user-data'?: string; parameters?: string; instance?: string });
  if (flags.once) {
    try {
      const { code, stdout, lastError } = await runAgent(sandbox, ['converge', '--once', '--json']);
      let status: Record<string, unknown> | undefined;
      try {
        status = JSON.parse(stdout) as Record<string, unknown>;
      } catch {
        status = undefined;
      }
      if (flags.json) {
        process.stdout.write(stdout.endsWith('\n') ? stdout : `${stdout}\n`);
        if (!status && lastError) process.stderr.write(`nixos-ec2-agent sandbox: ${lastError}\n`);
      }
      else process.stdout.write(summary(sandbox, code, status, lastError));
      return code;
    } finally {
      await sandbox.close();
    }
  }
  return (await import('./live.js')).runLive(sandbox);
}

function summary(sandbox: Sandbox, code: number, status: Record<string, unknown> | undefined, lastError: string | undefined): string {
  const { layout, world } = sandbox;
  const s = status as
    | { condition?: string; message?: string; desired?: { hash: string; notes: string[] }; running?: { storePath: string; generation?: number }; reasons?: string[] }
    | undefined;
  const rel = (p: string) => path.relative(process.cwd(), p) || '.';
  const lines = [
    `nixos-ec2-agent sandbox: ${s?.condition ?? 'no status'}: ${s?.message ?? lastError ?? '(the agent printed no status; see the log)'}`,
    `  instance        ${world.instance.instanceId}${world.group ? ` in Auto Scaling group ${world.group}` : ''} (${world.instance.region})`,
  ];
  if (s?.desired) lines.push(`  desired state   ${s.desired.hash}`);
  if (s?.running) lines.push(`  running         generation ${s.running.generation ?? '?'}: ${rel(s.running.storePath)}`);
  lines.push(`  configuration   ${rel(path.join(layout.root, 'etc/nixos/configuration.nix'))}`);
  lines.push(`  rendered parts  ${rel(path.join(layout.root, 'etc/nixos/ec2-agent'))}/`);
  lines.push(`  secrets         ${rel(path.join(layout.root, 'run/nixos-ec2-agent/secrets'))}/ (mode 0400, never in a .nix file)`);
  if (world.group) {
    const inst = world.autoscaling.instance(world.instance.instanceId);
    if (inst) lines.push(`  auto scaling    ${inst.lifecycleState}, ${inst.healthStatus}${inst.lastResult ? ` (launch hook completed ${inst.lastResult})` : ''}`);
  }
  for (const r of s?.reasons ?? []) lines.push(`  reason          ${r}`);
  for (const n of s?.desired?.notes ?? []) lines.push(`  note            ${n}`);
  lines.push(`  agent log       ${rel(layout.log)}`);
  lines.push(`  status          npx nixos-ec2-agent status --config ${rel(layout.config)}`);
  lines.push(`  generations     npx nixos-ec2-agent generations --config ${rel(layout.config)}`);
  lines.push(`  exit code       ${code}  (running it again with the same --dir is a reboot of the same instance)`);
  return `${lines.join('\n')}\n`;
}
