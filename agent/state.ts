// The agent's durable state, in var/lib/nixos-ec2-agent/state.json: written atomically and
// journaled through each phase, so an agent killed at any point finds out where it was. A corrupt
// file is set aside with a clear error, never trusted and never fatal; an unreadable one is an error.
import { z } from 'zod/v3';
import { TransientError } from './errors.js';
import type { RootFs } from './fs.js';

export const STATE_DIR = '/var/lib/nixos-ec2-agent';
export const STATE_FILE = `${STATE_DIR}/state.json`;
export const LAST_GOOD_CONFIGURATION = `${STATE_DIR}/last-good-configuration.nix`;
/** The launch lifecycle hook's record (see report/lifecycle.ts), kept apart from state.json. */
export const LIFECYCLE_FILE = `${STATE_DIR}/lifecycle.json`;
export const USER_DATA_SCRIPT = `${STATE_DIR}/user-data-script`;

const ParameterRef = z.object({ name: z.string(), version: z.number() });
const Sources = z.object({ userData: z.string(), parameters: z.array(ParameterRef) });

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
  version: z.literal(1),
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
  /** The `#!` user-data script, run once per instance id. */
  userDataScript: z.object({ instanceId: z.string(), digest: z.string(), exitCode: z.number().nullable(), at: z.number() }).optional(),
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
  return { version: 1, journal: { phase: 'idle', since: now }, failed: {}, builds: {} };
}

export interface LoadedState {
  readonly state: DurableState;
  /** Set when the file was unreadable and was set aside. */
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

  constructor(
    private readonly fs: RootFs,
    private readonly now: () => number,
  ) {}

  async load(): Promise<LoadedState> {
    let text: string | undefined;
    try {
      text = await this.fs.readText(STATE_FILE);
    } catch (err) {
      // Unreadable is not corrupt: EACCES (not root) or EIO (a failing disk) must never cost the
      // instance its memory. Only a file that was read and did not parse is set aside.
      const code = (err as NodeJS.ErrnoException).code;
      throw new TransientError(`cannot read ${this.fs.resolve(STATE_FILE)}${code ? `: ${code}` : ''} (${(err as Error).message})`, 'fs', { where: this.fs.resolve(STATE_FILE), ...(code ? { errno: code } : {}) }, { cause: err });
    }
    if (text === undefined) return { state: emptyState(this.now()) };
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      return this.setAside(`${STATE_FILE} is not JSON (${(err as Error).message})`);
    }
    const parsed = StateSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return this.setAside(`${STATE_FILE} is not a state file: ${issue?.path.join('.') || '(top level)'}: ${issue?.message}`);
    }
    return { state: parsed.data };
  }

  async save(state: DurableState): Promise<void> {
    await this.fs.writeAtomic(STATE_FILE, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600, dirMode: 0o700 });
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

  private async setAside(problem: string): Promise<LoadedState> {
    const aside = `${STATE_FILE}.corrupt-${this.now()}`;
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
