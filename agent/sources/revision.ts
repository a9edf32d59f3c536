// Cheap change detection for SSM. Every instance of a fleet shares one account's read throughput
// (40 GetParameter* calls a second by default), so a poll must not fetch the whole tree. In order
// of cost:
//   1. an instance tag (`ssm.revisionTag`) read from IMDS: no SSM call at all;
//   2. a revision parameter under each prefix (`<prefix>/revision`), all read by one GetParameters
//      call (it takes up to 10 names, and answers unknown names in InvalidParameters, not an error);
//   3. neither exists: the whole tree, every poll (what an agent without a revision costs).
// The whole tree is fetched when the revision moved, when asked (converge --now, SIGHUP), and at
// least every `fullRefreshMs`, so a change whose bump was missed still converges.
import { isAgentError, TransientError } from '../errors.js';
import type { Imds } from '../aws/imds.js';
import type { Clock } from '../ports.js';
import type { PutParameter } from '../rollout/reporter.js';
import { fillPrefix, mapSsmError, type Placeholders, type SsmSnapshot } from './ssm.js';

/** What SourceReader needs of SSM: the whole tree under the prefixes. */
export interface SsmFetcher {
  fetch(prefixes: readonly string[], values: Placeholders, signal?: AbortSignal): Promise<SsmSnapshot>;
}

/**
 * SSM GetParameters: the one cheap read, in one attempt. `patient`: a read the fetch of the whole
 * tree begins with, which waits out a busy account as the tree's pages do (agent/aws/ssm-sdk.ts).
 */
export type GetParameters = (input: { Names: string[] }, options?: { readonly patient?: boolean; readonly signal?: AbortSignal }) => Promise<{
  Parameters?: { Name?: string; Version?: number }[];
  InvalidParameters?: string[];
}>;

export interface SsmParts {
  readonly source: SsmFetcher;
  /** Absent: the revision parameter cannot be read, only the tag. */
  readonly getParameters?: GetParameters;
  /** The one write: a failed rollout candidate's record. */
  readonly putParameter?: PutParameter;
}

export type RevisionMode = 'tag' | 'parameter' | 'full';

export interface RevisionMark {
  readonly mode: RevisionMode;
  /** Tag value, or `name@version` of each revision parameter; '' for full. */
  readonly value: string;
}

export interface RevisionOptions {
  readonly clock: Clock;
  readonly imds: Imds;
  readonly tag: string | null;
  readonly parameter: string | null;
  readonly fullRefreshMs: number;
}

export interface RevisionStats {
  readonly mode: RevisionMode | 'unknown';
  readonly fullFetches: number;
  readonly cheapChecks: number;
  /** Consecutive throttled SSM calls; 0 after any success. */
  readonly throttleLevel: number;
  readonly lastFullFetchAt: number | undefined;
}

interface Cache {
  readonly key: string;
  readonly snapshot: SsmSnapshot;
  readonly mark: RevisionMark;
  readonly at: number;
  readonly filled: readonly string[];
}

/**
 * Marks a revision parameter first seen in the tree, followed by its versions there: the next fetch
 * reads it properly (the value never matches a real read), and a check meanwhile compares against
 * the versions the tree showed.
 */
const SEEN_IN_TREE = '(seen in the tree) ';

/** Throttling, as the SDK names it after its own retries gave up. */
export function isThrottling(err: unknown): boolean {
  const code = isAgentError(err) ? err.context.code : (err as { name?: string } | undefined)?.name;
  return typeof code === 'string' && /Throttl|TooManyRequests|RequestLimitExceeded|Rate exceeded|SlowDown/i.test(code);
}

