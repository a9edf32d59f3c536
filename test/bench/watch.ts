// `watch`: what the daemon costs while it waits, and how fast it answers a change. Over one
// sandboxed instance running `run`:
// - change → rebuild start latency, for an SSM push (with a revision bump) and for a file dropped
//   into local.d (from the write to the `step.start` log line of the build);
// - rebuilds per burst of 20 changes at once (target 1), and per CLI-paced burst: 20 pushes 0.6 s
//   apart, each a parameter and a revision bump, as a script calling the AWS CLI makes them (target
//   ≤ 2), with the latency from the last push to the build's start beside it;
// - SSM calls per poll while idle, from the emulator's call counts, and what that is per instance
//   per hour at the default 60 s interval, beside the whole-tree fetch a poll would cost without a
//   revision (the baseline);
// The daemon runs with the default settle window (watch.quietPeriodMs), so the latencies include it.
// - idle RSS and CPU of the daemon over a window (a minute; `--quick`: 5 s), beside a bare
//   `node -e "setInterval(()=>{},1000)"` measured in the same run.
// - idle at the defaults (see idleAtDefaults): RSS and CPU of daemons at the default poll interval,
//   one per set of V8 flags weighed for the unit, beside a bare Node process over the same window;
//   and what each dependency adds to a Node process's RSS when loaded (dependencyCosts).
import { spawn, type ChildProcess } from 'node:child_process';
import { build } from 'esbuild';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../agent/config.js';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cleanEnv } from '../../sandbox/sandbox.js';
import { CLI, Instance, LiveLog, type CliResult } from '../support/e2e.js';
import { shippedLaunch, shownWords, splitLaunchWords } from '../support/launch.js';
import { epochMs, intFlag, median, parseBenchArgs, ratio, round, table, unitEnv, type BenchResult, type Figure, type Print } from './common.js';

/** The agent's default poll interval (agent/config.ts). */
const DEFAULT_INTERVAL_S = parseConfig({}).ssm.pollIntervalSeconds;
/**
 * Idle is sampled with polls this often, so a window of a few minutes holds several to cost; a
 * poll's CPU is then spread over the default interval (idleAtDefaults).
 */
