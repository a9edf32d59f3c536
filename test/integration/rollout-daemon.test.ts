// The daemon during a rollout: an idle poll stays one cheap revision read, another instance's
// failure record halts the rollout at the next poll and this instance returns to stable, and
// /status and /metrics say it is halted and why; the canary instance tag, once tags are in instance
// metadata, pins an instance to the first cohort; a strategy's CloudWatch alarm in ALARM halts it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RolloutStatus } from '../../agent/rollout/plan.js';
import { cohortPosition } from '../../agent/rollout/plan.js';
import { candidateIdOf } from '../../agent/rollout/spec.js';
import { hasNix, Instance, LiveLog, waitFor, type StatusJson } from '../support/e2e.js';

type Status = StatusJson & { rollout?: RolloutStatus[] };

/** Waits for the instance to be idle and converged with a status that passes `check`. */
function settledOn(inst: Instance) {
  return (what: string, check: (s: Status) => boolean) =>
    waitFor(what, async () => {
      const s = await inst.statusFile<Status>();
      return s && s.phase === 'idle' && s.condition === 'converged' && check(s) ? s : undefined;
    }, 120_000);
}

const TZ = '/nixos/fleet/options/time.timeZone';
const CANDIDATE = '/nixos/fleet/rollout/candidate/options/time.timeZone';


const onCandidate = (s: Status) => s.desired?.sources.parameters.some((p) => p.name === CANDIDATE) ?? false;

