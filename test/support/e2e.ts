// End-to-end harness: a sandboxed instance (emulated IMDS, SSM and Auto Scaling, the stand-in
// nixos-rebuild) in a temporary directory, and the real agent CLI run as its own process against
// it, its stdout, stderr and exit code captured. The agent reaches the emulators only through the
// standard AWS environment variables, as it would on EC2.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PutParameterRequest } from '../../sandbox/emulators/ssm.js';
import { cleanEnv, openSandbox, type Sandbox } from '../../sandbox/sandbox.js';
import type { InstanceSpec } from '../../sandbox/world.js';
import { shippedLaunch } from './launch.js';
export { isAlive } from '../../agent/fs.js';

export const CLI = fileURLToPath(new URL('../../agent/cli.js', import.meta.url));
const SHIPPED = shippedLaunch();
export const NIX_INSTANTIATE = '/usr/bin/nix-instantiate';
/** The Debian AWS CLI v2, by path: a pyenv shim may put a different `aws` first on PATH. */
export const AWS_CLI = '/usr/bin/aws';

export const hasNix = existsSync(NIX_INSTANTIATE);
export const hasAwsCli = existsSync(AWS_CLI);

/**
 * Agent settings that keep every pass short: the defaults wait minutes, tests wait seconds. Every
 * timeout keeps generous headroom over what the step takes on a loaded 2-core machine: a test
 * that needs one to fire sets it (and a fault that outlasts it) itself.
 */
export const FAST_CONFIG = {
  imds: { retries: 2, timeoutMs: 5_000 },
  ssm: { maxAttempts: 2 },
  health: { graceSeconds: 1, intervalSeconds: 0.25 },
  rebuild: { buildTimeoutSeconds: 30, activateTimeoutSeconds: 30 },
  lifecycle: { enabled: false },
};

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Running {
  readonly child: ChildProcess;
  readonly done: Promise<CliResult>;
}

export interface InstanceOptions {
  /** Raw user data; undefined: none at all. */
  readonly userData?: string | Buffer;
  /** SSM seeded with these (PutParameter requests); default none. */
  readonly parameters?: readonly PutParameterRequest[];
  readonly instance?: InstanceSpec;
  /** Deep-merged over the sandbox's agent configuration (after FAST_CONFIG). */
  readonly config?: Record<string, unknown>;
}

