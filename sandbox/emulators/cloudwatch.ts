// CloudWatch metric alarms on loopback, over both wire protocols CloudWatch answers: awsQuery
// (form-encoded `Action=…&Version=2010-08-01` in, namespaced XML out: what the AWS CLI v2 and older
// botocore send) and awsJson1_0 with AWS query compatibility (`X-Amz-Target:
// GraniteServiceVersion20100801.<Op>`, JSON in and out, the query error code in
// `x-amzn-query-error`: what the SDK v3 client sends). It holds what an operator does with alarms
// and what an agent reads: PutMetricAlarm, DescribeAlarms, SetAlarmState, DeleteAlarms. An alarm is
// created in INSUFFICIENT_DATA and changes state only by SetAlarmState (no metrics are evaluated).
import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import { type Clock, systemClock } from '../../agent/ports.js';
import { escapeXml, toXml, type XmlNode } from './autoscaling.js';
import { type LoggedRequest, listen, readBody, type RunningServer } from './server.js';
import { TokenBucket } from './token-bucket.js';

export const CLOUDWATCH_XMLNS = 'http://monitoring.amazonaws.com/doc/2010-08-01/';
export const CLOUDWATCH_API_VERSION = '2010-08-01';
const TARGET_PREFIX = 'GraniteServiceVersion20100801';

// Documented limits (DescribeAlarms, PutMetricAlarm, SetAlarmState).
const MAX_ALARM_NAMES = 100;
const MAX_RECORDS = 100;
const DEFAULT_RECORDS = 50;
const MAX_NAME = 255;
const MAX_STATE_REASON = 1023;
/** ResourceList: at most 5 actions per state (botocore cloudwatch model). */
const MAX_ACTIONS = 5;
/** "An alarm's total current evaluation period can be no longer than seven days" (PutMetricAlarmInput.Period). */
const MAX_EVALUATION_SECONDS = 604_800;
/** "For alarms with a period of less than one hour (3,600 seconds), the total evaluation period can't be longer than one day" (ibid.). */
const MAX_EVALUATION_SECONDS_SUB_HOUR = 86_400;

export type AlarmStateValue = 'OK' | 'ALARM' | 'INSUFFICIENT_DATA';
const STATES: readonly string[] = ['OK', 'ALARM', 'INSUFFICIENT_DATA'];
/** The StateValue enum in the order AWS's validation message lists it. */
const STATES_AS_LISTED: readonly string[] = ['INSUFFICIENT_DATA', 'ALARM', 'OK'];
/** The Statistic enum; percentiles and the like go in ExtendedStatistic (botocore model, Statistic). */
const STATISTICS: readonly string[] = ['SampleCount', 'Average', 'Sum', 'Minimum', 'Maximum'];
/** StandardUnit (botocore model). */
const UNITS: readonly string[] = [
  'Seconds', 'Microseconds', 'Milliseconds', 'Bytes', 'Kilobytes', 'Megabytes', 'Gigabytes', 'Terabytes', 'Bits', 'Kilobits', 'Megabits', 'Gigabits', 'Terabits',
  'Percent', 'Count', 'Bytes/Second', 'Kilobytes/Second', 'Megabytes/Second', 'Gigabytes/Second', 'Terabytes/Second', 'Bits/Second', 'Kilobits/Second',
  'Megabits/Second', 'Gigabits/Second', 'Terabits/Second', 'Count/Second', 'None',
];
const COMPARISONS: readonly string[] = [
  'GreaterThanOrEqualToThreshold',
  'GreaterThanThreshold',
  'LessThanThreshold',
  'LessThanOrEqualToThreshold',
  'LessThanLowerOrGreaterThanUpperThreshold',
  'LessThanLowerThreshold',
  'GreaterThanUpperThreshold',
];

export interface MetricAlarm {
  readonly name: string;
  readonly description?: string;
  readonly metricName: string;
  readonly namespace: string;
  /** Exactly one of statistic and extendedStatistic is set. */
  readonly statistic?: string;
  /** A percentile or other extended statistic (`p99`, `tm90`…). */
  readonly extendedStatistic?: string;
  readonly dimensions: readonly { readonly name: string; readonly value: string }[];
  readonly period: number;
  readonly unit?: string;
  readonly evaluationPeriods: number;
  /** The M of an "M out of N" alarm; EvaluationPeriods when absent. */
  readonly datapointsToAlarm?: number;
  readonly threshold: number;
  readonly comparisonOperator: string;
  readonly actionsEnabled: boolean;
  readonly okActions: readonly string[];
  readonly alarmActions: readonly string[];
  readonly insufficientDataActions: readonly string[];
  readonly treatMissingData?: string;
  readonly configurationUpdatedAt: number;
  state: AlarmStateValue;
  stateReason: string;
  stateReasonData?: string;
  stateUpdatedAt: number;
}

