// The Auto Scaling edge of a simulated instance: every instance is a member of one group, found
// the way a default EC2 instance finds it (no tags in instance metadata), by one
// DescribeAutoScalingInstances per boot. Calls are counted, not throttled: the figures the fleet
// benchmark proves are SSM's. The simulation turns the launch hook off, so nothing else is asked.
import type { ActionOutcome, AutoScaling, GroupMembership, LifecycleHook } from '../../../agent/aws/autoscaling.js';

export class SimulatedAutoScaling implements AutoScaling {
  describes = 0;

  constructor(private readonly group: string) {}

  async describeInstance(_instanceId: string): Promise<GroupMembership | undefined> {
    this.describes++;
    return { group: this.group, lifecycleState: 'InService', healthStatus: 'HEALTHY' };
  }

  describeLifecycleHooks(): Promise<readonly LifecycleHook[]> {
    return unsupported('DescribeLifecycleHooks');
  }

  completeLifecycleAction(): Promise<ActionOutcome> {
    return unsupported('CompleteLifecycleAction');
  }

  recordHeartbeat(): Promise<ActionOutcome> {
    return unsupported('RecordLifecycleActionHeartbeat');
  }

  setInstanceHealth(): Promise<void> {
    return unsupported('SetInstanceHealth');
  }
}

function unsupported<T>(action: string): Promise<T> {
  return Promise.reject(new Error(`the fleet simulation has no launch hook: ${action} is not expected`));
}