describe('the daemon during a rollout', () => {
  test('follows a halt recorded by another instance at its next poll, and says so in /status and /metrics', { skip: hasNix ? false : 'nix-instantiate is not installed', timeout: 180_000 }, async (t) => {
    // Every cohort is covered from the start: this instance takes the candidate at its first pass.
    const strategy = { type: 'linear', stepPercent: 100, intervalSeconds: 3600, bakeSeconds: 3600, errorThreshold: 1, startAt: new Date(Date.now() - 60_000).toISOString() };
    const inst = await Instance.launch({
      parameters: [
        { Name: TZ, Value: '"UTC"', Type: 'String' },
        { Name: CANDIDATE, Value: '"Europe/Paris"', Type: 'String' },
        { Name: '/nixos/fleet/rollout/strategy', Value: JSON.stringify(strategy), Type: 'String' },
        { Name: '/nixos/fleet/revision', Value: '1', Type: 'String' },
      ],
      config: { ssm: { pollIntervalSeconds: 0.5, pollJitter: 0 }, http: { listen: '127.0.0.1:0' } },
    });
    const run = inst.daemon(t);
    const log = new LiveLog(run);
    const settled = settledOn(inst);

    await settled('the candidate, baking', (s) => onCandidate(s) && s.rollout?.[0]?.state === 'baking');
    const polls = log.of('pass.start').length;
    inst.world.ssm.resetCounters();
    await waitFor('three more polls', async () => (log.of('pass.start').length >= polls + 3 ? true : undefined), 60_000);
    const idle = inst.world.ssm.callCounts();
    assert.equal(idle.GetParametersByPath ?? 0, 0, `no tree fetch while idle in a rollout: ${JSON.stringify(idle)}`);

    // Another instance failed the candidate: its record, then its revision bump.
    const candidate = candidateIdOf([{ name: CANDIDATE, version: 1 } as never]);
    inst.put('/nixos/fleet/rollout/failures/i-0fffffffffffffff0', JSON.stringify({ candidate, stage: 'verify', reason: 'unit nginx.service failed', at: new Date().toISOString() }));
    inst.put('/nixos/fleet/revision', '2');
    const back = await settled('back on stable, halted', (s) => !onCandidate(s) && s.rollout?.[0]?.state === 'halted');
    assert.match(back.rollout?.[0]?.reason ?? '', /1 instance\(s\) failed the candidate \(threshold 1\); e\.g\. i-0fffffffffffffff0: verify: unit nginx\.service failed/);
    assert.ok(back.desired?.sources.parameters.some((p) => p.name === TZ));
    assert.equal(inst.world.ssm.callCounts().PutParameter ?? 0, 0, 'an instance that did not fail writes nothing');
    assert.equal(inst.world.cloudwatch.callCounts().DescribeAlarms ?? 0, 0, 'a strategy without alarms never asks CloudWatch');

    const url = log.of('http.listening')[0]?.url;
    assert.equal(typeof url, 'string');
    const status = (await (await fetch(`${url}/status`)).json()) as Status;
    assert.equal(status.rollout?.[0]?.state, 'halted');
    assert.equal(status.rollout?.[0]?.haltedBy, 'failures');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.match(metrics, /nixos_ec2_agent_rollout_info\{prefix="\/nixos\/fleet",candidate="[0-9a-f]{16}",state="halted",takes="stable",reason="1 instance\(s\) failed the candidate[^"]*"\} 1/);
  });

  test('the canary tag in instance metadata pins the instance to the first cohort; without tags in metadata it waits for its cohort', { skip: hasNix ? false : 'nix-instantiate is not installed', timeout: 180_000 }, async (t) => {
    // A first step of 1 % for an hour: this instance's cohort is far from covered.
    const strategy = { type: 'linear', stepPercent: 1, intervalSeconds: 3600, bakeSeconds: 0, errorThreshold: 1, startAt: new Date(Date.now() - 60_000).toISOString() };
    const candidate = candidateIdOf([{ name: CANDIDATE, version: 1 } as never]);
    let n = 0;
    let instanceId = '';
    do instanceId = `i-0${(0xc0ffee00 + n++).toString(16).padStart(16, '0')}`;
    while (cohortPosition(instanceId, candidate) < 0.5);
    const inst = await Instance.launch({
      parameters: [
        { Name: TZ, Value: '"UTC"', Type: 'String' },
        { Name: CANDIDATE, Value: '"Europe/Paris"', Type: 'String' },
        { Name: '/nixos/fleet/rollout/strategy', Value: JSON.stringify(strategy), Type: 'String' },
        { Name: '/nixos/fleet/revision', Value: '1', Type: 'String' },
      ],
      instance: { instanceId, tags: { 'nixos-ec2-agent-canary': 'true' }, tagsInMetadata: true },
      config: { ssm: { pollIntervalSeconds: 0.5, pollJitter: 0 }, http: { listen: null } },
    });
    inst.daemon(t);
    const settled = settledOn(inst);

    const pinned = await settled('the candidate, as a canary', (s) => onCandidate(s));
    assert.equal(pinned.rollout?.[0]?.canary, true);
    assert.equal(pinned.rollout?.[0]?.takes, 'candidate');
    assert.ok((pinned.rollout?.[0]?.cohort ?? 0) >= 0.5, 'not covered by its cohort');

    // EC2's default: no tags in instance metadata. The pin is gone; the cohort decides.
    inst.world.imds.setTagsInMetadata(false);
    inst.put('/nixos/fleet/revision', '2');
    const waiting = await settled('back on stable, waiting for its cohort', (s) => !onCandidate(s));
    assert.equal(waiting.rollout?.[0]?.canary, false);
    assert.equal(waiting.rollout?.[0]?.state, 'progressing');
  });

  test('a CloudWatch alarm the strategy names halts the rollout when it goes to ALARM, and the recorded halt holds after it clears', { skip: hasNix ? false : 'nix-instantiate is not installed', timeout: 180_000 }, async (t) => {
    const strategy = { type: 'linear', stepPercent: 100, intervalSeconds: 3600, bakeSeconds: 3600, errorThreshold: 5, startAt: new Date(Date.now() - 60_000).toISOString(), alarms: ['web-5xx'] };
    const inst = await Instance.launch({
      parameters: [
        { Name: TZ, Value: '"UTC"', Type: 'String' },
        { Name: CANDIDATE, Value: '"Europe/Paris"', Type: 'String' },
        { Name: '/nixos/fleet/rollout/strategy', Value: JSON.stringify(strategy), Type: 'String' },
        { Name: '/nixos/fleet/revision', Value: '1', Type: 'String' },
      ],
      config: { ssm: { pollIntervalSeconds: 0.5, pollJitter: 0 }, http: { listen: null } },
    });
    inst.world.cloudwatch.putAlarm('web-5xx');
    inst.world.cloudwatch.setState('web-5xx', 'OK', 'fine');
    const run = inst.daemon(t);
    const settled = settledOn(inst);

    await settled('the candidate, baking', (s) => onCandidate(s) && s.rollout?.[0]?.state === 'baking');
    assert.ok((inst.world.cloudwatch.callCounts().DescribeAlarms ?? 0) >= 1, 'the alarm is read while the rollout is under way');

    inst.world.cloudwatch.setState('web-5xx', 'ALARM', 'Threshold Crossed: 12 errors');
    const halted = await settled('back on stable, halted by the alarm', (s) => !onCandidate(s) && s.rollout?.[0]?.state === 'halted');
    assert.equal(halted.rollout?.[0]?.haltedBy, 'alarm');
    assert.equal(halted.rollout?.[0]?.reason, 'CloudWatch alarm web-5xx is in ALARM: Threshold Crossed: 12 errors');
    const record = await waitFor('the alarm recorded for the fleet', async () => inst.world.ssm.get(`/nixos/fleet/rollout/failures/${inst.instanceId}`), 30_000);
    assert.equal((JSON.parse(record.Value) as { stage: string }).stage, 'alarm');

    // The alarm clears: the halt is the fleet's now, and holds until the operator resumes.
    inst.world.cloudwatch.setState('web-5xx', 'OK', 'recovered');
    const calls = inst.world.cloudwatch.callCounts().DescribeAlarms ?? 0;
    inst.put('/nixos/fleet/revision', '2');
    const polls = new LiveLog(run);
    await waitFor('three more polls', async () => (polls.of('pass.start').length >= 3 ? true : undefined), 60_000);
    const still = await settled('still halted', () => true);
    assert.equal(still.rollout?.[0]?.state, 'halted');
    assert.ok(!onCandidate(still));
    assert.equal(inst.world.cloudwatch.callCounts().DescribeAlarms ?? 0, calls, 'a halted rollout asks CloudWatch nothing');
  });
});
