// `npm run bench -- rollout [--instances N] [--step PCT] [--interval-seconds S] [--bake-seconds B]`:
// a progressive rollout over the fleet simulation (fleet/instance.ts: N instances of the real agent,
// its sources, Scheduler and reconcile, on one simulated clock, sharing one account's 40 SSM
// reads/s), at the agent's default settings (a 600 s poll with full jitter).
//
// The run, in simulated time:
//   launch     the fleet converges to the stable desired state under /nixos/fleet;
//   bad push   a candidate whose build fails, linear STEP % every S s: how many instances ever
//              tried it (the blast radius, beside the first step), and whether every one of them
//              ends on stable once the fleet sees the halt; time runs on to when the strategy would
//              have covered the whole fleet, so a later cohort taking it would count;
//   abandon    the operator deletes the rollout;
//   good push  a candidate that builds, same strategy with a bake of B s: when the whole fleet runs
//              it and the schedule has ended (complete), beside the strategy's own time; an instance
//              launched halfway, in the last cohort, must converge first to stable.
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigSchema } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import type { PassResult } from '../../agent/reconcile.js';
import { cohortPosition, scheduleOf } from '../../agent/rollout/plan.js';
import { candidateIdOf, Strategy } from '../../agent/rollout/spec.js';
import type { Status } from '../../agent/status.js';
import { VirtualClock } from '../../sandbox/clock.js';
import { defaultInstance } from '../../sandbox/emulators/imds.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { prng } from '../support/prng.js';
import { BenchUsageError, intFlag, parseBenchArgs, ratio, round, type BenchResult, type Print } from './common.js';
import { noFileIo } from './fleet.js';
import { createInstance, type InstanceOptions, type SimInstance } from './fleet/instance.js';

