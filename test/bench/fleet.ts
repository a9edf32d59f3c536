// `npm run bench -- fleet [--instances N] [--parameters P] [--rebuild-ms R] [--seed S] [--serial]
// [--imds-http K]`: N instances of the real agent (sources, SSM change detection, Scheduler,
// Reconciler; see fleet/instance.ts) in one process on one simulated clock, sharing one account's
// SSM read throughput (40 GetParameter* calls a second, the emulator's token bucket answering
// ThrottlingException as AWS does).
//
// What is real and what stands in: each instance's SSM client is the SDK's, built into the agent's
// SSM parts as createAgent builds them (one attempt a call, the agent's own backoff on a busy
// account; the SDK's adaptive retry for the one write), calling the SSM emulator's request handler
// in-process. IMDS is the emulator's own
// instance description answered in-process (no HTTP, no session tokens) for all but the first K
// instances (2 in the quick run, 0 otherwise), which read it through the agent's ImdsClient from an
// IMDS emulator server each, over HTTP: ten thousand servers would cost three sockets an instance,
// and IMDS has no account-wide limit to measure. Auto Scaling is an in-process stand-in naming the
// group. The rebuild is a stand-in that takes R ms of simulated time.
//
// The run, in simulated time:
//   launch   the instances start over one poll interval, or over twice the time the account needs
//            for their first reads when that is longer (as a fleet that has been running), and
//            converge to P parameters under /nixos/fleet, with its revision parameter;
//   push     P parameters change, the revision is bumped, and SSM Run Command runs
//            `converge --now` on every instance at once: time until all converged, beside the
//            physical minimum (the calls the fleet needed ÷ 40/s);
//   poll     P parameters change again with no push: the change latency at the default settings;
//   idle     an hour of polling with nothing changed: SSM calls per instance-hour;
//   tag      the revision tag appears in instance metadata: an hour of polling with it;
//   baseline up to 100 fresh instances with the former defaults (60 s polls, hourly full
//            refresh): their idle hour, the figure the idle calls are read against.
// Every random choice (launch offsets, poll jitter, the SDK's retry jitter) comes from --seed; the
// quick run (and --serial) also wakes one instance at a time, so it gives the same figures each time.
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigSchema } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import type { PassResult } from '../../agent/reconcile.js';
import { VirtualClock } from '../../sandbox/clock.js';
import { defaultInstance } from '../../sandbox/emulators/imds.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { BenchUsageError, intFlag, median, parseBenchArgs, ratio, round, table, type BenchResult, type Print } from './common.js';
import { prng } from '../support/prng.js';
import { createInstance, type RealIo, type SimInstance } from './fleet/instance.js';

const READS_PER_SECOND = 40;
const HOUR_MS = 3_600_000;
const TAG = 'nixos-ec2-agent-revision';
const IDLE_RESOLUTION_MS = 1_000;
const SIMULATION_EPOCH = Date.UTC(2026, 0, 1);
/** What the agent polled with before fleet-scale defaults: the baseline the idle figures are read against. */
const FORMER_SSM_DEFAULTS = { pollIntervalSeconds: 60, pollJitter: 1, fullRefreshSeconds: 3_600 };

interface Totals {
  calls: number;
  throttled: number;
}

/**
 * Nothing real in flight: no file request in the libuv pool (a FileHandle's close is a CloseReq of
 * its own), no real timer (the SDK's retry waits 0 ms for real; see fleet/ssm.ts). The simulation
 * waits for these before time moves: time that moved while a pass waited on its disk would be
 * counted in its convergence, as much as the machine's load made it.
 */
