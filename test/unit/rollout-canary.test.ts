// The canary pin by instance tag: read from IMDS only while SSM carries a rollout (an idle fleet
// makes no extra call), "true" pins the instance to the first cohort, anything else but "false"
// is a note, and no tag (EC2's default: tags are not in instance metadata) is no pin.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { RootFs } from '../../agent/fs.js';
import { cohortPosition } from '../../agent/rollout/plan.js';
import { selectDesired, whoOf } from '../../agent/rollout/select.js';
import { candidateIdOf, carriesRollout } from '../../agent/rollout/spec.js';
import { SourceReader } from '../../agent/sources/index.js';
import type { SsmSnapshot } from '../../agent/sources/ssm.js';
import { NO_LOCAL, param, ssm } from '../support/desired.js';

const FLEET = '/nixos/fleet';
const TAG = 'nixos-ec2-agent-canary';
const TAG_PATH = `latest/meta-data/tags/instance/${TAG}`;
const candidate = param(`${FLEET}/rollout/candidate/options/services.demo.version`, '"2"', { version: 3 });
const strategy = param(`${FLEET}/rollout/strategy`, JSON.stringify({ type: 'linear', stepPercent: 1, intervalSeconds: 3600, startAt: '2026-01-01T00:00:00Z' }));
const STARTED = Date.parse('2026-01-01T00:10:00Z');
const STABLE = ssm([FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"')]]);
const ROLLING = ssm([FLEET, [param(`${FLEET}/options/services.demo.version`, '"1"'), strategy, candidate]]);

/** An instance whose cohort the 1 % first step does not cover. */
function uncoveredId(): string {
  const id = candidateIdOf([candidate]);
  for (let i = 0; ; i++) {
    const instanceId = `i-${i.toString(16).padStart(17, '0')}`;
    if (cohortPosition(instanceId, id) >= 0.5) return instanceId;
  }
}
const INSTANCE = uncoveredId();

async function read(snapshot: SsmSnapshot, tags: Record<string, string> | undefined, canaryTag: string | null = TAG) {
  const dir = await mkdtemp(path.join(tmpdir(), 'nea-canary-'));
  const asked: string[] = [];
  const imds = {
    get: async (p: string) => {
      asked.push(p);
      // undefined: tags are not in instance metadata (EC2's default), so every tag path is a 404.
      return p.startsWith('latest/meta-data/tags/instance/') ? tags?.[p.slice('latest/meta-data/tags/instance/'.length)] : undefined;
    },
    getBytes: async () => undefined,
    identity: async () => ({ instanceId: INSTANCE, region: 'eu-west-1', accountId: '123456789012', availabilityZone: 'eu-west-1a', instanceType: 't3.micro', amiId: 'ami-1' }),
  };
  try {
    const sources = new SourceReader(imds as never, async () => ({ fetch: async () => snapshot }), new RootFs(dir), {
      userData: false,
      ssmPrefixes: [FLEET],
      baseConfiguration: '/etc/nixos/base.nix',
      modulesDir: '/etc/nixos-ec2-agent/local.d',
      canaryTag,
    });
    const snapshots = await sources.read();
    return { snapshots, tagReads: asked.filter((p) => p === TAG_PATH).length };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('the canary tag', () => {
  it('is not read while SSM carries no rollout', async () => {
    assert.equal(carriesRollout(STABLE), false);
    const { snapshots, tagReads } = await read(STABLE, { [TAG]: 'true' });
    assert.equal(tagReads, 0);
    assert.equal(snapshots.canary, false);
  });

  it('"true" pins the instance to the first cohort: it takes the candidate its cohort would not', async () => {
    assert.equal(carriesRollout(ROLLING), true);
    const { snapshots, tagReads } = await read(ROLLING, { [TAG]: 'true' });
    assert.equal(tagReads, 1);
    assert.equal(snapshots.canary, true);
    const pinned = selectDesired({ userData: snapshots.userData, ssm: snapshots.ssm, local: NO_LOCAL }, whoOf(snapshots), STARTED);
    assert.equal(pinned.rollouts[0]?.takes, 'candidate');
    assert.equal(pinned.rollouts[0]?.canary, true);
    const plain = selectDesired({ userData: snapshots.userData, ssm: snapshots.ssm, local: NO_LOCAL }, { instanceId: INSTANCE }, STARTED);
    assert.equal(plain.rollouts[0]?.takes, 'stable', 'the same instance without the pin waits for its cohort');
  });

  it('no tag in instance metadata (EC2\'s default) and "false" pin nothing, with no note', async () => {
    for (const tags of [undefined, { [TAG]: 'false' }]) {
      const { snapshots } = await read(ROLLING, tags);
      assert.equal(snapshots.canary, false);
      assert.deepEqual(snapshots.notes, []);
    }
  });

  it('any other value pins nothing and says what was wrong and where', async () => {
    const { snapshots } = await read(ROLLING, { [TAG]: 'yes' });
    assert.equal(snapshots.canary, false);
    assert.deepEqual(snapshots.notes, [`instance tag ${TAG}: must be "true" or "false", not "yes"; not a canary`]);
  });

  it('is never read when configured off (rollout.canaryTag = null)', async () => {
    const { snapshots, tagReads } = await read(ROLLING, { [TAG]: 'true' }, null);
    assert.equal(tagReads, 0);
    assert.equal(snapshots.canary, false);
  });
});
