// The agent's configuration: one JSON file (the NixOS module writes it), every field optional with
// a documented default. Parsed once at the edge; nothing past here sees raw JSON.
import { sha256Hex } from './sha256.js';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod/v3';
import { JsonSyntaxError, parseJson } from './desired/json.js';
import { InvalidInputError } from './errors.js';
import { JsonNumber, type Json } from './render/nix.js';
import type { Placeholders } from './sources/ssm.js';
import { firstInvalidUtf8 } from './utf8.js';

/**
 * Node's timers hold at most 2^31 − 1 ms (about 24.8 days); asked for longer, one fires after 1 ms
 * (TimeoutOverflowWarning): a build time limit of 30 days would end every build as it starts.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;
const MAX_TIMER_SECONDS = Math.floor(MAX_TIMER_MS / 1_000);
const timerSeconds = () => z.number().max(MAX_TIMER_SECONDS, `at most ${MAX_TIMER_SECONDS} seconds (about 24 days), the longest a timer holds`);
const timerMs = () => z.number().int().max(MAX_TIMER_MS, `at most ${MAX_TIMER_MS} ms (about 24 days), the longest a timer holds`);
const seconds = (def: number) => timerSeconds().positive().default(def);
const argv = z.array(z.string().min(1)).min(1);

/**
 * The placeholders sources/ssm.ts's fillPrefix fills. Any other is never filled, so its prefix
 * would be skipped on every poll. Keyed by Placeholders so that a new one must be added here.
 */
const SSM_PLACEHOLDERS: Record<keyof Placeholders, true> = { 'instance-id': true, region: true, asg: true };
const KNOWN_PLACEHOLDERS = Object.keys(SSM_PLACEHOLDERS).map((k) => `{${k}}`);

function unknownPlaceholder(prefix: string): string | undefined {
  return [...prefix.matchAll(/\{[^}]*\}/g)].map((m) => m[0]).find((p) => !KNOWN_PLACEHOLDERS.includes(p));
}

/** A local time as kernel.ts reads it: an hour 00–23 and a minute 00–59. */
const clockTime = () => z.string().regex(/^(?:[01]\d|2[0-3]):[0-5]\d$/, 'a time HH:MM from 00:00 to 23:59');

/**
 * Below this, polling is no longer "a read now and then" but a loop: each poll is at least one SSM
 * call (or an IMDS read), and an account's default GetParameters quota is 40 per second for the
 * whole fleet, so a tiny interval throttles every instance in the account. Half a second still
 * lets a sandbox or a test see a pushed change at once.
 */
const MIN_POLL_SECONDS = 0.5;

