// `rollout start|status|halt|resume|abandon|promote`: the operator's side of a rollout. Each is a
// few SSM calls on `<prefix>/rollout/…` with the SDK's default credentials chain; each has a plain
// `aws ssm` equivalent (README). Every change bumps `<prefix>/revision`, so instances watching it
// re-read the tree at their next poll.
import type { SSMClient } from '@aws-sdk/client-ssm';
import type { Config } from '../config.js';
import { InvalidInputError } from '../errors.js';
import { Secret } from '../secret.js';
import { mapSsmError, SsmSource, type SsmParameter } from '../sources/ssm.js';
import { cohortPosition, decide, describeRollout, percentAtStep, scheduleOf, stepOf, type RolloutStatus } from './plan.js';
import { ALARM_STAGE, ROLLOUT, splitSnapshot, Strategy, type RolloutSpec } from './spec.js';

export interface RolloutSettings {
  /** Where the rollout lives when --prefix is not given: the first configured prefix without placeholders. */
  readonly prefix: string;
  /** The revision parameter each change bumps (`ssm.revisionParameter`); null: none. */
  readonly revisionParameter: string | null;
}

/** The SSM calls the commands make: a narrow port, so tests can hand in any client. */
export interface RolloutStore {
  list(path: string): Promise<readonly SsmParameter[]>;
  put(name: string, value: string, type: SsmParameter['type']): Promise<void>;
  delete(names: readonly string[]): Promise<void>;
}

export function storeFromClient(client: SSMClient, sdk: typeof import('../aws/ssm-sdk.js')): RolloutStore {
  const source = SsmSource.fromClient(client, sdk.GetParametersByPathCommand);
  const wrap = async <T>(what: string, call: () => Promise<T>): Promise<T> => {
    try {
      return await call();
    } catch (err) {
      throw mapSsmError(err, what);
    }
  };
  return {
    list: async (path) => (await source.fetch([path], { 'instance-id': '', region: '', asg: undefined })).prefixes[0]?.parameters ?? [],
    // Intelligent-Tiering: SSM takes Standard where the value fits in its 4 KB, Advanced where it
    // does not. Without a tier, a candidate module over 4 KB (published as Advanced) could not be
    // promoted, and promote stopped with the stable parameters half copied.
    put: (name, value, type) => wrap(name, async () => void (await client.send(new sdk.PutParameterCommand({ Name: name, Value: value, Type: type, Overwrite: true, Tier: 'Intelligent-Tiering' })))),
    delete: async (names) => {
      // DeleteParameters takes at most 10 names.
      for (let i = 0; i < names.length; i += 10) {
        const batch = names.slice(i, i + 10);
        await wrap(batch.join(','), () => client.send(new sdk.DeleteParametersCommand({ Names: [...batch] })));
      }
    },
  };
}

export interface RolloutFlags {
  readonly prefix?: string;
  readonly strategy?: string;
  readonly step?: string;
  readonly interval?: string;
  readonly bake?: string;
  readonly threshold?: string;
  readonly at?: string;
  /** Comma-separated CloudWatch alarm names. */
  readonly alarms?: string;
  /** About how many instances follow the rollout (Strategy.fleetSize). */
  readonly 'fleet-size'?: string;
  readonly reason?: string;
  readonly force?: boolean;
  readonly json?: boolean;
}

export const VERBS = ['start', 'status', 'halt', 'resume', 'abandon', 'promote'] as const;
export type Verb = (typeof VERBS)[number];

export interface CohortProgress {
  readonly step: number;
  readonly percent: number;
  readonly opensAt: string;
  readonly open: boolean;
  readonly failures: readonly string[];
}

export interface RolloutReport {
  readonly prefix: string;
  readonly rollout?: Omit<RolloutStatus, 'takes' | 'cohort' | 'canary' | 'nextChangeAt'>;
  readonly cohorts?: readonly CohortProgress[];
  readonly failures?: readonly { instanceId: string; stage: string; reason: string; at: string; step: number }[];
  readonly staleFailures?: number;
  /** The CloudWatch alarms that halt it, and the fleet size that has them read by turns. */
  readonly alarms?: { readonly names: readonly string[]; readonly fleetSize?: number };
  readonly changed?: readonly string[];
}

