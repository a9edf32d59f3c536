// The Auto Scaling emulator, driven by the real SDK v3 client over HTTP: what the agent will see.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import {
  AutoScalingClient,
  CompleteLifecycleActionCommand,
  DescribeAutoScalingGroupsCommand,
  DescribeAutoScalingInstancesCommand,
  DescribeLifecycleHooksCommand,
  DescribeLifecycleHookTypesCommand,
  PutLifecycleHookCommand,
  RecordLifecycleActionHeartbeatCommand,
  SetInstanceHealthCommand,
} from '@aws-sdk/client-auto-scaling';
import { AutoScalingEmulator, type AutoScalingEmulatorOptions, LAUNCHING } from '../../sandbox/emulators/autoscaling.js';
import { ManualClock } from '../support/clock.js';

const GROUP = 'web-asg';
const HOOK = 'launch-hook';

function client(url: string, maxAttempts = 1): AutoScalingClient {
  return new AutoScalingClient({
    endpoint: url,
    region: 'eu-west-1',
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    maxAttempts,
  });
}

/** The error a call fails with; fails the test when it succeeds. */
async function failure(promise: Promise<unknown>): Promise<Error & Record<string, any>> {
  try {
    await promise;
  } catch (err) {
    return err as Error & Record<string, any>;
  }
  assert.fail('expected the call to fail');
}

async function setup(options: AutoScalingEmulatorOptions = {}, hook: { heartbeatTimeout?: number; defaultResult?: 'CONTINUE' | 'ABANDON' } = {}) {
  const clock = new ManualClock(Date.UTC(2025, 0, 1));
  const emulator = await AutoScalingEmulator.start({ clock, tickIntervalMs: 0, ...options });
  emulator.createGroup({ name: GROUP, healthCheckGracePeriod: 300 });
  emulator.putLifecycleHook({ groupName: GROUP, hookName: HOOK, transition: LAUNCHING, ...hook });
  return { clock, emulator, asg: client(emulator.url) };
}