/** A plain deep merge of JSON objects; arrays and scalars from `over` replace. */
export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? deepMerge(b, v) : v;
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export class Instance {
  private overrides: Record<string, unknown>;

  private constructor(
    readonly dir: string,
    public sandbox: Sandbox,
    overrides: Record<string, unknown>,
  ) {
    this.overrides = overrides;
  }

  /** A new instance in a fresh temporary directory. */
  static async launch(options: InstanceOptions = {}): Promise<Instance> {
    const dir = await mkdtemp(path.join(tmpdir(), 'nea-e2e-'));
    const inputs = path.join(dir, 'inputs');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(inputs, { recursive: true });
    const flags: { 'user-data'?: string; parameters?: string; instance?: string } = {};
    // An empty file is "no user data": the sandbox's demo user data is only for a bare `sandbox`.
    await writeFile(path.join(inputs, 'user-data'), options.userData ?? '');
    flags['user-data'] = path.join(inputs, 'user-data');
    await writeFile(path.join(inputs, 'parameters.json'), JSON.stringify(options.parameters ?? []));
    flags.parameters = path.join(inputs, 'parameters.json');
    if (options.instance) {
      await writeFile(path.join(inputs, 'instance.json'), JSON.stringify(options.instance));
      flags.instance = path.join(inputs, 'instance.json');
    }
    const overrides = deepMerge(FAST_CONFIG, options.config ?? {});
    const sandbox = await openSandbox(path.join(dir, 'sandbox'), flags);
    const instance = new Instance(dir, sandbox, overrides);
    await instance.writeConfig();
    return instance;
  }

  get root(): string {
    return this.sandbox.layout.root;
  }

  get world() {
    return this.sandbox.world;
  }

  get instanceId(): string {
    return this.sandbox.world.instance.instanceId;
  }

  /** Changes the agent's configuration for the next runs (deep-merged over what is set). */
  async configure(patch: Record<string, unknown>): Promise<void> {
    this.overrides = deepMerge(this.overrides, patch);
    await this.writeConfig();
  }

  /** Replaces a list-valued or whole setting, e.g. `health.probes`. */
  async setConfig(pathKeys: readonly string[], value: unknown): Promise<void> {
    const patch: Record<string, unknown> = {};
    let at = patch;
    pathKeys.slice(0, -1).forEach((k) => {
      at[k] = {};
      at = at[k] as Record<string, unknown>;
    });
    at[pathKeys.at(-1) as string] = value;
    await this.configure(patch);
  }

  private async writeConfig(): Promise<void> {
    const file = this.sandbox.layout.config;
    const base = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    await writeFile(file, `${JSON.stringify(deepMerge(base, this.overrides), null, 2)}\n`);
  }

  /** A reboot of the same instance (same dir): /run starts empty; optionally as another instance id. */
  async reboot(options: { instance?: InstanceSpec } = {}): Promise<void> {
    await this.sandbox.close();
    const flags: { instance?: string } = {};
    if (options.instance) {
      const file = path.join(this.dir, 'inputs', `instance-${Date.now()}.json`);
      await writeFile(file, JSON.stringify(options.instance));
      flags.instance = file;
    }
    this.sandbox = await openSandbox(path.join(this.dir, 'sandbox'), flags);
    await this.writeConfig();
  }

  /**
   * Starts the agent CLI with the sandbox's configuration, as the Nix package's wrapper starts it
   * (node's flags and environment: test/support/launch.ts); its stderr also goes to agent.log.
   */
  start(args: readonly string[], extraEnv: Record<string, string> = {}, how: OtherLaunch = {}): Running {
    const child = spawn(how.node ?? process.execPath, [...SHIPPED.nodeFlags, ...(how.nodeFlags ?? []), how.cli ?? CLI, ...args, '--config', this.sandbox.layout.config], {
      env: { ...cleanEnv(process.env), ...SHIPPED.env, ...this.sandbox.env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const log = this.sandbox.layout.log;
    const done = new Promise<CliResult>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => {
        appendFile(log, stderr).then(
          () => resolve({ code, signal, stdout, stderr }),
          () => resolve({ code, signal, stdout, stderr }),
        );
      });
    });
    return { child, done };
  }

  /** `run` as a daemon for one test: killed if still running, and the instance closed, when the test ends. */
  daemon(t: { after(fn: () => Promise<void>): void }): Running {
    const run = this.start(['run']);
    t.after(async () => {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
      await run.done.catch(() => undefined);
      await this.close();
    });
    return run;
  }

  run(args: readonly string[], extraEnv: Record<string, string> = {}, how: OtherLaunch = {}): Promise<CliResult> {
    return this.start(args, extraEnv, how).done;
  }

  /** `converge --once --json`: the exit code and the status it printed. */
  async converge(): Promise<CliResult & { status: StatusJson }> {
    const result = await this.run(['converge', '--once', '--json']);
    return { ...result, status: parseJson(result.stdout, 'converge --once --json', result) as StatusJson };
  }

  async status(): Promise<CliResult & { status: StatusJson }> {
    const result = await this.run(['status', '--json']);
    return { ...result, status: parseJson(result.stdout, 'status --json', result) as StatusJson };
  }

  async generations(): Promise<GenerationJson[]> {
    const result = await this.run(['generations', '--json']);
    if (result.code !== 0) throw new Error(`generations --json exited ${result.code}: ${result.stderr}`);
    return parseJson(result.stdout, 'generations --json', result) as GenerationJson[];
  }

  put(name: string, value: string, type: 'String' | 'SecureString' = 'String'): void {
    this.world.ssm.put({ Name: name, Value: value, Type: type, Overwrite: true });
  }

  file(rel: string): string {
    return path.join(this.root, rel);
  }

  /** status.json as the agent last wrote it; undefined before the first write (or mid-replace). */
  async statusFile<T = StatusJson>(): Promise<T | undefined> {
    const file = this.file('run/nixos-ec2-agent/status.json');
    if (!existsSync(file)) return undefined;
    try {
      return JSON.parse(await readFile(file, 'utf8')) as T;
    } catch {
      return undefined;
    }
  }

  async read(rel: string): Promise<string> {
    return readFile(this.file(rel), 'utf8');
  }

  async configuration(): Promise<string> {
    return this.read('etc/nixos/configuration.nix');
  }

  /** Where /run/current-system points: the running system's store path. */
  async running(): Promise<string> {
    return readlink(this.file('run/current-system'));
  }

  /** The number of the profile's current generation (system -> system-N-link). */
  async profileGeneration(): Promise<number> {
    const link = await readlink(this.file('nix/var/nix/profiles/system'));
    const m = /system-(\d+)-link$/.exec(link);
    if (!m) throw new Error(`unexpected profile link ${link}`);
    return Number(m[1]);
  }

  /** The store path of the profile's current generation: what boots next. */
  async profileSystem(): Promise<string> {
    const link = await readlink(this.file('nix/var/nix/profiles/system'));
    return readlink(this.file(`nix/var/nix/profiles/${link}`));
  }

  async generationLinks(): Promise<string[]> {
    const names = await readdir(this.file('nix/var/nix/profiles'));
    return names.filter((n) => /^system-\d+-link$/.test(n)).sort();
  }

  async durableState(): Promise<DurableStateJson> {
    return JSON.parse(await this.read('var/lib/nixos-ec2-agent/state.json')) as DurableStateJson;
  }

  /** The agent's structured log (every run's stderr), one object per JSON line. */
  async logEvents(): Promise<LogLine[]> {
    const text = existsSync(this.sandbox.layout.log) ? await readFile(this.sandbox.layout.log, 'utf8') : '';
    const out: LogLine[] = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as LogLine);
      } catch {
        // A line of a child's output that merely starts with a brace.
      }
    }
    return out;
  }

  /** How many `nixos-rebuild` / switch-to-configuration steps the agent has started so far. */
  async steps(stage?: string): Promise<number> {
    return (await this.logEvents()).filter((e) => e.event === 'step.start' && (stage === undefined || e.stage === stage)).length;
  }

  async close(): Promise<void> {
    await this.sandbox.world.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}

