// `boot`: how long from the agent's start until it launches nixos-rebuild on a first boot, the
// interval an instance waits on before it can be in service. Beside it, in the same run: a bare
// `node -e 0` (what any Node program pays before its first line) and an amazon-init equivalent (the
// same IMDSv2 token PUT and user-data GET with curl, a `cp` to configuration.nix, then the same
// rebuild), against the same emulated IMDS.
//
// Beside those, the floor: boot-floor.ts, the least a Node program can do on the same path (IMDSv2
// user data, one file written, the rebuild launched with the Nix parser beside it), launched with the
// agent's flags: what is left above it is the agent's own.
//
// Every timed process gets the environment the systemd unit gives the agent: this one's, without
// Node's own variables (unitEnv).
//
// Each agent run is `converge --once` on a fresh sandboxed root, with user data only (SSM off),
// launched as the Nix package's wrapper launches it (nix/launch.json: node's flags, environment).
// Its nixos-rebuild is a script that records the wall-clock time it started and exits 1, so the
// interval is spawn → that timestamp, and the pass ends right after.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cleanEnv } from '../../sandbox/sandbox.js';
import { World } from '../../sandbox/world.js';
import { bootMachine } from '../../sandbox/standin/install.js';
import { shippedLaunch, shownWords, splitLaunchWords, type Launch } from '../support/launch.js';
import { BenchUsageError, epochMs, intFlag, median, parseBenchArgs, ratio, round, spread, onPath, table, unitEnv, type BenchResult, type Print } from './common.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = process.env.NIXOS_EC2_AGENT_BENCH_CLI ?? fileURLToPath(new URL('../../agent/cli.js', import.meta.url));
const FLOOR = fileURLToPath(new URL('./boot-floor.js', import.meta.url));
const TARGET_OVER_NODE = 2.5;

