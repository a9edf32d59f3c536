// The Auto Scaling client and the commands autoscaling.ts sends, and nothing else of
// @aws-sdk/client-auto-scaling: a dynamic import of the package keeps every operation and its
// schema in the bundle, built when the module loads (as ssm-sdk.ts, ~0.5 MiB resident here).
export {
  AutoScalingClient,
  CompleteLifecycleActionCommand,
  DescribeAutoScalingInstancesCommand,
  DescribeLifecycleHooksCommand,
  RecordLifecycleActionHeartbeatCommand,
  SetInstanceHealthCommand,
} from '@aws-sdk/client-auto-scaling';