const HttpProbe = z.strictObject({
  name: z.string().min(1),
  http: z.strictObject({
    // The probe speaks HTTP: any other scheme would fail every check and roll back every switch.
    url: z
      .string()
      .url()
      .refine((u) => /^https?:\/\//i.test(u), 'an http:// or https:// URL'),
    expectStatus: z.number().int().min(100).max(599).default(200),
    timeoutMs: timerMs().positive().default(2_000),
  }),
});
const CommandProbe = z.strictObject({
  name: z.string().min(1),
  command: z.strictObject({
    argv,
    timeoutMs: timerMs().positive().default(10_000),
  }),
});

export const ConfigSchema = z.strictObject({
  /** Prefixes every absolute path the agent touches, so a sandbox or a test is a directory. */
  root: z.string().min(1).default('/'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  imds: z
    .strictObject({
      /** Per HTTP attempt; the SDK's own client has none. */
      timeoutMs: timerMs().positive().default(1_000),
      retries: z.number().int().min(0).default(5),
      /** Endpoint override; otherwise AWS_EC2_METADATA_SERVICE_ENDPOINT, then 169.254.169.254. */
      endpoint: z
        .string()
        .url()
        .refine((u) => /^https?:\/\//i.test(u), 'an http:// or https:// URL (IMDS is HTTP)')
        .optional(),
    })
    .default({}),

  userData: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** A `#!` user-data script's own time limit. */
      scriptTimeoutSeconds: seconds(600),
    })
    .default({}),

  ssm: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Ordered; a later prefix's option wins over every earlier definition it overlaps (README). `{instance-id}`, `{asg}`, `{region}` come from IMDS. */
      prefixes: z
        .array(
          z
            .string()
            .regex(/^\//, 'an SSM path starts with /')
            .superRefine((prefix, ctx) => {
              const unknown = unknownPlaceholder(prefix);
              if (unknown) ctx.addIssue({ code: z.ZodIssueCode.custom, message: `unknown placeholder ${unknown} (known: ${KNOWN_PLACEHOLDERS.join(', ')})` });
            }),
        )
        .default(['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}']),
      pollIntervalSeconds: timerSeconds().min(MIN_POLL_SECONDS, `at least ${MIN_POLL_SECONDS} seconds: each poll calls SSM or IMDS`).default(600),
      /** Each wait is uniform in interval × [1 − jitter/2, 1 + jitter/2]; the first poll in [0, interval]. */
      pollJitter: z.number().min(0).max(1).default(1),
      /**
       * An instance tag, read from IMDS (no SSM call), whose change means "fetch the parameters
       * again". Needs "Allow tags in instance metadata"; without it the revision parameter is used.
       * null: not read.
       */
      revisionTag: z.string().min(1).nullable().default('nixos-ec2-agent-revision'),
      /**
       * A parameter under each prefix (`<prefix>/revision`) that operators bump after a change:
       * one GetParameters call per poll reads all of them, and the whole tree is fetched only when
       * one moved. With neither tag nor parameter, every poll fetches the whole tree. null: not read.
       */
      revisionParameter: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'one name segment').nullable().default('revision'),
      /** The whole tree is fetched at least this often, so a change whose bump was missed still converges. */
      fullRefreshSeconds: seconds(86_400),
      /** Throttled polls back off exponentially (full jitter) up to this wait. */
      maxBackoffSeconds: seconds(900),
      /**
       * The SDK's attempts per call for what keeps its retry (PutParameter, the rollout commands'
       * reads); the agent's own reads are sent once and wait a busy account out (aws/ssm-sdk.ts).
       */
      maxAttempts: z.number().int().min(1).default(10),
    })
    .default({}),

  local: z
    .strictObject({
      /** The image's own configuration, imported by configuration.nix when it exists. */
      baseConfiguration: z.string().default('/etc/nixos/base.nix'),
      /** Drop-in modules from other tools or people; every *.nix here is imported. */
      modulesDir: z.string().default('/etc/nixos-ec2-agent/local.d'),
      watch: z.boolean().default(true),
    })
    .default({}),

  rebuild: z
    .strictObject({
      /**
       * `safe`: build, `switch-to-configuration test`, verify, then make it the boot default.
       * `switch`: `nixos-rebuild switch` then verify (amazon-init's order; a crash before the
       * verdict leaves an unverified generation as the boot default).
       */
      mode: z.enum(['safe', 'switch']).default('safe'),
      nixosRebuild: z.string().default('nixos-rebuild'),
      nixEnv: z.string().default('nix-env'),
      nixChannel: z.string().default('nix-channel'),
      nixInstantiate: z.string().default('nix-instantiate'),
      extraArgs: z.array(z.string()).default([]),
      buildTimeoutSeconds: seconds(3_600),
      activateTimeoutSeconds: seconds(600),
      /** `require`: no Nix parser, no switch. `if-available`: skip the parse where Nix is absent. */
      validate: z.enum(['require', 'if-available']).default('require'),
    })
    .default({}),

  /** Prebuilt system closures (the `system` source): how they are substituted. */
  closure: z
    .strictObject({
      nix: z.string().default('nix'),
      nixStore: z.string().default('nix-store'),
      /** For reading the closure's .narinfo files, and again for substituting it. */
      timeoutSeconds: seconds(1_800),
      /** Kept free in the store beyond the closure's own size. */
      reserveMiB: z.number().int().min(0).default(256),
      /** Short of space: collect garbage (unrooted paths; generations stay) and look again. */
      gcWhenShort: z.boolean().default(false),
    })
    .default({}),

  health: z
    .strictObject({
      systemctl: z.string().default('systemctl'),
      checkFailedUnits: z.boolean().default(true),
      /** Failed checks are retried until this long after activation, then the verdict is unhealthy. */
      graceSeconds: timerSeconds().min(0).default(60),
      intervalSeconds: seconds(5),
      probes: z.array(z.union([HttpProbe, CommandProbe])).default([]),
      /**
       * After a switch, IMDS and (when it is a source) SSM must answer a new connection before the
       * generation becomes the boot default: one that cut the instance off is rolled back.
       */
      checkReachable: z.boolean().default(true),
    })
    .default({}),

  retry: z
    .strictObject({
      /** A failed desired state is retried after this, doubling each time, unless a source changes. */
      failedBackoffSeconds: seconds(600),
      maxBackoffSeconds: seconds(6 * 3_600),
    })
    .default({}),

  watch: z
    .strictObject({
      /**
       * A change opens a settle window: changes are gathered until this long passes with none
       * (SSM pushes seen by polling, local files, a newer state during a build), then converged once.
       */
      quietPeriodMs: timerMs().min(0).default(2_000),
      /** The settle window's bound: a stream of changes that never pauses still converges this often. */
      maxSettleSeconds: seconds(60),
      /**
       * While a build runs, the sources are checked this often (revision tag or parameter, local
       * files): a newer desired state cancels a build that has not activated yet.
       */
      cancelCheckSeconds: seconds(10),
    })
    .default({}),

  http: z
    .strictObject({
      /** host:port for /healthz, /readyz, /status, /metrics; null turns it off. */
      listen: z
        .string()
        .superRefine((listen, ctx) => {
          const problem = listenProblem(listen);
          if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
        })
        .nullable()
        .default('0.0.0.0:9731'),
    })
    .default({}),

  /**
   * Root-only unix socket for `status`, `converge --now`, `rollback`, `suspend`, `resume`, under
   * `root`. Where root makes the path too long for a unix socket, see controlSocketPath.
   */
  controlSocket: z
    .string()
    .regex(/^\/(?:.*\/)?[^/]+$/, 'an absolute path to the socket file (e.g. /run/nixos-ec2-agent/control.sock)')
    .default('/run/nixos-ec2-agent/control.sock'),

  lifecycle: z
    .strictObject({
      enabled: z.boolean().default(true),
      /** Launch hook to complete; null discovers it with DescribeLifecycleHooks. */
      hookName: z.string().nullable().default(null),
      /** Heartbeat every this often while converging; null = a third of the hook's timeout. */
      heartbeatSeconds: timerSeconds().positive().nullable().default(null),
      /** ABANDON when no good convergence is reached within this. */
      budgetSeconds: seconds(3_600),
      /** SetInstanceHealth Unhealthy when no good generation can run. */
      reportUnhealthy: z.boolean().default(true),
    })
    .default({}),

  termination: z
    .strictObject({
      /**
       * Watch IMDS for `autoscaling/target-lifecycle-state` and `spot/instance-action`: while the
       * instance is leaving, no new rebuild starts and a build that has not activated is cancelled.
       */
      enabled: z.boolean().default(true),
      /**
       * How often the spot interruption notice is read (on a spot instance only); the target
       * lifecycle state is read every `TARGET_STATE_EVERY` (6) of these, 30 s by default (see
       * sources/leaving.ts for why).
       */
      checkSeconds: seconds(5),
    })
    .default({}),

  /** Run after each convergence with NIXOS_EC2_AGENT_* in its environment; failure is reported, not fatal. */
  postConvergeCommand: z
    .strictObject({ argv, timeoutSeconds: seconds(60) })
    .nullable()
    .default(null),

  kernel: z
    .strictObject({
      /** What to do when a new generation changes kernel, initrd or modules. */
      policy: z.enum(['report', 'reboot', 'replace']).default('report'),
      /** Local time window HH:MM for `reboot`, as system.autoUpgrade's rebootWindow. */
      rebootWindow: z
        .strictObject({ lower: clockTime(), upper: clockTime() })
        .nullable()
        .default(null),
      rebootCommand: argv.default(['systemctl', 'reboot']),
    })
    .default({}),

  rollout: z
    .strictObject({
      /**
       * An instance tag whose value "true" makes the instance a canary: it takes a progressive
       * rollout's candidate with the first cohort. Read from IMDS, so it needs "Allow tags in
       * instance metadata", and only while SSM carries a rollout. null: not read.
       */
      canaryTag: z.string().min(1).nullable().default('nixos-ec2-agent-canary'),
    })
    .default({}),
});

