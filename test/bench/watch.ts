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
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseConfig } from '../../agent/config.js';
import { Instance, LiveLog } from '../support/e2e.js';
import { epochMs, intFlag, median, parseBenchArgs, ratio, round, type BenchResult, type Print } from './common.js';

const DEFAULT_INTERVAL_S = 60;
const RSS_TARGET_MIB = 60;
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
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { rssMiB: rssKiB / 1024, cpuS: ticks / 100 };
}

async function idleUsage(pid: number, windowMs: number): Promise<{ rssMiB: number; cpuPercent: number }> {
  const before = await usage(pid);
  const t0 = epochMs();
  await sleep(windowMs);
  const after = await usage(pid);
  return { rssMiB: after.rssMiB, cpuPercent: (100 * (after.cpuS - before.cpuS)) / ((epochMs() - t0) / 1000) };
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('watch', args, {});
  const quick = Boolean(flags.quick);
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

    const baseline = spawn(process.execPath, ['-e', 'setInterval(()=>{},1000)'], { stdio: 'ignore' });
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