export interface CloudWatchEmulatorOptions {
  /** New connections let through (server.ts, ListenOptions). */
  readonly admit?: () => boolean;
  readonly clock?: Clock;
  readonly region?: string;
  readonly accountId?: string;
  readonly host?: string;
  readonly port?: number;
  /** One account-wide bucket for DescribeAlarms, as AWS throttles it per account. Unlimited when absent. */
  readonly describeThroughput?: { readonly ratePerSecond: number; readonly burst?: number };
}

class CloudWatchError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
    readonly fault: 'Sender' | 'Receiver' = status >= 500 ? 'Receiver' : 'Sender',
  ) {
    super(message);
  }
}

/**
 * What the service's request validation answers when a member breaks its model constraint (enum,
 * range, length) or a rule of the operation: `ValidationError` in the query protocol. In JSON it
 * is Coral's validation exception, whose query code the `x-amzn-query-error` header carries.
 */
function validation(message: string): CloudWatchError {
  return new CloudWatchError('ValidationError', message);
}

/** The Coral-style message AWS uses for model constraint failures. */
function constraint(value: string, member: string, rule: string): CloudWatchError {
  return validation(`1 validation error detected: Value '${value}' at '${member}' failed to satisfy constraint: ${rule}`);
}

/** The JSON protocol names an error by its model shape (`__type`); the query protocol by its code. */
const SHAPE: Readonly<Record<string, string>> = {
  ValidationError: 'com.amazon.coral.validate#ValidationException',
  InvalidParameterValue: 'InvalidParameterValueException',
  InvalidParameterCombination: 'InvalidParameterCombinationException',
  MissingParameter: 'MissingRequiredParameterException',
  ResourceNotFound: 'ResourceNotFound',
  InvalidNextToken: 'InvalidNextToken',
  InvalidFormat: 'InvalidFormatFault',
};

// SigV4 as every SDK and the CLI send it (CloudWatch signs as `monitoring`); the signature itself is not checked.
const AUTHORIZATION =
  /^AWS4-HMAC-SHA256 Credential=[^/\s,]+\/\d{8}\/[a-z0-9-]+\/monitoring\/aws4_request, ?SignedHeaders=[a-z0-9;-]+, ?Signature=[0-9a-f]{64}$/;

/** One request's parameters, whichever protocol carried them. */
interface Input {
  str(name: string): string | undefined;
  list(name: string): string[];
  dimensions(): { name: string; value: string }[];
}

function queryInput(params: URLSearchParams): Input {
  const members = (name: string) => {
    const out: string[] = [];
    for (let i = 1; params.has(`${name}.member.${i}`); i++) out.push(params.get(`${name}.member.${i}`) ?? '');
    return out;
  };
  return {
    str: (name) => params.get(name) ?? undefined,
    list: members,
    dimensions: () => {
      const out: { name: string; value: string }[] = [];
      for (let i = 1; params.has(`Dimensions.member.${i}.Name`); i++) out.push({ name: params.get(`Dimensions.member.${i}.Name`) ?? '', value: params.get(`Dimensions.member.${i}.Value`) ?? '' });
      return out;
    },
  };
}

function jsonInput(body: Record<string, unknown>): Input {
  return {
    str: (name) => {
      const v = body[name];
      return v === undefined || v === null ? undefined : typeof v === 'string' ? v : String(v);
    },
    list: (name) => {
      const v = body[name];
      if (v === undefined || v === null) return [];
      if (!Array.isArray(v)) throw new CloudWatchError('SerializationException', `${name} must be a list`);
      return v.map(String);
    },
    dimensions: () => {
      const v = body.Dimensions;
      if (!Array.isArray(v)) return [];
      return v.map((d: { Name?: unknown; Value?: unknown }) => ({ name: String(d.Name ?? ''), value: String(d.Value ?? '') }));
    },
  };
}

/** Timestamps: ISO 8601 in XML, epoch seconds in JSON. */
type Out = string | number | boolean | Date | undefined | Out[] | { [k: string]: Out };

function toXmlValue(v: Out): XmlNode[string] {
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map((x) => toXmlValue(x)) as readonly XmlNode[];
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toXmlValue(x)])) as XmlNode;
  return v;
}

