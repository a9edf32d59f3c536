// Prometheus metrics: every metric name the agent exports lives here, in one registry per agent
// (never prom-client's global one, so several agents can share a process and tests start clean).
// Everything is fed from the Status stream (`observe`) and the pass results (`recordPass`): the
// reconciler knows nothing of metrics.
//
// prom-client is imported at the first scrape, and not before. Measured on the project's machines,
// `import('prom-client')` costs 60–150 ms, about as much as `node -e 0` itself, and once loaded it
// stays: its modules, the cluster, perf_hooks and worker_threads built-ins it requires, and the
// registry (~2 MiB of an idle daemon's resident memory, `npm run bench -- watch`).
// Many fleets never scrape an instance. Until then the recorder below keeps what it is told as
// plain values (MetricsTally): exact, and as small after a year as after a minute.
import { readFile } from 'node:fs/promises';
import type * as Prom from 'prom-client';
import type { AgentError } from '../errors.js';
import type { Clock } from '../ports.js';
import type { PassResult } from '../reconcile.js';
import type { Condition, Outcome, Status, StatusPhase } from '../status.js';

export const METRIC_PREFIX = 'nixos_ec2_agent_';

const CONDITIONS: readonly Condition[] = ['converging', 'converged', 'degraded', 'failed'];
const OUTCOMES: readonly Outcome[] = ['converged', 'unchanged', 'rolled-back', 'failed', 'invalid-input', 'held', 'suspended', 'cancelled'];
/** Where the loop rests between passes: how long it rests there is not a phase duration. */
const RESTING: ReadonlySet<StatusPhase> = new Set<StatusPhase>(['idle', 'held', 'suspended', 'stopping']);
/** Rebuild steps take seconds to an hour; the phase histogram's buckets start at milliseconds. */
const REBUILD_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600];
const PHASE_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600];
const PASS_BUCKETS = [0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600];
type Labels = Readonly<Record<string, string>>;
/** The agent's counters and histograms, by name. */
type CounterName = 'passes' | 'rollbacks' | 'fetchErrors' | 'hookRuns' | 'lifecycleCompletions' | 'lifecycleHeartbeats';
type HistogramName = 'passDuration' | 'phaseDuration' | 'rebuildDuration' | 'hookDuration';
const BUCKETS: Readonly<Record<HistogramName, readonly number[]>> = {
  passDuration: PASS_BUCKETS,
  phaseDuration: PHASE_BUCKETS,
  rebuildDuration: REBUILD_BUCKETS,
  hookDuration: PASS_BUCKETS,
};

/** Observations handed to prom-client in one turn of the event loop: ~15 ms. */
const REPLAY_SLICE = 10_000;

/** Where counts and observations go: the tally until prom-client is loaded, its metrics after. */
interface Sink {
  inc(name: CounterName, labels?: Labels, by?: number): void;
  observe(name: HistogramName, labels: Labels, value: number): void;
}

/**
 * The bucket a histogram puts `value` in, as prom-client finds it (lib/histogram.js `findBound`):
 * the first upper bound at or above it, or `bounds.length` for +Inf.
 */
export function bucketOf(bounds: readonly number[], value: number): number {
  const i = bounds.findIndex((bound) => value <= bound);
  return i === -1 ? bounds.length : i;
}

/**
 * Counts and observations before prom-client is loaded: each counter's total, and each histogram's
 * count and sum in every bucket, for each label set. Label values are small closed sets, so it
 * holds a few hundred numbers however long the daemon runs unscraped.
 */
export class MetricsTally implements Sink {
  private counters = new Map<string, { name: CounterName; labels: Labels; total: number }>();
  private histograms = new Map<string, { name: HistogramName; labels: Labels; counts: number[]; sums: number[] }>();

  inc(name: CounterName, labels: Labels = {}, by = 1): void {
    const key = seriesKey(name, labels);
    const counter = this.counters.get(key);
    if (counter) counter.total += by;
    else this.counters.set(key, { name, labels, total: by });
  }

  observe(name: HistogramName, labels: Labels, value: number): void {
    // prom-client refuses these too.
    if (!Number.isFinite(value)) return;
    const key = seriesKey(name, labels);
    let h = this.histograms.get(key);
    if (!h) {
      const n = BUCKETS[name].length + 1;
      h = { name, labels, counts: new Array<number>(n).fill(0), sums: new Array<number>(n).fill(0) };
      this.histograms.set(key, h);
    }
    const i = bucketOf(BUCKETS[name], value);
    h.counts[i] = (h.counts[i] as number) + 1;
    h.sums[i] = (h.sums[i] as number) + value;
  }

