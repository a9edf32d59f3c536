// The launch lifecycle hook end to end: the SDK's Auto Scaling client against the emulator, and
// the real agent CLI over a sandboxed instance that waits in Pending:Wait until the agent
// completes its launch hook. What counts is what the emulated group saw, by instance id.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SdkAutoScaling, mapAutoScalingError } from '../../agent/aws/autoscaling.js';
import { InvalidInputError, TransientError } from '../../agent/errors.js';
import { AutoScalingEmulator } from '../../sandbox/emulators/autoscaling.js';
import { deepMerge, Instance, markerModule, terminate, waitFor, waitUntil, withInstance } from '../support/e2e.js';

const CREDENTIALS = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'example-secret-access-key' };
const GROUP = 'web-asg';
const HOOK = 'launch-hook';

describe('SdkAutoScaling against the Auto Scaling emulator', () => {
  let emulator: AutoScalingEmulator;
  let client: SdkAutoScaling;

  before(async () => {
    emulator = await AutoScalingEmulator.start({ tickIntervalMs: 0 });
    client = new SdkAutoScaling({ region: 'us-east-1', endpoint: emulator.url, credentials: CREDENTIALS, maxAttempts: 2, env: {} });
  });
  after(() => emulator.close());

  function launch(instanceId: string): void {
    emulator.launchInstance({ instanceId, groupName: GROUP });
  }

  test('finds the group and the launch hook, heartbeats, and completes by instance id', async () => {
    emulator.createGroup({ name: GROUP, healthCheckGracePeriod: 300 });
    emulator.putLifecycleHook({ groupName: GROUP, hookName: HOOK, transition: 'autoscaling:EC2_INSTANCE_LAUNCHING', heartbeatTimeout: 120 });
    emulator.putLifecycleHook({ groupName: GROUP, hookName: 'drain', transition: 'autoscaling:EC2_INSTANCE_TERMINATING' });
    launch('i-0000000000000000a');

    assert.deepEqual(await client.describeInstance('i-0000000000000000a'), { group: GROUP, lifecycleState: 'Pending:Wait', healthStatus: 'HEALTHY' });
    assert.equal(await client.describeInstance('i-0000000000000ffff'), undefined, 'an unknown id is in no group');

    const hooks = await client.describeLifecycleHooks(GROUP);
    const launching = hooks.find((h) => h.name === HOOK);
    assert.equal(launching?.transition, 'autoscaling:EC2_INSTANCE_LAUNCHING');
    assert.equal(launching?.heartbeatTimeout, 120);
    assert.equal(hooks.find((h) => h.name === 'drain')?.transition, 'autoscaling:EC2_INSTANCE_TERMINATING');

    const ref = { group: GROUP, hook: HOOK, instanceId: 'i-0000000000000000a' };
    assert.equal(await client.recordHeartbeat(ref), 'done');
    assert.equal(await client.completeLifecycleAction({ ...ref, result: 'CONTINUE' }), 'done');
    assert.equal(emulator.instance(ref.instanceId)?.lifecycleState, 'InService');
    const events = emulator.actions().filter((a) => a.instanceId === ref.instanceId);
    assert.deepEqual(
      events.map((e) => [e.kind, e.by, e.result]),
      [
        ['heartbeat', 'instance-id', undefined],
        ['complete', 'instance-id', 'CONTINUE'],
      ],
    );

    // The action is over: AWS answers ValidationError "No active Lifecycle Action found…".
    assert.equal(await client.completeLifecycleAction({ ...ref, result: 'CONTINUE' }), 'no-active-action');
    assert.equal(await client.recordHeartbeat(ref), 'no-active-action');
  });

  test('SetInstanceHealth sends Unhealthy respecting the grace period', async () => {
    launch('i-0000000000000000b');
    await client.completeLifecycleAction({ group: GROUP, hook: HOOK, instanceId: 'i-0000000000000000b', result: 'CONTINUE' });
    await client.setInstanceHealth('i-0000000000000000b', 'Unhealthy');
    const events = emulator.healthEvents().filter((e) => e.instanceId === 'i-0000000000000000b');
    assert.deepEqual(events.map((e) => [e.healthStatus, e.shouldRespectGracePeriod]), [['UNHEALTHY', true]]);
    assert.equal(emulator.instance('i-0000000000000000b')?.lifecycleState, 'InService', 'inside the grace period it stays');
  });

  test('wire errors become the agent error kinds', async () => {
    launch('i-0000000000000000c');
    emulator.injectFault({ action: 'RecordLifecycleActionHeartbeat', code: 'Throttling', times: 2 });
    await assert.rejects(client.recordHeartbeat({ group: GROUP, hook: HOOK, instanceId: 'i-0000000000000000c' }), (err: unknown) => {
      assert.ok(err instanceof TransientError, String(err));
      assert.equal(err.context.code, 'Throttling');
      return true;
    });
    emulator.injectFault({ action: 'CompleteLifecycleAction', code: 'ResourceContention', times: 2 });
    await assert.rejects(client.completeLifecycleAction({ group: GROUP, hook: HOOK, instanceId: 'i-0000000000000000c', result: 'CONTINUE' }), TransientError);
    // A ValidationError that is not "no active action" is the caller's input, not a pass.
    await assert.rejects(client.setInstanceHealth('i-00000000000000abc', 'Unhealthy'), InvalidInputError);
    // A throttle that clears within the SDK's attempts is not seen at all.
    emulator.injectFault({ action: 'CompleteLifecycleAction', code: 'Throttling', times: 1 });
    assert.equal(await client.completeLifecycleAction({ group: GROUP, hook: HOOK, instanceId: 'i-0000000000000000c', result: 'CONTINUE' }), 'done');
    assert.equal(emulator.pendingFaults, 0);
  });

  test('a connection that fails is transient', async () => {
    const closed = await AutoScalingEmulator.start({ tickIntervalMs: 0 });
    const url = closed.url;
    await closed.close();
    const dead = new SdkAutoScaling({ region: 'us-east-1', endpoint: url, credentials: CREDENTIALS, maxAttempts: 1, env: {} });
    await assert.rejects(dead.describeInstance('i-0000000000000000a'), TransientError);
    assert.ok(mapAutoScalingError(Object.assign(new Error('boom'), { name: 'ValidationError' }), 'X') instanceof InvalidInputError);
  });
});

