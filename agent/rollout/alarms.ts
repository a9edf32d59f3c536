// CloudWatch alarms that halt a rollout (the strategy's `alarms`). Read with DescribeAlarms only
// while a rollout naming them progresses or bakes, at most once per poll interval per instance (by
// turns, when the strategy gives the fleet's size), and less often while CloudWatch says it is busy;
// an idle fleet, or a rollout without alarms, never loads the CloudWatch client. The first instance
// that sees one in ALARM records it like a failure (stage `alarm`), so the halt holds for the whole
// fleet, and after the alarm clears, until the operator resumes or abandons.
import type { AwsCredentialIdentityProvider } from '@smithy/types';
import type { Clock } from '../ports.js';
import { isBusy } from '../sources/revision.js';
import type { SsmSnapshot } from '../sources/ssm.js';
import { cohortPosition, decide } from './plan.js';
import { splitSnapshot, type AlarmState } from './spec.js';

export type DescribeAlarms = (names: readonly string[]) => Promise<readonly AlarmState[]>;

export type AlarmReading = { readonly alarms: readonly AlarmState[] } | { readonly error: string };

export interface AlarmsDue {
  /** The alarms to read, sorted; none when no rollout naming alarms is under way. */
  readonly names: readonly string[];
  /** The largest fleet size those rollouts give (Strategy.fleetSize): reads go by turns. */
  readonly fleetSize: number | undefined;
}

/** The alarms named by the rollouts this snapshot carries that are under way at `nowMs`. */
export function alarmsDue(snapshot: SsmSnapshot, nowMs: number): AlarmsDue {
  const names = new Set<string>();
  let fleetSize: number | undefined;
  for (const spec of splitSnapshot(snapshot).rollouts) {
    const alarms = spec.strategy?.alarms;
    if (!alarms) continue;
    // The state is the same for every instance: the schedule, the halt and the records decide it.
    const { state } = decide(spec, { instanceId: '', canary: false }, nowMs);
    if (state !== 'progressing' && state !== 'baking') continue;
    for (const name of alarms) names.add(name);
    const size = spec.strategy?.fleetSize;
    if (size !== undefined) fleetSize = Math.max(fleetSize ?? 0, size);
  }
  return { names: [...names].sort(), fleetSize };
}

/**
 * How many DescribeAlarms calls a second a fleet that gives its size asks in all: a ninth of
 * CloudWatch's default limit (9 a second per account and Region), so that dashboards, deploy tools
 * and other readers of alarms in the account keep the rest. One answer a second still sees an alarm
 * within seconds, and one record halts the fleet.
 */
export const ALARM_READS_PER_SECOND = 1;

/**
 * Whether this instance reads the alarms in the poll interval holding `nowMs`: by a draw from its id
 * and the interval's number, with the chance that puts the fleet at ALARM_READS_PER_SECOND (always,
 * for a fleet small enough to ask less than that). Each interval draws other readers, so no instance
 * is left out for long, and no instance needs to know which others read.
 */
export function readsAlarmsNow(instanceId: string, fleetSize: number, nowMs: number, intervalMs: number): boolean {
  const share = (ALARM_READS_PER_SECOND * intervalMs) / 1000 / fleetSize;
  if (share >= 1) return true;
  return cohortPosition(instanceId, `alarms ${Math.floor(nowMs / intervalMs)}`) < share;
}

/** A busy answer doubles the wait between reads, up to this many doublings (16 poll intervals). */
const MAX_ALARM_BACKOFF = 4;

/**
 * One DescribeAlarms answer (or its error) serves every read of the same names for `minIntervalMs`:
 * however often the sources are read, an instance asks CloudWatch at most once per poll interval.
 *
 * CloudWatch limits DescribeAlarms per account and Region (9 a second by default), and a fleet of
 * ten thousand at the default poll asks about 17. With the fleet's size in the strategy, instances
 * read by turns (readsAlarmsNow) and the fleet asks about one a second. Without it, each busy answer
 * (throttled, or a 5xx) doubles this instance's wait before it asks again, and each answer halves
 * it back: the fleet's calls settle around what the account lets through instead of twice that,
 * with no instance knowing the fleet's size. Either way an alarm needs one instance to see it, and
 * its record halts everyone.
 */
export class AlarmWatcher {
  private last: { key: string; at: number; reading: AlarmReading } | undefined;
  private busy = 0;
  calls = 0;

  constructor(
    /** Created on first use: the CloudWatch client is imported only when a rollout names alarms. */
    private readonly describe: () => Promise<DescribeAlarms>,
    private readonly options: { readonly clock: Clock; readonly minIntervalMs: number },
  ) {}

  /**
   * The alarms' states, as last read when that answer still serves. `turn`: the fleet's size is known
   * and this instance reads only at its turns (readsAlarmsNow); undefined when it is not one.
   */
  async read(names: readonly string[], turn?: { readonly instanceId: string; readonly fleetSize: number }): Promise<AlarmReading | undefined> {
    const key = names.join('\n');
    const now = this.options.clock.now();
    const last = this.last;
    if (last && last.key === key && now - last.at < this.intervalMs) return last.reading;
    if (turn && !readsAlarmsNow(turn.instanceId, turn.fleetSize, now, this.options.minIntervalMs)) return undefined;
    let reading: AlarmReading;
    this.calls++;
    try {
      reading = { alarms: await (await this.describe())(names) };
      this.busy = Math.max(0, this.busy - 1);
    } catch (err) {
      if (isBusy(err)) this.busy = Math.min(MAX_ALARM_BACKOFF, this.busy + 1);
      reading = { error: `cannot read CloudWatch alarms ${names.join(', ')}: ${(err as Error).message}` };
    }
    this.last = { key, at: now, reading };
    return reading;
  }

  /** How long one answer serves: the poll interval, doubled for each busy answer not yet undone. */
  get intervalMs(): number {
    return this.options.minIntervalMs * 2 ** this.busy;
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
    // One attempt: the next poll is the retry, and a throttled call retried at once is one more
    // call against the account's limit (AlarmWatcher waits longer instead).
    maxAttempts: 1,
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