/** What a first boot's user data might hold: a small Nix module, as amazon-init takes it. */
const USER_DATA = `{ config, pkgs, ... }:
{
  networking.hostName = "bench-web-1";
  services.nginx.enable = true;
  environment.systemPackages = [ pkgs.htop ];
}
`;

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('boot', args, {
    breakdown: { type: 'boolean' },
    keep: { type: 'boolean' },
    /** Profiles each agent run with `node --cpu-prof` into DIR (the timings then include the profiler). */
    'cpu-prof': { type: 'string' },
    /**
     * Every disk flush (fsync, fdatasync) of the agent's runs takes this much longer, injected with
     * strace: a root on a slower disk than this machine's (EBS), where what the boot path flushes
     * counts. The agent runs under strace, so only the agent's runs compare with each other.
     */
    'flush-ms': { type: 'string' },
    /**
     * The agent as its unit starts it at boot, `run` (the daemon: its watches, reporter and control
     * socket start beside the first pass), stopped once it has launched the rebuild; otherwise
     * `converge --once`.
     */
    daemon: { type: 'boolean' },
    /** A JSON object merged over the agent's configuration, to measure what a setting costs. */
    'agent-config': { type: 'string' },
    /**
     * Another build's cli.js (launched as this one), or another launch of this one: `--flags=WORDS`,
     * node flags and NAME=value environment variables in place of nix/launch.json's (`--flags=`
     * alone: a plain `node cli.js`), timed in the same interleaved loop: how two builds or two
     * launches compare on a loaded machine. Repeatable.
     */
    compare: { type: 'string', multiple: true },
  });
  const overrides = parseOverrides(flags['agent-config']);
  const cpuProf = typeof flags['cpu-prof'] === 'string' ? path.resolve(flags['cpu-prof']) : undefined;
  const flushMs = flags['flush-ms'] === undefined ? undefined : Number(flags['flush-ms']);
  if (flushMs !== undefined && !(flushMs >= 0 && flushMs <= 1000)) throw new BenchUsageError('--flush-ms wants milliseconds from 0 to 1000');
  const strace = flushMs === undefined ? undefined : onPath('strace');
  if (flushMs !== undefined && !strace) throw new BenchUsageError('--flush-ms needs strace on PATH (apt-get install strace)');
  const how: AgentRun = { ...(cpuProf ? { cpuProf } : {}), ...(strace && flushMs !== undefined ? { flush: { strace, ms: flushMs } } : {}), ...(flags.daemon ? { daemon: true } : {}) };
  const agentLabel = flags.daemon ? 'agent run (daemon)' : 'agent converge --once';
  const quick = Boolean(flags.quick);
  const runs = intFlag('runs', flags.runs, quick ? 1 : 7);
  const warmup = quick ? 0 : 1;
  const nixInstantiate = onPath('nix-instantiate');
  const curl = onPath('curl');
  if (!curl) throw new Error('boot: curl is not on PATH; the amazon-init baseline needs it');

  const shipped = shippedLaunch();
  const compare = compareTargets(flags.compare, shipped);
  const base = await mkdtemp(path.join(tmpdir(), 'nixos-ec2-agent-bench-boot-'));
  const world = await World.start({ userData: Buffer.from(USER_DATA), ssmThroughput: null });
  try {
    print(`boot: ${runs} run(s) each after ${warmup} warm-up, interleaved; user data only (SSM off); nix parser gate ${nixInstantiate ? 'on (nix-instantiate)' : 'off (nix-instantiate not found)'}; agent launched as shipped: ${launchLabel(shipped)}`);
    print(`  timed with the unit's environment: Node's own variables (NODE_EXTRA_CA_CERTS, NODE_OPTIONS, …) left out`);
    if (how.flush) print(`  every disk flush of the agent's runs ${how.flush.ms} ms longer (strace; compare the agent's runs with each other only)`);
    const samples = { node: [] as number[], floor: [] as number[], amazonInit: [] as number[], agent: [] as number[], agentExit: [] as number[], passStart: [] as number[] };
    for (let i = 0; i < warmup + runs; i++) {
      const dir = path.join(base, `run-${i}`);
      const node = await nodeStart();
      const floor = await floorStart(world, path.join(dir, 'floor'), shipped, nixInstantiate);
      const amazonInit = await amazonInitStart(world, path.join(dir, 'amazon-init'));
      const agent = await agentStart(world, path.join(dir, 'agent'), nixInstantiate !== undefined, how, overrides, { label: 'shipped', cli: CLI, launch: shipped, samples: [] });
      const others = [];
      for (const [j, target] of compare.entries()) others.push(await agentStart(world, path.join(dir, `compare-${j}`), nixInstantiate !== undefined, how, overrides, target));
      if (i < warmup) continue;
      others.forEach((o, j) => (compare[j] as CompareTarget).samples.push(o.launchMs));
      samples.node.push(node);
      samples.floor.push(floor);
      samples.amazonInit.push(amazonInit);
      samples.agent.push(agent.launchMs);
      samples.agentExit.push(agent.exitMs);
      if (agent.passStartMs !== undefined) samples.passStart.push(agent.passStartMs);
    }
    const node = median(samples.node);
    const floor = median(samples.floor);
    const amazonInit = median(samples.amazonInit);
    const agent = median(samples.agent);
    print(`  node -e 0 (spawn → exit)              ${spread(samples.node)}`);
    print(`  floor: least Node program (→ rebuild) ${spread(samples.floor)}`);
    print(`  amazon-init equivalent (→ rebuild)    ${spread(samples.amazonInit)}`);
    print(`  ${`${agentLabel} (→ rebuild)`.padEnd(37)} ${spread(samples.agent)}`);
    if (samples.passStart.length === samples.agent.length) {
      // The log's timestamps are whole milliseconds: the split is good to about 1 ms.
      print(`    of which start → pass begins         ${spread(samples.passStart)}`);
      print(`    and pass begins → rebuild            ${spread(samples.agent.map((a, i) => a - (samples.passStart[i] as number)))}`);
    }
    print(`  ${`${agentLabel} (→ exit)`.padEnd(37)} ${spread(samples.agentExit)}`);
    const met = agent <= TARGET_OVER_NODE * node;
    print(`  agent / node -e 0 = ${ratio(agent, node)} (target ≤ ${TARGET_OVER_NODE}: ${met ? 'met' : 'missed'}); floor / node -e 0 = ${ratio(floor, node)}; agent / floor = ${ratio(agent, floor)}; agent / amazon-init = ${ratio(agent, amazonInit)}`);

    const compared: Record<string, number> = {};
    compare.forEach((c, j) => {
      print(`  compared: ${c.label} (→ rebuild)  ${spread(c.samples)}; / node -e 0 = ${ratio(median(c.samples), node)}; / this build = ${ratio(median(c.samples), agent)}`);
      compared[`compare_${j}_over_node`] = ratio(median(c.samples), node);
    });

    if (flags.breakdown) await breakdown(print, quick ? 1 : 5, nixInstantiate);
    return {
      name: 'boot',
      figures: {
        runs,
        node_ms: node,
        floor_ms: floor,
        amazon_init_ms: amazonInit,
        agent_ms: agent,
        ...(samples.passStart.length === samples.agent.length
          ? { agent_start_ms: median(samples.passStart), agent_pass_ms: median(samples.agent.map((a, i) => a - (samples.passStart[i] as number))) }
          : {}),
        agent_exit_ms: median(samples.agentExit),
        agent_over_node: ratio(agent, node),
        floor_over_node: ratio(floor, node),
        agent_over_floor: ratio(agent, floor),
        agent_over_amazon_init: ratio(agent, amazonInit),
        target_over_node: TARGET_OVER_NODE,
        target: met ? 'met' : 'missed',
        ...compared,
      },
    };
  } finally {
    await world.close();
    if (!flags.keep) await rm(base, { recursive: true, force: true });
    else print(`  kept ${base}`);
  }
}