/** Runs one verb; the lines it prints go to `out`. Returns the exit code. */
export async function runRollout(verb: Verb, flags: RolloutFlags, settings: RolloutSettings, store: RolloutStore, now: number, out: (line: string) => void): Promise<number> {
  const prefix = checkPrefix(flags.prefix ?? settings.prefix);
  // Before anything is read: a bad flag is named as such, whatever SSM holds.
  const strategy = verb === 'start' ? strategyFromFlags(flags, now) : undefined;
  const base = `${prefix}/${ROLLOUT}`;
  const tree = await store.list(base);
  const spec = splitSnapshot({ prefixes: [{ prefix, parameters: tree }], skipped: [], calls: 0 }).rollouts[0];
  const changed: string[] = [];
  const put = async (name: string, value: string, type: SsmParameter['type'] = 'String') => {
    await store.put(name, value, type);
    changed.push(name);
  };
  const remove = async (names: readonly string[]) => {
    if (names.length === 0) return;
    await store.delete(names);
    changed.push(...names.map((n) => `${n} (deleted)`));
  };
  const bump = async () => {
    if (settings.revisionParameter) await put(`${prefix}/${settings.revisionParameter}`, `rollout ${verb} ${new Date(now).toISOString()}`);
  };
  const bookkeeping = (p: SsmParameter) => p.name === `${base}/halt` || p.name.startsWith(`${base}/failures/`);

  switch (verb) {
    case 'status':
      break;
    case 'start': {
      if (!spec || spec.candidate.length === 0) {
        throw new InvalidInputError(`nothing under ${base}/candidate/: publish the candidate first (e.g. aws ssm put-parameter --name ${base}/candidate/options/…)`, 'rollout start');
      }
      // A second start would begin the schedule again: the instances of every later cohort back to
      // stable, a rebuild each, then forward again. As AppConfig refuses a second deployment of a
      // profile while one is in progress, this asks for --force (or abandon or promote first).
      const under = spec.strategy && !spec.problem ? decide(spec, { instanceId: '', canary: false }, now) : undefined;
      if (under && under.state !== 'staged' && !flags.force) {
        throw new InvalidInputError(
          `a rollout is already ${under.state} (at ${under.percent}%): promote or abandon it first, or pass --force to begin it again from its first step`,
          'rollout start',
        );
      }
      if (!strategy) throw new Error('a start has its strategy');
      await remove(tree.filter(bookkeeping).map((p) => p.name));
      await put(`${base}/strategy`, JSON.stringify(strategy));
      await bump();
      break;
    }
    case 'halt':
      needRollout(spec, base);
      await put(`${base}/halt`, flags.reason?.trim() || `halted by an operator at ${new Date(now).toISOString()}`);
      await bump();
      break;
    case 'resume': {
      const rollout = needRollout(spec, base);
      // Written before the halt goes, so that no instance reads the old schedule without the halt.
      const resumed = resumedStrategy(rollout, tree, now);
      if (resumed) await put(`${base}/strategy`, JSON.stringify(resumed));
      // The failure records go too: they would halt it again at once.
      await remove(tree.filter(bookkeeping).map((p) => p.name));
      await bump();
      break;
    }
    case 'abandon':
      needRollout(spec, base);
      await remove(tree.filter((p) => p.name !== `${base}/canary`).map((p) => p.name));
      await bump();
      break;
    case 'promote': {
      const rollout = needRollout(spec, base);
      const state = decide(rollout, { instanceId: '', canary: false }, now).state;
      if (state !== 'complete' && !flags.force) {
        throw new InvalidInputError(`the rollout is ${state}, not complete: wait for the bake to end, or pass --force`, 'rollout promote');
      }
      const candidateBase = `${base}/candidate/`;
      for (const p of rollout.candidate) {
        await put(`${prefix}/${p.name.slice(candidateBase.length)}`, p.value instanceof Secret ? p.value.reveal() : p.value, p.type);
      }
      await remove(tree.filter((p) => p.name !== `${base}/canary`).map((p) => p.name));
      await bump();
      break;
    }
  }
  const after = verb === 'status' ? spec : splitSnapshot({ prefixes: [{ prefix, parameters: await store.list(base) }], skipped: [], calls: 0 }).rollouts[0];
  const report = { ...reportOf(prefix, after, now), ...(changed.length ? { changed } : {}) };
  if (flags.json) out(JSON.stringify(report, null, 2));
  else for (const line of describeReport(report)) out(line);
  return 0;
}