  /**
   * Hands what is kept to `sink` and forgets it: every counter, and up to `budget` observations;
   * true once nothing is left. A bucket's observations go as that many of their mean, which lies in
   * the same bucket: every bucket's count, and the sum up to rounding, come out as they were
   * observed.
   */
  drainInto(sink: Sink, budget = Infinity): boolean {
    for (const [key, c] of this.counters) {
      sink.inc(c.name, c.labels, c.total);
      this.counters.delete(key);
    }
    let left = budget;
    for (const [key, h] of this.histograms) {
      const bounds = BUCKETS[h.name];
      for (let i = 0; i < h.counts.length; i++) {
        const count = h.counts[i] as number;
        if (count === 0) continue;
        if (left === 0) return false;
        const value = withinBucket(bounds, i, (h.sums[i] as number) / count);
        const n = Math.min(count, left);
        for (let k = 0; k < n; k++) sink.observe(h.name, h.labels, value);
        left -= n;
        if (n < count) {
          h.counts[i] = count - n;
          h.sums[i] = (h.sums[i] as number) - n * value;
          return false;
        }
        h.counts[i] = 0;
        h.sums[i] = 0;
      }
      this.histograms.delete(key);
    }
    return true;
  }
}

function seriesKey(name: string, labels: Labels): string {
  return [name, ...Object.entries(labels).flat()].join('\0');
}

/** `value` moved into bucket `i` of `bounds` if rounding took it out: (bounds[i-1], bounds[i]]. */
function withinBucket(bounds: readonly number[], i: number, value: number): number {
  const upper = bounds[i] ?? Infinity;
  const lower = bounds[i - 1] ?? -Infinity;
  if (value > upper) return upper;
  if (value <= lower) return lower + Math.max(Number.MIN_VALUE, Math.abs(lower) * Number.EPSILON);
  return value;
}

export type HookOutcome = 'ok' | 'failed' | 'timed-out';
export type LifecycleResult = 'CONTINUE' | 'ABANDON';

/** A phase that just ended, as the Status stream shows it. */
export interface PhaseEnd {
  readonly phase: StatusPhase;
  readonly durationMs: number;
  readonly next: StatusPhase;
  readonly desiredHash?: string;
}

/** Phase transitions in a stream of Status values, timed by the Clock. */
export class PhaseTimer {
  private phase: StatusPhase | undefined;
  private since = 0;

  constructor(private readonly clock: Clock) {}

  /** The phase that ended with this status, if it changed; resting phases are not reported. */
  observe(status: Status): PhaseEnd | undefined {
    const now = this.clock.now();
    const previous = this.phase;
    if (previous === status.phase) return undefined;
    const since = this.since;
    this.phase = status.phase;
    this.since = now;
    if (previous === undefined || RESTING.has(previous)) return undefined;
    return { phase: previous, durationMs: Math.max(0, now - since), next: status.phase, ...(status.desired ? { desiredHash: status.desired.hash } : {}) };
  }
}

/** Which source a pass's error came from, with a label-safe code; undefined when not a fetch. */
export function fetchErrorOf(error: AgentError | undefined): { source: string; code: string } | undefined {
  if (!error) return undefined;
  const c = error.context;
  if (error.kind === 'imds-disabled') return { source: 'imds', code: 'imds-disabled' };
  const source = typeof c.source === 'string' ? c.source : typeof c.where === 'string' && /^SSM path /.test(c.where) ? 'ssm' : typeof c.where === 'string' && c.where.startsWith('imds') ? 'imds' : undefined;
  if (source !== 'imds' && source !== 'ssm') return undefined;
  // Codes are AWS error names or HTTP statuses: a small closed set, safe as label values.
  const code = typeof c.code === 'string' ? c.code : typeof c.status === 'number' ? `http-${c.status}` : error.kind === 'transient' ? 'unreachable' : error.kind;
  return { source, code: code.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64) };
}

export interface MetricsOptions {
  readonly clock: Clock;
  /** The agent's version for build_info; read from the package's package.json when absent. */
  readonly version?: string;
  /** Loads prom-client; tests or a bundler may pass their own. */
  readonly importPromClient?: () => Promise<typeof Prom>;
}

