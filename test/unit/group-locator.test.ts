// Where `{asg}` comes from: the instance tag in IMDS when EC2 serves tags there, else one
// DescribeAutoScalingInstances answer kept for the life of the agent.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ASG_TAG, GroupLocator, type GroupMembership } from '../../agent/aws/autoscaling.js';
import { TransientError } from '../../agent/errors.js';

function fakes(tags: Record<string, string>, answers: (() => Promise<GroupMembership | undefined>)[]) {
  const calls: string[] = [];
  const imds = {
    get: async (path: string) => (path === `latest/meta-data/tags/instance/${ASG_TAG}` ? tags[ASG_TAG] : undefined),
    identity: async () => ({ instanceId: 'i-0abc', region: 'eu-west-1', accountId: '123456789012', availabilityZone: 'eu-west-1a', instanceType: 't3.micro', imageId: 'ami-1' }),
  };
  const autoscaling = {
    describeInstance: async (id: string) => {
      calls.push(id);
      const next = answers.shift();
      if (!next) throw new Error('an unexpected DescribeAutoScalingInstances call');
      return next();
    },
  };
  return { locator: new GroupLocator(imds as never, autoscaling), calls };
}

test('the IMDS tag is used when served, without asking Auto Scaling', async () => {
  const { locator, calls } = fakes({ [ASG_TAG]: 'web' }, []);
  assert.equal(await locator.group(), 'web');
  assert.deepEqual(calls, []);
});

test('without tags in IMDS, one DescribeAutoScalingInstances answer serves every later look', async () => {
  const { locator, calls } = fakes({}, [async () => ({ group: 'web', lifecycleState: 'Pending:Wait' })]);
  assert.equal(await locator.group(), 'web');
  assert.equal(await locator.group(), 'web');
  assert.deepEqual(calls, ['i-0abc']);
});

test('an instance in no group is an answer too, kept as one', async () => {
  const { locator, calls } = fakes({}, [async () => undefined]);
  assert.equal(await locator.group(), undefined);
  assert.equal(await locator.group(), undefined);
  assert.equal(calls.length, 1);
});

test('a failed call is not kept: the next look asks again', async () => {
  const denied = new TransientError('Auto Scaling DescribeAutoScalingInstances failed: AccessDenied: no', 'autoscaling', { code: 'AccessDenied' });
  const { locator, calls } = fakes({}, [async () => Promise.reject(denied), async () => ({ group: 'web', lifecycleState: 'InService' })]);
  await assert.rejects(locator.group(), /AccessDenied/);
  assert.equal(await locator.group(), 'web');
  assert.equal(calls.length, 2);
});