function toJsonValue(v: Out): unknown {
  if (v instanceof Date) return v.getTime() / 1000;
  if (Array.isArray(v)) return v.map(toJsonValue);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, toJsonValue(x)]));
  return v;
}

export class CloudWatchEmulator {
  readonly requests: (LoggedRequest & { readonly errorCode?: string })[] = [];
  private readonly alarms = new Map<string, MetricAlarm>();
  private readonly calls = new Map<string, number>();
  private readonly bucket: TokenBucket | undefined;
  private readonly region: string;
  private readonly accountId: string;

  private constructor(
    private readonly server: RunningServer,
    private readonly clock: Clock,
    options: CloudWatchEmulatorOptions,
  ) {
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '123456789012';
    this.bucket = options.describeThroughput ? new TokenBucket({ ...options.describeThroughput, clock }) : undefined;
  }

  static async start(options: CloudWatchEmulatorOptions = {}): Promise<CloudWatchEmulator> {
    const clock = options.clock ?? systemClock;
    let self: CloudWatchEmulator | undefined;
    const server = await listen((req, res) => void self?.handle(req, res), { ...(options.host ? { host: options.host } : {}), ...(options.port ? { port: options.port } : {}), ...(options.admit ? { admit: options.admit } : {}) });
    self = new CloudWatchEmulator(server, clock, options);
    return self;
  }

  get url(): string {
    return this.server.url;
  }

  close(): Promise<void> {
    return this.server.close();
  }

  /** An alarm as `put-metric-alarm` makes it, for a test's setup. */
  putAlarm(name: string, over: Partial<Omit<MetricAlarm, 'name'>> = {}): MetricAlarm {
    const now = this.clock.now();
    const alarm: MetricAlarm = {
      name,
      metricName: 'HTTPCode_Target_5XX_Count',
      namespace: 'AWS/ApplicationELB',
      statistic: 'Sum',
      dimensions: [],
      period: 60,
      evaluationPeriods: 1,
      threshold: 1,
      comparisonOperator: 'GreaterThanOrEqualToThreshold',
      actionsEnabled: true,
      okActions: [],
      alarmActions: [],
      insufficientDataActions: [],
      configurationUpdatedAt: now,
      state: 'INSUFFICIENT_DATA',
      stateReason: 'Unchecked: Initial alarm creation',
      stateUpdatedAt: now,
      ...over,
    };
    this.alarms.set(name, alarm);
    return alarm;
  }

  /** What `set-alarm-state` does. */
  setState(name: string, state: AlarmStateValue, reason: string): void {
    const alarm = this.alarms.get(name);
    if (!alarm) throw new CloudWatchError('ResourceNotFound', `Alarm ${name} not found`, 404);
    if (alarm.state !== state) alarm.stateUpdatedAt = this.clock.now();
    alarm.state = state;
    alarm.stateReason = reason;
  }

  alarm(name: string): MetricAlarm | undefined {
    return this.alarms.get(name);
  }

