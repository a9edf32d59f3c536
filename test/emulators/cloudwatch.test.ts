// The CloudWatch alarms emulator over both of CloudWatch's wire protocols: the AWS CLI v2 (botocore's
// awsQuery client), as an operator creates and flips an alarm, and the SDK v3 client (awsJson1_0,
// query compatible), as the agent reads alarm states during a rollout.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { awsCli, noAwsCli } from '../support/aws-cli.js';
import { CloudWatchClient, DescribeAlarmsCommand, PutMetricAlarmCommand, SetAlarmStateCommand } from '@aws-sdk/client-cloudwatch';
import { CloudWatchEmulator } from '../../sandbox/emulators/cloudwatch.js';
import { ManualClock } from '../support/clock.js';

const noCli = noAwsCli;

describe('CloudWatch emulator', () => {
  let emulator: CloudWatchEmulator;
  let clock: ManualClock;
  let home: string;
  let sdk: CloudWatchClient;

  before(async () => {
    clock = new ManualClock(Date.UTC(2026, 0, 1));
    emulator = await CloudWatchEmulator.start({ clock, region: 'eu-west-1' });
    home = await mkdtemp(join(tmpdir(), 'cloudwatch-cli-'));
    sdk = new CloudWatchClient({ region: 'eu-west-1', endpoint: emulator.url, credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }, maxAttempts: 1 });
  });
  after(async () => {
    sdk?.destroy();
    await emulator?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  const aws = (...args: string[]) => awsCli(emulator.url, home, 'cloudwatch', args);

  it('the CLI creates an alarm (INSUFFICIENT_DATA until evaluated), sets it to ALARM and reads it back', { skip: noCli }, async () => {
    const put = await aws(
      'put-metric-alarm', '--alarm-name', 'web-5xx', '--metric-name', 'HTTPCode_Target_5XX_Count', '--namespace', 'AWS/ApplicationELB',
      '--statistic', 'Sum', '--period', '60', '--evaluation-periods', '2', '--threshold', '10', '--comparison-operator', 'GreaterThanOrEqualToThreshold',
      '--dimensions', 'Name=LoadBalancer,Value=app/web/123',
    );
    assert.equal(put.code, 0, put.stderr);
    let r = await aws('describe-alarms', '--alarm-names', 'web-5xx');
    assert.equal(r.code, 0, r.stderr);
    let alarms = (JSON.parse(r.stdout) as { MetricAlarms: Record<string, unknown>[] }).MetricAlarms;
    assert.equal(alarms.length, 1);
    assert.equal(alarms[0]?.StateValue, 'INSUFFICIENT_DATA');
    assert.equal(alarms[0]?.EvaluationPeriods, 2);
    assert.deepEqual(alarms[0]?.Dimensions, [{ Name: 'LoadBalancer', Value: 'app/web/123' }]);
    assert.equal(alarms[0]?.AlarmArn, 'arn:aws:cloudwatch:eu-west-1:123456789012:alarm:web-5xx');

    const set = await aws('set-alarm-state', '--alarm-name', 'web-5xx', '--state-value', 'ALARM', '--state-reason', 'errors over the threshold');
    assert.equal(set.code, 0, set.stderr);
    r = await aws('describe-alarms', '--state-value', 'ALARM');
    alarms = (JSON.parse(r.stdout) as { MetricAlarms: Record<string, unknown>[] }).MetricAlarms;
    assert.deepEqual(alarms.map((a) => [a.AlarmName, a.StateValue, a.StateReason]), [['web-5xx', 'ALARM', 'errors over the threshold']]);
  });

  it('the CLI gets AWS\'s errors: an unknown alarm, a bad state', { skip: noCli }, async () => {
    const missing = await aws('set-alarm-state', '--alarm-name', 'no-such-alarm', '--state-value', 'OK', '--state-reason', 'x');
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /ResourceNotFound/);
    emulator.putAlarm('another');
    const bad = await aws('set-alarm-state', '--alarm-name', 'another', '--state-value', 'BROKEN', '--state-reason', 'x');
    assert.notEqual(bad.code, 0);
    // A model constraint (the StateValue enum) fails request validation: ValidationError, not InvalidParameterValue.
    assert.match(
      bad.stderr,
      /\(ValidationError\) when calling the SetAlarmState operation: 1 validation error detected: Value 'BROKEN' at 'stateValue' failed to satisfy constraint: Member must satisfy enum value set: \[INSUFFICIENT_DATA, ALARM, OK\]/,
    );
    const badFilter = await aws('describe-alarms', '--state-value', 'BROKEN');
    assert.notEqual(badFilter.code, 0);
    assert.match(badFilter.stderr, /\(ValidationError\) when calling the DescribeAlarms operation: .*\[INSUFFICIENT_DATA, ALARM, OK\]/);
  });

  it('the CLI\'s put-metric-alarm keeps the actions, DatapointsToAlarm, Unit and an ExtendedStatistic, and describe-alarms echoes them', { skip: noCli }, async () => {
    const topic = 'arn:aws:sns:eu-west-1:123456789012:ops';
    const put = await aws(
      'put-metric-alarm', '--alarm-name', 'web-p99', '--metric-name', 'TargetResponseTime', '--namespace', 'AWS/ApplicationELB',
      '--extended-statistic', 'p99', '--period', '300', '--evaluation-periods', '5', '--datapoints-to-alarm', '3', '--threshold', '2',
      '--comparison-operator', 'GreaterThanThreshold', '--unit', 'Seconds',
      '--alarm-actions', topic, 'arn:aws:automate:eu-west-1:ec2:reboot', '--ok-actions', topic, '--insufficient-data-actions', topic,
    );
    assert.equal(put.code, 0, put.stderr);
    const r = await aws('describe-alarms', '--alarm-names', 'web-p99');
    assert.equal(r.code, 0, r.stderr);
    const alarm = (JSON.parse(r.stdout) as { MetricAlarms: Record<string, unknown>[] }).MetricAlarms[0];
    assert.deepEqual(alarm?.AlarmActions, [topic, 'arn:aws:automate:eu-west-1:ec2:reboot']);
    assert.deepEqual(alarm?.OKActions, [topic]);
    assert.deepEqual(alarm?.InsufficientDataActions, [topic]);
    assert.equal(alarm?.ExtendedStatistic, 'p99');
    assert.equal(alarm?.Statistic, undefined, 'a percentile is not a Statistic');
    assert.equal(alarm?.DatapointsToAlarm, 3);
    assert.equal(alarm?.Unit, 'Seconds');
  });

  it('the CLI\'s put-metric-alarm is refused with ValidationError as AWS refuses it', { skip: noCli }, async () => {
    const base = ['--alarm-name', 'refused', '--metric-name', 'CPUUtilization', '--namespace', 'AWS/EC2', '--threshold', '80', '--comparison-operator', 'GreaterThanThreshold'];
    const cases: [string[], RegExp][] = [
      [['--statistic', 'Average', '--evaluation-periods', '1'], /Period must not be null/],
      [['--period', '60', '--evaluation-periods', '1'], /Statistic or ExtendedStatistic/],
      [['--statistic', 'Average', '--extended-statistic', 'p90', '--period', '60', '--evaluation-periods', '1'], /Statistic or ExtendedStatistic/],
      [['--statistic', 'p90', '--period', '60', '--evaluation-periods', '1'], /Value 'p90' at 'statistic' failed to satisfy constraint: Member must satisfy enum value set: \[SampleCount, Average, Sum, Minimum, Maximum\]/],
      [['--statistic', 'Average', '--period', '45', '--evaluation-periods', '1'], /Period \(45\) must be 10, 20, 30 or a multiple of 60/],
      [['--statistic', 'Average', '--period', '60', '--evaluation-periods', '1441'], /at most 86400 seconds/],
      [['--statistic', 'Average', '--period', '60', '--evaluation-periods', '2', '--datapoints-to-alarm', '3'], /DatapointsToAlarm must be less than or equal to EvaluationPeriods/],
    ];
    for (const [args, message] of cases) {
      const r = await aws('put-metric-alarm', ...base, ...args);
      assert.equal(r.code, 254, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /\(ValidationError\) when calling the PutMetricAlarm operation/, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
    }
    assert.equal(emulator.alarm('refused'), undefined);
    // A period of an hour or more may run to seven days of evaluation.
    const long = await aws('put-metric-alarm', ...base, '--statistic', 'Average', '--period', '3600', '--evaluation-periods', '168');
    assert.equal(long.code, 0, long.stderr);
    const high = await aws('put-metric-alarm', '--alarm-name', 'high-res', ...base.slice(2), '--statistic', 'Maximum', '--period', '20', '--evaluation-periods', '3');
    assert.equal(high.code, 0, high.stderr);
  });

  it('the CLI follows NextToken across pages', { skip: noCli }, async () => {
    for (let i = 0; i < 5; i++) emulator.putAlarm(`paged-${i}`);
    const r = await aws('describe-alarms', '--alarm-name-prefix', 'paged-', '--page-size', '2');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((JSON.parse(r.stdout) as { MetricAlarms: { AlarmName: string }[] }).MetricAlarms.map((a) => a.AlarmName), ['paged-0', 'paged-1', 'paged-2', 'paged-3', 'paged-4']);
  });

  it('the SDK v3 client (awsJson1_0) reads states by name and sets one', async () => {
    emulator.putAlarm('sdk-a');
    emulator.putAlarm('sdk-b');
    emulator.setState('sdk-b', 'ALARM', 'p99 latency over 2 s');
    const out = await sdk.send(new DescribeAlarmsCommand({ AlarmNames: ['sdk-a', 'sdk-b', 'sdk-none'] }));
    assert.deepEqual(out.MetricAlarms?.map((a) => [a.AlarmName, a.StateValue, a.StateReason]), [
      ['sdk-a', 'INSUFFICIENT_DATA', 'Unchecked: Initial alarm creation'],
      ['sdk-b', 'ALARM', 'p99 latency over 2 s'],
    ]);
    assert.ok(out.MetricAlarms?.[1]?.StateUpdatedTimestamp instanceof Date);
    assert.equal(out.MetricAlarms?.[1]?.StateUpdatedTimestamp?.getTime(), clock.now());
    await sdk.send(new SetAlarmStateCommand({ AlarmName: 'sdk-b', StateValue: 'OK', StateReason: 'recovered' }));
    assert.equal(emulator.alarm('sdk-b')?.state, 'OK');
  });

  it('the SDK v3 client (awsJson1_0) creates an alarm with actions and an extended statistic, and reads them back', async () => {
    await sdk.send(
      new PutMetricAlarmCommand({
        AlarmName: 'sdk-p90', MetricName: 'Latency', Namespace: 'App', ExtendedStatistic: 'p90', Period: 60, EvaluationPeriods: 3, DatapointsToAlarm: 2,
        Threshold: 0.5, ComparisonOperator: 'GreaterThanThreshold', Unit: 'Seconds', AlarmActions: ['arn:aws:sns:eu-west-1:123456789012:ops'],
        OKActions: ['arn:aws:sns:eu-west-1:123456789012:ok'], InsufficientDataActions: ['arn:aws:sns:eu-west-1:123456789012:nodata'],
      }),
    );
    const out = await sdk.send(new DescribeAlarmsCommand({ AlarmNames: ['sdk-p90'] }));
    const a = out.MetricAlarms?.[0];
    assert.deepEqual(
      [a?.Statistic, a?.ExtendedStatistic, a?.DatapointsToAlarm, a?.Unit, a?.AlarmActions, a?.OKActions, a?.InsufficientDataActions],
      [undefined, 'p90', 2, 'Seconds', ['arn:aws:sns:eu-west-1:123456789012:ops'], ['arn:aws:sns:eu-west-1:123456789012:ok'], ['arn:aws:sns:eu-west-1:123456789012:nodata']],
    );
  });

  it('the SDK client sees ValidationError for a model constraint failure', async () => {
    emulator.putAlarm('sdk-c');
    // Query compatibility: the SDK names the error by its JSON shape and carries the query code,
    // from x-amzn-query-error, in Code and Error.Code.
    type CompatError = Error & { Code?: string; Error?: { Code?: string; Type?: string }; $metadata?: { httpStatusCode?: number } };
    await assert.rejects(sdk.send(new SetAlarmStateCommand({ AlarmName: 'sdk-c', StateValue: 'BROKEN' as 'OK', StateReason: 'x' })), (err: CompatError) => {
      assert.equal(err.name, 'ValidationException');
      assert.deepEqual([err.Code, err.Error?.Code, err.Error?.Type], ['ValidationError', 'ValidationError', 'Sender']);
      assert.equal(err.$metadata?.httpStatusCode, 400);
      assert.match(err.message, /Member must satisfy enum value set: \[INSUFFICIENT_DATA, ALARM, OK\]/);
      return true;
    });
    await assert.rejects(
      sdk.send(new PutMetricAlarmCommand({ AlarmName: 'sdk-bad', MetricName: 'm', Namespace: 'n', Statistic: 'Sum', Period: 90, EvaluationPeriods: 1, Threshold: 1, ComparisonOperator: 'GreaterThanThreshold' })),
      (err: CompatError) => err.Code === 'ValidationError' && /Period \(90\)/.test(err.message),
    );
  });

  it('the SDK client sees the query error code of an unknown alarm', async () => {
    await assert.rejects(sdk.send(new SetAlarmStateCommand({ AlarmName: 'sdk-none', StateValue: 'OK', StateReason: 'x' })), (err: Error & { $metadata?: { httpStatusCode?: number } }) => {
      assert.equal(err.name, 'ResourceNotFound');
      assert.equal(err.$metadata?.httpStatusCode, 404);
      return true;
    });
  });

  it('refuses an unsigned request', async () => {
    const res = await fetch(emulator.url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'Action=DescribeAlarms&Version=2010-08-01' });
    assert.equal(res.status, 403);
    assert.match(await res.text(), /<Code>MissingAuthenticationToken<\/Code>/);
  });
});