/**
 * The agent's metrics. Recording methods are synchronous and cheap before and after `load()`;
 * only `load()` and `render()` touch prom-client.
 */
export class AgentMetrics {
  private readonly phases: PhaseTimer;
  private prom: PromMetrics | undefined;
  private loading: Promise<PromMetrics> | undefined;
  private readonly tally = new MetricsTally();
  private latest: Status | undefined;
  private lastPhase: StatusPhase | undefined;

  constructor(private readonly options: MetricsOptions) {
    this.phases = new PhaseTimer(options.clock);
  }

  get loaded(): boolean {
    return this.prom !== undefined;
  }

  private get sink(): Sink {
    return this.prom ?? this.tally;
  }

  /** Feed every Status; returns the phase that ended, if any, so the caller can log it. */
  observe(status: Status): PhaseEnd | undefined {
    const ended = this.phases.observe(status);
    this.latest = status;
    if (ended) {
      const seconds = ended.durationMs / 1000;
      this.sink.observe('phaseDuration', { phase: ended.phase }, seconds);
      if (ended.phase === 'building') this.sink.observe('rebuildDuration', { step: 'build' }, seconds);
      if (ended.phase === 'activating') this.sink.observe('rebuildDuration', { step: 'activate' }, seconds);
    }
    if (status.phase === 'rolling-back' && this.lastPhase !== 'rolling-back') this.sink.inc('rollbacks');
    this.lastPhase = status.phase;
    this.prom?.setStatus(status);
    return ended;
  }

  /** One converge pass ended. */
  recordPass(result: PassResult, durationMs: number): void {
    const fetch = fetchErrorOf(result.error);
    this.sink.inc('passes', { outcome: result.outcome });
    this.sink.observe('passDuration', { outcome: result.outcome }, durationMs / 1000);
    if (fetch) this.sink.inc('fetchErrors', fetch);
  }

  recordHook(outcome: HookOutcome, durationMs: number): void {
    this.sink.inc('hookRuns', { result: outcome });
    this.sink.observe('hookDuration', {}, durationMs / 1000);
  }

  /** For the Auto Scaling lifecycle reporter: the launch hook was completed with this result. */
  lifecycleCompleted(result: LifecycleResult): void {
    this.sink.inc('lifecycleCompletions', { result });
  }

  /** For the Auto Scaling lifecycle reporter: a heartbeat was sent. */
  heartbeat(): void {
    this.sink.inc('lifecycleHeartbeats');
  }

  /** Imports prom-client and creates the metrics from the tally; idempotent. */
  load(): Promise<void> {
    this.loading ??= (async () => {
      const [prom, version] = await Promise.all([
        this.options.importPromClient ? this.options.importPromClient() : importPromClient(),
        this.options.version !== undefined ? Promise.resolve(this.options.version) : packageVersion(),
      ]);
      const metrics = new PromMetrics(prom, version);
      // A daemon left unscraped for months has millions of observations to hand over (~1.5 µs
      // each): they go in slices, so that the first scrape never holds the event loop, and with it
      // the health checks and the watchdog, for long. What arrives meanwhile joins the tally, and
      // goes over in the same turn as the switch.
      while (!this.tally.drainInto(metrics, REPLAY_SLICE)) await new Promise((resolve) => setImmediate(resolve));
      this.tally.drainInto(metrics);
      if (this.latest) metrics.setStatus(this.latest);
      this.prom = metrics;
      return metrics;
    })();
    return this.loading.then(() => undefined);
  }

  /** The Prometheus text exposition, loading prom-client first if need be. */
  async render(): Promise<{ contentType: string; body: string }> {
    await this.load();
    const prom = this.prom as PromMetrics;
    return { contentType: prom.registry.contentType, body: await prom.registry.metrics() };
  }
}