export type Config = z.infer<typeof ConfigSchema>;

/**
 * What report/http.ts's parseListen takes: `host:port`, `[v6]:port` or `:port`. Checked here too, so
 * that check-config (and the NixOS build that runs it) refuses what the daemon would refuse at its
 * start; not imported from there, which would load node:http for every command. The host too: one
 * the daemon cannot listen on fails only once it runs, and then it serves no /healthz at all.
 */
function listenProblem(listen: string): string | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen.trim());
  if (m === null || Number(m[3]) > 65535) return 'not host:port (e.g. 0.0.0.0:9731, [::]:9731, 127.0.0.1:0)';
  const v6 = m[1];
  if (v6 !== undefined) return isIpv6(v6) ? undefined : `[${v6}] is not an IPv6 address`;
  const host = m[2] ?? '';
  // `:port` listens on every address.
  if (host === '' || host === 'localhost' || IPV4.test(host)) return undefined;
  // All digits and dots but not an IPv4 address (999.1.1.1): no host name is that either.
  if (isHostname(host) && !/^[\d.]+$/.test(host)) return undefined;
  return `the host ${JSON.stringify(host)} is not an IP address, localhost or a host name`;
}

const OCTET = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);

/** RFC 1123: dot-separated labels of letters, digits and inner hyphens, 63 bytes each, 253 in all. */
function isHostname(host: string): boolean {
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  return name.length <= 253 && name.split('.').every((label) => /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(label));
}

