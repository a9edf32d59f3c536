import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ApplyFailedError, ImdsDisabledError, InvalidInputError, TransientError } from '../../agent/errors.js';
import { mapSsmError } from '../../agent/sources/ssm.js';
import { AgentMetrics, bucketOf, fetchErrorOf, MetricsTally, PhaseTimer } from '../../agent/report/metrics.js';
import { startingStatus, type Status } from '../../agent/status.js';
import { ManualClock } from '../support/clock.js';

const HASH = 'a'.repeat(64);
const NEXT = 'b'.repeat(64);
const STORE = '/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-c';

function status(patch: Partial<Status> = {}): Status {
  return { ...startingStatus(Date.parse('2025-01-01T00:00:00.000Z'), 1), ...patch };
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (0.0.4): samples, and the TYPE of each family. */
function parse(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1] as string, type[2] as string);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, '$1');
    samples.push({ name: m[1] as string, labels, value: m[3] === '+Inf' ? Infinity : Number(m[3]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length === 0) return undefined;
  assert.equal(found.length, 1, `${name} ${JSON.stringify(labels)} matches one series`);
  return found[0]?.value;
}

async function scrape(metrics: AgentMetrics) {
  const { contentType, body } = await metrics.render();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  return parse(body);
}

describe('PhaseTimer', () => {
  it('reports each working phase as it ends, with its duration on the clock, and not resting ones', () => {
    const clock = new ManualClock(1_000);
    const timer = new PhaseTimer(clock);
    assert.equal(timer.observe(status({ phase: 'idle' })), undefined);
    clock.advance(5_000);
    assert.equal(timer.observe(status({ phase: 'fetching' })), undefined, 'idle is resting: no duration');
    clock.advance(250);
    assert.equal(timer.observe(status({ phase: 'fetching', message: 'running the user-data script' })), undefined, 'same phase, new message');
    clock.advance(250);
    assert.deepEqual(timer.observe(status({ phase: 'building', desired: { hash: HASH, sources: { userData: '', parameters: [] }, notes: [] } })), {
      phase: 'fetching',
      durationMs: 500,
      next: 'building',
      desiredHash: HASH,
    });
  });
});

describe('fetchErrorOf', () => {
  it('names the source and a label-safe code', () => {
    assert.deepEqual(fetchErrorOf(new ImdsDisabledError('disabled')), { source: 'imds', code: 'imds-disabled' });
    assert.deepEqual(fetchErrorOf(new TransientError('IMDS answered 500', 'imds', { status: 500 })), { source: 'imds', code: 'http-500' });
    assert.deepEqual(fetchErrorOf(new TransientError('IMDS unreachable', 'imds', { endpoint: 'http://x' })), { source: 'imds', code: 'unreachable' });
    const throttled = Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $fault: 'client', $metadata: { httpStatusCode: 400 } });
    assert.deepEqual(fetchErrorOf(mapSsmError(throttled, '/nixos/fleet') as TransientError), { source: 'ssm', code: 'ThrottlingException' });
    const badPath = Object.assign(new Error('bad'), { name: 'ValidationException', $fault: 'client', $metadata: { httpStatusCode: 400 } });
    assert.deepEqual(fetchErrorOf(mapSsmError(badPath, '/nixos/fleet') as InvalidInputError), { source: 'ssm', code: 'ValidationException' });
  });
  it('is undefined for failures that are not fetches', () => {
    assert.equal(fetchErrorOf(undefined), undefined);
    assert.equal(fetchErrorOf(new ApplyFailedError('build failed', 'build', { exitCode: 1 })), undefined);
    assert.equal(fetchErrorOf(new InvalidInputError('not JSON', '/nixos/fleet/options/x')), undefined);
    assert.equal(fetchErrorOf(new TransientError('parser timed out', 'nix-parser')), undefined);
  });
});