  callCounts(): Record<string, number> {
    return Object.fromEntries(this.calls);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const path = req.url ?? '/';
    const target = req.headers['x-amz-target'];
    const json = typeof target === 'string';
    let operation: string | undefined;
    const answer = (status: number, body: string, contentType: string, extra: Record<string, string> = {}, errorCode?: string) => {
      this.requests.push({ at: this.clock.now(), method: req.method ?? '', path, operation, status, ...(errorCode ? { errorCode } : {}) });
      res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'x-amzn-requestid': requestId, ...extra });
      res.end(body);
    };
    const fail = (err: CloudWatchError) => {
      if (json) {
        const shape = SHAPE[err.code] ?? err.code;
        const type = shape.includes('#') ? shape : `com.amazonaws.cloudwatch#${shape}`;
        answer(err.status, JSON.stringify({ __type: type, message: err.message }), 'application/x-amz-json-1.0', { 'x-amzn-query-error': `${err.code};${err.fault}` }, err.code);
      } else {
        answer(
          err.status,
          `<ErrorResponse xmlns="${CLOUDWATCH_XMLNS}"><Error><Type>${err.fault}</Type><Code>${escapeXml(err.code)}</Code>` +
            `<Message>${escapeXml(err.message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`,
          'text/xml',
          {},
          err.code,
        );
      }
    };
    try {
      if (req.method !== 'POST' && !(req.method === 'GET' && !json)) throw new CloudWatchError('InvalidAction', `The HTTP method ${req.method ?? ''} is not supported.`, 405);
      const raw = (await readBody(req)).toString('utf8');
      let input: Input;
      if (json) {
        const [prefix, op] = target.split('.', 2);
        operation = op;
        if (prefix !== TARGET_PREFIX || !op) throw new CloudWatchError('UnknownOperationException', `Unknown operation ${target}`);
        let body: unknown;
        try {
          body = raw.trim() === '' ? {} : JSON.parse(raw);
        } catch {
          throw new CloudWatchError('SerializationException', 'Request body is not valid JSON');
        }
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new CloudWatchError('SerializationException', 'Request body must be a JSON object');
        input = jsonInput(body as Record<string, unknown>);
      } else {
        const params = new URLSearchParams(new URL(path, 'http://localhost').search);
        for (const [k, v] of new URLSearchParams(raw)) params.set(k, v);
        operation = params.get('Action') ?? undefined;
        if (!operation) throw new CloudWatchError('MissingAction', 'The request must contain the parameter Action');
        const version = params.get('Version');
        if (version !== CLOUDWATCH_API_VERSION) throw new CloudWatchError('InvalidAction', `Could not find operation ${operation} for version ${version ?? '(none)'}`);
        input = queryInput(params);
      }
      const authorization = req.headers.authorization;
      if (!authorization) throw new CloudWatchError('MissingAuthenticationToken', 'Request is missing Authentication Token', 403);
      if (!AUTHORIZATION.test(authorization)) {
        throw new CloudWatchError('IncompleteSignature', `Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters for AWS4-HMAC-SHA256 with scope <date>/<region>/monitoring/aws4_request. Authorization=${authorization}`);
      }
      const op = operation as string;
      const handler = Object.hasOwn(this.handlers, op) ? this.handlers[op] : undefined;
      if (!handler) throw new CloudWatchError(json ? 'UnknownOperationException' : 'InvalidAction', `Could not find operation ${op} for version ${CLOUDWATCH_API_VERSION}`);
      this.calls.set(op, (this.calls.get(op) ?? 0) + 1);
      if (op === 'DescribeAlarms' && this.bucket && !this.bucket.tryTake()) throw new CloudWatchError('Throttling', 'Rate exceeded');
      const result = handler(input);
      if (json) {
        answer(200, JSON.stringify(toJsonValue(result ?? {})), 'application/x-amz-json-1.0');
      } else {
        const inner = result === undefined ? '' : `<${operation}Result>${toXml(toXmlValue(result) as XmlNode)}</${operation}Result>`;
        answer(200, `<${operation}Response xmlns="${CLOUDWATCH_XMLNS}">${inner}<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${operation}Response>`, 'text/xml');
      }
    } catch (err) {
      if (res.headersSent || res.destroyed) return;
      fail(err instanceof CloudWatchError ? err : new CloudWatchError('InternalFailure', err instanceof Error ? err.message : String(err), 500));
    }
  }

  private readonly handlers: Readonly<Record<string, (input: Input) => { [k: string]: Out } | undefined>> = {
    DescribeAlarms: (input) => {
      const names = input.list('AlarmNames');
      const prefix = input.str('AlarmNamePrefix');
      if (names.length > MAX_ALARM_NAMES) throw constraint(`[${names.join(', ')}]`, 'alarmNames', `Member must have length less than or equal to ${MAX_ALARM_NAMES}`);
      if (names.length > 0 && prefix !== undefined) throw new CloudWatchError('InvalidParameterCombination', 'AlarmNamePrefix and AlarmNames cannot be specified together.');
      const state = input.str('StateValue');
      if (state !== undefined) oneOf(state, 'stateValue', STATES, STATES_AS_LISTED);
      const maxRecords = integer(input, 'MaxRecords', 'maxRecords', 1, MAX_RECORDS) ?? DEFAULT_RECORDS;
      const types = input.list('AlarmTypes');
      // Without AlarmTypes only metric alarms are returned; this emulator holds no composite alarms.
      const metric = types.length === 0 || types.includes('MetricAlarm');
      const matching = metric
        ? [...this.alarms.values()]
            .filter((a) => (names.length === 0 || names.includes(a.name)) && (prefix === undefined || a.name.startsWith(prefix)) && (state === undefined || a.state === state))
            .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
        : [];
      const token = input.str('NextToken');
      const start = token === undefined ? 0 : Number(Buffer.from(token, 'base64').toString('utf8'));
      if (!Number.isInteger(start) || start < 0 || start > matching.length) throw new CloudWatchError('InvalidNextToken', 'The service couldn\'t process the NextToken.');
      const page = matching.slice(start, start + maxRecords);
      const next = start + maxRecords < matching.length ? Buffer.from(String(start + maxRecords)).toString('base64') : undefined;
      return { MetricAlarms: page.map((a) => this.describe(a)), CompositeAlarms: [], NextToken: next };
    },
    PutMetricAlarm: (input) => {
      const name = required(input, 'AlarmName');
      if (name.length > MAX_NAME) throw constraint(name, 'alarmName', `Member must have length less than or equal to ${MAX_NAME}`);
      // The model's constraints are checked first, as the service validates the request against
      // its model before the operation's own rules (PutMetricAlarmInput in the botocore model).
      const comparison = input.str('ComparisonOperator');
      if (comparison !== undefined) oneOf(comparison, 'comparisonOperator', COMPARISONS);
      const statistic = input.str('Statistic');
      if (statistic !== undefined) oneOf(statistic, 'statistic', STATISTICS);
      const unit = input.str('Unit');
      if (unit !== undefined) oneOf(unit, 'unit', UNITS);
      const period = integer(input, 'Period', 'period', 1);
      const evaluationPeriods = integer(input, 'EvaluationPeriods', 'evaluationPeriods', 1);
      const datapointsToAlarm = integer(input, 'DatapointsToAlarm', 'datapointsToAlarm', 1);
      const actions = (member: string, wire: string) => {
        const list = input.list(wire);
        if (list.length > MAX_ACTIONS) throw constraint(`[${list.join(', ')}]`, member, `Member must have length less than or equal to ${MAX_ACTIONS}`);
        return list;
      };
      const okActions = actions('oKActions', 'OKActions');
      const alarmActions = actions('alarmActions', 'AlarmActions');
      const insufficientDataActions = actions('insufficientDataActions', 'InsufficientDataActions');

      if (comparison === undefined) required(input, 'ComparisonOperator');
      if (evaluationPeriods === undefined) required(input, 'EvaluationPeriods');
      // This emulator holds alarms on one metric (no Metrics math), for which MetricName, Namespace
      // and Period are required and exactly one of Statistic and ExtendedStatistic (PutMetricAlarmInput).
      const metricName = input.str('MetricName');
      if (metricName === undefined || metricName === '') throw validation('MetricName must not be null');
      const namespace = input.str('Namespace');
      if (namespace === undefined || namespace === '') throw validation('Namespace must not be null');
      if (period === undefined) throw validation('Period must not be null');
      const extendedStatistic = input.str('ExtendedStatistic');
      if ((statistic === undefined) === (extendedStatistic === undefined)) {
        throw validation('Exactly one of Statistic or ExtendedStatistic must be specified for an alarm on a metric.');
      }
      // "Valid values are 10, 20, 30, and any multiple of 60"; the total evaluation period is
      // capped at seven days, and at one day for periods under an hour (PutMetricAlarmInput.Period).
      if (period !== 10 && period !== 20 && period !== 30 && period % 60 !== 0) {
        throw validation(`Period (${period}) must be 10, 20, 30 or a multiple of 60.`);
      }
      const total = period * evaluationPeriods!;
      if (period < 3600 && total > MAX_EVALUATION_SECONDS_SUB_HOUR) {
        throw validation(`Period * EvaluationPeriods (${total}) must be at most ${MAX_EVALUATION_SECONDS_SUB_HOUR} seconds (1 day) for a period under an hour.`);
      }
      if (total > MAX_EVALUATION_SECONDS) throw validation(`Period * EvaluationPeriods (${total}) must be at most ${MAX_EVALUATION_SECONDS} seconds (7 days).`);
      if (datapointsToAlarm !== undefined && datapointsToAlarm > evaluationPeriods!) {
        throw validation('DatapointsToAlarm must be less than or equal to EvaluationPeriods');
      }
      const threshold = Number(required(input, 'Threshold'));

      const previous = this.alarms.get(name);
      const now = this.clock.now();
      const description = input.str('AlarmDescription');
      const treatMissingData = input.str('TreatMissingData');
      this.alarms.set(name, {
        name,
        ...(description !== undefined ? { description } : {}),
        metricName,
        namespace,
        ...(statistic !== undefined ? { statistic } : {}),
        ...(extendedStatistic !== undefined ? { extendedStatistic } : {}),
        dimensions: input.dimensions(),
        period,
        ...(unit !== undefined ? { unit } : {}),
        evaluationPeriods: evaluationPeriods!,
        ...(datapointsToAlarm !== undefined ? { datapointsToAlarm } : {}),
        threshold,
        comparisonOperator: comparison!,
        actionsEnabled: input.str('ActionsEnabled') !== 'false',
        okActions,
        alarmActions,
        insufficientDataActions,
        ...(treatMissingData !== undefined ? { treatMissingData } : {}),
        configurationUpdatedAt: now,
        // An update keeps the alarm's state; a new alarm has not been evaluated yet.
        state: previous?.state ?? 'INSUFFICIENT_DATA',
        stateReason: previous?.stateReason ?? 'Unchecked: Initial alarm creation',
        stateUpdatedAt: previous?.stateUpdatedAt ?? now,
      });
      return undefined;
    },
    SetAlarmState: (input) => {
      const name = required(input, 'AlarmName');
      const state = required(input, 'StateValue');
      oneOf(state, 'stateValue', STATES, STATES_AS_LISTED);
      const reason = required(input, 'StateReason');
      if (reason.length > MAX_STATE_REASON) throw constraint(reason, 'stateReason', `Member must have length less than or equal to ${MAX_STATE_REASON}`);
      const data = input.str('StateReasonData');
      if (data !== undefined) {
        try {
          JSON.parse(data);
        } catch {
          throw new CloudWatchError('InvalidFormat', 'StateReasonData must be JSON');
        }
      }
      this.setState(name, state as AlarmStateValue, reason);
      const alarm = this.alarms.get(name);
      if (alarm && data !== undefined) alarm.stateReasonData = data;
      return undefined;
    },
    DeleteAlarms: (input) => {
      const names = input.list('AlarmNames');
      const missing = names.filter((n) => !this.alarms.has(n));
      if (missing.length) throw new CloudWatchError('ResourceNotFound', `Alarm ${missing.join(', ')} not found`, 404);
      for (const n of names) this.alarms.delete(n);
      return undefined;
    },
  };

  private describe(a: MetricAlarm): { [k: string]: Out } {
    return {
      AlarmName: a.name,
      AlarmArn: `arn:aws:cloudwatch:${this.region}:${this.accountId}:alarm:${a.name}`,
      AlarmDescription: a.description,
      AlarmConfigurationUpdatedTimestamp: new Date(a.configurationUpdatedAt),
      ActionsEnabled: a.actionsEnabled,
      OKActions: [...a.okActions],
      AlarmActions: [...a.alarmActions],
      InsufficientDataActions: [...a.insufficientDataActions],
      StateValue: a.state,
      StateReason: a.stateReason,
      StateReasonData: a.stateReasonData,
      StateUpdatedTimestamp: new Date(a.stateUpdatedAt),
      MetricName: a.metricName,
      Namespace: a.namespace,
      Statistic: a.statistic,
      ExtendedStatistic: a.extendedStatistic,
      Dimensions: a.dimensions.map((d) => ({ Name: d.name, Value: d.value })),
      Period: a.period,
      Unit: a.unit,
      EvaluationPeriods: a.evaluationPeriods,
      DatapointsToAlarm: a.datapointsToAlarm,
      Threshold: a.threshold,
      ComparisonOperator: a.comparisonOperator,
      TreatMissingData: a.treatMissingData,
      StateTransitionedTimestamp: new Date(a.stateUpdatedAt),
    };
  }
}

function required(input: Input, name: string): string {
  const value = input.str(name);
  if (value === undefined || value === '') throw new CloudWatchError('MissingParameter', `The parameter ${name} is required.`);
  return value;
}

/** A member of an enum; `listed` is the order AWS's message gives the values in, where it differs from the model's. */
function oneOf(value: string, member: string, values: readonly string[], listed: readonly string[] = values): void {
  if (!values.includes(value)) throw constraint(value, member, `Member must satisfy enum value set: [${listed.join(', ')}]`);
}

/** An integer member within the model's range; undefined when absent. */
function integer(input: Input, name: string, member: string, min: number, max?: number): number | undefined {
  const text = input.str(name);
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === '' || !Number.isInteger(n)) throw constraint(text, member, 'Member must be an integer');
  if (n < min) throw constraint(text, member, `Member must have value greater than or equal to ${min}`);
  if (max !== undefined && n > max) throw constraint(text, member, `Member must have value less than or equal to ${max}`);
  return n;
}