const READS_PER_SECOND = 40;
const HOUR_MS = 3_600_000;
const FLEET = '/nixos/fleet';
const REVISION = `${FLEET}/revision`;
const ROLLOUT = `${FLEET}/rollout/`;
const BAD = `${ROLLOUT}candidate/options/bench.broken`;
const GOOD = `${ROLLOUT}candidate/options/bench.release`;

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('rollout', args, {
    instances: { type: 'string' },
    step: { type: 'string' },
    'interval-seconds': { type: 'string' },
    'bake-seconds': { type: 'string' },
    'rebuild-ms': { type: 'string' },
    seed: { type: 'string' },
  });
  const quick = flags.quick === true;
  const n = intFlag('instances', flags.instances, quick ? 24 : 500);
  const step = intFlag('step', flags.step, 25);
  const intervalSeconds = intFlag('interval-seconds', flags['interval-seconds'], 1_800);
  const bakeSeconds = intFlag('bake-seconds', flags['bake-seconds'], 1_800);
  const rebuildMs = intFlag('rebuild-ms', flags['rebuild-ms'], 30_000);
  const seed = intFlag('seed', flags.seed, 1);
  if (n > 20_000) throw new BenchUsageError('--instances: at most 20000 in one process');
  if (step < 1 || step > 100) throw new BenchUsageError('--step: a percentage from 1 to 100');
  const random = prng(seed);
  const pollMs = ConfigSchema.parse({}).ssm.pollIntervalSeconds * 1000;

  const log = silentLogger();
  const wallStart = performance.now();
  const wall = () => `${round((performance.now() - wallStart) / 1000)} s real`;
  const clock = new VirtualClock(Date.now());
  const ssm = await SsmEmulator.start({ clock, throughput: { readsPerSecond: READS_PER_SECOND, burst: READS_PER_SECOND } });
  const under = await mkdtemp(path.join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'rollout-bench-'));
  const instances: SimInstance[] = [];
  const running: Promise<void>[] = [];
  try {
    let revision = 0;
    const bump = () => ssm.put({ Name: REVISION, Type: 'String', Value: String(++revision), Overwrite: true });
    ssm.put({ Name: `${FLEET}/options/time.timeZone`, Type: 'String', Value: '"UTC"' });
    bump();
    const strategyFor = (startMs: number): Strategy =>
      Strategy.parse({ type: 'linear', stepPercent: step, intervalSeconds, bakeSeconds, errorThreshold: 1, startAt: new Date(startMs).toISOString() });
    const publish = (name: string, value: string, strategy: Strategy) => {
      const { Version } = ssm.put({ Name: name, Type: 'String', Value: JSON.stringify(value) });
      ssm.put({ Name: `${ROLLOUT}strategy`, Type: 'String', Value: JSON.stringify(strategy), Overwrite: true });
      bump();
      return candidateIdOf([{ name, version: Version } as never]);
    };

    // Who ever started a build of the bad candidate: configuration.nix names the parameters it is made of.
    const touched = new Set<string>();
    const firstConverged = new Map<string, { at: number; onCandidate: boolean; hash: string | undefined }>();
    const onPass = (instance: SimInstance, _reason: string, result: PassResult) => {
      if (result.outcome === 'converged' && !firstConverged.has(instance.id)) {
        firstConverged.set(instance.id, { at: clock.now(), onCandidate: onCandidate(instance.agent.reconciler.status), hash: result.desiredHash });
      }
    };
    const options = (i: number): InstanceOptions => {
      const instanceId = `i-${(0x100000000000000n + BigInt(i)).toString(16).slice(-17)}`;
      return {
        clock,
        ssm,
        under,
        imds: defaultInstance({ instanceId, privateIp: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, tags: {}, tagsInMetadata: false }),
        rebuildMs,
        random,
        onPass,
        log,
        failBuild: (configuration) => {
          if (!configuration.includes(`${BAD}@`)) return false;
          touched.add(instanceId);
          return true;
        },
      };
    };
    for (let i = 0; i < n; i += 100) {
      instances.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, k) => createInstance(options(i + k))))));
    }
    const runFor = (ms: number, done?: () => boolean) => clock.run(clock.now() + ms, { resolutionMs: 50, idle: noFileIo, ...(done ? { done } : {}) });
    const runUntil = (at: number, done?: () => boolean) => runFor(Math.max(0, at - clock.now()), done);
    const status = (i: SimInstance) => i.agent.reconciler.status;
    const rolloutState = (i: SimInstance) => status(i).rollout?.[0]?.state;
    const settled = (i: SimInstance) => status(i).phase === 'idle';

    // ---- launch ----
    const t0 = clock.now();
    for (const instance of instances) running.push(clock.sleep(random() * pollMs).then(() => instance.run()));
    await runFor(6 * HOUR_MS, () => clock.now() - t0 >= pollMs && instances.every((i) => i.runningHash !== undefined));
    const stable = new Map(instances.map((i) => [i.id, i.runningHash]));
    const strategy = strategyFor(clock.now());
    const stepsOf = scheduleOf(strategy).steps;
    print(`rollout: ${n} instances of the real agent on one simulated clock, ${READS_PER_SECOND} SSM reads/s account-wide, stand-in rebuild ${rebuildMs / 1000} s`);
    print(`  strategy: linear ${step}% every ${intervalSeconds} s (${stepsOf} steps), bake ${bakeSeconds} s, threshold 1; agent defaults (poll ${pollMs / 1000} s, full jitter)`);
    print(`  launch: ${[...stable.values()].filter(Boolean).length}/${n} converged to stable after ${round((clock.now() - t0) / 1000)} s simulated (${wall()})`);

    // ---- bad push ----
    const bad = strategyFor(clock.now());
    const badSchedule = scheduleOf(bad);
    const badId = publish(BAD, 'broken', bad);
    const inFirstStep = instances.filter((i) => cohortPosition(i.id, badId) < step / 100).length;
    let haltSeenAt: number | undefined;
    await runFor(6 * HOUR_MS, () => {
      const done = instances.every((i) => rolloutState(i) === 'halted' && settled(i));
      if (done) haltSeenAt ??= clock.now();
      return done;
    });
    const failureRecords = ssm.names().filter((x) => x.startsWith(`${ROLLOUT}failures/`)).length;
    // On to when the strategy would have reached the whole fleet: no later cohort may take it.
    await runUntil(badSchedule.fullMs + pollMs);
    const touchedInstances = instances.filter((i) => touched.has(i.id));
    const endedOnStable = touchedInstances.every((i) => i.runningHash === stable.get(i.id) && !onCandidate(status(i)));
    const blastRadius = touched.size / n;
    print(
      `  bad push: ${touched.size} of ${n} instances tried the candidate (${round(100 * blastRadius)}%; first step ${step}%, ${inFirstStep} instances in it); ` +
        `${failureRecords} failure record(s) written; the whole fleet saw the halt ${round(((haltSeenAt ?? NaN) - badSchedule.startMs) / 1000)} s after the push; ` +
        `every touched instance on stable: ${endedOnStable} (${wall()})`,
    );

    // ---- abandon ----
    for (const name of ssm.names().filter((x) => x.startsWith(ROLLOUT))) ssm.delete(name);
    bump();
    await runFor(6 * HOUR_MS, () => instances.every((i) => !status(i).rollout?.length && settled(i)));

    // ---- good push, and a scale-out halfway through it ----
    const good = strategyFor(clock.now());
    const goodSchedule = scheduleOf(good);
    const strategyMs = goodSchedule.completeMs - goodSchedule.startMs;
    const goodId = publish(GOOD, 'good', good);
    // In the last cohort, so taking stable at launch is the rule at work, not luck.
    let k = n;
    while (cohortPosition(options(k).imds.instanceId, goodId) < 1 - step / 100) k++;
    const scaleOut = await createInstance(options(k));
    const scaleOutAt = goodSchedule.startMs + Math.floor(stepsOf / 2) * intervalSeconds * 1000 + intervalSeconds * 500;
    running.push(clock.sleep(scaleOutAt - clock.now()).then(() => scaleOut.run()));
    instances.push(scaleOut);
    const onCandidateAt = new Map<SimInstance, number>();
    let reportedAt: number | undefined;
    await runFor(goodSchedule.completeMs - clock.now() + 6 * HOUR_MS, () => {
      for (const i of instances) if (!onCandidateAt.has(i) && settled(i) && i.runningHash !== undefined && onCandidate(status(i)) && i.runningHash === status(i).desired?.hash) onCandidateAt.set(i, clock.now());
      const done = onCandidateAt.size === instances.length && instances.every((i) => rolloutState(i) === 'complete');
      if (done) reportedAt ??= clock.now();
      return done;
    });
    const allOn = onCandidateAt.size === instances.length;
    const lastOn = Math.max(...onCandidateAt.values());
    const completedMs = Math.max(goodSchedule.completeMs, lastOn) - goodSchedule.startMs;
    const halted = instances.some((i) => rolloutState(i) === 'halted');
    const completed = allOn && !halted && completedMs <= strategyMs + pollMs;
    const scaleOutFirst = firstConverged.get(scaleOut.id);
    const scaleOutGotStable = scaleOutFirst !== undefined && !scaleOutFirst.onCandidate && scaleOutFirst.hash === stable.get(instances[0]?.id ?? '');
    print(
      `  good push: ${onCandidateAt.size}/${instances.length} on the candidate, the last ${round((lastOn - goodSchedule.startMs) / 1000)} s after the start; ` +
        `complete after ${round(completedMs / 1000)} s (strategy ${strategyMs / 1000} s, + one poll ${pollMs / 1000} s allowed); ` +
        `every instance reported complete after ${round(((reportedAt ?? NaN) - goodSchedule.startMs) / 1000)} s (${wall()})`,
    );
    print(
      `  scale-out: ${scaleOut.id} (cohort ${round(cohortPosition(scaleOut.id, goodId))}) launched ${round((scaleOutAt - goodSchedule.startMs) / 1000)} s in, ` +
        `first converged to ${scaleOutFirst?.onCandidate ? 'the candidate' : 'stable'}; got stable: ${scaleOutGotStable}`,
    );
    const throttled = ssm.throttledCount;
    print(`  simulated ${round((clock.now() - t0) / HOUR_MS)} h in ${wall()}, ${clock.steps} clock steps; ${throttled} SSM calls throttled`);
    return {
      name: 'rollout',
      figures: {
        instances: n,
        first_step: step / 100,
        blast_radius: round(blastRadius),
        touched: touched.size,
        first_step_instances: inFirstStep,
        failure_records: failureRecords,
        halt_seen_s: ((haltSeenAt ?? NaN) - badSchedule.startMs) / 1000,
        touched_ended_on_stable: touched.size > 0 && endedOnStable ? 1 : 0,
        good_push_completed: completed ? 1 : 0,
        good_push_ms: completedMs,
        strategy_ms: strategyMs,
        good_push_over_strategy: ratio(completedMs, strategyMs),
        good_push_reported_s: ((reportedAt ?? NaN) - goodSchedule.startMs) / 1000,
        good_push_reported_over_strategy: ratio((reportedAt ?? NaN) - goodSchedule.startMs, strategyMs),
        scaleout_got_stable: scaleOutGotStable ? 1 : 0,
        poll_interval_s: pollMs / 1000,
        throttled,
      },
    };
  } finally {
    for (const i of instances) i.stop();
    let ended = false;
    void Promise.allSettled(running).then(() => (ended = true));
    await clock.run(clock.now() + 6 * HOUR_MS, { idle: noFileIo, done: () => ended });
    await ssm.close();
    await rm(under, { recursive: true, force: true });
  }
}

const onCandidate = (s: Status) => s.desired?.sources.parameters.some((p) => p.name.startsWith(`${ROLLOUT}candidate/`)) ?? false;