/** The URL parser knows IPv6's forms (`::`, embedded IPv4, …); a regular expression would not all. */
function isIpv6(address: string): boolean {
  try {
    new URL(`http://[${address}]/`);
    return true;
  } catch {
    return false;
  }
}

/** sun_path holds 108 bytes on Linux, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

/**
 * Where the daemon of this configuration listens, and where every control command looks: the
 * socket under root, so `--root DIR` alone finds a sandbox's daemon. A root deep enough to make that
 * path too long for a unix socket gets a short path derived from it instead (the same for the daemon
 * and the commands, whatever their working directory or TMPDIR). The socket stays mode 0600.
 */
export function controlSocketPath(config: Pick<Config, 'root' | 'controlSocket'>): string {
  const full = path.join(path.resolve(config.root), config.controlSocket);
  if (Buffer.byteLength(full) <= MAX_SOCKET_PATH) return full;
  const id = sha256Hex(full).slice(0, 20);
  return `/tmp/nixos-ec2-agent-${id}/${path.basename(config.controlSocket)}`;
}
export type ConfigInput = z.input<typeof ConfigSchema>;

/** Validates a configuration value; the error names every bad field by its path. */
export function parseConfig(value: unknown, where = 'configuration'): Config {
  const result = ConfigSchema.safeParse(value);
  if (result.success) {
    const problems = crossFieldProblems(result.data);
    if (problems.length > 0) throw new InvalidInputError(problems.join('; '), where, { problems });
    return result.data;
  }
  const at = (path: readonly (string | number)[]) => (path.length ? path.join('.') : '(top level)');
  const describe = (issue: z.ZodIssue): string[] => {
    // Each unknown field by its own path: `ssm.prefix: unknown field "prefix"`.
    if (issue.code === 'unrecognized_keys') return issue.keys.map((key) => `${at([...issue.path, key])}: unknown field "${key}"`);
    // A probe is an http or a command one, and zod says only "Invalid input" at the probe: the
    // alternative with the fewest problems is the one meant, and its problems name the field.
    if (issue.code === 'invalid_union') {
      const alternatives = issue.unionErrors.map((e) => e.issues.flatMap(describe));
      const fewest = Math.min(...alternatives.map((a) => a.length));
      const closest = alternatives.filter((a) => a.length === fewest);
      if (closest.length === 1) return closest[0]!;
      if (closest.length > 1) return [closest.map((a) => a.join(', ')).join(' or ')];
    }
    return [`${at(issue.path)}: ${issue.message}`];
  };
  const problems = result.error.issues.flatMap(describe);
  throw new InvalidInputError(problems.join('; '), where, { problems });
}