/** The agent with its lifecycle reporting on, over a fresh sandboxed instance in its group. */
async function withGroupInstance(
  options: { userData?: string; parameters?: Parameters<typeof withInstance>[0]['parameters']; config?: Record<string, unknown> },
  body: (i: Instance) => Promise<void>,
): Promise<void> {
  await withInstance(
    {
      ...(options.userData !== undefined ? { userData: options.userData } : {}),
      ...(options.parameters !== undefined ? { parameters: options.parameters } : {}),
      config: deepMerge({ lifecycle: { enabled: true, heartbeatSeconds: 10, budgetSeconds: 300 } }, options.config ?? {}),
    },
    async (i) => {
      assert.equal(i.world.autoscaling.instance(i.instanceId)?.lifecycleState, 'Pending:Wait', 'the instance launches into its hook');
      await body(i);
    },
  );
}

/** The lifecycle actions the agent sent, in order. */
function lifecycleOps(i: Instance): string[] {
  return i.world.autoscaling.requests
    .map((r) => r.operation ?? '')
    .filter((op) => op === 'CompleteLifecycleAction' || op === 'RecordLifecycleActionHeartbeat');
}

describe('the agent completes its launch hook', { concurrency: true }, () => {
  test('converge --once completes with CONTINUE: InService, by instance id, and only once across runs', async () => {
    await withGroupInstance({ userData: '{ ... }: { environment.etc."greeting".text = "hello"; }\n' }, async (i) => {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.condition, 'converged');
      const view = i.world.autoscaling.instance(i.instanceId);
      assert.equal(view?.lifecycleState, 'InService');
      assert.equal(view?.lastResult, 'CONTINUE');
      const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
      assert.deepEqual(completions.map((c) => [c.instanceId, c.hookName, c.result, c.by]), [[i.instanceId, i.world.hook, 'CONTINUE', 'instance-id']]);

      const again = await i.converge();
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual(lifecycleOps(i), ['CompleteLifecycleAction'], 'a second run neither heartbeats nor completes again');
    });
  });

  test('a warm pool\'s instance completes the hook on its launch into the pool, and again when it leaves the pool for the group', async () => {
    await withInstance(
      {
        userData: '{ ... }: { environment.etc."greeting".text = "warm"; }\n',
        instance: { autoScaling: { group: 'web-warm-asg', warmPool: 'Stopped' } },
        config: { lifecycle: { enabled: true, heartbeatSeconds: 10, budgetSeconds: 300 } },
      },
      async (i) => {
        const state = () => i.world.autoscaling.instance(i.instanceId)?.lifecycleState;
        assert.equal(state(), 'Warmed:Pending:Wait');
        const inPool = await i.converge();
        assert.equal(inPool.code, 0, inPool.stderr);
        assert.equal(state(), 'Warmed:Stopped');
        // The group takes it: started again (a new agent process), held in its hook once more.
        i.world.autoscaling.leaveWarmPool(i.instanceId);
        assert.equal(state(), 'Pending:Wait');
        const leaving = await i.converge();
        assert.equal(leaving.code, 0, leaving.stderr);
        assert.equal(leaving.status.condition, 'converged');
        assert.equal(state(), 'InService', `the second launch hook was completed: ${leaving.stderr.slice(-1500)}`);
        const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
        assert.deepEqual(completions.map((c) => [c.hookName, c.result, c.by]), [[i.world.hook, 'CONTINUE', 'instance-id'], [i.world.hook, 'CONTINUE', 'instance-id']]);
      },
    );
  });

  // A pool kept Running: the daemon converged in the pool and keeps running there. A push it has not
  // polled yet (the poll is an hour) must be in what the instance runs before it goes in service.
  test("a warm pool kept Running: when the group takes the instance, the running daemon converges afresh, push included, before it completes the launch hook", async () => {
    await withInstance(
      {
        userData: '{ ... }: { environment.etc."greeting".text = "running-pool"; }\n',
        parameters: [{ Name: '/nixos/fleet/revision', Value: '1', Type: 'String' }],
        instance: { autoScaling: { group: 'web-warm-asg', warmPool: 'Running' } },
        config: { lifecycle: { enabled: true, heartbeatSeconds: 10, budgetSeconds: 300 }, termination: { checkSeconds: 1 }, ssm: { pollIntervalSeconds: 3600 } },
      },
      async (i) => {
        const state = () => i.world.autoscaling.instance(i.instanceId)?.lifecycleState;
        const daemon = i.start(['run']);
        try {
          await waitUntil('the launch into the pool completed', () => state() === 'Warmed:Running');
          const inPool = await waitFor('the first convergence', async () => {
            const st = await i.statusFile();
            return st?.firstConvergenceDone && st.phase === 'idle' ? st : undefined;
          });
          i.put('/nixos/fleet/modules/motd', '{ ... }: { environment.etc."motd".text = "pushed while in the pool"; }');
          i.put('/nixos/fleet/revision', '2');
          i.world.autoscaling.leaveWarmPool(i.instanceId);
          assert.equal(state(), 'Pending:Wait');
          await waitUntil('the launch hook out of the pool completed', () => state() === 'InService');
          const st = await i.statusFile();
          assert.ok(st?.desired && st.desired.hash !== inPool.desired?.hash, 'the hook was completed after a pass that read the push');
          assert.ok(st.desired.sources.parameters.some((p) => p.name === '/nixos/fleet/modules/motd'), JSON.stringify(st.desired.sources));
          assert.equal(st.condition, 'converged');
        } finally {
          const ended = await terminate(daemon);
          assert.equal(ended.code, 0, ended.stderr.slice(-2000));
        }
        const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
        assert.deepEqual(completions.map((c) => [c.hookName, c.result]), [[i.world.hook, 'CONTINUE'], [i.world.hook, 'CONTINUE']]);
      },
    );
  });

  // A scale-in under the warm pool's instance reuse policy returns an instance in service to the
  // pool (stopped there), and a later scale-out takes it back through the launch hook again. The
  // daemon learns of the return from the target state its leaving watch reads, or, when the stop
  // comes first, from one last look as it stops.
  for (const seenBy of ['the leaving watch', 'the last look at stop'] as const) {
    test(`an instance in service returned to its warm pool by a scale-in completes the launch hook again when the group takes it back (seen by ${seenBy})`, async () => {
      await withGroupInstance(
        {
          userData: '{ ... }: { environment.etc."greeting".text = "reused"; }\n',
          config: seenBy === 'the leaving watch' ? { termination: { checkSeconds: 1 } } : { termination: { enabled: false } },
        },
        async (i) => {
          const state = () => i.world.autoscaling.instance(i.instanceId)?.lifecycleState;
          const group = i.world.group as string;
          i.world.autoscaling.putWarmPool(group, { poolState: 'Stopped', reuseOnScaleIn: true });
          const record = async () => JSON.parse(await i.read('var/lib/nixos-ec2-agent/lifecycle.json')) as { warm?: boolean; settled?: unknown };
          const daemon = i.start(['run']);
          try {
            await waitUntil('the launch into the group completed', () => state() === 'InService');
            await waitFor('the settled record', async () => ((await record()).settled ? true : undefined));
            // Scale-in: back to the pool (no terminate hook), to be stopped.
            assert.equal(i.world.autoscaling.terminateInstance(i.instanceId).lifecycleState, 'Warmed:Stopped');
            if (seenBy === 'the leaving watch') await waitFor('the record marked warm by the running daemon', async () => ((await record()).warm ? true : undefined));
          } finally {
            const ended = await terminate(daemon);
            assert.equal(ended.code, 0, ended.stderr.slice(-2000));
          }
          assert.equal((await record()).warm, true, 'the record says the instance is in its warm pool');
          // A scale-out takes it back: started again, held in its launch hook.
          i.world.autoscaling.leaveWarmPool(i.instanceId);
          assert.equal(state(), 'Pending:Wait');
          const back = await i.converge();
          assert.equal(back.code, 0, back.stderr);
          assert.equal(state(), 'InService', `the launch hook out of the pool was completed: ${back.stderr.slice(-1500)}`);
          const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
          assert.deepEqual(completions.map((c) => [c.hookName, c.result, c.by]), [[i.world.hook, 'CONTINUE', 'instance-id'], [i.world.hook, 'CONTINUE', 'instance-id']]);
        },
      );
    });
  }

  test('ABANDON when no good generation can run (the rollback target fails its probe too), and no Unhealthy', async () => {
    await withGroupInstance(
      {
        userData: '{ ... }: { environment.etc."greeting".text = "hello"; }\n',
        config: { health: { probes: [{ name: 'always-fails', command: { argv: ['false'], timeoutMs: 5_000 } }] } },
      },
      async (i) => {
        const run = await i.converge();
        assert.equal(run.code, 1, run.stderr);
        assert.equal(run.status.noGoodGeneration, true);
        const view = i.world.autoscaling.instance(i.instanceId);
        assert.equal(view?.lastResult, 'ABANDON');
        assert.equal(view?.lifecycleState, 'Terminated', 'an abandoned launch is terminated');
        assert.deepEqual(
          i.world.autoscaling.actions().filter((a) => a.kind === 'complete').map((c) => [c.instanceId, c.result, c.by]),
          [[i.instanceId, 'ABANDON', 'instance-id']],
        );
        assert.deepEqual(i.world.autoscaling.healthEvents(), []);
      },
    );
  });

  test('converge --once heartbeats while a build hangs; the build times out on the image generation, not the desired one: ABANDON', async () => {
    await withGroupInstance(
      { userData: markerModule('sandbox-hang'), config: { rebuild: { buildTimeoutSeconds: 2 }, lifecycle: { heartbeatSeconds: 0.3 } } },
      async (i) => {
        const run = await i.converge();
        assert.equal(run.code, 1, run.stderr);
        assert.equal(run.status.lastResult?.error?.stage, 'build');
        assert.equal(run.status.noGoodGeneration, false);
        const events = i.world.autoscaling.actions().filter((a) => a.instanceId === i.instanceId);
        const kinds = events.map((e) => e.kind);
        assert.ok(kinds.filter((k) => k === 'heartbeat').length >= 2, `heartbeats during the build: ${kinds.join(', ')}`);
        assert.equal(kinds.at(-1), 'complete', 'heartbeats stop once the hook is completed');
        assert.equal(kinds.filter((k) => k === 'complete').length, 1);
        assert.ok(events.every((e) => e.by === 'instance-id'));
        assert.equal(events.at(-1)?.result, 'ABANDON');
        assert.equal(i.world.autoscaling.instance(i.instanceId)?.lifecycleState, 'Terminated');
        assert.deepEqual(i.world.autoscaling.healthEvents(), [], 'the image generation is good: never Unhealthy');
      },
    );
  });

  test('the daemon keeps a launch whose first build failed waiting, heartbeated, and completes it with CONTINUE once a fixed push converges', async () => {
    await withGroupInstance(
      {
        parameters: [{ Name: '/nixos/fleet/modules/app', Value: markerModule('sandbox-fail-build'), Type: 'String' }],
        config: { lifecycle: { heartbeatSeconds: 0.5 }, ssm: { pollIntervalSeconds: 1 } },
      },
      async (i) => {
        const state = () => i.world.autoscaling.instance(i.instanceId)?.lifecycleState;
        const daemon = i.start(['run']);
        try {
          const failed = await waitFor('the first pass failed on the image generation', async () => {
            const st = await i.statusFile();
            return st?.firstConvergenceDone && st.lastResult?.outcome !== undefined && st.lastResult.outcome !== 'converged' ? st : undefined;
          });
          assert.equal(failed.noGoodGeneration, false);
          const beats = () => i.world.autoscaling.actions().filter((a) => a.instanceId === i.instanceId && a.kind === 'heartbeat').length;
          const before = beats();
          await waitUntil('heartbeats after the failed pass', () => beats() >= before + 2);
          assert.equal(state(), 'Pending:Wait', 'not completed on the image generation');
          const shown = await i.run(['status']);
          assert.match(shown.stdout, /^  launch hook: waiting since \S+ for a pass that converges; the launch budget ends at \S+ \(ABANDON\)$/m, shown.stdout);

          i.put('/nixos/fleet/modules/app', '{ ... }: { environment.etc."app".text = "fixed"; }');
          await waitUntil('the launch hook completed', () => state() === 'InService');
          const st = await i.statusFile();
          assert.equal(st?.condition, 'converged');
        } finally {
          const ended = await terminate(daemon);
          assert.equal(ended.code, 0, ended.stderr.slice(-2000));
        }
        const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
        assert.deepEqual(completions.map((c) => [c.hookName, c.result]), [[i.world.hook, 'CONTINUE']]);
        assert.deepEqual(i.world.autoscaling.healthEvents(), []);
        const after = await i.run(['status']);
        assert.match(after.stdout, /^  launch hook: CONTINUE \(the launch converged\)$/m, after.stdout);
      },
    );
  });

  test('ABANDON when the launch budget passes while the build still hangs', async () => {
    await withGroupInstance(
      { userData: markerModule('sandbox-hang'), config: { rebuild: { buildTimeoutSeconds: 3 }, lifecycle: { heartbeatSeconds: 0.3, budgetSeconds: 1 } } },
      async (i) => {
        const run = await i.converge();
        assert.equal(run.status.lastResult?.error?.stage, 'build');
        const completions = i.world.autoscaling.actions().filter((a) => a.kind === 'complete');
        assert.deepEqual(completions.map((c) => [c.instanceId, c.result]), [[i.instanceId, 'ABANDON']], 'decided once, at the budget, not again when the pass ended');
        assert.equal(i.world.autoscaling.instance(i.instanceId)?.lifecycleState, 'Terminated');
      },
    );
  });
});
