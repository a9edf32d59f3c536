// The Auto Scaling layer of SSM (`/nixos/asg/{asg}`) on an instance as EC2 launches it by default:
// no tags in instance metadata, so the group comes from DescribeAutoScalingInstances.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Instance } from '../support/e2e.js';

const opts = { timeout: 120_000 };
const ASG_OPTION = { Name: '/nixos/asg/demo-asg/options/environment.variables.LAYER', Value: '"asg"', Type: 'String' as const };

async function withInstance<T>(options: Parameters<typeof Instance.launch>[0], body: (inst: Instance) => Promise<T>): Promise<T> {
  const inst = await Instance.launch(options);
  try {
    return await body(inst);
  } finally {
    await inst.close();
  }
}

describe('the Auto Scaling layer without tags in instance metadata', { concurrency: true }, () => {
  test('the group comes from Auto Scaling and its parameters converge', opts, async () => {
    await withInstance({ parameters: [ASG_OPTION] }, async (inst) => {
      assert.equal(inst.world.instance.tagsInMetadata, false, "EC2's default: no tags in IMDS");
      const { code, status, stderr } = await inst.converge();
      assert.equal(code, 0, stderr.slice(-2000));
      assert.equal(status.lastResult?.outcome, 'converged');
      assert.ok(status.desired?.sources.parameters.some((p) => p.name === ASG_OPTION.Name), JSON.stringify(status.desired));
      assert.ok(!status.desired?.notes.some((n) => /skipped/.test(n)), JSON.stringify(status.desired?.notes));
      const asked = inst.world.autoscaling.requests.filter((r) => r.operation === 'DescribeAutoScalingInstances');
      assert.ok(asked.length >= 1, 'the group was asked of Auto Scaling');
    });
  });

  test('a group Auto Scaling will not name fails the pass, saying so, instead of dropping the layer', opts, async () => {
    await withInstance({ parameters: [ASG_OPTION] }, async (inst) => {
      inst.world.autoscaling.injectFault({ action: 'DescribeAutoScalingInstances', code: 'AccessDenied', status: 403, message: 'not authorized', times: Infinity });
      const { code, status, stderr } = await inst.converge();
      assert.equal(code, 1, stderr.slice(-2000));
      assert.equal(status.lastResult?.outcome, 'failed');
      assert.match(status.lastResult?.error?.message ?? '', /cannot resolve \{asg\} in SSM prefix \/nixos\/asg\/\{asg\}.*AccessDenied/);
      assert.match(stderr, /cannot resolve \{asg\}/, 'the log says so too');
    });
  });

  test('a group whose name an SSM path cannot hold skips the layer, noting why, and converges', opts, async () => {
    const fleet = { Name: '/nixos/fleet/options/environment.variables.FLEET', Value: '"fleet"', Type: 'String' as const };
    await withInstance({ parameters: [fleet], instance: { autoScaling: { group: 'web fleet: blue' } } }, async (inst) => {
      const { code, status, stderr } = await inst.converge();
      assert.equal(code, 0, stderr.slice(-2000));
      assert.equal(status.lastResult?.outcome, 'converged');
      assert.ok(status.desired?.sources.parameters.some((p) => p.name === fleet.Name), JSON.stringify(status.desired));
      assert.ok(status.desired?.notes.some((n) => /\/nixos\/asg\/\{asg\} skipped.*"web fleet: blue".*cannot hold/.test(n)), JSON.stringify(status.desired?.notes));
      const paths = inst.world.ssm.requests.map((r) => (r.input as { Path?: string } | undefined)?.Path).filter(Boolean);
      assert.ok(!paths.some((p) => p!.startsWith('/nixos/asg')), `no read of an impossible path: ${paths.join(', ')}`);
    });
  });

  test('an instance in no group skips the layer and notes it', opts, async () => {
    await withInstance({ parameters: [ASG_OPTION], instance: { autoScaling: null } }, async (inst) => {
      const { code, status, stderr } = await inst.converge();
      assert.equal(code, 0, stderr.slice(-2000));
      assert.ok(status.desired?.notes.some((n) => /\/nixos\/asg\/\{asg\} skipped/.test(n)), JSON.stringify(status.desired?.notes));
    });
  });
});