function checkPrefix(prefix: string): string {
  if (!/^\/[A-Za-z0-9_.\-/]+$/.test(prefix) || prefix.includes('//')) {
    throw new InvalidInputError(`"${prefix}" is not an SSM path (e.g. /nixos/fleet; placeholders such as {asg} must be filled in)`, '--prefix');
  }
  return prefix.replace(/\/+$/, '');
}

function needRollout(spec: RolloutSpec | undefined, base: string): RolloutSpec {
  if (!spec) throw new InvalidInputError(`no rollout here (no strategy and no candidate)`, base);
  return spec;
}

/**
 * The strategy with its schedule moved on by the time the rollout stood halted. The schedule is a
 * function of the clock, which ran on during the halt: resumed as it was, a rollout halted longer
 * than its remaining steps and bake would be complete at once, every instance taking the candidate
 * in the same poll. Undefined: nothing to move (not halted, halted before it started, or when it
 * halted is not known).
 */
function resumedStrategy(spec: RolloutSpec, tree: readonly SsmParameter[], now: number): Strategy | undefined {
  const strategy = spec.strategy;
  if (!strategy || spec.problem) return undefined;
  const since = haltedSince(spec, strategy, tree);
  if (since === undefined) return undefined;
  const { startMs } = scheduleOf(strategy);
  const halted = now - Math.max(since, startMs);
  if (halted <= 0) return undefined;
  return { ...strategy, startAt: new Date(startMs + halted).toISOString() };
}

/** When the halt began: the operator's halt written, an alarm recorded, or the threshold's record. */
function haltedSince(spec: RolloutSpec, strategy: Strategy, tree: readonly SsmParameter[]): number | undefined {
  const base = `${spec.prefix}/${ROLLOUT}`;
  const times: number[] = [];
  const halt = tree.find((p) => p.name === `${base}/halt`)?.lastModified;
  if (halt !== undefined) times.push(halt);
  const recorded = spec.failures.map((f) => ({ stage: f.stage, at: Date.parse(f.at) })).filter((f) => Number.isFinite(f.at));
  for (const f of recorded) if (f.stage === ALARM_STAGE) times.push(f.at);
  const byTime = recorded.map((f) => f.at).sort((a, b) => a - b);
  const threshold = byTime[strategy.errorThreshold - 1];
  if (threshold !== undefined) times.push(threshold);
  return times.length ? Math.min(...times) : undefined;
}

function strategyFromFlags(flags: RolloutFlags, now: number): Strategy {
  const number = (flag: string, value: string | undefined) => {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidInputError(`"${value}" is not a number`, `--${flag}`);
    return n;
  };
  const raw = {
    type: flags.strategy ?? 'linear',
    stepPercent: number('step', flags.step) ?? 10,
    intervalSeconds: number('interval', flags.interval) ?? 600,
    bakeSeconds: number('bake', flags.bake) ?? 1800,
    errorThreshold: number('threshold', flags.threshold) ?? 1,
    startAt: flags.at ?? new Date(now).toISOString(),
    ...(flags.alarms !== undefined ? { alarms: flags.alarms.split(',').map((a) => a.trim()) } : {}),
    ...(flags['fleet-size'] !== undefined ? { fleetSize: number('fleet-size', flags['fleet-size']) } : {}),
  };
  const parsed = Strategy.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const flag = { type: 'strategy', stepPercent: 'step', intervalSeconds: 'interval', bakeSeconds: 'bake', errorThreshold: 'threshold', startAt: 'at', alarms: 'alarms', fleetSize: 'fleet-size' }[String(issue?.path[0])] ?? 'strategy';
    throw new InvalidInputError(issue?.message ?? 'invalid', `--${flag}`);
  }
  return parsed.data;
}