describe('Auto Scaling emulator: lifecycle actions', () => {
  let clock: ManualClock;
  let emulator: AutoScalingEmulator;
  let asg: AutoScalingClient;

  beforeEach(async () => {
    await emulator?.close();
    asg?.destroy();
    ({ clock, emulator, asg } = await setup());
  });
  after(async () => {
    await emulator.close();
    asg.destroy();
  });

  it('holds a launch with a hook in Pending:Wait with a 36-character token', async () => {
    const launched = emulator.launchInstance({ instanceId: 'i-0123456789abcdef0', groupName: GROUP });
    assert.equal(launched.lifecycleState, 'Pending:Wait');
    assert.equal(launched.token?.length, 36);
    const out = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ['i-0123456789abcdef0'] }));
    assert.equal(out.AutoScalingInstances?.[0]?.LifecycleState, 'Pending:Wait');
    assert.equal(out.AutoScalingInstances?.[0]?.AutoScalingGroupName, GROUP);
    assert.equal(out.AutoScalingInstances?.[0]?.HealthStatus, 'HEALTHY');
  });

  it('CONTINUE by instance id moves the instance to InService through Pending:Proceed', async () => {
    emulator.launchInstance({ instanceId: 'i-1', groupName: GROUP });
    const out = await asg.send(
      new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', InstanceId: 'i-1' }),
    );
    assert.ok(out.$metadata.requestId, 'the request id reaches $metadata');
    const view = emulator.instance('i-1');
    assert.equal(view?.lifecycleState, 'InService');
    assert.deepEqual(view?.stateHistory, ['Pending', 'Pending:Wait', 'Pending:Proceed', 'InService']);
    assert.equal(view?.activeActions.length, 0);
    assert.deepEqual(
      emulator.actions().map((a) => [a.kind, a.by, a.result, a.instanceId]),
      [['complete', 'instance-id', 'CONTINUE', 'i-1']],
    );
    const sent = emulator.requests.at(-1);
    assert.equal(sent?.operation, 'CompleteLifecycleAction');
    assert.equal(sent?.params.LifecycleActionResult, 'CONTINUE');
  });

  it('CONTINUE by token moves the instance to InService', async () => {
    const { token } = emulator.launchInstance({ instanceId: 'i-2', groupName: GROUP });
    await asg.send(
      new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', LifecycleActionToken: token }),
    );
    assert.equal(emulator.instance('i-2')?.lifecycleState, 'InService');
    assert.equal(emulator.actions()[0]?.by, 'token');
  });

  it('ABANDON on launch terminates the instance and it leaves Describe', async () => {
    emulator.launchInstance({ instanceId: 'i-3', groupName: GROUP });
    await asg.send(
      new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'ABANDON', InstanceId: 'i-3' }),
    );
    const view = emulator.instance('i-3');
    assert.equal(view?.lifecycleState, 'Terminated');
    assert.equal(view?.lastResult, 'ABANDON');
    assert.ok(view?.stateHistory.includes('Terminating'));
    const out = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ['i-3'] }));
    assert.deepEqual(out.AutoScalingInstances, []);
  });

  it('a second completion finds no active action, with the real message', async () => {
    emulator.launchInstance({ instanceId: 'i-4', groupName: GROUP });
    const complete = new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', InstanceId: 'i-4' });
    await asg.send(complete);
    const err = await failure(asg.send(complete));
    assert.equal(err.name, 'ValidationError');
    assert.equal(err.message, 'No active Lifecycle Action found with instance ID i-4');
    assert.equal(err.$fault, 'client');
    assert.equal(err.$metadata.httpStatusCode, 400);
    assert.match(err.$metadata.requestId, /^[0-9a-f-]{36}$/);
  });

  it('an unknown token is named in the error', async () => {
    const token = 'bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635';
    const err = await failure(
      asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', LifecycleActionToken: token })),
    );
    assert.equal(err.name, 'ValidationError');
    assert.equal(err.message, `No active Lifecycle Action found with token ${token}`);
  });

  it('a token that is not 36 characters is a ValidationError', async () => {
    emulator.launchInstance({ instanceId: 'i-5', groupName: GROUP });
    const err = await failure(
      asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', LifecycleActionToken: 'short' })),
    );
    assert.equal(err.name, 'ValidationError');
    assert.match(err.message, /lifecycleActionToken/);
    assert.equal(emulator.instance('i-5')?.lifecycleState, 'Pending:Wait');
  });

  it('neither token nor instance id is a ValidationError', async () => {
    const err = await failure(
      asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE' })),
    );
    assert.equal(err.name, 'ValidationError');
  });

  it('the wrong hook name does not complete the action', async () => {
    emulator.launchInstance({ instanceId: 'i-6', groupName: GROUP });
    const err = await failure(
      asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: 'other', AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', InstanceId: 'i-6' })),
    );
    assert.equal(err.message, 'No active Lifecycle Action found with instance ID i-6');
    assert.equal(emulator.instance('i-6')?.lifecycleState, 'Pending:Wait');
  });

  it('the heartbeat timeout applies the DefaultResult (ABANDON by default)', async () => {
    emulator.launchInstance({ instanceId: 'i-7', groupName: GROUP });
    clock.advance(3600 * 1000 - 1);
    emulator.tick();
    assert.equal(emulator.instance('i-7')?.lifecycleState, 'Pending:Wait');
    clock.advance(1);
    // Evaluated lazily: the next request sees the timeout applied.
    const out = await asg.send(new DescribeAutoScalingInstancesCommand({}));
    assert.deepEqual(out.AutoScalingInstances, []);
    assert.equal(emulator.instance('i-7')?.lifecycleState, 'Terminated');
    assert.deepEqual(
      emulator.actions().map((a) => [a.kind, a.by, a.result]),
      [['timeout', 'timeout', 'ABANDON']],
    );
  });

  it('heartbeats restart the heartbeat timeout', async () => {
    emulator.launchInstance({ instanceId: 'i-8', groupName: GROUP });
    const heartbeat = new RecordLifecycleActionHeartbeatCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, InstanceId: 'i-8' });
    for (let i = 0; i < 3; i++) {
      clock.advance(3000 * 1000);
      await asg.send(heartbeat);
    }
    // 9000 s since launch, well past one 3600 s timeout, yet still waiting.
    clock.advance(3000 * 1000);
    emulator.tick();
    const view = emulator.instance('i-8');
    assert.equal(view?.lifecycleState, 'Pending:Wait');
    assert.equal(view?.heartbeats, 3);
    assert.equal(view?.activeActions[0]?.deadline, Date.UTC(2025, 0, 1) + 9000_000 + 3600_000);
    clock.advance(600 * 1000);
    emulator.tick();
    assert.equal(emulator.instance('i-8')?.lifecycleState, 'Terminated');
  });

  it('a heartbeat for an unknown instance is a ValidationError', async () => {
    const err = await failure(
      asg.send(new RecordLifecycleActionHeartbeatCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, InstanceId: 'i-nope' })),
    );
    assert.equal(err.name, 'ValidationError');
    assert.equal(err.message, 'No active Lifecycle Action found with instance ID i-nope');
  });

  it('SetInstanceHealth Unhealthy shows UNHEALTHY and, outside the grace period, replaces the instance', async () => {
    emulator.launchInstance({ instanceId: 'i-9', groupName: GROUP });
    await asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', InstanceId: 'i-9' }));
    await asg.send(new SetInstanceHealthCommand({ InstanceId: 'i-9', HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: false }));
    assert.equal(emulator.requests.at(-1)?.params.ShouldRespectGracePeriod, 'false');
    const out = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ['i-9'] }));
    assert.equal(out.AutoScalingInstances?.[0]?.HealthStatus, 'UNHEALTHY');
    assert.equal(out.AutoScalingInstances?.[0]?.LifecycleState, 'Terminating');
  });

  it('SetInstanceHealth inside the grace period defers the replacement until it ends', async () => {
    emulator.launchInstance({ instanceId: 'i-10', groupName: GROUP });
    await asg.send(new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', InstanceId: 'i-10' }));
    await asg.send(new SetInstanceHealthCommand({ InstanceId: 'i-10', HealthStatus: 'Unhealthy' }));
    assert.equal(emulator.instance('i-10')?.healthStatus, 'UNHEALTHY');
    assert.equal(emulator.instance('i-10')?.lifecycleState, 'InService');
    clock.advance(300 * 1000);
    emulator.tick();
    assert.equal(emulator.instance('i-10')?.lifecycleState, 'Terminating');
  });

  it('SetInstanceHealth for an unknown instance is a ValidationError', async () => {
    const err = await failure(asg.send(new SetInstanceHealthCommand({ InstanceId: 'i-unknown', HealthStatus: 'Healthy' })));
    assert.equal(err.name, 'ValidationError');
    assert.match(err.message, /i-unknown/);
  });

  it('DescribeAutoScalingInstances pages with MaxRecords and NextToken, ignoring unknown ids', async () => {
    const ids = Array.from({ length: 5 }, (_, i) => `i-page${i}`);
    for (const id of ids) emulator.launchInstance({ instanceId: id, groupName: GROUP });
    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const out = await asg.send(new DescribeAutoScalingInstancesCommand({ MaxRecords: 2, NextToken: token }));
      assert.ok((out.AutoScalingInstances?.length ?? 0) <= 2);
      seen.push(...(out.AutoScalingInstances ?? []).map((i) => i.InstanceId ?? ''));
      token = out.NextToken;
      pages++;
    } while (token);
    assert.equal(pages, 3);
    assert.deepEqual(seen, ids);
    const some = await asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ['i-page1', 'i-missing'] }));
    assert.deepEqual(some.AutoScalingInstances?.map((i) => i.InstanceId), ['i-page1']);
  });

  it('DescribeAutoScalingInstances refuses a bad NextToken, MaxRecords over 50 and over 50 ids', async () => {
    const bad = await failure(asg.send(new DescribeAutoScalingInstancesCommand({ NextToken: 'garbage' })));
    assert.equal(bad.name, 'InvalidNextToken');
    assert.equal(bad.$metadata.httpStatusCode, 400);
    const many = await failure(asg.send(new DescribeAutoScalingInstancesCommand({ MaxRecords: 51 })));
    assert.equal(many.name, 'ValidationError');
    const ids = Array.from({ length: 51 }, (_, i) => `i-${i}`);
    const tooMany = await failure(asg.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: ids })));
    assert.equal(tooMany.name, 'ValidationError');
  });

  it('DescribeLifecycleHooks shows timeouts and defaults; an unknown group is a ValidationError', async () => {
    await asg.send(
      new PutLifecycleHookCommand({ AutoScalingGroupName: GROUP, LifecycleHookName: 'drain', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 3000, DefaultResult: 'CONTINUE' }),
    );
    const out = await asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: GROUP }));
    const byName = new Map(out.LifecycleHooks?.map((h) => [h.LifecycleHookName, h]));
    assert.deepEqual(
      { ...byName.get(HOOK) },
      { LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleTransition: LAUNCHING, HeartbeatTimeout: 3600, GlobalTimeout: 172800, DefaultResult: 'ABANDON' },
    );
    assert.equal(byName.get('drain')?.GlobalTimeout, 172800);
    assert.equal(byName.get('drain')?.DefaultResult, 'CONTINUE');
    const one = await asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: GROUP, LifecycleHookNames: ['drain'] }));
    assert.deepEqual(one.LifecycleHooks?.map((h) => h.LifecycleHookName), ['drain']);
    const err = await failure(asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: 'nope' })));
    assert.equal(err.name, 'ValidationError');
  });

  it('PutLifecycleHook validates the heartbeat timeout range and the default result', async () => {
    for (const HeartbeatTimeout of [29, 7201]) {
      const err = await failure(
        asg.send(new PutLifecycleHookCommand({ AutoScalingGroupName: GROUP, LifecycleHookName: 'h', LifecycleTransition: LAUNCHING, HeartbeatTimeout })),
      );
      assert.equal(err.name, 'ValidationError', `HeartbeatTimeout ${HeartbeatTimeout}`);
    }
    const result = await failure(
      asg.send(new PutLifecycleHookCommand({ AutoScalingGroupName: GROUP, LifecycleHookName: 'h', LifecycleTransition: LAUNCHING, DefaultResult: 'MAYBE' })),
    );
    assert.equal(result.name, 'ValidationError');
    await asg.send(new PutLifecycleHookCommand({ AutoScalingGroupName: GROUP, LifecycleHookName: 'h', LifecycleTransition: LAUNCHING, HeartbeatTimeout: 30 }));
    const out = await asg.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: GROUP, LifecycleHookNames: ['h'] }));
    assert.equal(out.LifecycleHooks?.[0]?.GlobalTimeout, 3000, 'the global timeout is 100 x the heartbeat timeout when under 48 h');
  });

  it('DescribeAutoScalingGroups lists the group with its instances; DescribeLifecycleHookTypes lists both', async () => {
    emulator.launchInstance({ instanceId: 'i-g1', groupName: GROUP, availabilityZone: 'eu-west-1b' });
    const out = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [GROUP, 'missing'] }));
    assert.equal(out.AutoScalingGroups?.length, 1);
    const g = out.AutoScalingGroups?.[0];
    assert.equal(g?.AutoScalingGroupName, GROUP);
    assert.equal(g?.HealthCheckGracePeriod, 300);
    assert.ok(g?.CreatedTime instanceof Date);
    assert.deepEqual(g?.Instances?.map((i) => [i.InstanceId, i.LifecycleState, i.AvailabilityZone]), [['i-g1', 'Pending:Wait', 'eu-west-1b']]);
    const types = await asg.send(new DescribeLifecycleHookTypesCommand({}));
    assert.deepEqual(types.LifecycleHookTypes, ['autoscaling:EC2_INSTANCE_LAUNCHING', 'autoscaling:EC2_INSTANCE_TERMINATING']);
  });

  it('snapshot and restore carry state, including the active action, to a new emulator', async () => {
    const { token } = emulator.launchInstance({ instanceId: 'i-s', groupName: GROUP });
    const saved = JSON.parse(JSON.stringify(emulator.snapshot()));
    const other = await AutoScalingEmulator.start({ clock, tickIntervalMs: 0 });
    const otherClient = client(other.url);
    try {
      other.restore(saved);
      await otherClient.send(
        new CompleteLifecycleActionCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, LifecycleActionResult: 'CONTINUE', LifecycleActionToken: token }),
      );
      assert.equal(other.instance('i-s')?.lifecycleState, 'InService');
      assert.equal(emulator.instance('i-s')?.lifecycleState, 'Pending:Wait', 'state is per emulator');
    } finally {
      otherClient.destroy();
      await other.close();
    }
  });
});