export interface LogLine {
  readonly level: number | string;
  readonly event?: string;
  readonly stage?: string;
  readonly msg?: string;
  readonly [key: string]: unknown;
}

/** A fresh instance for `body`, removed afterwards whatever `body` did. */
export async function withInstance(options: InstanceOptions, body: (i: Instance) => Promise<void>): Promise<void> {
  const instance = await Instance.launch(options);
  try {
    await body(instance);
  } finally {
    await instance.close();
  }
}

/** A running agent's structured log, read live from its stdout (agent.log gets it only at exit). */
export class LiveLog {
  readonly events: LogLine[] = [];
  private partial = '';

  constructor(run: Running) {
    run.child.stdout?.on('data', (chunk: Buffer) => {
      const lines = (this.partial + chunk.toString('utf8')).split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        try {
          this.events.push(JSON.parse(line) as LogLine);
        } catch {
          // A child's output line that merely starts with a brace.
        }
      }
    });
  }

  of(event: string): LogLine[] {
    return this.events.filter((e) => e.event === event);
  }

  /** Every build the agent started, in order. */
  builds(): LogLine[] {
    return this.of('step.start').filter((e) => e.stage === 'build');
  }
}

/** The agent started otherwise than as shipped: another node, another copy of the bin, node flags added. */
export interface OtherLaunch {
  readonly node?: string;
  readonly cli?: string;
  readonly nodeFlags?: readonly string[];
}

/** The parts of `status --json` the tests read. */
export interface StatusJson {
  readonly condition: string;
  readonly phase: string;
  readonly message: string;
  readonly firstConvergenceDone: boolean;
  readonly noGoodGeneration: boolean;
  readonly rebootRequired: boolean;
  readonly reasons: readonly string[];
  readonly desired?: { hash: string; sources: { userData: string; parameters: { name: string; version: number }[] }; notes: string[] };
  readonly running?: { storePath: string; desiredHash?: string; generation?: number };
  readonly lastGood?: { storePath: string; desiredHash?: string };
  readonly lastResult?: { outcome: string; desiredHash?: string; error?: { kind: string; message: string; stage?: string; where?: string } };
  readonly suspended?: { since: string };
  readonly held?: { since: string; desiredHash: string };
}

export interface GenerationJson {
  readonly number: number;
  readonly storePath: string;
  readonly current: boolean;
  readonly booted: boolean;
  readonly running: boolean;
  readonly lastGood: boolean;
  readonly desiredHash?: string;
  readonly sources?: { userData: string; parameters: { name: string; version: number }[] };
}