const SAMPLED_INTERVAL_S = 60;
const RSS_TARGET_MIB = 55;
const CPU_TARGET_PERCENT = 0.1;
const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, check: () => T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`watch: timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Resident set (KiB → MiB) and CPU seconds (user + system) of a process, from /proc. */
async function usage(pid: number): Promise<{ rssMiB: number; cpuS: number }> {
  const { rssMiB } = await resident(pid);
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { rssMiB, cpuS: ticks / 100 };
}

async function idleUsage(pid: number, windowMs: number): Promise<{ rssMiB: number; cpuPercent: number }> {
  const before = await usage(pid);
  const t0 = epochMs();
  await sleep(windowMs);
  const after = await usage(pid);
  return { rssMiB: after.rssMiB, cpuPercent: (100 * (after.cpuS - before.cpuS)) / ((epochMs() - t0) / 1000) };
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('watch', args, { 'idle-only': { type: 'boolean' } });
  const quick = Boolean(flags.quick);
  // A full run measures idle at the defaults alone, first; --quick runs it beside the rest, where
  // only its running to the end counts.
  const besides = quick && !flags['idle-only'] ? idleAtDefaults(print, quick) : undefined;
  besides?.catch(() => undefined);
  const alone = besides ? undefined : await idleAtDefaults(print, quick);
  if (alone && flags['idle-only']) return { name: 'watch', figures: alone };
  const runs = intFlag('runs', flags.runs, quick ? 1 : 5);
  const windowMs = quick ? 3_000 : 60_000;
  const intervalS = 1;

  const inst = await Instance.launch({
    parameters: [{ Name: '/nixos/fleet/revision', Value: '0', Type: 'String' }],
    config: {
      ssm: { pollIntervalSeconds: intervalS, pollJitter: 0 },
      // Quick mode (a smoke test) shortens the settle window, still longer than the CLI's pace.
      watch: { cancelCheckSeconds: 0.5, ...(quick ? { quietPeriodMs: 1_000 } : {}) },
      http: { listen: null },
      logLevel: 'info',
    },
  });
  const running = inst.start(['run']);
  const log = new LiveLog(running);
  const pid = running.child.pid!;
  const quietMs = parseConfig(JSON.parse(await readFile(inst.sandbox.layout.config, 'utf8'))).watch.quietPeriodMs;
  try {
    await until('the first convergence', () => (log.of('pass.end').length >= 1 ? true : undefined));
    print(`watch: daemon pid ${pid}, poll every ${intervalS} s, quiet period ${quietMs} ms; ${runs} run(s) per latency`);

    // Change → rebuild start, SSM.
    const ssmLatency: number[] = [];
    let revision = 0;
    for (let i = 0; i < runs; i++) {
      await sleep(300 + Math.random() * 700);
      const n = log.builds().length;
      const t0 = epochMs();
      inst.put(`/nixos/fleet/options/environment.variables.SSM${i}`, `"${i}"`);
      inst.put('/nixos/fleet/revision', String(++revision));
      const build = await until('the SSM-triggered build', () => log.builds()[n]);
      ssmLatency.push(Date.parse(String(build.time)) - t0);
      await until('the pass end', () => (log.events.at(-1)?.event === 'pass.end' ? true : undefined));
    }

    // Change → rebuild start, file.
    const fileLatency: number[] = [];
    const dropin = inst.file('etc/nixos-ec2-agent/local.d');
    await mkdir(dropin, { recursive: true });
    for (let i = 0; i < runs; i++) {
      await sleep(300);
      const n = log.builds().length;
      const t0 = epochMs();
      await writeFile(path.join(dropin, `bench-${i}.nix`), `{ ... }: { environment.etc."bench-${i}".text = "${i}"; }\n`);
      const build = await until('the file-triggered build', () => log.builds()[n]);
      fileLatency.push(Date.parse(String(build.time)) - t0);
      await until('the pass end', () => (log.events.at(-1)?.event === 'pass.end' ? true : undefined));
    }

    // A burst of 20 changes.
    await sleep(1_500);
    const beforeBurst = log.builds().length;
    for (let i = 0; i < 20; i++) {
      inst.put(`/nixos/fleet/options/environment.variables.BURST${i}`, `"${i}"`);
      await writeFile(path.join(dropin, `burst.nix`), `{ ... }: { environment.etc."burst".text = "${i}"; }\n`);
    }
    inst.put('/nixos/fleet/revision', String(++revision));
    await until('the burst build', () => (log.builds().length > beforeBurst ? true : undefined));
    await sleep(quietMs + 2 * intervalS * 1000);
    const rebuildsPerBurst = log.builds().length - beforeBurst;

    // A CLI-paced burst: 20 pushes 0.6 s apart (8 in quick mode), each with its revision bump.
    await until('the pass end', () => (log.events.at(-1)?.event === 'pass.end' ? true : undefined));
    const beforePaced = log.builds().length;
    let lastPush = 0;
    const pacedPushes = quick ? 8 : 20;
    for (let i = 0; i < pacedPushes; i++) {
      inst.put(`/nixos/fleet/options/environment.variables.PACED${i}`, `"${i}"`);
      inst.put('/nixos/fleet/revision', String(++revision));
      lastPush = epochMs();
      await sleep(600);
    }
    const pacedBuild = await until('the paced burst build', () => log.builds().slice(beforePaced).find((b) => Date.parse(String(b.time)) >= lastPush));
    const pacedLatency = Date.parse(String(pacedBuild.time)) - lastPush;
    await until('the pass end', () => (log.events.at(-1)?.event === 'pass.end' ? true : undefined));
    await sleep(quietMs + 2 * intervalS * 1000);
    const rebuildsPerPaced = log.builds().length - beforePaced;

    // Idle: SSM calls per poll, RSS and CPU.
    await sleep(1_000);
    inst.world.ssm.resetCounters();
    const passesBefore = log.of('pass.end').length;
    const idle = await idleUsage(pid, windowMs);
    const polls = log.of('pass.end').length - passesBefore;
    const counts = inst.world.ssm.callCounts();
    const calls = Object.values(counts).reduce((a, b) => a + b, 0);
    const callsPerPoll = polls > 0 ? calls / polls : NaN;
    const perHour = callsPerPoll * (3600 / DEFAULT_INTERVAL_S);
    // Without a revision, each poll reads the whole tree: one GetParametersByPath page per prefix at least.
    const fullFetchCalls = 3;

    const baseline = spawn(process.execPath, ['-e', 'setInterval(()=>{},1000)'], { env: unitEnv(), stdio: 'ignore' });
    await sleep(500);
    const base = await idleUsage(baseline.pid!, windowMs);
    baseline.kill('SIGKILL');

    print(`  SSM push → build start    median ${round(median(ssmLatency))} ms over ${ssmLatency.length} (poll ${intervalS} s)`);
    print(`  file write → build start  median ${round(median(fileLatency))} ms over ${fileLatency.length} (quiet period ${quietMs} ms)`);
    print(`  rebuilds per burst of 20  ${rebuildsPerBurst} (target 1)`);
    print(`  CLI-paced burst (${pacedPushes} × 0.6 s)  ${rebuildsPerPaced} rebuild(s) (target ≤ 2); last push → build start ${round(pacedLatency)} ms`);
    print(`  idle SSM calls            ${calls} over ${polls} polls (${JSON.stringify(counts)}); ${round(perHour)} per instance-hour at ${DEFAULT_INTERVAL_S} s`);
    print(`  idle RSS / CPU            ${round(idle.rssMiB)} MiB (target ≤ ${RSS_TARGET_MIB}) / ${round(idle.cpuPercent)} % over ${windowMs / 1000} s; bare node: ${round(base.rssMiB)} MiB / ${round(base.cpuPercent)} %`);
    return {
      name: 'watch',
      figures: {
        ssm_latency_ms: median(ssmLatency),
        file_latency_ms: median(fileLatency),
        rebuilds_per_burst: rebuildsPerBurst,
        rebuilds_per_paced_burst: rebuildsPerPaced,
        paced_last_push_to_build_ms: pacedLatency,
        paced_latency_over_quiet: ratio(pacedLatency, quietMs),
        idle_ssm_calls_per_poll: callsPerPoll,
        idle_ssm_calls_per_hour: perHour,
        idle_rss_mib: idle.rssMiB,
        idle_cpu_percent: idle.cpuPercent,
        baseline_rss_mib: base.rssMiB,
        baseline_cpu_percent: base.cpuPercent,
        ssm_latency_over_poll: ratio(median(ssmLatency), intervalS * 1000),
        calls_per_poll_over_full_fetch: ratio(callsPerPoll, fullFetchCalls),
        rss_over_node: ratio(idle.rssMiB, base.rssMiB),
        rss_over_target: ratio(idle.rssMiB, RSS_TARGET_MIB),
        ...(alone ?? (await besides)),
      },
    };
  } finally {
    running.child.kill('SIGTERM');
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([running.done, new Promise((r) => (bound = setTimeout(r, 10_000)))]);
    clearTimeout(bound);
    if (running.child.exitCode === null) running.child.kill('SIGKILL');
    await inst.close();
  }
}

// ---- Idle at the defaults, V8 flags, and what each dependency costs ----

/**
 * The launches weighed for the bin, as words: node flags, and NAME=value environment variables (as
 * the wrapper or the unit sets them). The first is what ships: nix/launch.json, from which
 * nix/package.nix writes the wrapper. NIXOS_EC2_AGENT_BENCH_CLI=PATH runs another build's cli.js,
 * to compare two builds in one run.
 */
const SHIPPED: readonly string[] = [...Object.entries(shippedLaunch().env).map(([k, v]) => `${k}=${v}`), ...shippedLaunch().nodeFlags];
const FLAG_SETS: readonly (readonly string[])[] = [
  SHIPPED,
  [],
  // V8 flags on node's command line (the wrapper's before): Node's code cache for its own modules
  // is refused at every start.
  ['--lite-mode', '--no-expose-wasm'],
  ['NIXOS_EC2_AGENT_V8_FLAGS=--no-opt --no-sparkplug --optimize-for-size'],
  // The shipped launch without --preserve-symlinks: on Node 22 the loader's realpath walks made
  // node:path hot enough for V8's optimising compiler before the late flags turned it off.
  SHIPPED.filter((w) => w !== '--preserve-symlinks'),
  ['--single-threaded-gc', ...SHIPPED],
];

/**
 * The least a Node process holds that does what the idle agent needs of Node itself, and nothing of
 * its own JavaScript: the built-ins it loads (HTTPS and TLS with their root certificates, as SSM
 * needs on an instance; child processes, one spawned; node:http and a socket server listening, as
 * the HTTP surface and the control socket; Node's web streams and Web Crypto, which the SDK reads;
 * an ISO timestamp, which loads ICU's time zone data), idle beside the daemons. Whatever the agent
 * holds above it is its own code and data, the SDK, pino and zod included.
 */
const BUILTINS_FLOOR = `
for (const m of ['node:http', 'node:https', 'node:crypto', 'node:zlib', 'node:child_process', 'node:fs/promises', 'node:net', 'node:os', 'node:dns']) process.getBuiltinModule(m);
void globalThis.ReadableStream; void globalThis.crypto;
process.getBuiltinModule('node:net').createServer(() => {}).listen(process.argv[1]);
process.getBuiltinModule('node:http').createServer(() => {}).listen(0, '127.0.0.1');
new Date().toISOString();
process.getBuiltinModule('node:child_process').spawnSync('true');
setInterval(() => {}, 1000);
`;

/** CPU time of every live thread of a process, in seconds, from /proc/PID/task/TID/schedstat (nanoseconds). */
async function cpuSeconds(pid: number): Promise<number> {
  let ns = 0;
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const text = await readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => '');
    ns += Number(text.split(' ')[0] ?? 0) || 0;
  }
  return ns / 1e9;
}

/**
 * Resident memory, and the anonymous part of it (the heap and the rest of what only swap could take
 * back; the remainder is file-backed, Node's own binary for the most part, which the kernel drops
 * under memory pressure and reads again when needed).
 */
async function resident(pid: number): Promise<{ rssMiB: number; anonMiB: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { rssMiB: kib('VmRSS') / 1024, anonMiB: kib('RssAnon') / 1024 };
}

interface Sample {
  readonly rssMiB: number;
  readonly anonMiB: number;
  readonly cpuPercent: number;
}

/** RSS at the end and CPU over the same window for several processes at once (same load for all). */
async function sampleTogether(pids: readonly number[], windowMs: number): Promise<Sample[]> {
  const before = await Promise.all(pids.map(cpuSeconds));
  const t0 = epochMs();
  await sleep(windowMs);
  const after = await Promise.all(pids.map(cpuSeconds));
  const seconds = (epochMs() - t0) / 1000;
  const memory = await Promise.all(pids.map(resident));
  return pids.map((_, i) => ({ ...(memory[i] as { rssMiB: number; anonMiB: number }), cpuPercent: (100 * ((after[i] as number) - (before[i] as number))) / seconds }));
}

interface Daemon {
  readonly flags: readonly string[];
  readonly inst: Instance;
  readonly child: ChildProcess;
  readonly log: LiveLog;
  readonly done: Promise<unknown>;
}

/**
 * `run` with the agent's default poll interval and the launch hook reporting on, under `node FLAGS`;
 * NIXOS_EC2_AGENT_BENCH_CLI measures another build's cli.js instead, as in `boot`.
 */
async function startDaemon(flags: readonly string[], poll: { intervalS: number; jitter: number } = { intervalS: SAMPLED_INTERVAL_S, jitter: 1 }): Promise<Daemon> {
  const inst = await Instance.launch({
    parameters: [{ Name: '/nixos/fleet/revision', Value: '0', Type: 'String' }],
    // The sandbox polls every 2 s; the rest are the agent's own defaults (agent/config.ts).
    config: { ssm: { pollIntervalSeconds: poll.intervalS, pollJitter: poll.jitter }, watch: { quietPeriodMs: 2_000 }, lifecycle: { enabled: true }, logLevel: 'info' },
  });
  const { nodeFlags, env: vars } = splitLaunchWords(flags);
  const child = spawn(process.execPath, [...nodeFlags, vars.NIXOS_EC2_AGENT_BENCH_CLI ?? process.env.NIXOS_EC2_AGENT_BENCH_CLI ?? CLI, 'run', '--config', inst.sandbox.layout.config], {
    // The unit's WatchdogSec=120s, which sets how often the idle loop beats (no NOTIFY_SOCKET: the
    // pings themselves go nowhere).
    env: { ...cleanEnv(unitEnv()), ...inst.sandbox.env, WATCHDOG_USEC: '120000000', ...vars },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout: '', stderr: '' })));
  const log = new LiveLog({ child, done });
  return { flags, inst, child, log, done };
}

async function stopDaemon(d: Daemon): Promise<void> {
  d.child.kill('SIGTERM');
  await Promise.race([d.done, sleep(10_000)]);
  if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill('SIGKILL');
  await d.inst.close();
}

/**
 * Daemons at the default poll interval (60 s, jittered), one per flag set, all idle over the same
 * window beside a bare `node -e "setInterval(()=>{},1000)"`. Idle starts 30 s after the first
 * pass has ended. CPU is every thread's (V8's GC and compiler threads, libuv's pool), from
 * schedstat in nanoseconds: /proc's clock ticks are too coarse for 0.1 % of a minute.
 */
async function idleAtDefaults(print: Print, quick: boolean): Promise<Record<string, Figure>> {
  // Three sampled poll intervals: a window of one held no poll, one or two (the first is jittered),
  // and its CPU moved with that count more than with anything the agent does.
  const windowMs = quick ? 2_000 : 3 * SAMPLED_INTERVAL_S * 1000;
  const sets = quick ? FLAG_SETS.slice(0, 1) : FLAG_SETS;
  const daemons: Daemon[] = [];
  const baseline = spawn(process.execPath, ['-e', 'setInterval(()=>{},1000)'], { env: unitEnv(), stdio: 'ignore' });
  const floorSocket = path.join(tmpdir(), `nixos-ec2-agent-bench-floor-${process.pid}.sock`);
  const floor = spawn(process.execPath, ['-e', BUILTINS_FLOOR, floorSocket], { env: unitEnv(), stdio: 'ignore' });
  try {
    for (const flags of sets) daemons.push(await startDaemon(flags));
    // The shipped launch with no poll in the window: what is left is the idle daemon's own cost.
    daemons.push(await startDaemon(SHIPPED, { intervalS: 86_400, jitter: 0 }));
    for (const d of daemons) await until(`the first convergence (${shownWords(d.flags).join(' ') || 'no flags'})`, () => (d.log.of('pass.end').length >= 1 ? true : undefined), 120_000);
    // V8 collects the start's garbage some 20 s after the allocation rate drops (its memory
    // reducer); that one-off is not the idle cost, so the window starts after it.
    await sleep(quick ? 1_000 : 30_000);
    const pids = [baseline.pid!, floor.pid!, ...daemons.map((d) => d.child.pid!)];
    const passesBefore = daemons.map((d) => d.log.of('pass.end').length);
    const [base, builtins, ...idle] = await sampleTogether(pids, windowMs);
    const polls = daemons.map((d, i) => d.log.of('pass.end').length - (passesBefore[i] as number));
    if (!base || !builtins) throw new Error('watch: no baseline sample');
    print(`idle: poll every ${SAMPLED_INTERVAL_S} s (jittered; the default is ${DEFAULT_INTERVAL_S} s), launch hook reporting on, the unit's WatchdogSec; ${windowMs / 1000} s window, every process sampled over the same window`);
    const rows: Figure[][] = [
      ['bare node (setInterval 1 s)', round(base.rssMiB), round(base.anonMiB), round(base.cpuPercent), 1, NaN],
      ["node with the agent's built-ins only (HTTPS, child processes, a socket server)", round(builtins.rssMiB), round(builtins.anonMiB), round(builtins.cpuPercent), ratio(builtins.rssMiB, base.rssMiB), NaN],
    ];
    const figures: Record<string, Figure> = {
      baseline_idle_rss_mib: base.rssMiB,
      baseline_idle_anon_mib: base.anonMiB,
      baseline_idle_cpu_percent: base.cpuPercent,
      builtins_floor_idle_rss_mib: builtins.rssMiB,
      builtins_floor_idle_anon_mib: builtins.anonMiB,
    };
    const quiet = idle[daemons.length - 1] as Sample;
    daemons.slice(0, -1).forEach((d, i) => {
      const u = idle[i] as Sample;
      rows.push([`agent run ${shownWords(d.flags).join(' ') || '(no flags)'}`, round(u.rssMiB), round(u.anonMiB), round(u.cpuPercent), ratio(u.rssMiB, base.rssMiB), polls[i] as number]);
      const named = shownWords(d.flags);
      const key = named.length === 0 ? 'no_flags' : named.map((f) => f.replace(/^--/, '').toLowerCase().replace(/[^a-z0-9]+/g, '_')).join('_');
      figures[`idle_${key}_rss_mib`] = u.rssMiB;
      figures[`idle_${key}_anon_mib`] = u.anonMiB;
      figures[`idle_${key}_cpu_percent`] = u.cpuPercent;
      figures[`idle_${key}_polls`] = polls[i] as number;
      figures[`idle_${key}_rss_over_node`] = ratio(u.rssMiB, base.rssMiB);
    });
    rows.push([`agent run ${shownWords(SHIPPED).join(' ')}, no poll`, round(quiet.rssMiB), round(quiet.anonMiB), round(quiet.cpuPercent), ratio(quiet.rssMiB, base.rssMiB), polls[daemons.length - 1] as number]);
    print(table(['process', 'RSS MiB', 'of it anonymous', 'CPU % of a core', 'RSS / node', 'polls'], rows).replace(/NaN/g, '  -'));
    print('  (polls: passes within the window; a poll that finds nothing changed is a pass)');
    print('  (anonymous: what memory pressure cannot take back without swap; the rest is file-backed, mostly Node\'s own binary)');
    const shipped = idle[0] as Sample;
    // A poll's CPU: what the polling daemon used beyond the one that did not poll, per poll.
    const shippedPolls = polls[0] as number;
    const pollCpuMs = shippedPolls > 0 ? (((shipped.cpuPercent - quiet.cpuPercent) / 100) * windowMs) / shippedPolls : NaN;
    const atDefault = quiet.cpuPercent + (100 * pollCpuMs) / (DEFAULT_INTERVAL_S * 1000);
    const cpuMet = atDefault <= CPU_TARGET_PERCENT;
    print(`  a poll: ${round(pollCpuMs)} ms of CPU (over ${shippedPolls}); idle without one: ${round(quiet.cpuPercent)} %`);
    print(`  shipped flags (${shownWords(sets[0] ?? []).join(' ') || 'none'}): RSS ${round(shipped.rssMiB)} MiB, ${round(shipped.anonMiB)} of it anonymous (target ≤ ${RSS_TARGET_MIB}: ${shipped.rssMiB <= RSS_TARGET_MIB ? 'met' : 'missed'}); CPU at the default ${DEFAULT_INTERVAL_S} s poll ${round(atDefault)} % (target ≤ ${CPU_TARGET_PERCENT}: ${cpuMet ? 'met' : 'missed'}), at a ${SAMPLED_INTERVAL_S} s poll ${round(shipped.cpuPercent)} %`);
    print(`  above node with its built-ins only: ${round(shipped.rssMiB - builtins.rssMiB)} MiB (${round(shipped.anonMiB - builtins.anonMiB)} anonymous), the agent's own code and data`);
    figures.idle_over_builtins_floor_mib = shipped.rssMiB - builtins.rssMiB;
    figures.idle_rss_over_target = ratio(shipped.rssMiB, RSS_TARGET_MIB);
    figures.idle_poll_cpu_ms = pollCpuMs;
    figures.idle_no_poll_cpu_percent = quiet.cpuPercent;
    figures.idle_default_interval_s = DEFAULT_INTERVAL_S;
    figures.idle_cpu_at_default_percent = atDefault;
    figures.idle_cpu_over_target = ratio(atDefault, CPU_TARGET_PERCENT);
    figures.idle_rss_target_mib = RSS_TARGET_MIB;
    figures.idle_cpu_target_percent = CPU_TARGET_PERCENT;
    figures.idle_rss_target = shipped.rssMiB <= RSS_TARGET_MIB ? 'met' : 'missed';
    figures.idle_cpu_target = cpuMet ? 'met' : 'missed';
    if (quick) print('what each dependency adds: skipped with --quick');
    else Object.assign(figures, await dependencyCosts(print, 3));
    return figures;
  } finally {
    baseline.kill('SIGKILL');
    floor.kill('SIGKILL');
    await rm(floorSocket, { force: true });
    await Promise.all(daemons.map(stopDaemon));
  }
}