/** The prom-client side: one Registry, every metric registered in it alone. */
class PromMetrics implements Sink {
  readonly registry: Prom.Registry;
  private readonly counters: Record<CounterName, Prom.Counter>;
  private readonly histograms: Record<HistogramName, Prom.Histogram>;
  readonly lastSuccess: Prom.Gauge;
  readonly runningGeneration: Prom.Gauge;
  readonly desiredInfo: Prom.Gauge<'hash'>;
  readonly runningInfo: Prom.Gauge<'hash' | 'store_path'>;
  readonly condition: Prom.Gauge<'condition'>;
  readonly suspended: Prom.Gauge;
  readonly held: Prom.Gauge;
  readonly rebootRequired: Prom.Gauge;
  readonly noGoodGeneration: Prom.Gauge;
  readonly firstConvergenceDone: Prom.Gauge;
  readonly rolloutInfo: Prom.Gauge<'prefix' | 'candidate' | 'state' | 'takes' | 'reason'>;
  readonly rolloutPercent: Prom.Gauge<'prefix'>;
  readonly rolloutFailures: Prom.Gauge<'prefix'>;
  private desiredHash: string | undefined;
  private running: { hash: string; store_path: string } | undefined;

  constructor(prom: typeof Prom, version: string) {
    const registry = new prom.Registry();
    this.registry = registry;
    const registers = [registry];
    const n = (name: string) => `${METRIC_PREFIX}${name}`;

    const counter = (name: string, help: string, labelNames: readonly string[] = []) => new prom.Counter({ name: n(name), help, labelNames, registers });
    const histogram = (name: string, help: string, buckets: readonly number[], labelNames: readonly string[] = []) =>
      new prom.Histogram({ name: n(name), help, labelNames, buckets: [...buckets], registers });
    this.counters = {
      passes: counter('converge_passes_total', 'Converge passes, by outcome.', ['outcome']),
      rollbacks: counter('rollbacks_total', 'Rollbacks to the last good generation (after a failed activation or verification, or asked by an operator).'),
      fetchErrors: counter('source_fetch_errors_total', 'Passes that failed to read a source, by source (imds, ssm) and error code.', ['source', 'code']),
      hookRuns: counter('post_converge_command_runs_total', 'Runs of the post-convergence command, by result (ok, failed, timed-out).', ['result']),
      lifecycleCompletions: counter('lifecycle_hook_completions_total', 'Auto Scaling launch lifecycle hook completions, by result (CONTINUE, ABANDON).', ['result']),
      lifecycleHeartbeats: counter('lifecycle_hook_heartbeats_total', 'Auto Scaling lifecycle hook heartbeats sent.'),
    };
    for (const outcome of OUTCOMES) this.counters.passes.inc({ outcome }, 0);
    this.histograms = {
      passDuration: histogram('converge_pass_duration_seconds', 'How long a converge pass took, by outcome.', BUCKETS.passDuration, ['outcome']),
      phaseDuration: histogram('phase_duration_seconds', 'How long each phase of a pass took (fetching, rendering, building, activating, verifying, committing, rolling-back).', BUCKETS.phaseDuration, ['phase']),
      rebuildDuration: histogram('rebuild_duration_seconds', 'How long the rebuild steps took: build (nixos-rebuild build) and activate (switch-to-configuration test, or nixos-rebuild switch).', BUCKETS.rebuildDuration, ['step']),
      hookDuration: histogram('post_converge_command_duration_seconds', 'How long the post-convergence command ran.', BUCKETS.hookDuration),
    };
    this.lastSuccess = new prom.Gauge({ name: n('last_success_timestamp_seconds'), help: 'When a pass last ended converged (Unix time).', registers });
    this.runningGeneration = new prom.Gauge({ name: n('running_generation'), help: 'The system profile generation number of the running system.', registers });
    this.desiredInfo = new prom.Gauge({ name: n('desired_info'), help: 'The desired state last read from the sources (value 1).', labelNames: ['hash'], registers });
    this.runningInfo = new prom.Gauge({ name: n('running_info'), help: 'The running system and the desired state it was built from (value 1).', labelNames: ['hash', 'store_path'], registers });
    this.condition = new prom.Gauge({ name: n('condition'), help: 'The agent\'s condition, one-hot (converging, converged, degraded, failed).', labelNames: ['condition'], registers });
    this.suspended = new prom.Gauge({ name: n('suspended'), help: '1 while convergence is suspended on this instance.', registers });
    this.held = new prom.Gauge({ name: n('held'), help: '1 while held on an operator\'s rollback until the sources change.', registers });
    this.rebootRequired = new prom.Gauge({ name: n('reboot_required'), help: '1 when the running generation changed the kernel, initrd or modules and a reboot is needed.', registers });
    this.noGoodGeneration = new prom.Gauge({ name: n('no_good_generation'), help: '1 when no good generation runs (the only state reported Unhealthy to Auto Scaling).', registers });
    this.firstConvergenceDone = new prom.Gauge({ name: n('first_convergence_done'), help: '1 once the first pass after start has ended.', registers });
    this.rolloutInfo = new prom.Gauge({ name: n('rollout_info'), help: 'Each progressive rollout in the sources (value 1): its state (staged, progressing, baking, complete, halted, invalid), why it halted, and whether this instance takes the candidate.', labelNames: ['prefix', 'candidate', 'state', 'takes', 'reason'], registers });
    this.rolloutPercent = new prom.Gauge({ name: n('rollout_percent'), help: 'The share of the fleet a rollout covers now, by its schedule.', labelNames: ['prefix'], registers });
    this.rolloutFailures = new prom.Gauge({ name: n('rollout_failures'), help: 'Failure records against a rollout\'s candidate, as this instance last read them.', labelNames: ['prefix'], registers });
    new prom.Gauge({ name: n('build_info'), help: 'The agent\'s version (value 1).', labelNames: ['version', 'node_version'], registers }).set({ version, node_version: process.version }, 1);
    new prom.Gauge({ name: n('start_time_seconds'), help: 'When the agent process started (Unix time).', registers }).set(Math.round((Date.now() - performance.now()) / 1000));
    // The one process metric worth its cost; prom-client's default collectors add an event-loop
    // monitor and a dozen collectors the agent does not need.
    new prom.Gauge({
      name: n('resident_memory_bytes'),
      help: 'Resident memory of the agent process.',
      registers,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
  }

  inc(name: CounterName, labels: Labels = {}, by = 1): void {
    this.counters[name].inc(labels, by);
  }

  observe(name: HistogramName, labels: Labels, value: number): void {
    this.histograms[name].observe(labels, value);
  }

  setStatus(s: Status): void {
    for (const c of CONDITIONS) this.condition.set({ condition: c }, s.condition === c ? 1 : 0);
    this.suspended.set(s.suspended ? 1 : 0);
    this.held.set(s.held ? 1 : 0);
    this.rebootRequired.set(s.rebootRequired ? 1 : 0);
    this.noGoodGeneration.set(s.noGoodGeneration ? 1 : 0);
    this.firstConvergenceDone.set(s.firstConvergenceDone ? 1 : 0);
    if (s.lastSuccessAt) this.lastSuccess.set(Date.parse(s.lastSuccessAt) / 1000);
    if (s.running?.generation !== undefined) this.runningGeneration.set(s.running.generation);
    this.rolloutInfo.reset();
    this.rolloutPercent.reset();
    this.rolloutFailures.reset();
    for (const r of s.rollout ?? []) {
      this.rolloutInfo.set({ prefix: r.prefix, candidate: r.candidate, state: r.state, takes: r.takes, reason: r.reason ?? '' }, 1);
      this.rolloutPercent.set({ prefix: r.prefix }, r.percent);
      this.rolloutFailures.set({ prefix: r.prefix }, r.failures);
    }
    // Info gauges carry one series: the old one goes when the value changes.
    const desired = s.desired?.hash;
    if (desired !== this.desiredHash) {
      if (this.desiredHash !== undefined) this.desiredInfo.remove({ hash: this.desiredHash });
      if (desired !== undefined) this.desiredInfo.set({ hash: desired }, 1);
      this.desiredHash = desired;
    }
    const running = s.running ? { hash: s.running.desiredHash ?? '', store_path: s.running.storePath } : undefined;
    if (running?.hash !== this.running?.hash || running?.store_path !== this.running?.store_path) {
      if (this.running) this.runningInfo.remove(this.running);
      if (running) this.runningInfo.set(running, 1);
      this.running = running;
    }
  }
}

/**
 * prom-client is CommonJS: its module.exports is the namespace's `default` both under Node's own
 * loader and in a bundle chunk (where esbuild exports a lazily imported CommonJS module as
 * `default` only), so that is what is read.
 */
async function importPromClient(): Promise<typeof Prom> {
  return (await import('prom-client')).default as typeof Prom;
}

async function packageVersion(): Promise<string> {
  // dist/agent/report/metrics.js → the package root, where npm puts package.json.
  for (const rel of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(await readFile(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'nixos-ec2-agent' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // Not there; try the next layout.
    }
  }
  return 'unknown';
}