function reportOf(prefix: string, spec: RolloutSpec | undefined, now: number): RolloutReport {
  if (!spec) return { prefix };
  const { takes: _t, cohort: _c, canary: _k, nextChangeAt: _n, ...rollout } = decide(spec, { instanceId: '', canary: false }, now);
  const strategy = spec.strategy;
  if (!strategy || spec.problem) return { prefix, rollout, staleFailures: spec.stale };
  const schedule = scheduleOf(strategy);
  const failures = spec.failures.map((f) => ({ ...f, step: stepOf(strategy, cohortPosition(f.instanceId, spec.candidateId)) }));
  const cohorts: CohortProgress[] = [];
  for (let step = 0; step < schedule.steps; step++) {
    const opens = schedule.startMs + step * strategy.intervalSeconds * 1000;
    cohorts.push({
      step,
      percent: percentAtStep(strategy, step),
      opensAt: new Date(opens).toISOString(),
      open: now >= opens && rollout.state !== 'halted',
      failures: failures.filter((f) => f.step === step).map((f) => f.instanceId),
    });
  }
  const alarms = strategy.alarms ? { alarms: { names: strategy.alarms, ...(strategy.fleetSize !== undefined ? { fleetSize: strategy.fleetSize } : {}) } } : {};
  return { prefix, rollout, cohorts, failures, staleFailures: spec.stale, ...alarms };
}

function describeReport(report: RolloutReport): string[] {
  const lines = (report.changed ?? []).map((name) => `wrote ${name}`);
  const r = report.rollout;
  if (!r) return [...lines, `${report.prefix}: no rollout`];
  lines.push(describeRollout(r));
  for (const c of report.cohorts ?? []) {
    const failed = c.failures.length ? `, ${c.failures.length} failed: ${c.failures.join(' ')}` : '';
    lines.push(`  step ${String(c.step + 1).padStart(2)}  up to ${String(c.percent).padStart(5)}%  opens ${c.opensAt}  ${c.open ? 'open' : 'waiting'}${failed}`);
  }
  if (report.alarms) {
    const { names, fleetSize } = report.alarms;
    lines.push(`  alarms   ${names.join(', ')} (${fleetSize !== undefined ? `read by turns across a fleet of ${fleetSize}` : 'read by every instance at every poll'})`);
  }
  for (const f of report.failures ?? []) lines.push(`  failure  ${f.instanceId} (step ${f.step + 1}) ${f.stage} at ${f.at}: ${f.reason}`);
  if (report.staleFailures) lines.push(`  ${report.staleFailures} failure record(s) for an older candidate, not counted`);
  return lines;
}

/** Per SSM request, as the agent's own (agent.ts): each attempt of the SDK's retry gets this long. */
const REQUEST_TIMEOUT_MS = 10_000;

/** The command line's entry: the SDK client with the default credentials chain, region from the environment or profile. */
export async function rolloutCommand(config: Config, flags: RolloutFlags, positionals: readonly string[]): Promise<number> {
  const [verb, ...extra] = positionals;
  if (!VERBS.includes(verb as Verb) || extra.length > 0) {
    throw new InvalidInputError(`expected one of ${VERBS.join('|')}, got ${positionals.length ? positionals.join(' ') : 'nothing'}`, 'rollout');
  }
  const [sdk, { defaultCredentials }] = await Promise.all([import('../aws/ssm-sdk.js'), import('../aws/credentials.js')]);
  const client = new sdk.SSMClient({
    credentials: await defaultCredentials(),
    retryMode: 'adaptive',
    // ssm.maxAttempts, as the configuration says of the rollout commands' reads.
    maxAttempts: config.ssm.maxAttempts,
    // The SDK waits forever for an answer by default: an endpoint that accepts and never answers
    // (a proxy, a firewall that drops) would hold the command for good.
    requestHandler: { requestTimeout: REQUEST_TIMEOUT_MS, connectionTimeout: 3_000, throwOnRequestTimeout: true },
  });
  try {
    const settings = {
      prefix: config.ssm.prefixes.find((p) => !p.includes('{')) ?? '/nixos/fleet',
      revisionParameter: config.ssm.revisionParameter,
    };
    return await runRollout(verb as Verb, flags, settings, storeFromClient(client, sdk), Date.now(), (line) => process.stdout.write(`${line}\n`));
  } finally {
    client.destroy();
  }
}
