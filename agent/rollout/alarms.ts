// CloudWatch alarms that halt a rollout (the strategy's `alarms`). Read with DescribeAlarms only
// while a rollout naming them progresses or bakes, at most once per poll interval per instance; an
// idle fleet, or a rollout without alarms, never loads the CloudWatch client. The first instance
// that sees one in ALARM records it like a failure (stage `alarm`), so the halt holds for the whole
// fleet, and after the alarm clears, until the operator resumes or abandons.
import type { AwsCredentialIdentityProvider } from '@smithy/types';
import type { Clock } from '../ports.js';
import type { SsmSnapshot } from '../sources/ssm.js';
import { decide } from './plan.js';
import { splitSnapshot, type AlarmState } from './spec.js';

export type DescribeAlarms = (names: readonly string[]) => Promise<readonly AlarmState[]>;

export type AlarmReading = { readonly alarms: readonly AlarmState[] } | { readonly error: string };

/** The alarms named by the rollouts this snapshot carries that are under way at `nowMs`. */
export function alarmsDue(snapshot: SsmSnapshot, nowMs: number): string[] {
  const names = new Set<string>();
  for (const spec of splitSnapshot(snapshot).rollouts) {
    const alarms = spec.strategy?.alarms;
    if (!alarms) continue;
    // The state is the same for every instance: the schedule, the halt and the records decide it.
    const { state } = decide(spec, { instanceId: '', canary: false }, nowMs);
    if (state === 'progressing' || state === 'baking') for (const name of alarms) names.add(name);
  }
  return [...names].sort();
}

/**
 * One DescribeAlarms answer (or its error) serves every read of the same names for `minIntervalMs`:
 * however often the sources are read, an instance asks CloudWatch at most once per poll interval.
 */
export class AlarmWatcher {
  private last: { key: string; at: number; reading: AlarmReading } | undefined;
  calls = 0;

  constructor(
    /** Created on first use: the CloudWatch client is imported only when a rollout names alarms. */
    private readonly describe: () => Promise<DescribeAlarms>,
    private readonly options: { readonly clock: Clock; readonly minIntervalMs: number },
  ) {}

  async read(names: readonly string[]): Promise<AlarmReading> {
    const key = names.join('\n');
    const now = this.options.clock.now();
    const last = this.last;
    if (last && last.key === key && now - last.at < this.options.minIntervalMs) return last.reading;
    let reading: AlarmReading;
    this.calls++;
    try {
      reading = { alarms: await (await this.describe())(names) };
    } catch (err) {
      reading = { error: `cannot read CloudWatch alarms ${names.join(', ')}: ${(err as Error).message}` };
    }
    this.last = { key, at: now, reading };
    return reading;
  }
}

/** The request timeout of a DescribeAlarms call: a silent endpoint must not hold the pass. */
const REQUEST_TIMEOUT_MS = 10_000;

/**
 * DescribeAlarms through the SDK's CloudWatch client, loaded here with a dynamic import so it sits in
 * its own chunk. The endpoint follows the SDK's settings (AWS_ENDPOINT_URL_CLOUDWATCH,
 * AWS_ENDPOINT_URL), read from the agent's own environment.
 */
export async function sdkDescribeAlarms(options: {
  readonly env: NodeJS.ProcessEnv;
  readonly region: () => Promise<string | undefined>;
  readonly credentials: () => Promise<AwsCredentialIdentityProvider>;
}): Promise<DescribeAlarms> {
  const { env } = options;
  const [{ CloudWatchClient, DescribeAlarmsCommand }, region, credentials] = await Promise.all([
    import('@aws-sdk/client-cloudwatch'),
    env.AWS_REGION || env.AWS_DEFAULT_REGION ? Promise.resolve(env.AWS_REGION || env.AWS_DEFAULT_REGION) : options.region(),
    options.credentials(),
  ]);
  const endpoint = env.AWS_ENDPOINT_URL_CLOUDWATCH || env.AWS_ENDPOINT_URL;
  const client = new CloudWatchClient({
    credentials,
    region,
    ...(endpoint ? { endpoint } : {}),
    maxAttempts: 3,
    retryMode: 'adaptive',
    requestHandler: { requestTimeout: REQUEST_TIMEOUT_MS, connectionTimeout: 3_000, throwOnRequestTimeout: true },
  });
  return async (names) => {
    const out: AlarmState[] = [];
    let NextToken: string | undefined;
    do {
      const page = await client.send(new DescribeAlarmsCommand({ AlarmNames: [...names], AlarmTypes: ['MetricAlarm', 'CompositeAlarm'], ...(NextToken ? { NextToken } : {}) }));
      for (const a of [...(page.MetricAlarms ?? []), ...(page.CompositeAlarms ?? [])]) {
        if (a.AlarmName) out.push({ name: a.AlarmName, state: a.StateValue ?? 'INSUFFICIENT_DATA', reason: a.StateReason ?? '' });
      }
      NextToken = page.NextToken;
    } while (NextToken);
    return out;
  };
}
