// The agent's durable state, in var/lib/nixos-ec2-agent/state.json: written atomically and
// journaled through each phase, so an agent killed at any point finds out where it was. A corrupt
// file is set aside with a clear error, never trusted and never fatal; an unreadable one is an error.
//
// The agent is part of the system it switches, so an instance meets other versions of it: a
// configuration that updates nixpkgs brings a newer agent, and a rollback, or a reboot into an older
// generation, brings the older one back to the newer one's files. Each durable file therefore says
// which format wrote it (`version`), and a newer format says which older ones may still read it
// (`minReaderVersion`, below): a reader takes what it knows, carries the rest, and never throws
// away a newer agent's memory as corrupt.
import { z } from 'zod/v3';
import { TransientError } from './errors.js';
import type { RootFs } from './fs.js';

export const STATE_DIR = '/var/lib/nixos-ec2-agent';
export const STATE_FILE = `${STATE_DIR}/state.json`;
export const LAST_GOOD_CONFIGURATION = `${STATE_DIR}/last-good-configuration.nix`;
/** The launch lifecycle hook's record (see report/lifecycle.ts), kept apart from state.json. */
export const LIFECYCLE_FILE = `${STATE_DIR}/lifecycle.json`;
export const USER_DATA_SCRIPT = `${STATE_DIR}/user-data-script`;

/** The format of the durable files this agent reads and writes (readVersioned). */
export const FORMAT = 1;

const ParameterRef = z.object({ name: z.string(), version: z.number() });
/** What built a system: the user data's digest and each parameter's version (also in status.json). */
export const Sources = z.object({ userData: z.string(), parameters: z.array(ParameterRef) });

const GoodGeneration = z.object({
  storePath: z.string(),
  desiredHash: z.string().optional(),
  renderDir: z.string().optional(),
  /**
   * Its configuration.nix, kept with it so that the generation and the file that goes back with it
   * change in one atomic write (an operator's rollback swaps both).
   */
  configuration: z.string().optional(),
  at: z.number(),
});

export const Phase = z.enum(['idle', 'rendered', 'building', 'activating', 'verifying', 'committing', 'rolling-back']);
export type Phase = z.infer<typeof Phase>;

const StateSchema = z.object({
  version: z.literal(FORMAT),
  journal: z.object({
    phase: Phase,
    desiredHash: z.string().optional(),
    storePath: z.string().optional(),
    since: z.number(),
    /** Why a rollback is under way, so a restarted agent finishes it with the same reason. */
    reason: z.string().optional(),
  }),
  /** The generation known to run well: where every rollback goes. */
  lastGood: GoodGeneration.optional(),
  /** The good generation before the last one: where an operator's `rollback` goes. */
  previousGood: GoodGeneration.optional(),
  /** What this agent switched to and verified last (absent: the image's own system). */
  running: z.object({ desiredHash: z.string(), storePath: z.string(), at: z.number() }).optional(),
  /** Desired states that failed, with when they may be tried again. */
  failed: z.record(
    z.string(),
    z.object({
      at: z.number(),
      stage: z.string(),
      reason: z.string(),
      attempts: z.number(),
      retryAt: z.number(),
    }),
  ),
  /** What built each system: desired-state hash and source versions, by store path. */
  builds: z.record(z.string(), z.object({ desiredHash: z.string(), sources: Sources, at: z.number() })),
  /**
   * The `#!` user-data script, run once per instance id. `notRun`: why it was not started (an
   * interpreter the machine lacks); such a script ran nothing, so other user data may still run.
   */
  userDataScript: z.object({ instanceId: z.string(), digest: z.string(), exitCode: z.number().nullable(), at: z.number(), notRun: z.string().optional() }).optional(),
  channelsDigest: z.string().optional(),
  suspended: z.object({ since: z.number(), by: z.string().optional() }).optional(),
  /** Set by `rollback`: hold on the last good generation until the sources change. */
  held: z.object({ desiredHash: z.string(), since: z.number() }).optional(),
  rebootRequired: z.object({ since: z.number(), storePath: z.string() }).optional(),
  /**
   * A rollback found its target unhealthy too (or had none): no good generation runs. Kept so a
   * restarted agent still says so (/healthz, Auto Scaling) while that system runs, rather than
   * taking it for the last good one; a healthy verdict or a convergence ends it.
   */
  noGoodGeneration: z.object({ since: z.number(), storePath: z.string().optional() }).optional(),
});