/** Throttled, or failing on its side (5xx): SSM is busy, and polling faster would not help. */
export function isBusy(err: unknown): boolean {
  if (isThrottling(err)) return true;
  const status = isAgentError(err) ? err.context.status : (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
  return typeof status === 'number' && status >= 500;
}

export class WatchedSsm implements SsmFetcher {
  private parts: Promise<SsmParts> | undefined;
  private cache: Cache | undefined;
  private forced: string | undefined;
  private throttled = 0;
  private fullFetches = 0;
  private cheapChecks = 0;

  constructor(
    private readonly load: () => Promise<SsmParts>,
    private readonly options: RevisionOptions,
  ) {}

  /** The next fetch reads the whole tree (converge --now, SIGHUP). */
  invalidate(reason: string): void {
    this.forced = reason;
  }

  get stats(): RevisionStats {
    return {
      mode: this.cache?.mark.mode ?? 'unknown',
      fullFetches: this.fullFetches,
      cheapChecks: this.cheapChecks,
      throttleLevel: this.throttled,
      lastFullFetchAt: this.cache?.at,
    };
  }

  get throttleLevel(): number {
    return this.throttled;
  }

  async fetch(prefixes: readonly string[], values: Placeholders, signal?: AbortSignal): Promise<SsmSnapshot> {
    const filled = prefixes.map((p) => fillPrefix(p, values).path).filter((p): p is string => p !== undefined);
    const key = JSON.stringify([prefixes, filled]);
    const cache = this.cache;
    const now = this.options.clock.now();
    const forcedAtStart = this.forced;
    let why = !cache
      ? 'first fetch'
      : this.forced ?? (cache.key !== key ? 'prefixes changed' : now >= cache.at + this.options.fullRefreshMs ? 'periodic full refresh' : undefined);
    let mark: RevisionMark | undefined;
    const checksAtStart = this.cheapChecks;
    if (cache && why === undefined) {
      try {
        mark = await this.mark(filled, cache.mark.mode, signal);
      } catch (err) {
        if (!(err instanceof TransientError)) throw err;
        // The tree we have is still the best we know; the poll stretches its interval instead.
        return { ...cache.snapshot, calls: this.cheapChecks - checksAtStart };
      }
      if (mark.mode === 'full') why = 'no revision tag or parameter';
      else if (mark.mode !== cache.mark.mode || mark.value !== cache.mark.value) why = `${mark.mode === 'tag' ? 'revision tag' : 'revision parameter'} changed`;
      else return { ...cache.snapshot, calls: this.cheapChecks - checksAtStart };
    }
    // The revision is read before the tree, so a bump during the fetch is seen next time.
    mark ??= await this.mark(filled, undefined, signal, true);
    const parts = await this.getParts();
    let snapshot: SsmSnapshot;
    try {
      snapshot = await parts.source.fetch(prefixes, values, signal);
    } catch (err) {
      this.noteError(err);
      throw err;
    }
    this.throttled = 0;
    this.fullFetches++;
    // A request made while this fetch ran still holds for the next one.
    if (this.forced === forcedAtStart) this.forced = undefined;
    const stripped = this.stripRevision(snapshot);
    if (mark.mode === 'full' && stripped !== snapshot && countParameters(stripped) !== countParameters(snapshot)) {
      // A revision parameter appeared since the last look: read it properly (before the tree) next time.
      const seen = snapshot.prefixes.flatMap((p) => p.parameters.filter((x) => x.name === `${p.prefix}/${this.options.parameter}`).map((x) => `${x.name}@${x.version}`));
      mark = { mode: 'parameter', value: `${SEEN_IN_TREE}${seen.sort().join(',')}` };
    }
    this.cache = { key, snapshot: stripped, mark, at: now, filled };
    return { ...stripped, calls: snapshot.calls + (this.cheapChecks - checksAtStart) };
  }

  /**
   * Cheaply, without moving the baseline: has the desired SSM state changed since the last full
   * fetch? Used while a build runs, to cancel it for a newer state. Undefined when unchanged or when
   * it cannot tell cheaply (no revision, or SSM failing).
   */
  async changed(signal?: AbortSignal): Promise<string | undefined> {
    const cache = this.cache;
    if (!cache) return undefined;
    if (this.forced) return this.forced;
    let mark: RevisionMark;
    try {
      mark = await this.mark(cache.filled, cache.mark.mode, signal);
    } catch (err) {
      if (err instanceof TransientError) return undefined;
      throw err;
    }
    if (mark.mode === 'full') return cache.mark.mode === 'full' ? undefined : 'revision removed';
    // A revision first seen in the tree is the one the tree (and the build of it) already holds.
    const known = cache.mark.value.startsWith(SEEN_IN_TREE) ? cache.mark.value.slice(SEEN_IN_TREE.length) : cache.mark.value;
    if (mark.mode !== cache.mark.mode || mark.value !== known) return `${mark.mode === 'tag' ? 'revision tag' : 'revision parameter'} changed`;
    return undefined;
  }

  /**
   * The current revision. `previous` 'full' skips the GetParameters call: no revision parameter
   * existed at the last full fetch, which will show one when it appears. `patient` before a fetch of
   * the whole tree: that fetch is due whatever the answer, and failing it on throttling would only
   * start it over.
   */
  private async mark(filled: readonly string[], previous: RevisionMode | undefined, signal?: AbortSignal, patient = false): Promise<RevisionMark> {
    const { tag, parameter } = this.options;
    if (tag) {
      const value = await this.options.imds.get(`latest/meta-data/tags/instance/${tag}`);
      if (value !== undefined) return { mode: 'tag', value };
    }
    if (!parameter || previous === 'full') return { mode: 'full', value: '' };
    const parts = await this.getParts();
    if (!parts.getParameters) return { mode: 'full', value: '' };
    // GetParameters takes at most 10 names: more prefixes than that cost one call per ten.
    const names = filled.map((p) => `${p}/${parameter}`);
    const found: string[] = [];
    for (let i = 0; i < names.length; i += 10) {
      signal?.throwIfAborted();
      const batch = names.slice(i, i + 10);
      this.cheapChecks++;
      let answer;
      try {
        answer = await parts.getParameters({ Names: batch }, { patient, ...(signal ? { signal } : {}) });
      } catch (err) {
        const mapped = mapSsmError(err, batch.join(','));
        this.noteError(mapped);
        throw mapped;
      }
      for (const p of answer.Parameters ?? []) if (p.Name && p.Version !== undefined) found.push(`${p.Name}@${p.Version}`);
    }
    this.throttled = 0;
    if (found.length === 0) return { mode: 'full', value: '' };
    return { mode: 'parameter', value: found.sort().join(',') };
  }

  private noteError(err: unknown): void {
    if (isBusy(err)) this.throttled++;
  }

  /** The revision parameters are the watcher's, not configuration: they never reach the render. */
  private stripRevision(snapshot: SsmSnapshot): SsmSnapshot {
    const parameter = this.options.parameter;
    if (!parameter) return snapshot;
    return {
      ...snapshot,
      prefixes: snapshot.prefixes.map((p) => ({ ...p, parameters: p.parameters.filter((x) => x.name !== `${p.prefix}/${parameter}`) })),
    };
  }

  private getParts(): Promise<SsmParts> {
    this.parts ??= this.load().catch((err: unknown) => {
      this.parts = undefined;
      throw err;
    });
    return this.parts;
  }
}

function countParameters(snapshot: SsmSnapshot): number {
  return snapshot.prefixes.reduce((n, p) => n + p.parameters.length, 0);
}