/**
 * What no single field shows: settings that each parse but together could not be used. Checked
 * after the schema, which stays plain objects that tools can walk (test/unit/nix-files.test.ts).
 */
function crossFieldProblems(config: Config): string[] {
  const problems: string[] = [];
  const { failedBackoffSeconds, maxBackoffSeconds } = config.retry;
  // The first retry waits failedBackoffSeconds and the doubling is capped at the maximum: a maximum
  // below the base would make every wait the maximum, the base meaning nothing.
  if (maxBackoffSeconds < failedBackoffSeconds) {
    problems.push(`retry.maxBackoffSeconds: ${maxBackoffSeconds} is less than retry.failedBackoffSeconds (${failedBackoffSeconds}); the cap must be at least the first wait`);
  }
  return problems;
}

/**
 * Reads a configuration file strictly: JSON.parse would keep the last of two duplicate keys and turn
 * invalid UTF-8 into U+FFFD, so a file that says two things, or not what its author typed, would be
 * taken silently. The same reader as SSM option values (desired/json.ts), and as there and for user
 * data, a byte order mark is refused rather than dropped.
 */
export async function loadConfig(file: string | undefined, overrides: Record<string, unknown> = {}): Promise<Config> {
  let value: object = {};
  if (file !== undefined) {
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      throw new InvalidInputError(`cannot read: ${(err as Error).message}`, file);
    }
    let text: string;
    try {
      // ignoreBOM keeps a byte order mark as a character, for the parser to refuse.
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
    } catch {
      throw new InvalidInputError(`not valid UTF-8 (the sequence at byte ${firstInvalidUtf8(bytes)}, counting from 0)`, file);
    }
    let parsed: unknown;
    try {
      parsed = plainJson(parseJson(text));
    } catch (err) {
      if (!(err instanceof JsonSyntaxError)) throw err;
      const { line, column } = err.lineColumn(text);
      const at = err.path.length ? `, at ${err.path.slice(0, 8).join('.')}${err.path.length > 8 ? '…' : ''}` : '';
      throw new InvalidInputError(`not JSON: line ${line}, column ${column}${at}: ${err.reason}`, file, { line, column });
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new InvalidInputError('must be a JSON object', file);
    }
    value = parsed;
  }
  return parseConfig({ ...value, ...overrides }, file ?? 'configuration');
}

/**
 * Refuses a root that is not an existing directory. Every command that works under the root would
 * otherwise make what it needs there: a mistyped `--root` became a whole new tree (lock, state.json,
 * run/) and `suspend` reported an instance suspended that no agent will ever look at. The real root,
 * `/`, always exists; a sandbox's is made by the sandbox before its agent starts. `where` is what
 * gave the root: `--root`, or the configuration file (its `root` field).
 */
export async function checkRoot(root: string, where: { readonly flag: string } | { readonly file: string }): Promise<void> {
  const refuse = (problem: string) =>
    'flag' in where ? new InvalidInputError(problem, where.flag, { root }) : new InvalidInputError(`root: ${problem}`, where.file, { root, field: 'root' });
  let st;
  try {
    st = await stat(root);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // Not this user's to look at: the command's own first step says what it needs ("needs root").
    if (code === 'EACCES' || code === 'EPERM') return;
    throw refuse(code === 'ENOENT' || code === 'ENOTDIR' ? `${root} does not exist` : `cannot use ${root}: ${(err as Error).message}`);
  }
  if (!st.isDirectory()) throw refuse(`${root} is not a directory`);
}

/** The schema takes plain numbers: a number kept as its text becomes the double JSON.parse gives. */
function plainJson(v: Json): unknown {
  if (v instanceof JsonNumber) return Number(v.text);
  if (Array.isArray(v)) return v.map(plainJson);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plainJson(x)]));
  return v;
}
