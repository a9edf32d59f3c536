// Change detection for SSM against plain fakes: how many calls a poll costs in each mode, when the
// whole tree is fetched, and that throttling neither fails a pass nor loses a change.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Imds, InstanceIdentity } from '../../agent/aws/imds.js';
import { TransientError } from '../../agent/errors.js';
import { WatchedSsm, isThrottling, type GetParameters, type SsmFetcher } from '../../agent/sources/revision.js';
import type { SsmSnapshot } from '../../agent/sources/ssm.js';
import { ManualClock } from '../support/clock.js';

const VALUES = { 'instance-id': 'i-0123456789abcdef0', region: 'eu-west-1', asg: 'web' };
const PREFIXES = ['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}'];

/** An SSM parameter store in memory: names → versions, bumped on put. */
class FakeSsm {
  readonly params = new Map<string, { value: string; version: number }>();
  treeCalls = 0;
  getCalls = 0;
  throttleNext = 0;
  /** Whether each GetParameters call was asked to wait a busy account out. */
  readonly patient: boolean[] = [];

  put(name: string, value: string): void {
    const prev = this.params.get(name);
    this.params.set(name, { value, version: (prev?.version ?? 0) + 1 });
  }

  private maybeThrottle(): void {
    if (this.throttleNext > 0) {
      this.throttleNext--;
      throw Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $fault: 'client', $metadata: { httpStatusCode: 400 } });
    }
  }

  readonly source: SsmFetcher = {
    fetch: async (prefixes) => {
      const out: SsmSnapshot = {
        prefixes: prefixes.map((template) => {
          const prefix = template.replace('{asg}', VALUES.asg).replace('{instance-id}', VALUES['instance-id']);
          this.treeCalls++;
          const parameters = [...this.params.entries()]
            .filter(([n]) => n.startsWith(`${prefix}/`))
            .map(([name, p]) => ({ name, type: 'String' as const, value: p.value, version: p.version, lastModified: undefined }));
          return { prefix, parameters };
        }),
        skipped: [],
        calls: prefixes.length,
      };
      return out;
    },
  };

  readonly getParameters: GetParameters = async ({ Names }, options) => {
    this.getCalls++;
    this.patient.push(options?.patient === true);
    this.maybeThrottle();
    assert.ok(Names.length <= 10, 'GetParameters takes at most 10 names');
    const Parameters = Names.filter((n) => this.params.has(n)).map((n) => ({ Name: n, Version: this.params.get(n)!.version }));
    return { Parameters, InvalidParameters: Names.filter((n) => !this.params.has(n)) };
  };
}

function fakeImds(tags: Map<string, string>): Imds {
  return {
    get: async (path: string) => {
      const m = /^latest\/meta-data\/tags\/instance\/(.+)$/.exec(path);
      return m ? tags.get(m[1]!) : undefined;
    },
    getBytes: async () => undefined,
    identity: async () => ({ instanceId: VALUES['instance-id'], region: VALUES.region }) as InstanceIdentity,
  };
}

function setup(options: { tag?: string | null; parameter?: string | null; fullRefreshMs?: number } = {}) {
  const ssm = new FakeSsm();
  const tags = new Map<string, string>();
  const clock = new ManualClock(0);
  const watched = new WatchedSsm(async () => ({ source: ssm.source, getParameters: ssm.getParameters }), {
    clock,
    imds: fakeImds(tags),
    tag: options.tag === undefined ? 'nixos-ec2-agent-revision' : options.tag,
    parameter: options.parameter === undefined ? 'revision' : options.parameter,
    fullRefreshMs: options.fullRefreshMs ?? 3_600_000,
  });
  return { ssm, tags, clock, watched };
}

const names = (s: SsmSnapshot) => s.prefixes.flatMap((p) => p.parameters.map((x) => `${x.name}@${x.version}`));

test('with a revision parameter, an idle poll costs one GetParameters call and no tree fetch', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/options/a', '1');
  ssm.put('/nixos/fleet/revision', 'r1');
  const first = await watched.fetch(PREFIXES, VALUES);
  assert.deepEqual(names(first), ['/nixos/fleet/options/a@1'], 'the revision parameter never reaches the render');
  assert.equal(ssm.treeCalls, 3);
  for (let i = 0; i < 10; i++) {
    const again = await watched.fetch(PREFIXES, VALUES);
    assert.equal(again.calls, 1);
  }
  assert.equal(ssm.treeCalls, 3, 'no tree fetch while the revision is unchanged');
  assert.equal(ssm.getCalls, 11);
  assert.equal(watched.stats.mode, 'parameter');
});

test('the revision read a whole fetch begins with may wait out a busy account; a poll or a check may not', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  await watched.fetch(PREFIXES, VALUES);
  await watched.changed();
  watched.invalidate('converge --now');
  await watched.fetch(PREFIXES, VALUES);
  assert.deepEqual(ssm.patient, [true, false, false, true]);
});

