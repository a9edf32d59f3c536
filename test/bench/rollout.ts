// A progressive rollout over a few sandbox daemons sharing one SSM, in real time: a bad push (how
// much of the fleet it touches, and whether every touched instance ends on stable) and a good push
// (how long it takes beside the strategy's own duration, and whether an instance launched
// mid-rollout gets stable). The 10,000-instance figures belong to the fleet simulation; this one
// runs the real agent, stand-in rebuilds included.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { cohortPosition, type RolloutStatus } from '../../agent/rollout/plan.js';
import { candidateIdOf } from '../../agent/rollout/spec.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { Instance, LiveLog, markerModule, type Running, type StatusJson } from '../support/e2e.js';
import { intFlag, parseBenchArgs, ratio, round, type BenchResult, type Print } from './common.js';

type Status = StatusJson & { rollout?: RolloutStatus[] };

const FLEET = '/nixos/fleet';
const TZ = `${FLEET}/options/time.timeZone`;
const BAD = `${FLEET}/rollout/candidate/modules/bad`;
const GOOD = `${FLEET}/rollout/candidate/options/time.timeZone`;
const REVISION = `${FLEET}/revision`;

interface Daemon {
  readonly id: string;
  readonly inst: Instance;
  readonly run: Running;
  readonly log: LiveLog;
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('rollout', args, { instances: { type: 'string' }, step: { type: 'string' }, 'interval-seconds': { type: 'string' } });
  const quick = Boolean(flags.quick);
  const n = intFlag('instances', flags.instances, quick ? 2 : 6);
  const step = intFlag('step', flags.step, quick ? 50 : 25);
  const intervalSeconds = intFlag('interval-seconds', flags['interval-seconds'], quick ? 5 : 10);
  const bakeSeconds = intervalSeconds;
  const badId = candidateIdOf([{ name: BAD, version: 1 } as never]);
  const goodId = candidateIdOf([{ name: GOOD, version: 1 } as never]);
  // The first instance is in the bad push's first cohort (so the push is caught); the scale-out
  // is not in the good push's first cohort (so taking stable is the rule at work, not luck).
  const ids = pickIds(n, (id, i) => (i === 0 ? cohortPosition(id, badId) < step / 100 : true));
  const [scaleOutId] = pickIds(1, (id) => !ids.includes(id) && cohortPosition(id, goodId) >= Math.min(0.99, 1 - step / 100));
  const ssm = await SsmEmulator.start({ region: 'us-east-1', throughput: null });
  ssm.put({ Name: TZ, Value: '"UTC"', Type: 'String' });
  ssm.put({ Name: REVISION, Value: '0', Type: 'String' });
  const daemons: Daemon[] = [];
  const bump = (value: string) => ssm.put({ Name: REVISION, Value: value, Type: 'String', Overwrite: true });
  const strategy = (startAt: number, interval: number) =>
    ssm.put({ Name: `${FLEET}/rollout/strategy`, Value: JSON.stringify({ type: 'linear', stepPercent: step, intervalSeconds: interval, bakeSeconds, errorThreshold: 1, startAt: new Date(startAt).toISOString() }), Type: 'String', Overwrite: true });
  try {
    print(`rollout: ${n} sandbox daemon(s), linear ${step}% every ${intervalSeconds} s, bake ${bakeSeconds} s, threshold 1`);
    for (const id of ids) daemons.push(await start(id, ssm.url));
    const stable = new Map<string, string>();
    for (const d of daemons) stable.set(d.id, (await settled(d, () => true)).running?.storePath ?? '');

    // A bad push: the first cohort fails health verification; nobody else may take it.
    const builds = new Map(daemons.map((d) => [d.id, d.log.builds().length]));
    ssm.put({ Name: BAD, Value: markerModule('sandbox-fail-unit'), Type: 'String' });
    strategy(Date.now(), 3600);
    bump('bad');
    const halted = await Promise.all(daemons.map((d) => settled(d, (s) => s.rollout?.[0]?.state === 'halted')));
    const touched = daemons.filter((d) => d.log.builds().length > (builds.get(d.id) ?? 0));
    const endedOnStable = touched.every((d) => halted[daemons.indexOf(d)]?.running?.storePath === stable.get(d.id));
    print(`rollout: bad push touched ${touched.length} of ${n} (${touched.map((d) => d.id).join(' ')}); on stable after the halt: ${endedOnStable}`);
    for (const name of ssm.names().filter((x) => x.startsWith(`${FLEET}/rollout/`))) ssm.delete(name);
    bump('abandoned');
    await Promise.all(daemons.map((d) => settled(d, (s) => s.rollout === undefined)));

    // A good push, in real time, with an instance launched while it runs.
    ssm.put({ Name: GOOD, Value: '"Europe/Paris"', Type: 'String' });
    const startedAt = Date.now();
    strategy(startedAt, intervalSeconds);
    bump('good');
    const scaleOut = await start(scaleOutId ?? 'i-0', ssm.url);
    const firstPass = await settled(scaleOut, () => true);
    const scaleOutGotStable = !onCandidate(firstPass);
    daemons.push(scaleOut);
    await Promise.all(daemons.map((d) => settled(d, (s) => onCandidate(s) && s.rollout?.[0]?.state === 'complete')));
    const completedMs = Date.now() - startedAt;
    const strategyMs = ((Math.ceil(100 / step) - 1) * intervalSeconds + bakeSeconds) * 1000;
    print(`rollout: good push complete on all ${daemons.length} after ${round(completedMs / 1000)} s (strategy: ${strategyMs / 1000} s); scale-out got stable: ${scaleOutGotStable}`);
    return {
      name: 'rollout',
      figures: {
        instances: n,
        blast_radius: round(touched.length / n),
        first_step: step / 100,
        good_push_completed: 1,
        good_push_ms: completedMs,
        strategy_ms: strategyMs,
        good_push_over_strategy: ratio(completedMs, strategyMs),
        touched_ended_on_stable: touched.length > 0 && endedOnStable ? 1 : 0,
        scaleout_got_stable: scaleOutGotStable ? 1 : 0,
      },
    };
  } finally {
    for (const d of daemons) {
      if (d.run.child.exitCode === null && d.run.child.signalCode === null) d.run.child.kill('SIGKILL');
      await d.run.done.catch(() => undefined);
      await d.inst.close();
    }
    await ssm.close();
  }
}

