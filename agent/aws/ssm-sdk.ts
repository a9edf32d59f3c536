// The SSM client and the commands the agent sends, and nothing else of @aws-sdk/client-ssm. Loaded
// lazily (agent.ts, rollout/commands.ts) from here rather than from the package: a dynamic import
// of the package keeps all of it in the bundle, the schema of every SSM operation included, and
// those schemas are built when the module loads and stay in the heap (~2.4 MiB resident against
// the few operations named here, `npm run bench -- watch`, "what each dependency adds").
import { GetParametersByPathCommand, GetParametersCommand, PutParameterCommand, type SSMClient } from '@aws-sdk/client-ssm';
import type { MetadataBearer, MiddlewareStack } from '@smithy/types';
import type { Clock } from '../ports.js';
import { isBusy, type SsmParts } from '../sources/revision.js';
import { SsmSource } from '../sources/ssm.js';

export { DeleteParametersCommand, GetParametersByPathCommand, GetParametersCommand, PutParameterCommand, SSMClient } from '@aws-sdk/client-ssm';

/**
 * Sends the command in one attempt: the client's retry middleware (its attempts, its backoff, its
 * rate limiter) replaced for this command alone. The caller decides when to ask again.
 */
export function inOneAttempt<I extends object, O extends MetadataBearer>(command: { readonly middlewareStack: MiddlewareStack<I, O> }): void {
  command.middlewareStack.add((next) => (args) => next(args), { name: 'retryMiddleware', step: 'finalizeRequest', priority: 'high', override: true, tags: ['RETRY'] });
}

export interface PatienceOptions {
  readonly clock: Clock;
  readonly random: () => number;
  /** The longest a call waits on a busy account in all before it fails. */
  readonly maxWaitMs: number;
}

/** The least a call waits on a busy account before it fails: about what the SDK's attempts took. */
export const MIN_PATIENCE_MS = 30_000;
/** A call waits on a busy account for this many of the windows its client was at when it began. */
const PATIENCE_WINDOWS = 8;

/** The window a busy call waits in at level 0; it doubles with each whole level. */
export const BUSY_BASE_MS = 1_000;
/** The widest window a busy call waits in. */
export const BUSY_MAX_WINDOW_MS = 300_000;
/** Level gained by a busy answer, and lost by an answer: the window grows by 2^¼ and shrinks by 2^½. */
const BUSY_STEP_UP = 0.25;
const BUSY_STEP_DOWN = 0.5;

/**
 * How one client waits on a busy account (throttled, or failing on SSM's side). Every call is one
 * attempt; a busy answer raises the client's level and the call is asked again after a wait drawn
 * uniformly from [0, BUSY_BASE_MS × 2^level] ("full jitter"); an answer lowers the level. The level
 * is the client's, not the call's, and it settles where about one call in three gets through:
 * every instance of a fleet sharing the account's throughput then waits alike and all progress
 * together (steps of a whole doubling let some instances' windows run far ahead of the rest, which
 * finished minutes after the fleet), the account's budget stays in use, and a refused call costs
 * one request rather than the SDK's `maxAttempts` in quick succession (at ten thousand instances
 * those retries were most of what the account was asked).
 */
export class Patience {
  private level = 0;

  constructor(private readonly options: PatienceOptions) {}

  /**
   * `call` until it is answered, or fails otherwise than busy, or has waited its patience out: at
   * least MIN_PATIENCE_MS, more the busier the account has been (PATIENCE_WINDOWS of the client's
   * window), at most maxWaitMs. An account that refuses everything fails a pass about as soon as
   * the SDK's own attempts did, so that it is reported; a congested one, where answers keep coming
   * between the refusals, is waited out rather than costing the fetch's pages over again.
   */
  async call<T>(call: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const patience = Math.min(this.options.maxWaitMs, Math.max(MIN_PATIENCE_MS, PATIENCE_WINDOWS * BUSY_BASE_MS * 2 ** this.level));
    let waited = 0;
    for (;;) {
      signal?.throwIfAborted();
      try {
        const answer = await call();
        this.level = Math.max(0, this.level - BUSY_STEP_DOWN);
        return answer;
      } catch (err) {
        const left = patience - waited;
        if (left <= 0 || !isBusy(err)) throw err;
        this.level = Math.min(this.level + BUSY_STEP_UP, 30);
        const wait = Math.min(left, 1 + this.options.random() * Math.min(BUSY_MAX_WINDOW_MS, BUSY_BASE_MS * 2 ** this.level));
        waited += wait;
        await this.options.clock.sleep(wait, signal);
      }
    }
  }
}

/**
 * What the agent reads and writes through `client`. The whole tree's pages, and the revision read
 * a fetch of it begins with, wait on a busy account with `patience`: that fetch is due whatever
 * happens, the pages already read were paid for out of the account's shared throughput, and a
 * fetch failed and begun over would pay for them again. The cheap revision look (a poll, a check
 * during a build) is one attempt: when SSM is busy its caller backs off instead (agent/schedule.ts).
 */
export function ssmParts(client: SSMClient, patience: PatienceOptions): SsmParts {
  const waits = new Patience(patience);
  return {
    source: new SsmSource((input, signal) =>
      waits.call(() => {
        const command = new GetParametersByPathCommand(input);
        inOneAttempt(command);
        return client.send(command);
      }, signal),
    ),
    getParameters: (input, options) => {
      const send = () => {
        const command = new GetParametersCommand(input);
        inOneAttempt(command);
        return client.send(command);
      };
      return options?.patient ? waits.call(send, options.signal) : send();
    },
    putParameter: (input) => client.send(new PutParameterCommand(input)),
  };
}

/**
 * Resolves when SSM answers one request, whatever it says: an error AWS sent back (throttled,
 * denied, a path it refuses) still came over the network, which is all that verify/reach.ts asks.
 * `client` must open a connection per request (its agents without keep-alive). `path`: a
 * non-recursive read of one parameter, the cheapest read the agent's own permissions allow.
 */
export async function ssmAnswers(client: SSMClient, path: string, timeoutMs: number): Promise<void> {
  const command = new GetParametersByPathCommand({ Path: path, Recursive: false, MaxResults: 1 });
  inOneAttempt(command);
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    await client.send(command, { abortSignal: signal });
  } catch (err) {
    if (typeof (err as Partial<MetadataBearer>).$metadata?.httpStatusCode === 'number') return;
    if (signal.aborted) throw new Error(`no answer within ${timeoutMs} ms`);
    throw err;
  }
}