/**
 * Each dependency with the object it makes (a client, a registry); the SDK clients both as whole
 * packages and as the agent's bundle holds them (agent/aws/ssm-sdk.ts, autoscaling-sdk.ts: only
 * the operations it sends), bundled here as tools/bundle.mjs bundles them.
 */
function dependencies(bundled: { ssm: string; autoscaling: string }): { key: string; label: string; code: string }[] {
  return [
    { key: 'zod', label: 'zod (config, state)', code: "const z = await import('zod/v3'); keep.push(z.z.object({ a: z.z.string() }).parse({ a: 'x' }));" },
    { key: 'pino', label: 'pino (log)', code: "const { pino } = await import('pino'); keep.push(pino({ level: 'info' }, { write() {} }));" },
    { key: 'chokidar', label: 'chokidar (local.d watch)', code: "keep.push(await import('chokidar'));" },
    { key: 'prom_client', label: 'prom-client + a registry', code: "const p = (await import('prom-client')).default; const r = new p.Registry(); new p.Counter({ name: 'x_total', help: 'x', registers: [r] }); keep.push(r);" },
    { key: 'imds', label: '@aws-sdk/ec2-metadata-service (not loaded)', code: "keep.push(await import('@aws-sdk/ec2-metadata-service'));" },
    { key: 'ssm', label: '@aws-sdk/client-ssm + client, whole package', code: "const s = await import('@aws-sdk/client-ssm'); keep.push(new s.SSMClient({ region: 'us-east-1' }));" },
    { key: 'ssm_bundled', label: 'SSM client as the agent bundles it', code: `const s = await import(${JSON.stringify(bundled.ssm)}); keep.push(new s.SSMClient({ region: 'us-east-1' }));` },
    { key: 'autoscaling', label: '@aws-sdk/client-auto-scaling + client, whole package', code: "const a = await import('@aws-sdk/client-auto-scaling'); keep.push(new a.AutoScalingClient({ region: 'us-east-1' }));" },
    { key: 'autoscaling_bundled', label: 'Auto Scaling client as the agent bundles it', code: `const a = await import(${JSON.stringify(bundled.autoscaling)}); keep.push(new a.AutoScalingClient({ region: 'us-east-1' }));` },
    { key: 'credentials', label: '@aws-sdk/credential-provider-node', code: "keep.push(await import('@aws-sdk/credential-provider-node'));" },
  ];
}