function pickIds(count: number, accept: (id: string, index: number) => boolean): string[] {
  const out: string[] = [];
  for (let n = 0; out.length < count && n < 10_000_000; n++) {
    const id = `i-${n.toString(16).padStart(17, '0')}`;
    if (accept(id, out.length)) out.push(id);
  }
  return out;
}

async function start(id: string, ssmUrl: string): Promise<Daemon> {
  const inst = await Instance.launch({ instance: { instanceId: id }, config: { ssm: { pollIntervalSeconds: 0.5, pollJitter: 0 }, http: { listen: null } } });
  const run = inst.start(['run'], { AWS_ENDPOINT_URL_SSM: ssmUrl });
  return { id, inst, run, log: new LiveLog(run) };
}

const onCandidate = (s: Status) => s.desired?.sources.parameters.some((p) => p.name.includes('/rollout/candidate/')) ?? false;

/** The daemon's status once it rests converged (or degraded: back on a good generation) and `check` holds. */
async function settled(d: Daemon, check: (s: Status) => boolean, timeoutMs = 180_000): Promise<Status> {
  const file = d.inst.file('run/nixos-ec2-agent/status.json');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (d.run.child.exitCode !== null) throw new Error(`the daemon of ${d.id} exited ${d.run.child.exitCode}`);
    if (existsSync(file)) {
      try {
        const s = JSON.parse(await readFile(file, 'utf8')) as Status;
        if (s.firstConvergenceDone && s.phase === 'idle' && s.condition === 'converged' && check(s)) return s;
      } catch {
        // Read while being replaced: the next look sees the whole file.
      }
    }
    if (Date.now() > deadline) throw new Error(`${d.id} did not settle within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
