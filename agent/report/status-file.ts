// run/nixos-ec2-agent/status.json: what `status --json` prints, rewritten atomically at each step
// so other programs can read it at any moment. Writes are queued so an older status never lands
// after a newer one.
import { z } from 'zod/v3';
import { InvalidInputError } from '../errors.js';
import type { RootFs } from '../fs.js';
import { FORMAT, Phase, readVersioned, Sources } from '../state.js';
import type { Status } from '../status.js';

export const STATUS_FILE = '/run/nixos-ec2-agent/status.json';

export class StatusFile {
  private pending: Status | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly fs: RootFs,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  update(status: Status): void {
    const idle = this.pending === undefined;
    this.pending = status;
    if (idle) this.writing = this.writing.then(() => this.flushOnce());
  }

  /** Resolves when the latest status is on disk. */
  async flush(): Promise<void> {
    await this.writing;
    if (this.pending) await this.flushOnce();
  }

  private async flushOnce(): Promise<void> {
    const status = this.pending;
    this.pending = undefined;
    if (!status) return;
    try {
      // Rewritten at every step of a pass, in /run: atomic, but not worth a disk flush each time.
      await this.fs.writeAtomic(STATUS_FILE, `${JSON.stringify(status, null, 2)}\n`, { mode: 0o644, durable: false });
    } catch (err) {
      this.onError(err as Error);
    }
  }
}

/**
 * The Status as `status` reads it back: status.json may be another version's (an instance meets
 * newer and older agents across switches and rollbacks) or damaged, and what is printed and the
 * exit code decided from it must come from fields that are there and mean what this agent means.
 * Unknown fields are let through: a newer agent of a format this one reads adds its own.
 */
const StatusSchema = z.object({
  version: z.literal(FORMAT),
  pid: z.number().int(),
  updatedAt: z.string(),
  phase: z.union([Phase, z.enum(['starting', 'fetching', 'rendering', 'held', 'suspended', 'stopping'])]),
  condition: z.enum(['converging', 'converged', 'degraded', 'failed']),
  firstConvergenceDone: z.boolean(),
  message: z.string(),
  instanceId: z.string().optional(),
  desired: z
    .object({
      hash: z.string(),
      sources: Sources,
      notes: z.array(z.string()),
      runs: z.enum(['configuration', 'closure']).optional(),
      closure: z.object({ storePath: z.string(), substituter: z.string() }).optional(),
    })
    .optional(),
  running: z.object({ storePath: z.string(), desiredHash: z.string().optional(), generation: z.number().optional() }).optional(),
  lastGood: z.object({ storePath: z.string(), desiredHash: z.string().optional() }).optional(),
  noGoodGeneration: z.boolean(),
  lastResult: z
    .object({
      outcome: z.enum(['converged', 'unchanged', 'rolled-back', 'failed', 'invalid-input', 'held', 'suspended', 'cancelled']),
      at: z.string(),
      durationMs: z.number(),
      desiredHash: z.string().optional(),
      error: z
        .object({
          kind: z.string(),
          message: z.string(),
          stage: z.string().optional(),
          where: z.string().optional(),
          exitCode: z.number().nullable().optional(),
          tail: z.array(z.string()).optional(),
        })
        .optional(),
    })
    .optional(),
  reasons: z.array(z.string()),
  suspended: z.object({ since: z.string() }).optional(),
  held: z.object({ since: z.string(), desiredHash: z.string() }).optional(),
  rebootRequired: z.boolean(),
  lastSuccessAt: z.string().optional(),
  rollout: z
    .array(
      z.object({
        prefix: z.string(),
        candidate: z.string(),
        state: z.enum(['invalid', 'staged', 'progressing', 'baking', 'complete', 'halted']),
        reason: z.string().optional(),
        haltedBy: z.enum(['operator', 'alarm', 'failures']).optional(),
        takes: z.enum(['stable', 'candidate']),
        cohort: z.number(),
        canary: z.boolean(),
        percent: z.number(),
        step: z.number(),
        steps: z.number(),
        failures: z.number(),
        lateFailures: z.number().optional(),
        threshold: z.number(),
        startAt: z.string().optional(),
        fullAt: z.string().optional(),
        completeAt: z.string().optional(),
        nextChangeAt: z.string().optional(),
      }),
    )
    .optional(),
});

// What the schema reads is a Status: a field the Status gains or changes must be read here too.
const asStatus: (read: z.infer<typeof StatusSchema>) => Status = (read) => read;

/**
 * A status another process wrote (status.json, or a daemon's answer on the control socket), read
 * as this agent's Status; `where` names it in the refusal, an InvalidInputError: what it holds
 * cannot be taken as it is.
 */
export function parseStatus(json: unknown, where: string): Status {
  const read = readVersioned(json, StatusSchema);
  if ('problem' in read) throw new InvalidInputError(read.newer ? `was ${read.problem}` : `not a status: ${read.problem}`, where, { newer: read.newer });
  return { ...read.carried, ...asStatus(read.value) };
}

/** status.json, or undefined when there is none; throws InvalidInputError when it cannot be read as a status. */
export async function readStatusFile(fs: RootFs): Promise<Status | undefined> {
  const text = await fs.readText(STATUS_FILE);
  if (text === undefined) return undefined;
  const where = fs.resolve(STATUS_FILE);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // Written atomically (writeAtomic), a status.json is whole or absent: one cut short was damaged.
    throw new InvalidInputError(`not JSON (${(err as Error).message})`, where);
  }
  return parseStatus(json, where);
}
