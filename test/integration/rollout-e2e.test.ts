// A progressive rollout across a few real sandbox agents sharing one SSM: a bad candidate halts
// after the first cohort and every touched instance ends on stable; a good one advances, an
// instance launched mid-rollout gets stable, and it completes after the bake and is promoted.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cohortPosition } from '../../agent/rollout/plan.js';
import { candidateIdOf } from '../../agent/rollout/spec.js';
import type { RolloutStatus } from '../../agent/rollout/plan.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { Instance, markerModule, type CliResult, type StatusJson } from '../support/e2e.js';

const FLEET = '/nixos/fleet';
const TZ = `${FLEET}/options/time.timeZone`;
const BAD = `${FLEET}/rollout/candidate/modules/bad`;
const GOOD = `${FLEET}/rollout/candidate/options/time.timeZone`;
const STEP = 25;

type Status = StatusJson & { rollout?: RolloutStatus[] };

/** Candidate ids are names and versions: both candidates are published at version 1. */
const badId = candidateIdOf([{ name: BAD, version: 1 } as never]);
const goodId = candidateIdOf([{ name: GOOD, version: 1 } as never]);

/** A deterministic instance id whose cohorts for the two candidates are in or out of the first step. */
function instanceId(badFirst: boolean, goodFirst: boolean, skip: readonly string[]): string {
  const first = (id: string, candidate: string) => cohortPosition(id, candidate) < STEP / 100;
  const late = (id: string, candidate: string) => cohortPosition(id, candidate) >= 0.5;
  for (let n = 0; n < 1_000_000; n++) {
    const id = `i-${n.toString(16).padStart(17, '0')}`;
    if (skip.includes(id)) continue;
    if ((badFirst ? first(id, badId) : late(id, badId)) && (goodFirst ? first(id, goodId) : late(id, goodId))) return id;
  }
  throw new Error('no such instance id');
}

