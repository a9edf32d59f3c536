// How an instance tells the fleet and its operators about a rollout: the failure record it writes
// (only when needed, never failing the pass), and the rollout in /metrics and `status`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../../agent/log.js';
import { AgentMetrics } from '../../agent/report/metrics.js';
import { decide, describeRollout } from '../../agent/rollout/plan.js';
import { FailureReporter, type PutParameter } from '../../agent/rollout/reporter.js';
import { FailureRecord } from '../../agent/rollout/spec.js';
import { startingStatus } from '../../agent/status.js';
import { ManualClock } from '../support/clock.js';

const FLEET = '/nixos/fleet';
const NOW = Date.UTC(2026, 0, 1, 12);

function recorder(fail?: Error): { put: PutParameter; calls: Parameters<PutParameter>[0][] } {
  const calls: Parameters<PutParameter>[0][] = [];
  return {
    calls,
    put: async (input) => {
      calls.push(input);
      if (fail) throw fail;
      return {};
    },
  };
}

describe('FailureReporter', () => {
  it('writes one record per candidate taken, then bumps the revision', async () => {
    const { put, calls } = recorder();
    const reporter = new FailureReporter(async () => put, { clock: new ManualClock(NOW), log: silentLogger(), revisionParameter: 'revision' });
    const written = await reporter.report([{ prefix: FLEET, candidate: 'abc', record: true }], 'i-1', { stage: 'verify', reason: 'x'.repeat(5000) });
    assert.equal(written, 1);
    assert.deepEqual(calls.map((c) => c.Name), [`${FLEET}/rollout/failures/i-1`, `${FLEET}/revision`]);
    const record = FailureRecord.parse(JSON.parse(calls[0]?.Value ?? ''));
    assert.equal(record.candidate, 'abc');
    assert.equal(record.stage, 'verify');
    assert.equal(record.at, new Date(NOW).toISOString());
    assert.ok(record.reason.length <= 1000, 'a record stays well inside a Standard parameter');
  });

  it('writes nothing when its record is already there or the threshold is reached', async () => {
    const { put, calls } = recorder();
    const reporter = new FailureReporter(async () => put, { clock: new ManualClock(NOW), log: silentLogger(), revisionParameter: null });
    assert.equal(await reporter.report([{ prefix: FLEET, candidate: 'abc', record: false }], 'i-1', { stage: 'build', reason: 'r' }), 0);
    assert.deepEqual(calls, []);
  });

  it('never fails the pass: a refused write is logged and counted as not written', async () => {
    const { put, calls } = recorder(Object.assign(new Error('User is not authorized to perform: ssm:PutParameter'), { name: 'AccessDeniedException' }));
    const reporter = new FailureReporter(async () => put, { clock: new ManualClock(NOW), log: silentLogger(), revisionParameter: 'revision' });
    assert.equal(await reporter.report([{ prefix: FLEET, candidate: 'abc', record: true }], 'i-1', { stage: 'build', reason: 'r' }), 0);
    assert.equal(calls.length, 1, 'no revision bump without a record');
    const none = new FailureReporter(async () => undefined, { clock: new ManualClock(NOW), log: silentLogger(), revisionParameter: 'revision' });
    assert.equal(await none.report([{ prefix: FLEET, candidate: 'abc', record: true }], 'i-1', { stage: 'build', reason: 'r' }), 0);
  });
});

describe('rollout in status and metrics', () => {
  const strategy = { type: 'linear' as const, stepPercent: 20, intervalSeconds: 600, bakeSeconds: 60, errorThreshold: 1, startAt: new Date(NOW).toISOString() };
  const spec = { prefix: FLEET, candidateId: 'c1', candidate: [], strategy, halt: undefined, failures: [{ instanceId: 'i-9', stage: 'build', reason: 'boom', at: '' }], stale: 0 };
  const halted = decide(spec, { instanceId: 'i-1', canary: false }, NOW + 60_000);

  it('status says it is halted and why', () => {
    assert.match(describeRollout(halted), /^\/nixos\/fleet candidate c1: HALTED \(failures\): 1 instance\(s\) failed the candidate \(threshold 1\); e\.g\. i-9: build: boom; this instance \(cohort 0\.\d{4}\) takes stable$/);
  });

  it('/metrics carries the state, the reason, the percentage and the failures', async () => {
    const metrics = new AgentMetrics({ clock: new ManualClock(NOW), version: 'test' });
    metrics.observe({ ...startingStatus(NOW, 1), rollout: [halted] });
    await metrics.load();
    let body = (await metrics.render()).body;
    assert.match(body, /nixos_ec2_agent_rollout_info\{prefix="\/nixos\/fleet",candidate="c1",state="halted",takes="stable",reason="1 instance\(s\) failed[^"]*"\} 1/);
    assert.match(body, /nixos_ec2_agent_rollout_percent\{prefix="\/nixos\/fleet"\} 20/);
    assert.match(body, /nixos_ec2_agent_rollout_failures\{prefix="\/nixos\/fleet"\} 1/);
    metrics.observe(startingStatus(NOW, 1));
    body = (await metrics.render()).body;
    assert.doesNotMatch(body, /rollout_info\{/, 'a finished rollout leaves no series behind');
  });
});