export type DurableState = z.infer<typeof StateSchema>;

export function emptyState(now: number): DurableState {
  return { version: FORMAT, journal: { phase: 'idle', since: now }, failed: {}, builds: {} };
}

/**
 * One durable file's content as this agent reads it. The rule between formats:
 * - `version` is the format of the agent that wrote the file last;
 * - a newer format keeps the fields of the older ones with their meaning and adds its own at the
 *   top level, and says so with `minReaderVersion`: the oldest format that may read the file and
 *   write it back. A change that older agents would misread sets it to its own version.
 * - This agent reads a file of a newer format when `minReaderVersion` ≤ FORMAT: it takes the fields
 *   it knows and carries the others (`carried`), written back as they were, under `version`
 *   FORMAT: the newer agent, back again, finds its own fields and knows an older one wrote last.
 *   Otherwise the file is newer than this agent can read: set aside, never taken for corrupt.
 * - A file of an older format is read as this one: a new format adds what older files lack as
 *   optional fields, or turns them into its own here, before the schema reads them.
 */
export type Versioned<T> =
  | { readonly value: T; readonly carried: Readonly<Record<string, unknown>> }
  | { readonly problem: string; readonly newer: boolean };

function isFormat(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 1;
}

export function readVersioned<S extends z.AnyZodObject>(json: unknown, schema: S): Versioned<z.infer<S>> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return { problem: '(top level): expected an object', newer: false };
  const record = json as Record<string, unknown>;
  const { version, minReaderVersion } = record;
  if (!isFormat(version)) return { problem: `version: expected a format number, got ${JSON.stringify(version)}`, newer: false };
  if (minReaderVersion !== undefined && (!isFormat(minReaderVersion) || minReaderVersion > version)) {
    return { problem: `minReaderVersion: expected a format number from 1 to ${version}, got ${JSON.stringify(minReaderVersion)}`, newer: false };
  }
  const readers = minReaderVersion ?? version;
  if (readers > FORMAT) return { problem: `written by a newer agent in format ${version}, which agents of format ${readers} and later read; this agent reads format ${FORMAT}`, newer: true };
  const parsed = schema.safeParse({ ...record, version: FORMAT });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { problem: `${issue?.path.join('.') || '(top level)'}: ${issue?.message}`, newer: false };
  }
  const carried: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(record)) if (!(key in schema.shape) && key !== 'minReaderVersion') carried[key] = value;
  return { value: parsed.data, carried };
}

export interface LoadedState {
  readonly state: DurableState;
  /** Set when the file was unreadable and was set aside (or, when only peeked at, would be). */
  readonly problem?: string;
}

/** `builds` keeps at most this many entries, besides those of the generations state names. */
export const MAX_BUILDS = 32;

/** The builds worth keeping: those of the last good, previous good and running systems, then the newest. */
export function pruneBuilds(state: DurableState, max = MAX_BUILDS): DurableState['builds'] {
  const named = new Set([state.lastGood?.storePath, state.previousGood?.storePath, state.running?.storePath]);
  const entries = Object.entries(state.builds).sort((a, b) => b[1].at - a[1].at);
  const kept = entries.filter(([path]) => named.has(path));
  for (const entry of entries) {
    if (kept.length >= max) break;
    if (!named.has(entry[0])) kept.push(entry);
  }
  return Object.fromEntries(kept.sort((a, b) => a[1].at - b[1].at));
}

/**
 * The agent's durable files, and the only writer of them: state.json, last-good-configuration.nix
 * derived from it (written after it, so a crash between the two is mended by the next save), the
 * lifecycle hook's record and the user-data script.
 */
export class StateStore {
  private lastGoodWritten: string | undefined;
  /** A newer agent's fields in the state file as loaded, written back with every save. */
  private carried: Readonly<Record<string, unknown>> = {};

  constructor(
    private readonly fs: RootFs,
    private readonly now: () => number,
  ) {}