/** spawn → exit of a bare `node -e 0`: the floor for any Node program. */
function nodeStart(): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['-e', '0'], { env: unitEnv(), stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', () => resolve(performance.now() - t0));
  });
}

/** spawn → rebuild launched of boot-floor.js, launched as the agent is. */
async function floorStart(world: World, dir: string, launch: Launch, nixInstantiate: string | undefined): Promise<number> {
  await mkdir(dir, { recursive: true });
  const { script, stamp } = await recorder(dir);
  const args = [...launch.nodeFlags, FLOOR, world.imds.url, path.join(dir, 'configuration.nix'), script, ...(nixInstantiate ? [nixInstantiate] : [])];
  const t0 = epochMs();
  const code = await exitOf(spawn(process.execPath, args, { env: { ...unitEnv(), ...launch.env }, stdio: ['ignore', 'ignore', 'inherit'] }));
  if (code !== 1) throw new Error(`boot: the floor program exited ${code}, not the recorder's 1`);
  return (await readStamp(stamp, 'the floor program')) - t0;
}

/** A script standing in for nixos-rebuild: it records when it started (epoch seconds, µs) and fails. */
async function recorder(dir: string): Promise<{ script: string; stamp: string }> {
  const script = path.join(dir, 'nixos-rebuild');
  const stamp = path.join(dir, 'rebuild-started');
  // EPOCHREALTIME is a bash builtin: no `date` fork inside the measured interval.
  await writeFile(script, `#!/bin/bash\nprintf '%s\\n' "$EPOCHREALTIME" > ${shq(stamp)}\nexit 1\n`, { mode: 0o755 });
  return { script, stamp };
}

async function readStamp(stamp: string, what: string): Promise<number> {
  if (!existsSync(stamp)) throw new Error(`boot: ${what} never launched nixos-rebuild`);
  const seconds = Number((await readFile(stamp, 'utf8')).trim());
  if (!Number.isFinite(seconds)) throw new Error(`boot: ${what}: unreadable timestamp in ${stamp}`);
  return seconds * 1000;
}

/**
 * nixpkgs' amazon-init, reduced to what happens before nixos-rebuild: IMDSv2 token, user data, copy
 * into place, rebuild. Against the same emulator, so both pay the same network.
 */
