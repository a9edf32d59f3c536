// Prometheus metrics: every metric name the agent exports lives here, in one registry per agent
// (never prom-client's global one, so several agents can share a process and tests start clean).
// Everything is fed from the Status stream (`observe`) and the pass results (`recordPass`): the
// reconciler knows nothing of metrics.
//
// prom-client is imported lazily. Measured on the project's machines, `import('prom-client')`
// costs 60–150 ms, about as much as `node -e 0` itself, and the daemon's boot path (start → first
// rebuild launched) must stay short. So the recorder below starts empty and cheap, keeps what it
// is told, and loads prom-client only when `load()` is called: the daemon calls it once the first
// rebuild has been launched (the main thread then only waits on the child) or the first pass has
// ended, whichever comes first; a scrape before that loads it on demand. Loading is CPU work on
// the main thread, so doing it "in parallel" with the first pass would still delay the launch.
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
/** Before prom-client is loaded, at most this many counted events are kept (gauges keep only the latest Status). */
const MAX_PENDING = 1000;

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

type Op = (m: PromMetrics) => void;

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
  private pending: Op[] = [];
  private latest: Status | undefined;
  private dropped = 0;
  private lastPhase: StatusPhase | undefined;

  constructor(private readonly options: MetricsOptions) {
    this.phases = new PhaseTimer(options.clock);
  }

  get loaded(): boolean {
    return this.prom !== undefined;
  }

  /** Feed every Status; returns the phase that ended, if any, so the caller can log it. */
  observe(status: Status): PhaseEnd | undefined {
    const ended = this.phases.observe(status);
    this.latest = status;
    if (ended) {
      const { phase, durationMs } = ended;
      this.record((m) => m.phaseEnded(phase, durationMs));
    }
    if (status.phase === 'rolling-back' && this.lastPhase !== 'rolling-back') this.record((m) => m.rollbacks.inc());
    this.lastPhase = status.phase;
    this.prom?.setStatus(status);
    return ended;
  }

  /** One converge pass ended. */
  recordPass(result: PassResult, durationMs: number): void {
    const fetch = fetchErrorOf(result.error);
    this.record((m) => {
      m.passes.inc({ outcome: result.outcome });
      m.passDuration.observe({ outcome: result.outcome }, durationMs / 1000);
      if (fetch) m.fetchErrors.inc(fetch);
    });
  }

  recordHook(outcome: HookOutcome, durationMs: number): void {
    this.record((m) => {
      m.hookRuns.inc({ result: outcome });
      m.hookDuration.observe(durationMs / 1000);
    });
  }

  /** For the Auto Scaling lifecycle reporter: the launch hook was completed with this result. */
  lifecycleCompleted(result: LifecycleResult): void {
    this.record((m) => m.lifecycleCompletions.inc({ result }));
  }

  /** For the Auto Scaling lifecycle reporter: a heartbeat was sent. */
  heartbeat(): void {
    this.record((m) => m.lifecycleHeartbeats.inc());
  }

  /** Imports prom-client and creates the metrics; idempotent. */
  load(): Promise<void> {
    this.loading ??= (async () => {
      const [prom, version] = await Promise.all([
        this.options.importPromClient ? this.options.importPromClient() : importPromClient(),
        this.options.version !== undefined ? Promise.resolve(this.options.version) : packageVersion(),
      ]);
      const metrics = new PromMetrics(prom, version);
      for (const op of this.pending) op(metrics);
      this.pending = [];
      if (this.dropped) metrics.droppedEvents.inc(this.dropped);
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

  private record(op: Op): void {
    if (this.prom) {
      op(this.prom);
      return;
    }
    if (this.pending.length >= MAX_PENDING) {
      this.dropped++;
      return;
    }
    this.pending.push(op);
  }
}

/** The prom-client side: one Registry, every metric registered in it alone. */
class PromMetrics {
  readonly registry: Prom.Registry;
  readonly passes: Prom.Counter<'outcome'>;
  readonly passDuration: Prom.Histogram<'outcome'>;
  readonly phaseDuration: Prom.Histogram<'phase'>;
  readonly rebuildDuration: Prom.Histogram<'step'>;
  readonly rollbacks: Prom.Counter;
  readonly fetchErrors: Prom.Counter<'source' | 'code'>;
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
  readonly hookRuns: Prom.Counter<'result'>;
  readonly hookDuration: Prom.Histogram;
  readonly lifecycleCompletions: Prom.Counter<'result'>;
  readonly lifecycleHeartbeats: Prom.Counter;
  readonly droppedEvents: Prom.Counter;
  private desiredHash: string | undefined;
  private running: { hash: string; store_path: string } | undefined;

  constructor(prom: typeof Prom, version: string) {
    const registry = new prom.Registry();
    this.registry = registry;
    const registers = [registry];
    const n = (name: string) => `${METRIC_PREFIX}${name}`;

    this.passes = new prom.Counter({ name: n('converge_passes_total'), help: 'Converge passes, by outcome.', labelNames: ['outcome'], registers });
    for (const outcome of OUTCOMES) this.passes.inc({ outcome }, 0);
    this.passDuration = new prom.Histogram({ name: n('converge_pass_duration_seconds'), help: 'How long a converge pass took, by outcome.', labelNames: ['outcome'], buckets: PASS_BUCKETS, registers });
    this.phaseDuration = new prom.Histogram({ name: n('phase_duration_seconds'), help: 'How long each phase of a pass took (fetching, rendering, building, activating, verifying, committing, rolling-back).', labelNames: ['phase'], buckets: PHASE_BUCKETS, registers });
    this.rebuildDuration = new prom.Histogram({ name: n('rebuild_duration_seconds'), help: 'How long the rebuild steps took: build (nixos-rebuild build) and activate (switch-to-configuration test, or nixos-rebuild switch).', labelNames: ['step'], buckets: REBUILD_BUCKETS, registers });
    this.rollbacks = new prom.Counter({ name: n('rollbacks_total'), help: 'Rollbacks to the last good generation (after a failed activation or verification, or asked by an operator).', registers });
    this.fetchErrors = new prom.Counter({ name: n('source_fetch_errors_total'), help: 'Passes that failed to read a source, by source (imds, ssm) and error code.', labelNames: ['source', 'code'], registers });
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
    this.hookRuns = new prom.Counter({ name: n('post_converge_command_runs_total'), help: 'Runs of the post-convergence command, by result (ok, failed, timed-out).', labelNames: ['result'], registers });
    this.hookDuration = new prom.Histogram({ name: n('post_converge_command_duration_seconds'), help: 'How long the post-convergence command ran.', buckets: PASS_BUCKETS, registers });
    this.lifecycleCompletions = new prom.Counter({ name: n('lifecycle_hook_completions_total'), help: 'Auto Scaling launch lifecycle hook completions, by result (CONTINUE, ABANDON).', labelNames: ['result'], registers });
    this.lifecycleHeartbeats = new prom.Counter({ name: n('lifecycle_hook_heartbeats_total'), help: 'Auto Scaling lifecycle hook heartbeats sent.', registers });
    this.droppedEvents = new prom.Counter({ name: n('metrics_dropped_events_total'), help: 'Events not counted because too many arrived before the metrics were loaded.', registers });
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

  phaseEnded(phase: StatusPhase, durationMs: number): void {
    const seconds = durationMs / 1000;
    this.phaseDuration.observe({ phase }, seconds);
    if (phase === 'building') this.rebuildDuration.observe({ step: 'build' }, seconds);
    if (phase === 'activating') this.rebuildDuration.observe({ step: 'activate' }, seconds);
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