export interface DurableStateJson {
  readonly journal: { phase: string; desiredHash?: string; storePath?: string };
  readonly lastGood?: { storePath: string; desiredHash?: string };
  readonly running?: { storePath: string; desiredHash: string };
  readonly failed: Record<string, { stage: string; reason: string }>;
  readonly held?: { desiredHash: string };
  readonly suspended?: { since: number };
  readonly userDataScript?: { instanceId: string; digest: string; exitCode: number | null; notRun?: string };
}

export function parseJson(text: string, what: string, context?: CliResult): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what} printed no JSON (exit ${context?.code}):\nstdout: ${text}\nstderr: ${context?.stderr.slice(-3000) ?? ''}`);
  }
}

// ---- processes --------------------------------------------------------------------------------

interface ProcInfo {
  readonly pid: number;
  readonly ppid: number;
  /** Its process group. */
  readonly pgid: number;
  /** The arguments, joined by spaces. */
  readonly cmdline: string;
}

/** Every process on the machine, from /proc (Linux). */
export async function processes(): Promise<ProcInfo[]> {
  const out: ProcInfo[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      // The command name is in parentheses and may hold spaces: fields resume after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmdline = (await readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0').join(' ').trim();
      out.push({ pid: Number(name), ppid: Number(fields[1]), pgid: Number(fields[2]), cmdline });
    } catch {
      // It ended while being read.
    }
  }
  return out;
}

/** The processes whose command line mentions `text` (e.g. a sandbox's root). */
export async function processesMentioning(text: string): Promise<ProcInfo[]> {
  return (await processes()).filter((p) => p.pid !== process.pid && p.cmdline.includes(text));
}

/** Whether a process `pid` exists (signal 0). */

/**
 * SIGKILLs a process and every descendant (they run in their own process groups), as systemd does
 * to a crashed unit's control group. Each is stopped first, so none can start another unseen.
 */
export async function killTree(pid: number): Promise<void> {
  const victims = new Set<number>([pid]);
  const signal = (p: number, sig: NodeJS.Signals) => {
    try {
      process.kill(p, sig);
    } catch {
      // Already gone.
    }
  };
  signal(pid, 'SIGSTOP');
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of await processes()) {
      if (!victims.has(p.pid) && victims.has(p.ppid)) {
        signal(p.pid, 'SIGSTOP');
        victims.add(p.pid);
        grew = true;
      }
    }
  }
  for (const v of victims) signal(v, 'SIGKILL');
}

/**
 * Sends SIGTERM and waits up to `graceMs` for the process to end; past that it is SIGKILLed (so a
 * test never leaves it behind) and `forced` says so.
 */
export async function terminate(running: Running, graceMs = 15_000): Promise<CliResult & { forced: boolean }> {
  running.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
  const first = await Promise.race([running.done, late]);
  clearTimeout(timer);
  if (first !== 'late') return { ...first, forced: false };
  await killTree(running.child.pid as number);
  return { ...(await running.done), forced: true };
}

/**
 * Polls `check` every `intervalMs` until it returns a value, or fails after `timeoutMs`. The
 * default is headroom, not an expectation: a passing wait ends at its event, and on a loaded
 * 2-core machine several daemons' first passes, interpreted (nix/launch.json), take far longer than alone.
 */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 120_000, intervalMs = 5): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** As waitFor, for a condition read synchronously (a daemon in this process, its recorded statuses). */
export async function waitUntil(what: string, condition: () => boolean, timeoutMs = 90_000): Promise<void> {
  await waitFor(what, async () => (condition() ? true : undefined), timeoutMs, 20);
}

/** The Nix files under `dir` that the real parser rejects (empty when Nix is absent). */
export async function unparsableNixFiles(dir: string): Promise<string[]> {
  if (!hasNix) return [];
  const bad: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const full = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile() && entry.name.endsWith('.nix')) {
        const r = spawnSync(NIX_INSTANTIATE, ['--store', 'dummy://', '--parse', full], { encoding: 'utf8' });
        if (r.status !== 0) bad.push(`${full}: ${r.stderr.trim()}`);
      }
    }
  };
  await walk(dir);
  return bad;
}

/** A Nix module setting one option, with a marker comment the stand-in reacts to. */
export function markerModule(marker: string): string {
  return `# ${marker}\n{ ... }:\n{\n  environment.etc."marker".text = "${marker}";\n}\n`;
}