test('a bumped revision parameter fetches the whole tree, with the change in it', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  ssm.put('/nixos/asg/web/options/b', '2');
  ssm.put('/nixos/asg/web/revision', 'r2');
  assert.equal(await watched.changed(), 'revision parameter changed');
  const next = await watched.fetch(PREFIXES, VALUES);
  assert.deepEqual(names(next), ['/nixos/asg/web/options/b@1']);
  assert.equal(await watched.changed(), undefined, 'the baseline moved with the fetch');
});

test('with the revision tag in IMDS, an idle poll costs no SSM call at all', async () => {
  const { ssm, tags, watched } = setup();
  tags.set('nixos-ec2-agent-revision', '7');
  ssm.put('/nixos/fleet/options/a', '1');
  await watched.fetch(PREFIXES, VALUES);
  const calls = ssm.treeCalls + ssm.getCalls;
  for (let i = 0; i < 10; i++) assert.equal((await watched.fetch(PREFIXES, VALUES)).calls, 0);
  assert.equal(ssm.treeCalls + ssm.getCalls, calls);
  assert.equal(watched.stats.mode, 'tag');
  ssm.put('/nixos/fleet/options/a', '2');
  tags.set('nixos-ec2-agent-revision', '8');
  assert.equal(await watched.changed(), 'revision tag changed');
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), ['/nixos/fleet/options/a@2']);
});

test('with neither tag nor revision parameter, every poll fetches the tree (and notices a parameter appear)', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/options/a', '1');
  await watched.fetch(PREFIXES, VALUES);
  ssm.put('/nixos/fleet/options/a', '2');
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), ['/nixos/fleet/options/a@2']);
  assert.equal(watched.stats.mode, 'full');
  const gets = ssm.getCalls;
  await watched.fetch(PREFIXES, VALUES);
  assert.equal(ssm.getCalls, gets, 'no wasted GetParameters call in full mode');
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  assert.equal(watched.stats.mode, 'parameter');
  const tree = ssm.treeCalls;
  await watched.fetch(PREFIXES, VALUES); // reads the revision properly once: one more tree fetch
  await watched.fetch(PREFIXES, VALUES);
  await watched.fetch(PREFIXES, VALUES);
  assert.equal(ssm.treeCalls, tree + 3, 'then the tree only when the revision moves');
});

test('a change without a bump converges at the periodic full refresh', async () => {
  const { ssm, clock, watched } = setup({ fullRefreshMs: 600_000 });
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  ssm.put('/nixos/fleet/options/a', '1');
  clock.advance(599_000);
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), []);
  clock.advance(1_000);
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), ['/nixos/fleet/options/a@1']);
});

test('invalidate (converge --now, SIGHUP) fetches the tree once', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  watched.invalidate('converge --now');
  assert.equal(await watched.changed(), 'converge --now');
  const tree = ssm.treeCalls;
  await watched.fetch(PREFIXES, VALUES);
  await watched.fetch(PREFIXES, VALUES);
  assert.equal(ssm.treeCalls, tree + 3);
});

test('a throttled revision check keeps the last tree, counts the throttling, and the change is still seen later', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/revision', 'r1');
  await watched.fetch(PREFIXES, VALUES);
  ssm.put('/nixos/fleet/options/a', '1');
  ssm.put('/nixos/fleet/revision', 'r2');
  ssm.throttleNext = 3;
  for (let i = 1; i <= 3; i++) {
    assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), [], 'throttled: the known tree, no failure');
    assert.equal(watched.throttleLevel, i);
  }
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), ['/nixos/fleet/options/a@1']);
  assert.equal(watched.throttleLevel, 0);
});

test('isThrottling recognises the SDK error names and the agent errors built from them', () => {
  assert.ok(isThrottling(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' })));
  assert.ok(isThrottling(new TransientError('x', 'ssm', { code: 'ThrottlingException' })));
  assert.ok(!isThrottling(new TransientError('x', 'ssm', { code: 'InternalServerError' })));
  assert.ok(!isThrottling(undefined));
});

test('a revision parameter first seen in the tree is no newer state for a build of that tree', async () => {
  const { ssm, watched } = setup();
  ssm.put('/nixos/fleet/options/a', '1');
  await watched.fetch(PREFIXES, VALUES);
  // The operator's first push with a revision: the change and the parameter arrive together.
  ssm.put('/nixos/fleet/options/a', '2');
  ssm.put('/nixos/fleet/revision', 'r1');
  assert.deepEqual(names(await watched.fetch(PREFIXES, VALUES)), ['/nixos/fleet/options/a@2']);
  assert.equal(await watched.changed(), undefined, 'nothing moved since the fetch: the build of it must not be cancelled');
  ssm.put('/nixos/fleet/revision', 'r2');
  assert.equal(await watched.changed(), 'revision parameter changed', 'a bump after the fetch still is');
  const tree = ssm.treeCalls;
  await watched.fetch(PREFIXES, VALUES);
  assert.equal(ssm.treeCalls, tree + 3, 'the next poll reads the revision properly, and the tree with it');
});