  /** The state, for the agent that writes it: a file it cannot read is set aside. */
  async load(): Promise<LoadedState> {
    const read = await this.read();
    if ('state' in read) {
      this.carried = read.carried;
      return { state: read.state };
    }
    return this.setAside(read.problem, read.newer ? 'newer' : 'corrupt');
  }

  /**
   * The state, for a command that only reads it (`generations`), beside a daemon that may be
   * another version of the agent: nothing is set aside, and a file it cannot read reads as empty.
   */
  async peek(): Promise<LoadedState> {
    const read = await this.read();
    return 'state' in read ? { state: read.state } : { state: emptyState(this.now()), problem: read.problem };
  }

  private async read(): Promise<{ state: DurableState; carried: Readonly<Record<string, unknown>> } | { problem: string; newer: boolean }> {
    let text: string | undefined;
    try {
      text = await this.fs.readText(STATE_FILE);
    } catch (err) {
      // Unreadable is not corrupt: EACCES (not root) or EIO (a failing disk) must never cost the
      // instance its memory. Only a file that was read and did not parse is set aside.
      const code = (err as NodeJS.ErrnoException).code;
      throw new TransientError(`cannot read ${this.fs.resolve(STATE_FILE)}${code ? `: ${code}` : ''} (${(err as Error).message})`, 'fs', { where: this.fs.resolve(STATE_FILE), ...(code ? { errno: code } : {}) }, { cause: err });
    }
    if (text === undefined) return { state: emptyState(this.now()), carried: {} };
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      return { problem: `${STATE_FILE} is not JSON (${(err as Error).message})`, newer: false };
    }
    const read = readVersioned(json, StateSchema);
    if ('problem' in read) return { problem: read.newer ? `${STATE_FILE} was ${read.problem}` : `${STATE_FILE} is not a state file: ${read.problem}`, newer: read.newer };
    return { state: read.value, carried: read.carried };
  }

  async save(state: DurableState): Promise<void> {
    await this.fs.writeAtomic(STATE_FILE, `${JSON.stringify({ ...state, ...this.carried }, null, 2)}\n`, { mode: 0o600, dirMode: 0o700 });
    const configuration = state.lastGood?.configuration;
    if (configuration === undefined || configuration === this.lastGoodWritten) return;
    if ((await this.fs.readText(LAST_GOOD_CONFIGURATION)) !== configuration) await this.fs.writeAtomic(LAST_GOOD_CONFIGURATION, configuration, { mode: 0o600 });
    this.lastGoodWritten = configuration;
  }

  /** The lifecycle hook's record as stored, or undefined when there is none. */
  async readLifecycle(): Promise<string | undefined> {
    return this.fs.readText(LIFECYCLE_FILE);
  }

  async saveLifecycle(record: unknown): Promise<void> {
    await this.fs.writeAtomic(LIFECYCLE_FILE, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600, dirMode: 0o700 });
  }

  /** Writes the user-data script, executable by root alone; its path on this machine. */
  async saveUserDataScript(script: string | Uint8Array): Promise<string> {
    await this.fs.writeAtomic(USER_DATA_SCRIPT, script, { mode: 0o700, dirMode: 0o700 });
    return this.fs.resolve(USER_DATA_SCRIPT);
  }

  /** The configuration.nix that goes with the last good generation. */
  async lastGoodConfiguration(state: DurableState): Promise<string | undefined> {
    return state.lastGood?.configuration ?? (await this.fs.readText(LAST_GOOD_CONFIGURATION));
  }

  private async setAside(problem: string, as: 'corrupt' | 'newer'): Promise<LoadedState> {
    this.carried = {};
    const aside = `${STATE_FILE}.${as}-${this.now()}`;
    try {
      const bytes = await this.fs.read(STATE_FILE);
      if (bytes) {
        await this.fs.writeAtomic(aside, bytes, { mode: 0o600 });
        await this.fs.remove(STATE_FILE);
      }
    } catch {
      // Setting it aside is a courtesy; starting clean is what matters.
    }
    return { state: emptyState(this.now()), problem: `${problem}; set aside as ${aside}, starting with empty state` };
  }
}