describe('Auto Scaling emulator: timeouts against a long heartbeat chain', () => {
  it('the global timeout caps heartbeats and applies the DefaultResult', async () => {
    const { clock, emulator, asg } = await setup({}, { heartbeatTimeout: 60, defaultResult: 'CONTINUE' });
    try {
      emulator.launchInstance({ instanceId: 'i-g', groupName: GROUP });
      const heartbeat = new RecordLifecycleActionHeartbeatCommand({ LifecycleHookName: HOOK, AutoScalingGroupName: GROUP, InstanceId: 'i-g' });
      // Global timeout = 100 x 60 s = 6000 s; heartbeat every 50 s up to just before it.
      for (let t = 50; t < 6000; t += 50) {
        clock.advance(50 * 1000);
        await asg.send(heartbeat);
      }
      assert.equal(emulator.instance('i-g')?.lifecycleState, 'Pending:Wait');
      clock.advance(50 * 1000);
      const err = await failure(asg.send(heartbeat));
      assert.equal(err.message, 'No active Lifecycle Action found with instance ID i-g');
      assert.equal(emulator.instance('i-g')?.lifecycleState, 'InService', 'the DefaultResult CONTINUE applies');
      assert.deepEqual(emulator.actions().at(-1), {
        at: Date.UTC(2025, 0, 1) + 6000_000,
        kind: 'timeout',
        instanceId: 'i-g',
        groupName: GROUP,
        hookName: HOOK,
        token: emulator.actions().at(-1)?.token,
        result: 'CONTINUE',
        by: 'timeout',
      });
    } finally {
      asg.destroy();
      await emulator.close();
    }
  });
});