describe('progressive rollout across sandbox agents', { timeout: 600_000 }, () => {
  let ssm: SsmEmulator;
  const instances = new Map<string, Instance>();
  const a = instanceId(true, false, []);
  const b = instanceId(false, true, [a]);
  const c = instanceId(false, false, [a, b]);
  const d = instanceId(false, false, [a, b, c]);

  before(async () => {
    ssm = await SsmEmulator.start({ region: 'us-east-1', throughput: null });
    ssm.put({ Name: TZ, Value: '"UTC"', Type: 'String' });
  });
  after(async () => {
    for (const i of instances.values()) await i.close();
    await ssm?.close();
  });

  const launch = async (id: string) => {
    const i = await Instance.launch({ instance: { instanceId: id } });
    instances.set(id, i);
    return i;
  };
  const shared = () => ({ AWS_ENDPOINT_URL_SSM: ssm.url });
  const converge = async (id: string): Promise<CliResult & { status: Status }> => {
    const i = instances.get(id);
    assert.ok(i);
    const result = await i.run(['converge', '--once', '--json'], shared());
    return { ...result, status: JSON.parse(result.stdout) as Status };
  };
  /** The operator's command, from the first instance's sandbox (any machine with SSM access would do). */
  const operator = async (...args: string[]) => {
    const i = instances.get(a);
    assert.ok(i);
    const result = await i.run(['rollout', ...args], { ...shared(), AWS_ACCESS_KEY_ID: 'AKIDOPERATOR', AWS_SECRET_ACCESS_KEY: 'operator-secret' });
    assert.equal(result.code, 0, result.stderr);
    return result.stdout;
  };
  const onCandidate = (s: Status) => s.desired?.sources.parameters.some((p) => p.name.includes('/rollout/candidate/')) ?? false;
  const stable = new Map<string, string>();

  it('converges every instance to stable first', async () => {
    for (const id of [a, b, c]) {
      await launch(id);
      const r = await converge(id);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status.rollout, undefined);
      stable.set(id, r.status.running?.storePath ?? '');
    }
  });

  it('a bad candidate halts after the first cohort, and the touched instance ends on stable', async () => {
    ssm.put({ Name: BAD, Value: markerModule('sandbox-fail-unit'), Type: 'String' });
    await operator('start', '--step', String(STEP), '--interval', '3600', '--bake', '60', '--threshold', '1');

    const touched = await converge(a);
    assert.equal(touched.code, 1, 'the candidate failed health verification and was rolled back');
    assert.equal(touched.status.lastResult?.outcome, 'rolled-back');
    assert.ok(ssm.get(`${FLEET}/rollout/failures/${a}`), 'the failure is recorded where every instance reads it');

    for (const id of [b, c]) {
      const r = await converge(id);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status.rollout?.[0]?.state, 'halted');
      assert.equal(r.status.rollout?.[0]?.haltedBy, 'failures');
      assert.equal(onCandidate(r.status), false);
      assert.equal(r.status.running?.storePath, stable.get(id));
    }
    const again = await converge(a);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.status.condition, 'converged');
    assert.equal(onCandidate(again.status), false);
    assert.equal(again.status.running?.storePath, stable.get(a), 'the touched instance runs stable');
    const status = await operator('status');
    assert.match(status, /HALTED \(failures\): 1 instance\(s\) failed the candidate/);
    assert.match(status, new RegExp(`step {2}1 .*1 failed: ${a}`));
    await operator('abandon');
  });

  it('a good candidate advances by cohort, a scale-out gets stable, and it completes after the bake', async () => {
    ssm.put({ Name: GOOD, Value: '"Europe/Paris"', Type: 'String' });
    await operator('start', '--step', String(STEP), '--interval', '3600', '--bake', '60', '--threshold', '1');
    for (const [id, takes] of [[a, false], [b, true], [c, false]] as const) {
      const r = await converge(id);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status.rollout?.[0]?.state, 'progressing');
      assert.equal(onCandidate(r.status), takes, `${id} takes the candidate: ${takes}`);
    }
    await launch(d);
    const scaleOut = await converge(d);
    assert.equal(scaleOut.code, 0, scaleOut.stderr);
    assert.equal(onCandidate(scaleOut.status), false, 'an instance launched mid-rollout gets stable');

    // The same candidate, started again as if four hours ago: past every step and the bake. Under
    // way already, it takes --force.
    await operator('start', '--force', '--step', String(STEP), '--interval', '3600', '--bake', '60', '--threshold', '1', '--at', new Date(Date.now() - 4 * 3600_000).toISOString());
    for (const id of [a, b, c, d]) {
      const r = await converge(id);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status.rollout?.[0]?.state, 'complete');
      assert.equal(onCandidate(r.status), true);
      assert.match(await instances.get(id)!.configuration() + (await readParts(instances.get(id)!)), /Europe\/Paris/);
    }
    // Complete is final: instances that fail the candidate from now on (two, past the threshold of
    // one) record it, and the fleet stays on it.
    for (const failed of ['i-0fa11ed0000000001', 'i-0fa11ed0000000002']) {
      ssm.put({ Name: `${FLEET}/rollout/failures/${failed}`, Value: JSON.stringify({ candidate: goodId, stage: 'build', reason: 'the binary cache was down', at: new Date().toISOString() }), Type: 'String' });
    }
    const late = await converge(a);
    assert.equal(late.code, 0, late.stderr);
    assert.equal(late.status.rollout?.[0]?.state, 'complete');
    assert.equal(late.status.rollout?.[0]?.lateFailures, 2);
    assert.equal(onCandidate(late.status), true);
    assert.match(await operator('status'), /complete .*2 failure\(s\) recorded since it completed, which no longer halt it/);
    await operator('promote');
    assert.equal(ssm.get(TZ)?.Value, '"Europe/Paris"');
    for (const id of [a, b, c, d]) {
      const r = await converge(id);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status.rollout, undefined);
      assert.deepEqual(r.status.desired?.sources.parameters.find((p) => p.name === TZ), { name: TZ, version: 2 }, 'stable is the promoted candidate');
      assert.equal(r.status.condition, 'converged');
    }
  });
});

/** Every rendered part of the configuration, as one text. */
async function readParts(i: Instance): Promise<string> {
  const { readdir, readFile } = await import('node:fs/promises');
  const dir = i.file('etc/nixos/ec2-agent');
  const names = await readdir(dir, { recursive: true, withFileTypes: true });
  const texts = await Promise.all(names.filter((e) => e.isFile()).map((e) => readFile(`${e.parentPath}/${e.name}`, 'utf8')));
  return texts.join('\n');
}
