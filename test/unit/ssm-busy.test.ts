// SSM failing on its side (5xx) counts as busy, as throttling does: the poll backs off instead of
// retrying at its normal pace (a sandbox whose SSM answered 500 saw 37 calls in 20 s).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Imds, InstanceIdentity } from '../../agent/aws/imds.js';
import { InvalidInputError, TransientError } from '../../agent/errors.js';
import { WatchedSsm, isBusy } from '../../agent/sources/revision.js';
import type { SsmSnapshot } from '../../agent/sources/ssm.js';
import { ManualClock } from '../support/clock.js';

const VALUES = { 'instance-id': 'i-0123456789abcdef0', region: 'eu-west-1', asg: 'web' };

test('isBusy: throttling and 5xx, from the SDK or as agent errors; not client errors', () => {
  const sdk = (name: string, status: number) => Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });
  assert.ok(isBusy(sdk('InternalServerError', 500)));
  assert.ok(isBusy(sdk('ServiceUnavailable', 503)));
  assert.ok(isBusy(sdk('ThrottlingException', 400)));
  assert.ok(isBusy(new TransientError('x', 'ssm', { code: 'InternalServerError', status: 500 })));
  assert.ok(!isBusy(sdk('AccessDeniedException', 400)));
  assert.ok(!isBusy(new InvalidInputError('bad path', 'SSM path /x', { code: 'ValidationException', status: 400 })));
  assert.ok(!isBusy(undefined));
});

test("a revision check answered with 5xx keeps the known tree and raises the source's busy level", async () => {
  let failing = false;
  const tree: SsmSnapshot = { prefixes: [{ prefix: '/nixos/fleet', parameters: [] }], skipped: [], calls: 1 };
  const imds: Imds = { get: async () => undefined, getBytes: async () => undefined, identity: async () => ({ instanceId: VALUES['instance-id'], region: VALUES.region }) as InstanceIdentity };
  const watched = new WatchedSsm(
    async () => ({
      source: { fetch: async () => tree },
      getParameters: async ({ Names }) => {
        if (failing) throw Object.assign(new Error('We encountered an internal error'), { name: 'InternalServerError', $fault: 'server', $metadata: { httpStatusCode: 500 } });
        return { Parameters: Names.map((Name) => ({ Name, Version: 1 })) };
      },
    }),
    { clock: new ManualClock(0), imds, tag: null, parameter: 'revision', fullRefreshMs: 3_600_000 },
  );
  await watched.fetch(['/nixos/fleet'], VALUES);
  failing = true;
  for (let i = 1; i <= 3; i++) {
    assert.equal((await watched.fetch(['/nixos/fleet'], VALUES)).prefixes.length, 1, 'the known tree, no failure');
    assert.equal(watched.throttleLevel, i);
  }
  failing = false;
  await watched.fetch(['/nixos/fleet'], VALUES);
  assert.equal(watched.throttleLevel, 0);
});