export function noFileIo(): boolean {
  return !process.getActiveResourcesInfo().some((r) => r.startsWith('FSReq') || r === 'CloseReq' || r === 'Timeout');
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('fleet', args, {
    instances: { type: 'string' },
    parameters: { type: 'string' },
    'rebuild-ms': { type: 'string' },
    seed: { type: 'string' },
    serial: { type: 'boolean' },
    'imds-http': { type: 'string' },
  });
  const quick = flags.quick === true;
  const n = intFlag('instances', flags.instances, quick ? 16 : 1000);
  const p = intFlag('parameters', flags.parameters, quick ? 12 : 50);
  const rebuildMs = intFlag('rebuild-ms', flags['rebuild-ms'], 30_000);
  const seed = intFlag('seed', flags.seed, 1);
  // One instance's work at a time: the same figures from the same seed (the quick run CI makes).
  const serial = quick || flags.serial === true;
  // The first instances read IMDS over HTTP from emulator servers of their own (see fleet/instance.ts).
  const imdsHttp = flags['imds-http'] === undefined ? (quick ? 2 : 0) : Number(flags['imds-http']);
  if (!Number.isInteger(imdsHttp) || imdsHttp < 0) throw new BenchUsageError(`--imds-http wants a count of instances, not ${String(flags['imds-http'])}`);
  if (n > 20_000) throw new BenchUsageError('--instances: at most 20000 in one process');
  const random = prng(seed);
  // A full read: the revision, then /nixos/fleet (P parameters and the revision) in pages of ten,
  // and one page for each of the other two prefixes.
  const fullFetchCalls = 1 + Math.ceil((p + 1) / 10) + 2;
  const defaults = ConfigSchema.parse({});
  const intervalMs = defaults.ssm.pollIntervalSeconds * 1000;
  // The idle windows: an hour, or in the smoke test's quick run 20 minutes (scaled to the hour).
  const windowMs = quick ? HOUR_MS / 3 : HOUR_MS;

  const log = silentLogger();
  const wallStart = performance.now();
  // A fixed start: the SDK's rate limiter counts in whole seconds of this clock and the token bucket
  // refills in fractions of them, so a start that moved with the real time would move the run.
  const clock = new VirtualClock(SIMULATION_EPOCH);
  const ssm = await SsmEmulator.start({ clock, throughput: { readsPerSecond: READS_PER_SECOND, burst: READS_PER_SECOND } });
  // tmpfs when there is one: each instance writes its configuration and state atomically (fsync).
  const under = await mkdtemp(path.join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'fleet-bench-'));
  const instances: SimInstance[] = [];
  const realIo: RealIo = { inFlight: 0 };
  const settled = () => realIo.inFlight === 0 && noFileIo();
  const running: Promise<void>[] = [];
  try {
    let version = 0;
    const push = () => {
      version++;
      for (let i = 0; i < p; i++) ssm.put({ Name: `/nixos/fleet/options/bench.option${i}`, Type: 'String', Value: JSON.stringify(`v${version}-${i}`), Overwrite: true });
      ssm.put({ Name: '/nixos/fleet/revision', Type: 'String', Value: String(version), Overwrite: true });
    };
    push();

    const passes = new Map<SimInstance, { at: number; result: PassResult }[]>();
    // What the phase in hand watches for, told after each pass: a fleet-wide check at every clock
    // step would cost the run N × steps.
    let afterPass: ((instance: SimInstance) => void) | undefined;
    const record = (instance: SimInstance, _reason: string, result: PassResult) => {
      afterPass?.(instance);
      let list = passes.get(instance);
      if (!list) passes.set(instance, (list = []));
      if (result.outcome !== 'unchanged') list.push({ at: clock.now(), result });
    };
    // EC2's defaults: no tags in instance metadata.
    const common = (i: number) => ({
      clock,
      ssm,
      under,
      imds: defaultInstance({ instanceId: `i-${(0x100000000000000n + BigInt(i)).toString(16).slice(-17)}`, privateIp: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, tags: {}, tagsInMetadata: false }),
      rebuildMs,
      // Each instance its own sequence: what one draws does not depend on when the others drew.
      random: prng((Math.imul(seed, 0x9e3779b1) + i) >>> 0),
      onPass: record,
      log,
      ...(i < imdsHttp ? { imdsOverHttp: { realIo } } : {}),
    });
    // Built a hundred at a time (each waits mostly on its root's files); one at a time in a serial
    // run, so whatever an instance sets going while it is built queues in the same order each time.
    const batch = serial ? 1 : 100;
    for (let i = 0; i < n; i += batch) {
      instances.push(...(await Promise.all(Array.from({ length: Math.min(batch, n - i) }, (_, k) => createInstance(common(i + k))))));
    }
    const totals = (): Totals => instances.reduce((t, i) => ({ calls: t.calls + i.ssmCalls.calls, throttled: t.throttled + i.ssmCalls.throttled }), { calls: 0, throttled: 0 });
    const since = (a: Totals): Totals => {
      const b = totals();
      return { calls: b.calls - a.calls, throttled: b.throttled - a.throttled };
    };
    // 50 ms while a change spreads (what the account's token bucket and the SDK's backoff see);
    // a second at idle, where only the count of calls is measured, not their timing.
    const runFor = (ms: number, done?: () => boolean, resolutionMs = 50) =>
      clock.run(clock.now() + ms, { resolutionMs, idle: settled, serial, ...(done ? { done } : {}) });
    const hashes = () => new Set(instances.map((i) => i.runningHash));
    const wall = () => `${round((performance.now() - wallStart) / 1000)} s real`;

    // ---- launch ----
    // A fleet that has been running came up over at least one poll interval, and no faster than the
    // account could serve its first reads (twice over): the launch is the setting, not a figure.
    const launchMs = Math.max(intervalMs, (2 * n * fullFetchCalls * 1000) / READS_PER_SECOND);
    const t0 = clock.now();
    for (const instance of instances) {
      const offset = random() * launchMs;
      running.push(clock.sleep(offset).then(() => instance.run()));
    }
    const up = new Set<SimInstance>();
    afterPass = (i) => i.runningHash !== undefined && up.add(i);
    await runFor(6 * HOUR_MS, () => clock.now() - t0 >= launchMs && up.size === n);
    const launched = instances.filter((i) => i.runningHash !== undefined).length;
    print(`fleet: ${n} instances, ${p} parameters, stand-in rebuild ${rebuildMs} ms; time is simulated (one shared virtual clock)`);
    print(`  SSM: the real SDK client per instance → the SSM emulator's request handler in-process (no socket), ${READS_PER_SECOND} GetParameter*/s account-wide`);
    print(
      `  IMDS: ${Math.min(imdsHttp, n)} instance(s) through the agent's ImdsClient → an IMDS emulator server over HTTP; ` +
        `${n - Math.min(imdsHttp, n)} answered in-process from the emulator's instance description (a stand-in: no HTTP, no tokens); Auto Scaling in-process`,
    );
    print(`  defaults: poll ${defaults.ssm.pollIntervalSeconds} s (jitter ${defaults.ssm.pollJitter}), full refresh ${defaults.ssm.fullRefreshSeconds} s, reads one attempt each, a busy account waited out for up to ${defaults.ssm.maxBackoffSeconds} s`);
    print(`  launch: ${launched}/${n} converged after ${round((clock.now() - t0) / 1000)} s simulated (${wall()})`);

    // ---- push: converge --now through SSM Run Command ----
    const changeConvergence = async (label: string, trigger: (() => void) | undefined, capMs: number) => {
      const before = hashes();
      push();
      const start = clock.now();
      const callsAtStart = new Map(instances.map((i) => [i, i.ssmCalls.calls - i.ssmCalls.throttled]));
      const startTotals = totals();
      trigger?.();
      const convergedAt = new Map<SimInstance, number>();
      const isNew = (i: SimInstance) => i.runningHash !== undefined && !before.has(i.runningHash);
      afterPass = (i) => !convergedAt.has(i) && isNew(i) && convergedAt.set(i, clock.now());
      await runFor(capMs, () => convergedAt.size === instances.length);
      const used = since(startTotals);
      const times = [...convergedAt.values()].map((t) => (t - start) / 1000);
      const successful = instances.map((i) => i.ssmCalls.calls - i.ssmCalls.throttled - (callsAtStart.get(i) ?? 0));
      // The fewest calls any instance needed is what each needed at least: the fleet's minimum.
      const needed = Math.min(...successful) * n;
      const minS = needed / READS_PER_SECOND;
      const allS = Math.max(...times, 0);
      const failedPasses = instances.reduce((k, i) => k + (passes.get(i) ?? []).filter((x) => x.at >= start && x.result.outcome !== 'converged').length, 0);
      const out = {
        label,
        convergedS: allS,
        minS,
        medianS: times.length ? median(times) : NaN,
        failed: n - convergedAt.size,
        calls: used.calls,
        throttled: used.throttled,
        failedPasses,
        targetS: 1.25 * minS + intervalMs / 1000,
      };
      print(
        `  ${label}: ${convergedAt.size}/${n} converged in ${round(allS)} s (minimum ${round(minS)} s = ${needed} calls ÷ ${READS_PER_SECOND}/s; target ≤ ${round(out.targetS)} s); ` +
          `median ${round(out.medianS)} s; ${round(used.calls / n)} SSM calls per instance, ${used.throttled} throttled; ${failedPasses} passes ended otherwise than converged (${wall()})`,
      );
      return out;
    };
    const pushed = await changeConvergence('push (Run Command converge --now on every instance)', () => {
      // Each command lands through the clock, so a serial run takes them one at a time.
      for (const i of instances) void clock.sleep(1).then(() => i.convergeNow('converge --now'));
    }, 6 * HOUR_MS);

    // ---- poll: the change latency at the default settings ----
    await runFor(intervalMs);
    const polled = await changeConvergence('poll (revision bumped, no push)', undefined, 6 * HOUR_MS);

    // ---- idle ----
    const perInstanceHour = (t: Totals) => (t.calls / n) * (HOUR_MS / windowMs);
    await runFor(intervalMs, undefined, IDLE_RESOLUTION_MS);
    let mark = totals();
    await runFor(windowMs, undefined, IDLE_RESOLUTION_MS);
    const idleAfter = since(mark);
    print(`  idle window: ${round(perInstanceHour(idleAfter))} SSM calls per instance-hour (${wall()})`);

    // ---- with the revision tag in instance metadata ----
    for (const i of instances) {
      i.tagInMetadata(TAG, '1');
    }
    const tagged = new Set<SimInstance>();
    afterPass = (i) => i.agent.ssm.stats.mode === 'tag' && tagged.add(i);
    await runFor(6 * HOUR_MS, () => tagged.size === n, IDLE_RESOLUTION_MS);
    afterPass = undefined;
    await runFor(intervalMs, undefined, IDLE_RESOLUTION_MS);
    mark = totals();
    await runFor(windowMs, undefined, IDLE_RESOLUTION_MS);
    const idleTag = since(mark);

    // ---- the baseline: the same agent with the former defaults (60 s polls, hourly full refresh) ----
    for (const i of instances) i.stop();
    const baselineN = Math.min(n, quick ? 10 : 100);
    const baseline: SimInstance[] = [];
    for (let k = 0; k < baselineN; k++) {
      baseline.push(await createInstance({ ...common(n + k), config: { ssm: FORMER_SSM_DEFAULTS } }));
    }
    instances.push(...baseline);
    for (const instance of baseline) running.push(clock.sleep(random() * FORMER_SSM_DEFAULTS.pollIntervalSeconds * 1000).then(() => instance.run()));
    await runFor(quick ? FORMER_SSM_DEFAULTS.pollIntervalSeconds * 1000 : FORMER_SSM_DEFAULTS.fullRefreshSeconds * 1000, undefined, IDLE_RESOLUTION_MS);
    const baseMark = baseline.reduce((t, i) => t + i.ssmCalls.calls, 0);
    await runFor(windowMs, undefined, IDLE_RESOLUTION_MS);
    const baselinePerInstanceHour = ((baseline.reduce((t, i) => t + i.ssmCalls.calls, 0) - baseMark) / baselineN) * (HOUR_MS / windowMs);
    for (const i of baseline) i.stop();

    // The full refresh every fullRefreshSeconds is outside an hour's window; its share, amortized.
    const refreshPerHour = fullFetchCalls / (defaults.ssm.fullRefreshSeconds / 3600);
    const idleCalls = perInstanceHour(idleAfter) + refreshPerHour;
    const idleReadsPerSecond = (idleCalls * n) / 3600;
    const at10k = (idleCalls * 10_000) / 3600;
    print(
      `  idle (default EC2, no tags in metadata): ${round(perInstanceHour(idleAfter))} SSM calls per instance-hour polling ` +
        `+ ${round(refreshPerHour)} for the full refresh every ${defaults.ssm.fullRefreshSeconds / 3600} h = ${round(idleCalls)}; ${round(idleReadsPerSecond)} reads/s for this fleet, ${round(at10k)} reads/s at 10,000 instances (target ≤ 20)`,
    );
    print(
      `  baseline, the former defaults (poll ${FORMER_SSM_DEFAULTS.pollIntervalSeconds} s, full refresh hourly; ${baselineN} instances, full refresh inside the hour): ` +
        `${round(baselinePerInstanceHour)} SSM calls per instance-hour = ${round((baselinePerInstanceHour * 10_000) / 3600)} reads/s at 10,000 instances`,
    );
    print(`  idle with the revision tag in instance metadata: ${round(perInstanceHour(idleTag))} SSM calls per instance-hour from polling (IMDS only)`);
    const stats = [pushed, polled].map((s) => [
      s.label.split(' ')[0] as string,
      round(s.convergedS),
      round(s.minS),
      ratio(s.convergedS, s.minS),
      round(s.targetS),
      round(s.medianS),
      ratio(s.convergedS, s.medianS),
      s.failed,
      round(s.calls / n),
      s.throttled,
    ]);
    print(table(['change', 'all_s', 'min_s', 'over_min', 'target_s', 'median_s', 'slowest/median', 'failed', 'calls/inst', 'throttled'], stats));
    const met = pushed.convergedS <= pushed.targetS && pushed.failed === 0 && pushed.convergedS <= 2 * pushed.medianS && at10k <= 20 && perInstanceHour(idleTag) === 0;
    print(`  simulated ${round((clock.now() - t0) / HOUR_MS)} h in ${wall()}, ${clock.steps} clock steps; ${cpus().length} cores, Node ${process.version}`);
    return {
      name: 'fleet',
      figures: {
        instances: n,
        parameters: p,
        rebuild_ms: rebuildMs,
        converge_s: pushed.convergedS,
        min_s: pushed.minS,
        converge_over_min: ratio(pushed.convergedS, pushed.minS),
        converge_target_s: pushed.targetS,
        slowest_over_median: ratio(pushed.convergedS, pushed.medianS),
        failed: pushed.failed + polled.failed,
        calls_per_instance: pushed.calls / n,
        throttled: pushed.throttled,
        poll_change_median_s: polled.medianS,
        poll_change_max_s: polled.convergedS,
        poll_converge_over_min: ratio(polled.convergedS, polled.minS),
        idle_calls_per_instance_hour: idleCalls,
        idle_calls_per_instance_hour_before: baselinePerInstanceHour,
        idle_reads_per_second: idleReadsPerSecond,
        idle_reads_per_second_at_10000: at10k,
        idle_reads_per_second_at_10000_before: (baselinePerInstanceHour * 10_000) / 3600,
        idle_tag_calls_per_instance_hour: perInstanceHour(idleTag),
        poll_interval_s: intervalMs / 1000,
        simulated_h: (clock.now() - t0) / HOUR_MS,
        targets: met ? 'met' : 'missed',
      },
    };
  } finally {
    // Every loop ends (a build in hand is cancelled) before the roots go.
    for (const i of instances) i.stop();
    let ended = false;
    void Promise.allSettled(running).then(() => (ended = true));
    await clock.run(clock.now() + 6 * HOUR_MS, { idle: settled, done: () => ended });
    await ssm.close();
    await Promise.all(instances.map((i) => i.imdsServer?.close()));
    await rm(under, { recursive: true, force: true });
  }
}