describe('Auto Scaling emulator: protocol, throttling and faults', () => {
  let emulator: AutoScalingEmulator;
  let clock: ManualClock;
  before(async () => {
    ({ emulator, clock } = await setup({ throughput: { ratePerSecond: 1, burst: 2 } }));
  });
  after(() => emulator.close());

  // Each raw request comes a little later, so the 2-request burst never throttles these.
  const post = (body: string, headers: Record<string, string> = {}) => {
    clock.advance(10_000);
    return fetch(emulator.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization:
          'AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/autoscaling/aws4_request, SignedHeaders=host;x-amz-date, Signature=' + '0'.repeat(64),
        ...headers,
      },
      body,
    });
  };

  it('answers unknown actions, bad versions and missing auth as AWS does, in XML with a request id header', async () => {
    clock.advance(10_000);
    const unknown = await post('Action=LaunchRockets&Version=2011-01-01');
    assert.equal(unknown.status, 400);
    const text = await unknown.text();
    assert.match(text, /^<ErrorResponse xmlns="http:\/\/autoscaling\.amazonaws\.com\/doc\/2011-01-01\/"><Error><Type>Sender<\/Type><Code>InvalidAction<\/Code>/);
    assert.match(unknown.headers.get('x-amzn-requestid') ?? '', /^[0-9a-f-]{36}$/);
    assert.ok(text.includes(`<RequestId>${unknown.headers.get('x-amzn-requestid')}</RequestId>`));

    const version = await post('Action=DescribeLifecycleHookTypes&Version=2010-01-01');
    assert.equal(version.status, 400);
    assert.match(await version.text(), /<Code>InvalidAction<\/Code>/);
    const noVersion = await post('Action=DescribeLifecycleHookTypes');
    assert.equal(noVersion.status, 400);
    assert.match(await noVersion.text(), /<Code>MissingParameter<\/Code>/);

    const noAuth = await post('Action=DescribeLifecycleHookTypes&Version=2011-01-01', { authorization: '' });
    assert.equal(noAuth.status, 403);
    assert.match(await noAuth.text(), /<Code>MissingAuthenticationToken<\/Code>/);
  });

  it('escapes XML in names it echoes', async () => {
    clock.advance(10_000);
    const res = await post(`Action=DescribeLifecycleHooks&Version=2011-01-01&AutoScalingGroupName=${encodeURIComponent('<a&b>')}`);
    const text = await res.text();
    assert.ok(text.includes('Group &lt;a&amp;b&gt; not found'), text);
  });

  it('throttles account-wide with Throttling/400 "Rate exceeded" and refills with the clock', async () => {
    clock.advance(10_000);
    const asg = client(emulator.url);
    try {
      await asg.send(new DescribeLifecycleHookTypesCommand({}));
      await asg.send(new DescribeAutoScalingInstancesCommand({}));
      const err = await failure(asg.send(new DescribeLifecycleHookTypesCommand({})));
      assert.equal(err.name, 'Throttling');
      assert.equal(err.message, 'Rate exceeded');
      assert.equal(err.$metadata.httpStatusCode, 400);
      clock.advance(1000);
      await asg.send(new DescribeLifecycleHookTypesCommand({}));
    } finally {
      asg.destroy();
    }
  });

  it('the SDK standard retry strategy retries Throttling until it succeeds', async () => {
    clock.advance(10_000);
    emulator.injectFault({ action: 'DescribeLifecycleHookTypes', code: 'Throttling', times: 1 });
    const asg = client(emulator.url, 3);
    try {
      const before = emulator.requests.length;
      const out = await asg.send(new DescribeLifecycleHookTypesCommand({}));
      assert.equal(out.$metadata.attempts, 2);
      assert.deepEqual(
        emulator.requests.slice(before).map((r) => [r.operation, r.status, r.errorCode]),
        [
          ['DescribeLifecycleHookTypes', 400, 'Throttling'],
          ['DescribeLifecycleHookTypes', 200, undefined],
        ],
      );
    } finally {
      asg.destroy();
    }
  });

  it('ResourceContention is a 500 server fault', async () => {
    clock.advance(10_000);
    emulator.injectFault({ action: 'SetInstanceHealth', code: 'ResourceContention' });
    const asg = client(emulator.url);
    try {
      const err = await failure(asg.send(new SetInstanceHealthCommand({ InstanceId: 'i-x', HealthStatus: 'Healthy' })));
      assert.equal(err.name, 'ResourceContentionFault');
      assert.equal(err.$fault, 'server');
      assert.equal(err.$metadata.httpStatusCode, 500);
    } finally {
      asg.destroy();
    }
  });

  it('a dropped connection reaches the client as a network error', async () => {
    clock.advance(10_000);
    emulator.injectFault({ action: 'DescribeLifecycleHookTypes', drop: true });
    const asg = client(emulator.url);
    try {
      const err = await failure(asg.send(new DescribeLifecycleHookTypesCommand({})));
      assert.equal(err.$metadata?.httpStatusCode, undefined);
      assert.match(String(err.code ?? err.message), /ECONNRESET|socket hang up/i);
    } finally {
      asg.destroy();
    }
  });
});

describe('Auto Scaling emulator: delays', () => {
  it('a delayed answer arrives after the delay, and close() does not wait for a held one', async () => {
    const { emulator, asg } = await setup();
    try {
      emulator.injectFault({ action: 'DescribeLifecycleHookTypes', delayMs: 20 });
      const out = await asg.send(new DescribeLifecycleHookTypesCommand({}));
      assert.equal(out.LifecycleHookTypes?.length, 2);
      emulator.injectFault({ action: 'DescribeLifecycleHookTypes', delayMs: 60_000 });
      const held = failure(asg.send(new DescribeLifecycleHookTypesCommand({})));
      while (emulator.pendingFaults > 0) await new Promise((r) => setTimeout(r, 5));
      await emulator.close();
      const err = await held;
      assert.equal(err.$metadata?.httpStatusCode, undefined, 'no answer was sent');
    } finally {
      asg.destroy();
      await emulator.close();
    }
  });
});