describe('AgentMetrics', () => {
  it('counts passes by outcome, fetch errors by source and code, and times passes', async () => {
    const metrics = new AgentMetrics({ clock: new ManualClock(0), version: '1.2.3' });
    metrics.recordPass({ outcome: 'converged', desiredHash: HASH }, 2_000);
    metrics.recordPass({ outcome: 'unchanged', desiredHash: HASH }, 40);
    metrics.recordPass({ outcome: 'unchanged', desiredHash: HASH }, 60);
    metrics.recordPass({ outcome: 'failed', error: new TransientError('IMDS answered 503', 'imds', { status: 503 }) }, 100);
    const { samples, types } = await scrape(metrics);
    assert.equal(types.get('nixos_ec2_agent_converge_passes_total'), 'counter');
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'converged' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'unchanged' }), 2);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'rolled-back' }), 0, 'every outcome is exported from the start');
    assert.equal(value(samples, 'nixos_ec2_agent_source_fetch_errors_total', { source: 'imds', code: 'http-503' }), 1);
    assert.equal(types.get('nixos_ec2_agent_converge_pass_duration_seconds'), 'histogram');
    assert.equal(value(samples, 'nixos_ec2_agent_converge_pass_duration_seconds_count', { outcome: 'unchanged' }), 2);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_pass_duration_seconds_sum', { outcome: 'unchanged' }), 0.1);
    assert.equal(value(samples, 'nixos_ec2_agent_build_info', { version: '1.2.3', node_version: process.version }), 1);
    for (const s of samples) assert.ok(s.name.startsWith('nixos_ec2_agent_'), `${s.name} carries the prefix`);
  });

  it('times phases from the Status stream; build and activate also as rebuild durations, in cumulative buckets', async () => {
    const clock = new ManualClock(0);
    const metrics = new AgentMetrics({ clock, version: 'test' });
    const desired = { hash: HASH, sources: { userData: '', parameters: [] }, notes: [] };
    const steps: [Status['phase'], number][] = [
      ['fetching', 300],
      ['rendering', 50],
      ['building', 42_000],
      ['activating', 7_000],
      ['verifying', 2_000],
      ['committing', 500],
      ['idle', 0],
    ];
    metrics.observe(status({ phase: 'starting' }));
    clock.advance(10);
    for (const [phase, ms] of steps) {
      metrics.observe(status({ phase, desired }));
      clock.advance(ms);
    }
    const { samples, types } = await scrape(metrics);
    assert.equal(types.get('nixos_ec2_agent_phase_duration_seconds'), 'histogram');
    assert.equal(value(samples, 'nixos_ec2_agent_phase_duration_seconds_sum', { phase: 'building' }), 42);
    assert.equal(value(samples, 'nixos_ec2_agent_phase_duration_seconds_sum', { phase: 'starting' }), 0.01);
    assert.equal(value(samples, 'nixos_ec2_agent_phase_duration_seconds_count', { phase: 'idle' }), undefined, 'resting is not a phase duration');
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_sum', { step: 'build' }), 42);
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_sum', { step: 'activate' }), 7);
    // 42 s lands in le=60 and above, not in le=30.
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_bucket', { step: 'build', le: '30' }), 0);
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_bucket', { step: 'build', le: '60' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_bucket', { step: 'build', le: '+Inf' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_bucket', { step: 'activate', le: '5' }), 0);
    assert.equal(value(samples, 'nixos_ec2_agent_rebuild_duration_seconds_bucket', { step: 'activate', le: '15' }), 1);
  });

  it('reflects the latest Status in gauges: one-hot condition, generation, info series replaced on change', async () => {
    const clock = new ManualClock(0);
    const metrics = new AgentMetrics({ clock, version: 'test' });
    await metrics.load();
    const converged = status({
      phase: 'idle',
      condition: 'converged',
      firstConvergenceDone: true,
      desired: { hash: HASH, sources: { userData: '', parameters: [] }, notes: [] },
      running: { storePath: STORE, desiredHash: HASH, generation: 7 },
      lastSuccessAt: '2025-01-01T00:00:10.000Z',
      rebootRequired: true,
    });
    metrics.observe(converged);
    let { samples } = await scrape(metrics);
    assert.equal(value(samples, 'nixos_ec2_agent_condition', { condition: 'converged' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_condition', { condition: 'failed' }), 0);
    assert.equal(value(samples, 'nixos_ec2_agent_condition', { condition: 'converging' }), 0);
    assert.equal(value(samples, 'nixos_ec2_agent_running_generation'), 7);
    assert.equal(value(samples, 'nixos_ec2_agent_desired_info', { hash: HASH }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_running_info', { hash: HASH, store_path: STORE }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_last_success_timestamp_seconds'), Date.parse('2025-01-01T00:00:10.000Z') / 1000);
    assert.equal(value(samples, 'nixos_ec2_agent_reboot_required'), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_suspended'), 0);

    metrics.observe({ ...converged, condition: 'degraded', suspended: { since: '2025-01-01T00:01:00.000Z' }, desired: { hash: NEXT, sources: { userData: '', parameters: [] }, notes: [] } });
    ({ samples } = await scrape(metrics));
    assert.equal(value(samples, 'nixos_ec2_agent_condition', { condition: 'converged' }), 0);
    assert.equal(value(samples, 'nixos_ec2_agent_condition', { condition: 'degraded' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_suspended'), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_desired_info', { hash: HASH }), undefined, 'the old desired hash is gone');
    assert.equal(value(samples, 'nixos_ec2_agent_desired_info', { hash: NEXT }), 1);
  });

  it('counts rollbacks, hook runs and lifecycle reports', async () => {
    const clock = new ManualClock(0);
    const metrics = new AgentMetrics({ clock, version: 'test' });
    for (const phase of ['verifying', 'rolling-back', 'rolling-back', 'verifying', 'idle', 'rolling-back', 'idle'] as const) {
      metrics.observe(status({ phase }));
      clock.advance(100);
    }
    metrics.recordHook('ok', 20);
    metrics.recordHook('timed-out', 60_000);
    metrics.lifecycleCompleted('CONTINUE');
    metrics.heartbeat();
    metrics.heartbeat();
    const { samples } = await scrape(metrics);
    assert.equal(value(samples, 'nixos_ec2_agent_rollbacks_total'), 2, 'each entry into rolling-back counts once');
    assert.equal(value(samples, 'nixos_ec2_agent_post_converge_command_runs_total', { result: 'ok' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_post_converge_command_runs_total', { result: 'timed-out' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_lifecycle_hook_completions_total', { result: 'CONTINUE' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_lifecycle_hook_heartbeats_total'), 2);
  });

  it('loads prom-client only when asked, having kept everything it was told before', async () => {
    let imports = 0;
    const metrics = new AgentMetrics({
      clock: new ManualClock(0),
      version: 'test',
      importPromClient: () => {
        imports++;
        return import('prom-client');
      },
    });
    // A day of polls at the default interval, unscraped: nothing is dropped.
    for (let k = 0; k < 1_440; k++) metrics.recordPass({ outcome: 'unchanged' }, 50);
    metrics.recordPass({ outcome: 'converged' }, 1);
    metrics.observe(status({ condition: 'failed', noGoodGeneration: true }));
    assert.equal(imports, 0);
    assert.equal(metrics.loaded, false);
    await Promise.all([metrics.load(), metrics.load()]);
    assert.equal(imports, 1, 'loaded once');
    const { samples } = await scrape(metrics);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'converged' }), 1);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'unchanged' }), 1_440);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_pass_duration_seconds_bucket', { outcome: 'unchanged', le: '0.1' }), 1_440);
    assert.equal(value(samples, 'nixos_ec2_agent_no_good_generation'), 1);
  });

  it('exports the same counts and buckets, and sums up to rounding, whether prom-client was loaded before the events or after', async () => {
    const outcome = fc.constantFrom('converged', 'unchanged', 'failed', 'rolled-back');
    // Durations on and beside the buckets' bounds, and far past the last.
    const ms = fc.oneof(fc.integer({ min: 0, max: 4_000_000 }), fc.constantFrom(...[0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600].flatMap((s) => [s * 1000, s * 1000 + 1])));
    const event = fc.oneof(
      fc.record({ kind: fc.constant('pass' as const), outcome, ms, imds: fc.boolean() }),
      fc.record({ kind: fc.constant('hook' as const), result: fc.constantFrom('ok' as const, 'failed' as const, 'timed-out' as const), ms }),
      fc.record({ kind: fc.constant('phase' as const), phase: fc.constantFrom('fetching' as const, 'building' as const, 'activating' as const, 'rolling-back' as const, 'idle' as const), ms }),
      fc.record({ kind: fc.constant('lifecycle' as const), result: fc.constantFrom('CONTINUE' as const, 'ABANDON' as const) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(event, { maxLength: 200 }), async (events) => {
        const feed = (metrics: AgentMetrics, clock: ManualClock) => {
          for (const e of events) {
            if (e.kind === 'pass') metrics.recordPass({ outcome: e.outcome, ...(e.imds ? { error: new TransientError('IMDS answered 503', 'imds', { status: 503 }) } : {}) }, e.ms);
            else if (e.kind === 'hook') metrics.recordHook(e.result, e.ms);
            else if (e.kind === 'lifecycle') (metrics.lifecycleCompleted(e.result), metrics.heartbeat());
            else {
              metrics.observe(status({ phase: e.phase }));
              clock.advance(e.ms);
            }
          }
        };
        const [early, late] = [new ManualClock(0), new ManualClock(0)];
        const loadedFirst = new AgentMetrics({ clock: early, version: 'test' });
        await loadedFirst.load();
        feed(loadedFirst, early);
        const tallied = new AgentMetrics({ clock: late, version: 'test' });
        feed(tallied, late);
        const [a, b] = [(await scrape(loadedFirst)).samples, (await scrape(tallied)).samples];
        const key = (s: Sample) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`;
        const other = new Map(b.map((s) => [key(s), s.value]));
        assert.deepEqual([...other.keys()].sort(), a.map(key).sort(), 'the same series');
        for (const s of a) {
          const v = other.get(key(s)) as number;
          if (s.name.endsWith('_sum')) assert.ok(Math.abs(v - s.value) <= 1e-9 * Math.max(1, Math.abs(s.value)), `${key(s)}: ${v} against ${s.value}`);
          else if (!/_(start_time_seconds|resident_memory_bytes)$/.test(s.name)) assert.equal(v, s.value, key(s));
        }
      }),
      { numRuns: 150 },
    );
  });

  it('hands a long unscraped run over in slices, the event loop turning between them, and counts what arrives meanwhile', async () => {
    const prom = await import('prom-client');
    const metrics = new AgentMetrics({ clock: new ManualClock(0), version: 'test', importPromClient: async () => prom });
    for (let k = 0; k < 100_000; k++) metrics.recordPass({ outcome: 'unchanged' }, 50);
    let turns = 0;
    let loading = true;
    const turn = () => {
      if (!loading) return;
      turns++;
      if (turns === 2) metrics.recordPass({ outcome: 'converged' }, 1);
      setImmediate(turn);
    };
    setImmediate(turn);
    await metrics.load();
    loading = false;
    // 100,000 observations in slices of 10,000: the loop turns between every two.
    assert.ok(turns >= 9, `the event loop turned ${turns} times while they were handed over`);
    const { samples } = await scrape(metrics);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'unchanged' }), 100_000);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_pass_duration_seconds_bucket', { outcome: 'unchanged', le: '0.1' }), 100_000);
    assert.equal(value(samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'converged' }), 1, 'the pass recorded during the hand-over');
    assert.equal(value(samples, 'nixos_ec2_agent_converge_pass_duration_seconds_count', { outcome: 'converged' }), 1);
  });

  it('hands over in slices of any size what it was told, and what it is told between them, as a sink told directly would hold it', () => {
    // Each series' count and sum per bucket, as prom-client keeps them.
    const bounds = [0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600];
    const held = () => {
      const series = new Map<string, { counts: number[]; sum: number }>();
      const sink = {
        inc: () => {},
        observe: (_name: string, labels: Readonly<Record<string, string>>, v: number) => {
          const key = labels.outcome as string;
          const s = series.get(key) ?? { counts: new Array<number>(bounds.length + 1).fill(0), sum: 0 };
          s.counts[bucketOf(bounds, v)]! += 1;
          s.sum += v;
          series.set(key, s);
        },
      };
      return { series, sink };
    };
    const observation = fc.record({ outcome: fc.constantFrom('a', 'b'), seconds: fc.oneof(fc.double({ min: 0, max: 5000, noNaN: true }), fc.constantFrom(...bounds)) });
    fc.assert(
      fc.property(fc.array(observation, { maxLength: 60 }), fc.array(fc.tuple(fc.integer({ min: 1, max: 7 }), fc.array(observation, { maxLength: 5 })), { maxLength: 30 }), (before, slices) => {
        const direct = held();
        const sliced = held();
        const tally = new MetricsTally();
        for (const o of before) {
          tally.observe('passDuration', { outcome: o.outcome }, o.seconds);
          direct.sink.observe('passDuration', { outcome: o.outcome }, o.seconds);
        }
        for (const [budget, meanwhile] of slices) {
          tally.drainInto(sliced.sink, budget);
          for (const o of meanwhile) {
            tally.observe('passDuration', { outcome: o.outcome }, o.seconds);
            direct.sink.observe('passDuration', { outcome: o.outcome }, o.seconds);
          }
        }
        assert.equal(tally.drainInto(sliced.sink), true);
        assert.deepEqual([...sliced.series.keys()].sort(), [...direct.series.keys()].sort());
        for (const [key, d] of direct.series) {
          const s = sliced.series.get(key)!;
          assert.deepEqual(s.counts, d.counts, `${key}: counts per bucket`);
          assert.ok(Math.abs(s.sum - d.sum) <= 1e-9 * Math.max(1, d.sum), `${key}: ${s.sum} against ${d.sum}`);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('replays each bucket into the same bucket, rounding notwithstanding', () => {
    const nextUp = (x: number) => {
      const bits = new BigUint64Array(new Float64Array([x]).buffer);
      bits[0] = (bits[0] as bigint) + 1n;
      return new Float64Array(bits.buffer)[0] as number;
    };
    const tally = new MetricsTally();
    // 0.1 + 0.1 + 0.1 is 0.30000000000000004, whose third is above 0.1; seven of the next number
    // above 0.1 add up to a mean at 0.1, the bound below them.
    for (let k = 0; k < 3; k++) tally.observe('passDuration', { outcome: 'at' }, 0.1);
    for (let k = 0; k < 7; k++) tally.observe('passDuration', { outcome: 'above' }, nextUp(0.1));
    const replayed: { outcome: string; value: number }[] = [];
    tally.drainInto({ inc: () => {}, observe: (_name, labels, v) => replayed.push({ outcome: labels.outcome as string, value: v }) });
    assert.equal(replayed.length, 10);
    for (const r of replayed) assert.ok(r.outcome === 'at' ? r.value <= 0.1 : r.value > 0.1, JSON.stringify(r));
    tally.drainInto({ inc: () => assert.fail('drained'), observe: () => assert.fail('drained') });
  });

  it('keeps each agent in its own registry, never the global one', async () => {
    const { register } = await import('prom-client');
    const a = new AgentMetrics({ clock: new ManualClock(0), version: 'a' });
    const b = new AgentMetrics({ clock: new ManualClock(0), version: 'b' });
    a.recordPass({ outcome: 'failed' }, 1);
    const [sa, sb] = [await scrape(a), await scrape(b)];
    assert.equal(value(sa.samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'failed' }), 1);
    assert.equal(value(sb.samples, 'nixos_ec2_agent_converge_passes_total', { outcome: 'failed' }), 0);
    assert.equal(register.getMetricsAsArray().filter((m) => String((m as { name?: string }).name).startsWith('nixos_ec2_agent_')).length, 0);
  });
});