async function amazonInitStart(world: World, dir: string): Promise<number> {
  const root = path.join(dir, 'root');
  await mkdir(path.join(root, 'etc/nixos'), { recursive: true });
  const { script: rebuild, stamp } = await recorder(dir);
  const script = path.join(dir, 'amazon-init');
  const userData = path.join(dir, 'user-data');
  await writeFile(
    script,
    [
      '#!/bin/bash',
      'set -euo pipefail',
      `endpoint=${shq(world.imds.url)}`,
      'token=$(curl -sSf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$endpoint/latest/api/token")',
      `curl -sSf -H "X-aws-ec2-metadata-token: $token" -o ${shq(userData)} "$endpoint/latest/user-data"`,
      `cp ${shq(userData)} ${shq(path.join(root, 'etc/nixos/configuration.nix'))}`,
      `exec ${shq(rebuild)} switch`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const t0 = epochMs();
  const code = await exitOf(spawn(script, [], { stdio: 'ignore' }));
  if (code !== 1) throw new Error(`boot: the amazon-init equivalent exited ${code}, not the recorder's 1`);
  return (await readStamp(stamp, 'the amazon-init equivalent')) - t0;
}

interface CompareTarget {
  readonly label: string;
  readonly cli: string;
  readonly launch: Launch;
  readonly samples: number[];
}

function launchLabel(launch: Launch): string {
  return [...shownWords(Object.entries(launch.env).map(([k, v]) => `${k}=${v}`)), 'node', ...launch.nodeFlags].join(' ');
}

function compareTargets(values: string | boolean | (string | boolean)[] | undefined, shipped: Launch): CompareTarget[] {
  const list = Array.isArray(values) ? values : values === undefined ? [] : [values];
  return list.map((v) => {
    if (typeof v !== 'string') throw new BenchUsageError('--compare wants a path to a cli.js or --flags=WORDS');
    if (v.startsWith('--flags=')) {
      const launch = splitLaunchWords(v.slice('--flags='.length).split(/[ ,]+/).filter(Boolean));
      return { label: launchLabel(launch), cli: CLI, launch, samples: [] };
    }
    if (!existsSync(v)) throw new BenchUsageError(`--compare: ${v} does not exist`);
    return { label: v, cli: path.resolve(v), launch: shipped, samples: [] };
  });
}

/** How the agent's runs are launched beyond the build and launch compared: profiled, or on a slow disk. */
interface AgentRun {
  readonly cpuProf?: string;
  readonly flush?: { readonly strace: string; readonly ms: number };
  /** `run`, sent SIGTERM once the rebuild is launched; its exit then is that stop's. */
  readonly daemon?: boolean;
}

async function agentStart(world: World, dir: string, parserGate: boolean, how: AgentRun, overrides: Record<string, unknown>, target: CompareTarget): Promise<{ launchMs: number; exitMs: number; passStartMs?: number }> {
  const root = path.join(dir, 'root');
  await mkdir(dir, { recursive: true });
  // A first boot: the image's own system is running and nothing has rendered yet.
  await bootMachine(root);
  const { script, stamp } = await recorder(dir);
  const configFile = path.join(dir, 'agent.json');
  await writeFile(
    configFile,
    JSON.stringify({
      root,
      ssm: { enabled: false },
      rebuild: { nixosRebuild: script, validate: parserGate ? 'require' : 'if-available' },
      http: { listen: null },
      controlSocket: '/run/ctl.sock',
      ...overrides,
    }),
  );
  const env = {
    ...cleanEnv(unitEnv()),
    ...world.env(),
    AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'no-aws-credentials'),
    AWS_CONFIG_FILE: path.join(dir, 'no-aws-config'),
    ...target.launch.env,
  };
  const log = await open(path.join(dir, 'agent.log'), 'w');
  try {
    const t0 = epochMs();
    const m0 = performance.now();
    const nodeArgs = [...(how.cpuProf ? ['--cpu-prof', '--cpu-prof-interval', '100', '--cpu-prof-dir', how.cpuProf] : []), ...target.launch.nodeFlags];
    const command = [process.execPath, ...nodeArgs, target.cli, ...(how.daemon ? ['run'] : ['converge', '--once']), '--config', configFile];
    // --seccomp-bpf: only the flushes stop the traced process; every other call runs untouched.
    const slowed = how.flush
      ? [how.flush.strace, '-f', '-qq', '--seccomp-bpf', '-o', '/dev/null', '-e', 'trace=fsync,fdatasync', '-e', `inject=fsync,fdatasync:delay_exit=${Math.round(how.flush.ms * 1000)}`, ...command]
      : command;
    const child = spawn(slowed[0] as string, slowed.slice(1), { env, stdio: ['ignore', 'ignore', log.fd] });
    const exited = exitOf(child);
    if (how.daemon) await stopOnceLaunched(child, stamp, exited);
    const code = await exited;
    const exitMs = performance.now() - m0;
    if (!existsSync(stamp)) {
      const tail = (await readFile(path.join(dir, 'agent.log'), 'utf8')).split('\n').slice(-15).join('\n');
      throw new Error(`boot: the agent exited ${code} without launching nixos-rebuild; its log ends:\n${tail}`);
    }
    const launchMs = (await readStamp(stamp, 'the agent')) - t0;
    const passStart = await logTime(path.join(dir, 'agent.log'), 'pass.start');
    return { launchMs, exitMs, ...(passStart !== undefined ? { passStartMs: passStart - t0 } : {}) };
  } finally {
    await log.close();
  }
}

/** Polls for the recorder's stamp (a benchmark's own wait, outside the timed interval), then stops the daemon. */
async function stopOnceLaunched(child: ReturnType<typeof spawn>, stamp: string, exited: Promise<number>): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 60_000;
  while (!gone && !existsSync(stamp) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
  child.kill('SIGTERM');
}

/**
 * Where the agent's start goes: the import time of each module on the boot path, each in a fresh
 * process (so nothing is cached by an earlier import), and one Nix parser call.
 */
async function breakdown(print: Print, runs: number, nixInstantiate: string | undefined): Promise<void> {
  const dist = (p: string) => pathToFileURL(path.join(REPO, 'dist', p)).href;
  const modules: [string, string][] = [
    ['zod (config, state, lifecycle)', 'zod'],
    ['pino (log)', 'pino'],
    ['node:http + node:https (imds)', 'node:https'],
    ['@aws-sdk/ec2-metadata-service (not loaded)', '@aws-sdk/ec2-metadata-service'],
    ['@smithy/node-http-handler (not loaded)', '@smithy/node-http-handler'],
    ['@aws-sdk/client-auto-scaling (after launch)', '@aws-sdk/client-auto-scaling'],
    ['@aws-sdk/client-ssm (SSM on only)', '@aws-sdk/client-ssm'],
    ['agent/config.js', dist('agent/config.js')],
    ['agent/log.js', dist('agent/log.js')],
    ['agent/aws/imds.js', dist('agent/aws/imds.js')],
    ['agent/reconcile.js', dist('agent/reconcile.js')],
    ['agent/agent.js', dist('agent/agent.js')],
    ['agent/commands.js (all of converge)', dist('agent/commands.js')],
  ];
  const rows: [string, number, number][] = [];
  for (const [label, specifier] of modules) {
    const wall: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t = await importTime(specifier);
      wall.push(t.wallMs);
      cpu.push(t.cpuMs);
    }
    rows.push([label, median(wall), median(cpu)]);
  }
  const cliHelp: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await exitOf(spawn(process.execPath, [CLI, '--help'], { env: unitEnv(), stdio: 'ignore' }));
    cliHelp.push(performance.now() - t0);
  }
  rows.push(['node agent/cli.js --help (spawn → exit)', median(cliHelp), NaN]);
  if (nixInstantiate) {
    const dir = await mkdtemp(path.join(tmpdir(), 'nixos-ec2-agent-bench-parse-'));
    try {
      const file = path.join(dir, 'user-data.nix');
      await writeFile(file, USER_DATA);
      const parse: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await exitOf(spawn(nixInstantiate, ['--parse', '--', file], { stdio: 'ignore' }));
        parse.push(performance.now() - t0);
      }
      rows.push(['nix-instantiate --parse (one call, as a pass makes)', median(parse), NaN]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  print('');
  print(`boot breakdown: median of ${runs}; each import in a fresh process, its time including what it imports; CPU time is steadier than wall time on a busy machine`);
  print(table(['what', 'wall ms', 'cpu ms'], rows.map(([l, w, c]) => [l, round(w), Number.isNaN(c) ? '-' : round(c)])));
}

function importTime(specifier: string): Promise<{ wallMs: number; cpuMs: number }> {
  const code = [
    'const c = process.cpuUsage(); const t = performance.now();',
    `await import(${JSON.stringify(specifier)});`,
    'const u = process.cpuUsage(c);',
    'process.stdout.write(JSON.stringify({ wallMs: performance.now() - t, cpuMs: (u.user + u.system) / 1000 }));',
  ].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { cwd: REPO, env: unitEnv(), stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as { wallMs: number; cpuMs: number }) : reject(new Error(`import ${specifier} failed (exit ${code})`))));
  });
}

/** The epoch milliseconds of the first log line with this event, if the log has one. */
async function logTime(file: string, event: string): Promise<number | undefined> {
  for (const line of (await readFile(file, 'utf8')).split('\n')) {
    if (!line.startsWith('{') || !line.includes(`"${event}"`)) continue;
    try {
      const entry = JSON.parse(line) as { event?: string; time?: string | number };
      if (entry.event !== event || entry.time === undefined) continue;
      const at = typeof entry.time === 'number' ? entry.time : Date.parse(entry.time);
      if (Number.isFinite(at)) return at;
    } catch {
      // Not a log entry (the SDK's warnings share stderr).
    }
  }
  return undefined;
}

function parseOverrides(text: string | boolean | undefined): Record<string, unknown> {
  if (typeof text !== 'string') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BenchUsageError(`--agent-config: not JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new BenchUsageError('--agent-config wants a JSON object');
  return value as Record<string, unknown>;
}

function exitOf(child: ReturnType<typeof spawn>): Promise<number> {
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
