// The Auto Scaling emulator through the real AWS CLI (botocore's awsQuery client): what an operator
// or a lifecycle script on the instance would run against it.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { awsCli, noAwsCli } from '../support/aws-cli.js';
import { AutoScalingEmulator, LAUNCHING, TERMINATING } from '../../sandbox/emulators/autoscaling.js';
import { ManualClock } from '../support/clock.js';

const skip = noAwsCli;

const GROUP = 'web-asg';
const HOOK = 'launch-hook';

describe('Auto Scaling emulator through the AWS CLI', { skip }, () => {
  let emulator: AutoScalingEmulator;
  let clock: ManualClock;
  let home: string;

  before(async () => {
    clock = new ManualClock(Date.UTC(2025, 0, 1));
    emulator = await AutoScalingEmulator.start({ clock, tickIntervalMs: 0 });
    emulator.createGroup({ name: GROUP, healthCheckGracePeriod: 300 });
    emulator.putLifecycleHook({ groupName: GROUP, hookName: HOOK, transition: LAUNCHING });
    home = await mkdtemp(join(tmpdir(), 'asg-cli-'));
  });
  after(async () => {
    await emulator?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  const aws = (...args: string[]) => awsCli(emulator.url, home, 'autoscaling', args);
  /** The instance's LifecycleState as describe-auto-scaling-instances lists it; undefined once it is gone. */
  const lifecycleStateOf = async (id: string) => {
    const r = await aws('describe-auto-scaling-instances', '--instance-ids', id);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { AutoScalingInstances: Array<{ LifecycleState: string }> }).AutoScalingInstances[0]?.LifecycleState;
  };
  /** The instance ids describe-auto-scaling-groups lists as the group's own. */
  const groupMembers = async (group: string) => {
    const r = await aws('describe-auto-scaling-groups', '--auto-scaling-group-names', group);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { AutoScalingGroups: Array<{ Instances: Array<{ InstanceId: string }> }> }).AutoScalingGroups[0]?.Instances.map((i) => i.InstanceId);
  };
  /** complete-lifecycle-action with CONTINUE, by instance id; it must succeed. */
  const continueAction = async (group: string, hook: string, id: string) => {
    const r = await aws('complete-lifecycle-action', '--lifecycle-hook-name', hook, '--auto-scaling-group-name', group, '--lifecycle-action-result', 'CONTINUE', '--instance-id', id);
    assert.equal(r.code, 0, r.stderr);
  };

  it('describe-auto-scaling-instances shows an instance held by the launch hook', async () => {
    emulator.launchInstance({ instanceId: 'i-0aaaaaaaaaaaaaaa1', groupName: GROUP, availabilityZone: 'eu-west-1a', instanceType: 't3.small' });
    emulator.launchInstance({ instanceId: 'i-0aaaaaaaaaaaaaaa2', groupName: GROUP });
    // --page-size keeps the CLI's auto-paging, so both pages must be followed through NextToken.
    const r = await aws('describe-auto-scaling-instances', '--page-size', '1');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { AutoScalingInstances: Array<Record<string, unknown>> };
    assert.deepEqual(
      out.AutoScalingInstances.map((i) => i.InstanceId),
      ['i-0aaaaaaaaaaaaaaa1', 'i-0aaaaaaaaaaaaaaa2'],
    );
    assert.deepEqual(
      { ...out.AutoScalingInstances[0], LaunchTemplate: undefined },
      {
        InstanceId: 'i-0aaaaaaaaaaaaaaa1',
        InstanceType: 't3.small',
        AutoScalingGroupName: GROUP,
        AvailabilityZone: 'eu-west-1a',
        LifecycleState: 'Pending:Wait',
        HealthStatus: 'HEALTHY',
        ProtectedFromScaleIn: false,
        LaunchTemplate: undefined,
      },
    );
    assert.ok(emulator.requests.filter((q) => q.operation === 'DescribeAutoScalingInstances').length >= 2);
  });

  it('record-lifecycle-action-heartbeat, then complete-lifecycle-action CONTINUE, puts the instance in service', async () => {
    const hb = await aws('record-lifecycle-action-heartbeat', '--lifecycle-hook-name', HOOK, '--auto-scaling-group-name', GROUP, '--instance-id', 'i-0aaaaaaaaaaaaaaa1');
    assert.equal(hb.code, 0, hb.stderr);
    assert.equal(emulator.instance('i-0aaaaaaaaaaaaaaa1')?.heartbeats, 1);

    const token = emulator.instance('i-0aaaaaaaaaaaaaaa1')?.activeActions[0]?.token ?? '';
    const done = await aws(
      'complete-lifecycle-action',
      '--lifecycle-hook-name', HOOK,
      '--auto-scaling-group-name', GROUP,
      '--lifecycle-action-result', 'CONTINUE',
      '--lifecycle-action-token', token,
    );
    assert.equal(done.code, 0, done.stderr);
    assert.equal(done.stdout.trim(), '', 'complete-lifecycle-action prints nothing');
    assert.equal(emulator.instance('i-0aaaaaaaaaaaaaaa1')?.lifecycleState, 'InService');
  });

  it('set-instance-health --no-should-respect-grace-period marks the instance UNHEALTHY', async () => {
    const r = await aws('set-instance-health', '--instance-id', 'i-0aaaaaaaaaaaaaaa1', '--health-status', 'Unhealthy', '--no-should-respect-grace-period');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(emulator.requests.at(-1)?.params.ShouldRespectGracePeriod, 'false');
    const d = await aws('describe-auto-scaling-instances', '--instance-ids', 'i-0aaaaaaaaaaaaaaa1');
    const out = JSON.parse(d.stdout) as { AutoScalingInstances: Array<Record<string, unknown>> };
    assert.equal(out.AutoScalingInstances[0]?.HealthStatus, 'UNHEALTHY');
    assert.equal(out.AutoScalingInstances[0]?.LifecycleState, 'Terminating');
  });

  it('a completion with no active action exits 254 with the service message', async () => {
    const r = await aws(
      'complete-lifecycle-action',
      '--lifecycle-hook-name', HOOK,
      '--auto-scaling-group-name', GROUP,
      '--lifecycle-action-result', 'CONTINUE',
      '--instance-id', 'i-0aaaaaaaaaaaaaaa1',
    );
    assert.equal(r.code, 254);
    assert.match(
      r.stderr,
      /An error occurred \(ValidationError\) when calling the CompleteLifecycleAction operation: No active Lifecycle Action found with instance ID i-0aaaaaaaaaaaaaaa1/,
    );
  });

  it('describe-lifecycle-hooks shows the hook with its timeouts', async () => {
    const r = await aws('describe-lifecycle-hooks', '--auto-scaling-group-name', GROUP);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { LifecycleHooks: Array<Record<string, unknown>> };
    assert.deepEqual(out.LifecycleHooks, [
      {
        LifecycleHookName: HOOK,
        AutoScalingGroupName: GROUP,
        LifecycleTransition: LAUNCHING,
        HeartbeatTimeout: 3600,
        GlobalTimeout: 172800,
        DefaultResult: 'ABANDON',
      },
    ]);
  });

  it('a warm pool\'s instance meets the launch hook twice: Warmed:Pending:Wait, at rest Warmed:Stopped outside the group\'s list, then Pending:Wait when it leaves the pool', async () => {
    const id = 'i-0aaaaaaaaaaaaaaa9';
    const state = () => lifecycleStateOf(id);
    const inGroup = async () => (await groupMembers(GROUP))?.includes(id);
    const complete = () => continueAction(GROUP, HOOK, id);
    emulator.launchInstance({ instanceId: id, groupName: GROUP, warmPool: 'Stopped' });
    assert.equal(await state(), 'Warmed:Pending:Wait');
    assert.equal(await inGroup(), false);
    await complete();
    assert.equal(await state(), 'Warmed:Stopped');
    assert.equal(await inGroup(), false);
    assert.throws(() => emulator.leaveWarmPool('i-0aaaaaaaaaaaaaaa1'), /not waiting in a warm pool/);
    emulator.leaveWarmPool(id);
    assert.equal(await state(), 'Pending:Wait');
    await complete();
    assert.equal(await state(), 'InService');
    assert.equal(await inGroup(), true);
    assert.deepEqual(emulator.instance(id)?.stateHistory, ['Warmed:Pending', 'Warmed:Pending:Wait', 'Warmed:Pending:Proceed', 'Warmed:Stopped', 'Pending', 'Pending:Wait', 'Pending:Proceed', 'InService']);
  });

  it('a warm pool\'s instance terminated in the pool goes through Warmed:Terminating:Wait to Warmed:Terminated, never listed among the group\'s instances', async () => {
    const group = 'web-warm-asg';
    const id = 'i-0aaaaaaaaaaaaaab0';
    emulator.createGroup({ name: group });
    emulator.putLifecycleHook({ groupName: group, hookName: 'terminate-hook', transition: TERMINATING });
    const state = () => lifecycleStateOf(id);
    const members = () => groupMembers(group);
    emulator.launchInstance({ instanceId: id, groupName: group, warmPool: 'Running' });
    assert.equal(await state(), 'Warmed:Running');
    // The pool shrinks: the instance is terminated from it, held by the terminate hook.
    assert.equal(emulator.terminateInstance(id).lifecycleState, 'Warmed:Terminating:Wait');
    assert.equal(await state(), 'Warmed:Terminating:Wait');
    assert.deepEqual(await members(), []);
    await continueAction(group, 'terminate-hook', id);
    assert.equal(await state(), undefined, 'a terminated instance is no longer listed');
    // Terminated is final: asking again brings nothing back.
    assert.deepEqual(emulator.terminateInstance(id).tokens, []);
    assert.equal(emulator.instance(id)?.lifecycleState, 'Warmed:Terminated');
    assert.deepEqual(emulator.instance(id)?.stateHistory, ['Warmed:Pending', 'Warmed:Running', 'Warmed:Terminating', 'Warmed:Terminating:Wait', 'Warmed:Terminating:Proceed', 'Warmed:Terminated']);
  });

  it('a scale-in under the pool\'s instance reuse policy returns an instance in service to the pool through Warmed:Pending:Wait (the terminate hook); a scale-out takes it back through Pending:Wait (the launch hook)', async () => {
    const group = 'web-reuse-asg';
    const id = 'i-0aaaaaaaaaaaaaac0';
    emulator.createGroup({ name: group });
    emulator.putLifecycleHook({ groupName: group, hookName: 'launch-hook', transition: LAUNCHING });
    emulator.putLifecycleHook({ groupName: group, hookName: 'terminate-hook', transition: TERMINATING });
    const put = await aws('put-warm-pool', '--auto-scaling-group-name', group, '--pool-state', 'Stopped', '--instance-reuse-policy', 'ReuseOnScaleIn=true');
    assert.equal(put.code, 0, put.stderr);
    const complete = (hook: string) => continueAction(group, hook, id);
    const state = () => lifecycleStateOf(id);
    const pooled = async () => {
      const r = await aws('describe-warm-pool', '--auto-scaling-group-name', group);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { Instances: Array<{ InstanceId: string; LifecycleState: string }> }).Instances.map((i) => [i.InstanceId, i.LifecycleState]);
    };
    // Launched into the group itself: the launch hook, then in service.
    emulator.launchInstance({ instanceId: id, groupName: group });
    await complete('launch-hook');
    assert.equal(await state(), 'InService');

    assert.equal(emulator.terminateInstance(id).lifecycleState, 'Warmed:Pending:Wait');
    assert.deepEqual(await pooled(), [[id, 'Warmed:Pending:Wait']]);
    await complete('terminate-hook');
    assert.equal(await state(), 'Warmed:Stopped');
    assert.deepEqual(await pooled(), [[id, 'Warmed:Stopped']]);
    assert.equal(emulator.instance(id)?.warmPool, 'Stopped');

    assert.equal(emulator.leaveWarmPool(id).lifecycleState, 'Pending:Wait');
    assert.deepEqual(await pooled(), []);
    await complete('launch-hook');
    assert.equal(await state(), 'InService');
    assert.deepEqual(emulator.instance(id)?.stateHistory, [
      'Pending', 'Pending:Wait', 'Pending:Proceed', 'InService',
      'Warmed:Pending', 'Warmed:Pending:Wait', 'Warmed:Pending:Proceed', 'Warmed:Stopped',
      'Pending', 'Pending:Wait', 'Pending:Proceed', 'InService',
    ]);

    // Without the reuse policy the same scale-in terminates.
    emulator.putWarmPool(group, { poolState: 'Stopped', reuseOnScaleIn: false });
    assert.equal(emulator.terminateInstance(id).lifecycleState, 'Terminating:Wait');
  });

  it('put-warm-pool, describe-warm-pool and delete-warm-pool: the pool\'s settings and the instances waiting in it', async () => {
    const group = 'warm-cli-asg';
    emulator.createGroup({ name: group, maxSize: 4 });
    const none = await aws('describe-warm-pool', '--auto-scaling-group-name', group);
    assert.equal(none.code, 0, none.stderr);
    assert.deepEqual(JSON.parse(none.stdout), { Instances: [] });
    const put = await aws('put-warm-pool', '--auto-scaling-group-name', group, '--pool-state', 'Hibernated', '--min-size', '1', '--instance-reuse-policy', 'ReuseOnScaleIn=true');
    assert.equal(put.code, 0, put.stderr);
    assert.equal(put.stdout.trim(), '');
    emulator.launchInstance({ instanceId: 'i-0bbbbbbbbbbbbbbb1', groupName: group, warmPool: 'Hibernated' });
    emulator.launchInstance({ instanceId: 'i-0bbbbbbbbbbbbbbb2', groupName: group });
    const described = await aws('describe-warm-pool', '--auto-scaling-group-name', group);
    assert.equal(described.code, 0, described.stderr);
    const out = JSON.parse(described.stdout) as { WarmPoolConfiguration: Record<string, unknown>; Instances: Array<{ InstanceId: string; LifecycleState: string }> };
    assert.deepEqual(out.WarmPoolConfiguration, { MinSize: 1, PoolState: 'Hibernated', InstanceReusePolicy: { ReuseOnScaleIn: true } });
    // The group's own instance is not the pool's; the pool's has no launch hook here, so it rests.
    assert.deepEqual(out.Instances.map((i) => [i.InstanceId, i.LifecycleState]), [['i-0bbbbbbbbbbbbbbb1', 'Warmed:Hibernated']]);
    const bad = await aws('put-warm-pool', '--auto-scaling-group-name', group, '--pool-state', 'Frozen');
    assert.equal(bad.code, 254);
    assert.match(bad.stderr, /ValidationError/);

    const deleted = await aws('delete-warm-pool', '--auto-scaling-group-name', group, '--force-delete');
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(emulator.instance('i-0bbbbbbbbbbbbbbb1')?.lifecycleState, 'Warmed:Terminated');
    assert.equal(emulator.instance('i-0bbbbbbbbbbbbbbb2')?.lifecycleState, 'InService');
    assert.deepEqual(JSON.parse((await aws('describe-warm-pool', '--auto-scaling-group-name', group)).stdout), { Instances: [] });
    const again = await aws('delete-warm-pool', '--auto-scaling-group-name', group);
    assert.equal(again.code, 254);
    assert.match(again.stderr, /No warm pool found/);
  });
  it('describe-auto-scaling-groups --filters selects groups by tag-key, tag-value and tag:<key>; filters AND, values OR', async () => {
    emulator.createGroup({ name: 'tagged-prod', tags: { env: 'prod', team: 'web' } });
    emulator.createGroup({ name: 'tagged-dev', tags: { env: 'dev' } });
    emulator.createGroup({ name: 'tagged-other', tags: { owner: 'prod' } });
    const names = async (...filters: string[]) => {
      const r = await aws('describe-auto-scaling-groups', '--filters', ...filters);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { AutoScalingGroups: Array<{ AutoScalingGroupName: string }> }).AutoScalingGroups.map((g) => g.AutoScalingGroupName);
    };
    assert.deepEqual(await names('Name=tag-key,Values=env'), ['tagged-prod', 'tagged-dev']);
    assert.deepEqual(await names('Name=tag-value,Values=prod'), ['tagged-prod', 'tagged-other']);
    assert.deepEqual(await names('Name=tag:env,Values=prod,dev'), ['tagged-prod', 'tagged-dev']);
    assert.deepEqual(await names('Name=tag:env,Values=Prod'), [], 'filter values are case-sensitive');
    assert.deepEqual(await names('Name=tag-key,Values=env', 'Name=tag:team,Values=web'), ['tagged-prod']);
    const bad = await aws('describe-auto-scaling-groups', '--filters', 'Name=auto-scaling-group,Values=tagged-prod');
    assert.equal(bad.code, 254);
    assert.match(bad.stderr, /\(ValidationError\) when calling the DescribeAutoScalingGroups operation/);
  });

  it('describe-auto-scaling-groups and describe-warm-pool spell HealthStatus Healthy/Unhealthy; describe-auto-scaling-instances HEALTHY/UNHEALTHY', async () => {
    const group = 'health-asg';
    emulator.createGroup({ name: group, healthCheckGracePeriod: 300 });
    emulator.putWarmPool(group, { poolState: 'Stopped' });
    emulator.launchInstance({ instanceId: 'i-0ccccccccccccccc1', groupName: group });
    emulator.launchInstance({ instanceId: 'i-0ccccccccccccccc2', groupName: group });
    emulator.launchInstance({ instanceId: 'i-0ccccccccccccccc3', groupName: group, warmPool: 'Stopped' });
    // Inside the grace period: marked unhealthy, not yet replaced.
    const set = await aws('set-instance-health', '--instance-id', 'i-0ccccccccccccccc2', '--health-status', 'Unhealthy');
    assert.equal(set.code, 0, set.stderr);
    const groups = await aws('describe-auto-scaling-groups', '--auto-scaling-group-names', group);
    assert.equal(groups.code, 0, groups.stderr);
    const inGroup = (JSON.parse(groups.stdout) as { AutoScalingGroups: Array<{ Instances: Array<{ InstanceId: string; HealthStatus: string }> }> }).AutoScalingGroups[0]?.Instances;
    assert.deepEqual(inGroup?.map((i) => [i.InstanceId, i.HealthStatus]), [['i-0ccccccccccccccc1', 'Healthy'], ['i-0ccccccccccccccc2', 'Unhealthy']]);
    const pool = await aws('describe-warm-pool', '--auto-scaling-group-name', group);
    assert.equal(pool.code, 0, pool.stderr);
    assert.deepEqual((JSON.parse(pool.stdout) as { Instances: Array<{ InstanceId: string; HealthStatus: string }> }).Instances.map((i) => [i.InstanceId, i.HealthStatus]), [['i-0ccccccccccccccc3', 'Healthy']]);
    const details = await aws('describe-auto-scaling-instances', '--instance-ids', 'i-0ccccccccccccccc1', 'i-0ccccccccccccccc2');
    assert.equal(details.code, 0, details.stderr);
    assert.deepEqual((JSON.parse(details.stdout) as { AutoScalingInstances: Array<{ InstanceId: string; HealthStatus: string }> }).AutoScalingInstances.map((i) => [i.InstanceId, i.HealthStatus]), [['i-0ccccccccccccccc1', 'HEALTHY'], ['i-0ccccccccccccccc2', 'UNHEALTHY']]);
  });
});