/** agent/aws/ssm-sdk.ts and autoscaling-sdk.ts bundled into DIR with tools/bundle.mjs's settings. */
async function bundleSdk(dir: string): Promise<{ ssm: string; autoscaling: string }> {
  await build({
    absWorkingDir: REPO,
    entryPoints: { ssm: 'agent/aws/ssm-sdk.ts', autoscaling: 'agent/aws/autoscaling-sdk.ts' },
    outdir: dir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    mainFields: ['module', 'main'],
    minifyWhitespace: true,
    minifySyntax: true,
    logLevel: 'warning',
    banner: { js: "import { createRequire as __bundleRequire } from 'node:module';\nconst require = __bundleRequire(import.meta.url);" },
  });
  return { ssm: pathToFileURL(path.join(dir, 'ssm.mjs')).href, autoscaling: pathToFileURL(path.join(dir, 'autoscaling.mjs')).href };
}

/** RSS after a full GC, before and after loading one dependency, in a fresh `node --expose-gc` each time. */
function rssDelta(code: string): Promise<number> {
  const script = [
    'const keep = [];',
    'gc(); const before = process.memoryUsage.rss();',
    code,
    'gc(); process.stdout.write(String(process.memoryUsage.rss() - before));',
  ].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--no-warnings', '--input-type=module', '-e', script], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (exit) => (exit === 0 ? resolve(Number(out) / (1024 * 1024)) : reject(new Error(`watch: loading a dependency failed (exit ${exit}): ${code}`))));
  });
}

async function dependencyCosts(print: Print, runs: number): Promise<Record<string, Figure>> {
  const figures: Record<string, Figure> = {};
  const rows: Figure[][] = [];
  const dir = await mkdtemp(path.join(tmpdir(), 'nixos-ec2-agent-bench-sdk-'));
  try {
    for (const dep of dependencies(await bundleSdk(dir))) {
      const deltas: number[] = [];
      for (let i = 0; i < runs; i++) deltas.push(await rssDelta(dep.code));
      rows.push([dep.label, round(median(deltas))]);
      figures[`dep_${dep.key}_rss_mib`] = median(deltas);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  print(`what each dependency adds to a bare Node process's RSS when loaded (after a full GC; median of ${runs}):`);
  print(table(['dependency', 'RSS + MiB'], rows));
  return figures;
}
