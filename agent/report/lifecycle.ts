// The launch lifecycle hook and the instance's health, told to its Auto Scaling group from the
// Status stream. While the launch waits, the hook is heartbeated so the group keeps waiting; once a
// pass converges to the desired state the hook is completed with CONTINUE, and with ABANDON when no
// good generation runs or the launch budget passes first. A pass that fails and leaves the instance
// on the image's own generation decides nothing: the daemon's later passes (a failed desired
// state's retry, a fixed push) may still converge within the budget. The decision and each
// completion are kept in the state directory, so a restarted agent neither completes twice nor
// heartbeats a hook that is done. Every call is best effort: a failure is logged, counted and
// tried again at the next status change or tick; it never stops the agent.
import { z } from 'zod/v3';
import type { ActionOutcome, AutoScaling, LifecycleHook, LifecycleResult } from '../aws/autoscaling.js';
import { LAUNCHING } from '../aws/autoscaling.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Clock } from '../ports.js';
import { FORMAT, LIFECYCLE_FILE, readVersioned, type StateStore, type Versioned } from '../state.js';
import { beforeFirstRebuild, FIRST_REBUILD_WAIT_MS, type Status } from '../status.js';

export { LIFECYCLE_FILE };

/** PutLifecycleHook's documented default, for a hook whose timeout the service did not give. */
const DEFAULT_HEARTBEAT_TIMEOUT_S = 3_600;
/**
 * How long heartbeats can keep a lifecycle action waiting, as LifecycleHook.GlobalTimeout documents
 * it: 100 times the heartbeat timeout or 48 hours, whichever is smaller. After that the hook's
 * DefaultResult applies, whatever the heartbeats say.
 */
const GLOBAL_TIMEOUT_FACTOR = 100;
const GLOBAL_TIMEOUT_MAX_S = 172_800;
const DEFAULT_RETRY_MS = 30_000;
const MIN_WAIT_MS = 100;
/**
 * The first Auto Scaling call waits this long after boot (or less, for a shorter heartbeat), so the
 * SDK's import does not compete with the first fetch and render: a third of the shortest hook
 * timeout AWS allows (30 s), which still heartbeats such a hook in time.
 */
const FIRST_CALL_DELAY_MS = 10_000;
/**
 * How often an instance launched into a warm pool looks (in IMDS only) whether the group has taken
 * it: a pool kept Running does not restart its instances when they leave it.
 */
const WARM_POOL_LOOK_MS = 30_000;
/**
 * The most a stopping agent waits for its last look at the target state: a stop is not held up by
 * an IMDS that does not answer.
 */
const LAST_LOOK_MS = 2_000;
/**
 * Two readings of the target state this far apart, and three times their cadence (the leaving watch
 * reads it every 30 s by default), mean the instance slept between them: a warm pool kept
 * Hibernated hibernates the instances it takes back and resumes them when the group takes them out.
 */
const SLEPT_MS = 5 * 60_000;
const SLEPT_CADENCES = 3;

export interface Location {
  readonly instanceId: string;
  /** From the `aws:autoscaling:groupName` tag in IMDS; absent when tags are not exposed there. */
  readonly group?: string;
  /** IMDS `autoscaling/target-lifecycle-state`: where Auto Scaling is taking the instance (`Warmed:Stopped`, `InService`). */
  readonly targetLifecycleState?: string;
}

export interface LifecycleReporterOptions {
  readonly autoscaling: AutoScaling;
  readonly clock: Clock;
  /** Where the record is kept: the agent's one store of durable files. */
  readonly store: Pick<StateStore, 'readLifecycle' | 'saveLifecycle'>;
  readonly log: Logger;
  readonly config: Config['lifecycle'];
  /** Where this instance is; asked until it answers. */
  readonly locate: () => Promise<Location>;
  /** How soon a failed call is tried again when no status change comes first; capped by the heartbeat interval. */
  readonly retryMs?: number;
  /** How often a warm pool's instance looks whether it has left the pool; 30 s by default. */
  readonly warmPoolLookMs?: number;
  /**
   * Runs one pass that reads every source again, and settles once it has ended: what a launch out
   * of a warm pool waits for when this run had converged before it (freshPassFor).
   */
  readonly freshPass?: () => Promise<unknown>;
  readonly onCompleted?: (result: LifecycleResult) => void;
  readonly onHeartbeat?: () => void;
  /**
   * No later pass follows the one this run makes (`converge --once`): a launch that pass leaves on
   * a good generation but not converged is ABANDONed then, not left to wait for one.
   */
  readonly oneShot?: boolean;
  readonly onError?: (op: string, err: Error) => void;
}

const Persisted = z.object({
  version: z.literal(FORMAT),
  instanceId: z.string(),
  /** When this instance's launch budget started: the first time an agent saw it. */
  since: z.number(),
  group: z.string().nullable().optional(),
  decision: z.object({ result: z.enum(['CONTINUE', 'ABANDON']), reason: z.string(), at: z.number() }).optional(),
  /** Hooks whose action is over, by name: completed here, or found already gone. */
  hooks: z.record(z.string(), z.object({ outcome: z.enum(['done', 'no-active-action']), at: z.number() })),
  /** Nothing more to do for the launch: every hook is over, or there was none to complete. */
  settled: z.object({ at: z.number(), reason: z.string() }).optional(),
  /**
   * The launch was into the group's warm pool: the instance meets the launch hooks again, in
   * Pending:Wait, when it leaves the pool for the group (warm-pool-instance-lifecycle).
   */
  warm: z.boolean().optional(),
  /**
   * When the daemon's look before a stop found nothing (IMDS did not answer): a return to a Stopped
   * warm pool may have gone unseen, and the next start asks Auto Scaling once (askAfterSleeping).
   */
  lastLookFailedAt: z.number().optional(),
});
type Persisted = z.infer<typeof Persisted>;

/**
 * One line on where this instance's launch hook stands, from the record the reporter keeps, for
 * `status`; undefined when there is nothing to say (no record, another instance's, one this agent
 * cannot read, or a launch that had no hook to complete).
 */
export async function describeLaunch(store: Pick<StateStore, 'readLifecycle'>, instanceId: string | undefined, budgetSeconds: number): Promise<string | undefined> {
  // Not root's to read, or damaged: the reporter says so in the journal when it loads it.
  const read = await readRecord(store).catch(() => undefined);
  if (!read || !('value' in read)) return undefined;
  const record = read.value;
  if (instanceId !== undefined && record.instanceId !== instanceId) return undefined;
  if (record.decision) return `${record.decision.result}${record.settled ? '' : ', being completed'} (${record.decision.reason})`;
  if (record.settled) return undefined;
  const ends = new Date(record.since + budgetSeconds * 1000).toISOString();
  return `waiting since ${new Date(record.since).toISOString()} for a pass that converges; the launch budget ends at ${ends} (ABANDON)`;
}

/** The kept record as this agent reads it; undefined when there is none. Throws when it cannot be read or is not JSON. */
async function readRecord(store: Pick<StateStore, 'readLifecycle'>): Promise<Versioned<Persisted> | undefined> {
  const text = await store.readLifecycle();
  return text === undefined ? undefined : readVersioned(JSON.parse(text), Persisted);
}

/** A plain view of where the launch hook stands, for status and tests. */
export interface LifecycleView {
  readonly instanceId?: string;
  readonly group?: string | null;
  readonly hooks: readonly string[];
  readonly decision?: { readonly result: LifecycleResult; readonly reason: string };
  readonly settled?: string;
  readonly heartbeats: number;
  readonly errors: number;
  readonly lastError?: string;
  readonly unhealthyReported: boolean;
}

export class LifecycleReporter {
  private status: Status | undefined;
  private record: Persisted | undefined;
  /** A newer agent's fields in the record as loaded (state.ts, readVersioned), kept with this launch's record. */
  private carried: Readonly<Record<string, unknown>> = {};
  private recordDirty = false;
  /** True when the record was read from a previous run: its hook may have waited a long time. */
  private resumed = false;
  private hookNames: string[] | undefined;
  /** Set once the first Auto Scaling call may be made. */
  private engaged = false;
  /** When a warm pool's instance next looks whether it has left the pool. */
  private nextWarmLookAt: number | undefined;
  private heartbeatTimeoutS: number | undefined;
  /** The shortest GlobalTimeout of the hooks, once described. */
  private globalTimeoutS: number | undefined;
  private nextBeatAt: number | undefined;
  /** When a failed step should be tried again; undefined when nothing failed. */
  private retryAt: number | undefined;
  private unhealthyReported = false;
  private heartbeats = 0;
  private errors = 0;
  private lastError: string | undefined;

  /** A target lifecycle state read elsewhere (the leaving watch) that the next step follows. */
  private observedTarget: string | undefined;
  /** The last one read elsewhere: only a change is followed. */
  private lastObserved: string | undefined;
  private lastObservedAt: number | undefined;
  /**
   * Asks Auto Scaling, at the next step, whether it holds the instance in a launch again: after a
   * sleep, or at a start after a stop whose last look saw nothing.
   */
  private askAfterSleep: false | 'wake' | 'start' = false;
  /** The pass a launch out of the warm pool waits for (freshPassFor), once asked. */
  private freshPass: { done: boolean } | undefined;
  /** The end (lastResult.at) of the last unconverged pass the waiting launch was logged for. */
  private waitingSaidFor: string | undefined;

  private chain: Promise<void> = Promise.resolve();
  private loopDone: Promise<void> | undefined;
  private stopped = false;
  private kicked = false;
  private wake: AbortController | undefined;

  constructor(private readonly options: LifecycleReporterOptions) {}

  /** Feeds the latest Status; the reporter acts on it at once. */
  update(status: Status): void {
    this.status = status;
    this.kick();
  }

  /** Starts acting on its own: heartbeats, the budget and retries come from the Clock. */
  start(): void {
    if (this.loopDone || this.stopped) return;
    this.loopDone = this.loop();
  }

  /**
   * Where Auto Scaling is taking the instance, as IMDS's `autoscaling/target-lifecycle-state` read
   * elsewhere says, read every `everyMs` (the leaving watch's 30 s): an instance in service that
   * the group returns to its warm pool meets the launch hooks again when it leaves the pool.
   */
  observeTarget(state: string | undefined, everyMs: number): void {
    if (state === undefined) return;
    const now = this.options.clock.now();
    const slept = this.lastObservedAt !== undefined && now - this.lastObservedAt > Math.max(SLEPT_MS, SLEPT_CADENCES * everyMs);
    this.lastObservedAt = now;
    if (slept) this.askAfterSleep = 'wake';
    if (state === this.lastObserved && !slept) return;
    this.lastObserved = state;
    this.observedTarget = state;
    this.kick();
  }

  /**
   * Stops acting. With `lastLook`, the daemon's own stop, an instance in service looks once more
   * where the group is taking it: a scale-in that returns it to a Stopped pool stops it seconds
   * after the target turns, sooner than the next look would come.
   */
  async stop(options: { lastLook?: boolean } = {}): Promise<void> {
    this.stopped = true;
    this.wake?.abort();
    await this.loopDone;
    await this.chain;
    if (options.lastLook) await this.step(() => this.lookBeforeStop());
  }

  /**
   * Acts now, and again after a short wait while something is still due and failing, up to
   * `attempts` times: for a one-shot run that must report before it exits.
   */
  async flush(attempts = 3, waitMs = 1_000): Promise<LifecycleView> {
    for (let i = 0; i < attempts; i++) {
      await this.step();
      if (this.retryAt === undefined) break;
      if (i < attempts - 1) await holdingProcessOpen(() => this.options.clock.sleep(waitMs));
    }
    return this.view();
  }

  view(): LifecycleView {
    const r = this.record;
    return {
      ...(r ? { instanceId: r.instanceId } : {}),
      ...(r && r.group !== undefined ? { group: r.group } : {}),
      hooks: this.hookNames ?? Object.keys(r?.hooks ?? {}),
      ...(r?.decision ? { decision: { result: r.decision.result, reason: r.decision.reason } } : {}),
      ...(r?.settled ? { settled: r.settled.reason } : {}),
      heartbeats: this.heartbeats,
      errors: this.errors,
      ...(this.lastError ? { lastError: this.lastError } : {}),
      unhealthyReported: this.unhealthyReported,
    };
  }

  // ---- the loop ------------------------------------------------------------------------------

  private kick(): void {
    this.kicked = true;
    this.wake?.abort();
  }

  private async loop(): Promise<void> {
    // The first look (locating the group: DescribeAutoScalingInstances where IMDS has no tags) loads
    // the Auto Scaling SDK, the heaviest import there is: it is never on the way to the first rebuild.
    const startedAt = this.options.clock.now();
    while (!this.stopped && !this.rebuildUnderway(startedAt)) {
      this.kicked = false;
      await this.waitUntil(startedAt + FIRST_REBUILD_WAIT_MS);
    }
    while (!this.stopped) {
      this.kicked = false;
      await this.step().catch((err: unknown) => this.fail('step', err));
      if (this.stopped) break;
      if (this.kicked) continue;
      // Never wake again at once on a deadline that has already passed: that would spin.
      await this.waitUntil(Math.max(this.nextWakeAt(), this.options.clock.now() + MIN_WAIT_MS));
    }
  }

  private rebuildUnderway(startedAt: number): boolean {
    const s = this.status;
    if (s && !beforeFirstRebuild(s)) return true;
    return this.options.clock.now() >= startedAt + FIRST_REBUILD_WAIT_MS;
  }

  private async waitUntil(at: number): Promise<void> {
    const wake = new AbortController();
    this.wake = wake;
    if (this.stopped || this.kicked) return;
    if (Number.isFinite(at)) {
      await this.options.clock.sleep(Math.max(0, at - this.options.clock.now()), wake.signal).catch(() => undefined);
    } else {
      await new Promise<void>((resolve) => wake.signal.addEventListener('abort', () => resolve(), { once: true }));
    }
  }

  private nextWakeAt(): number {
    const times: number[] = [];
    if (this.retryAt !== undefined) times.push(this.retryAt);
    const r = this.record;
    if (r?.warm && this.nextWarmLookAt !== undefined) times.push(this.nextWarmLookAt);
    if (r && !r.settled && !r.decision) {
      times.push(this.budgetEndsAt(r));
      if (!this.engaged) times.push(this.firstCallAt(r));
      if (this.nextBeatAt !== undefined) times.push(this.nextBeatAt);
    }
    return times.length ? Math.min(...times) : Infinity;
  }

  /** One look at everything that is due (or `what`); steps never overlap. */
  private step(what: () => Promise<void> = () => this.act()): Promise<void> {
    const run = this.chain.then(what);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async act(): Promise<void> {
    const failures: string[] = [];
    const attempt = async (op: string, fn: () => Promise<void>): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        failures.push(op);
        this.fail(op, err);
        return false;
      }
    };
    if (!this.record && !(await attempt('locate', () => this.load()))) return this.afterStep(failures);
    if (this.observedTarget !== undefined) this.followTarget(this.record!, this.observedTarget);
    if (this.askAfterSleep) await this.askAfterSleeping(this.record!, attempt);
    if (this.record!.warm) await this.lookOutOfWarmPool(attempt);
    const record = this.record!;
    if (!record.settled) await this.launch(record, attempt);
    await this.health(record, attempt);
    if (this.recordDirty) await attempt('save', () => this.save());
    this.afterStep(failures);
  }

  private afterStep(failures: readonly string[]): void {
    this.retryAt = failures.length ? this.options.clock.now() + this.retryDelayMs() : undefined;
  }

  private retryDelayMs(): number {
    const interval = this.heartbeatIntervalMs();
    const retry = this.options.retryMs ?? DEFAULT_RETRY_MS;
    return interval !== undefined ? Math.min(retry, interval) : retry;
  }

  // ---- the launch hook -----------------------------------------------------------------------

  private async launch(record: Persisted, attempt: (op: string, fn: () => Promise<void>) => Promise<boolean>): Promise<void> {
    const now = () => this.options.clock.now();
    if (!this.engaged) {
      // A restarted agent's hook may have waited long already: no delay for it.
      if (!this.resumed && !record.decision && !this.decide(record) && now() < this.firstCallAt(record)) return;
      this.engaged = true;
    }
    if (record.group === undefined) {
      const ok = await attempt('describe-instance', async () => {
        const membership = await this.options.autoscaling.describeInstance(record.instanceId);
        record.group = membership?.group ?? null;
        if (inWarmPool(membership?.lifecycleState)) record.warm = true;
        this.recordDirty = true;
        if (!membership) this.settle(record, 'not in an Auto Scaling group');
        // Only a waiting instance has a lifecycle action to complete.
        else if (!/^(Warmed:)?Pending(:Wait)?$/.test(membership.lifecycleState)) this.settle(record, `already ${membership.lifecycleState}`);
      });
      if (!ok || record.settled) return;
    }
    const group = record.group;
    if (group === null || group === undefined) {
      this.settle(record, 'not in an Auto Scaling group');
      return;
    }
    if (!(await this.resolveHooks(group, attempt))) return;
    const hooks = this.hookNames ?? [];
    if (hooks.length === 0) {
      this.settle(record, 'the group has no launch lifecycle hook');
      return;
    }
    const pending = hooks.filter((h) => !record.hooks[h]);
    if (pending.length === 0) {
      this.settle(record, 'every launch hook is over');
      return;
    }

    if (!record.decision) {
      const decision = this.decide(record);
      if (decision) {
        record.decision = { ...decision, at: now() };
        this.recordDirty = true;
        // Kept before the call: a restarted agent completes with the same result.
        await attempt('save', () => this.save());
        this.options.log.info({ event: 'lifecycle.decided', group, hooks: pending, result: decision.result, reason: decision.reason }, `launch hook: ${decision.result} (${decision.reason})`);
      } else this.sayWaiting(record, group);
    }

    if (record.decision) {
      const result = record.decision.result;
      for (const hook of pending) {
        await attempt('complete', async () => {
          const outcome = await this.options.autoscaling.completeLifecycleAction({ group, hook, instanceId: record.instanceId, result });
          this.hookOver(record, hook, outcome);
          if (outcome === 'done') {
            this.options.log.info({ event: 'lifecycle.completed', group, hook, result }, `completed launch hook ${hook} with ${result}`);
            this.options.onCompleted?.(result);
          } else {
            this.options.log.warn({ event: 'lifecycle.no-active-action', group, hook, result }, `launch hook ${hook} had no active action to complete (already completed or timed out)`);
          }
        });
      }
      if (hooks.every((h) => record.hooks[h])) this.settle(record, `completed with ${result}`);
      return;
    }

    const interval = this.heartbeatIntervalMs();
    if (interval === undefined) return;
    // A hook found by a restarted agent may have waited long already: heartbeat it at once.
    this.nextBeatAt ??= this.resumed ? now() : record.since + interval;
    if (now() < this.nextBeatAt) return;
    let beaten = true;
    for (const hook of pending) {
      const ok = await attempt('heartbeat', async () => {
        const outcome = await this.options.autoscaling.recordHeartbeat({ group, hook, instanceId: record.instanceId });
        if (outcome === 'no-active-action') {
          // Gone: timed out or completed elsewhere. Completing it now could only fail the same way.
          this.hookOver(record, hook, outcome);
          this.options.log.warn({ event: 'lifecycle.no-active-action', group, hook }, `launch hook ${hook} has no active action; no more heartbeats for it`);
          return;
        }
        this.heartbeats++;
        this.options.onHeartbeat?.();
        this.options.log.debug({ event: 'lifecycle.heartbeat', group, hook }, `heartbeat for launch hook ${hook}`);
      });
      beaten &&= ok;
    }
    this.nextBeatAt = now() + (beaten ? interval : this.retryDelayMs());
    if (hooks.every((h) => record.hooks[h])) this.settle(record, 'every launch hook is over');
  }

  /** The launch's convergence has ended: this run's first, and the fresh pass a launch out of the warm pool asked for. */
  private converged(): boolean {
    return this.status?.firstConvergenceDone === true && (this.freshPass === undefined || this.freshPass.done);
  }

  /**
   * CONTINUE once a pass has converged to the desired state (the contract's "first good
   * convergence", as CodeDeploy lets a launch into service only once its deployment succeeded), or
   * has ended on a good generation the agent built from the sources before (a warm pool's instance
   * after a bad push: the generation the rest of the fleet rolled back to); ABANDON when no good
   * generation runs, or when the budget passes first. An instance left on the image's own
   * generation, which no desired state built (after a failed first build), would serve the image's
   * configuration in place of the fleet's: its launch waits for a later pass.
   */
  private decide(record: Persisted): { result: LifecycleResult; reason: string } | undefined {
    const s = this.status;
    if (s && this.converged()) {
      const which = this.freshPass ? 'the pass after leaving the warm pool' : 'the launch';
      if (s.noGoodGeneration) return { result: 'ABANDON', reason: `${which} ended with no good generation running` };
      if (s.condition === 'converged') return { result: 'CONTINUE', reason: `${which} converged` };
      const built = s.running?.desiredHash;
      if (s.condition !== 'converging' && built !== undefined) {
        return { result: 'CONTINUE', reason: `${which} ended on the good generation of desired ${built.slice(0, 12)}, which the sources built before` };
      }
      if (this.options.oneShot && s.condition !== 'converging') {
        return { result: 'ABANDON', reason: `${which} ended ${s.lastResult?.outcome ?? 'unfinished'}, not converged, and this run makes no other pass` };
      }
    }
    const endsAt = this.budgetEndsAt(record);
    if (this.options.clock.now() >= endsAt) {
      const budgetS = this.options.config.budgetSeconds;
      const cut = endsAt < record.since + budgetS * 1000;
      return {
        result: 'ABANDON',
        reason: cut
          ? `no good convergence before the launch hook's ${this.globalTimeoutS} s global timeout (the ${budgetS} s launch budget outlasts it)`
          : `no good convergence within the ${budgetS} s launch budget`,
      };
    }
    return undefined;
  }

  /**
   * Once per pass that ends without converging while the launch waits: why the instance is still
   * in Pending:Wait, and until when, for the operator who finds it there.
   */
  private sayWaiting(record: Persisted, group: string): void {
    const s = this.status;
    const ended = s?.lastResult;
    // Called only when decide() left the launch undecided: a pass that ended converged, or on a
    // generation the sources built, was decided there.
    if (!s || !ended || !this.converged() || s.condition === 'converging' || this.waitingSaidFor === ended.at) return;
    this.waitingSaidFor = ended.at;
    const until = new Date(this.budgetEndsAt(record)).toISOString();
    this.options.log.warn(
      { event: 'lifecycle.waiting', group, outcome: ended.outcome, abandonAt: until },
      `launch hook: the pass ended ${ended.outcome}, not converged; the launch waits for a pass that converges, and is abandoned at ${until}`,
    );
  }

  /**
   * The budget, or sooner when the hook's global timeout would end the wait first: decided then, the
   * result is the agent's rather than the hook's DefaultResult. The action began at launch, before
   * `since`, but less than one heartbeat timeout before (or it would be gone by the first heartbeat),
   * so deciding that much early still finds it.
   */
  private budgetEndsAt(record: Persisted): number {
    const budget = record.since + this.options.config.budgetSeconds * 1000;
    if (this.globalTimeoutS === undefined) return budget;
    return Math.min(budget, record.since + (this.globalTimeoutS - (this.heartbeatTimeoutS ?? 0)) * 1000);
  }

  private async resolveHooks(group: string, attempt: (op: string, fn: () => Promise<void>) => Promise<boolean>): Promise<boolean> {
    const { hookName, heartbeatSeconds } = this.options.config;
    if (hookName !== null) {
      this.hookNames = [hookName];
      // The timeout only matters for the heartbeat interval; completing needs the name alone.
      if (heartbeatSeconds === null && this.heartbeatTimeoutS === undefined) {
        await attempt('describe-hooks', async () => {
          const found = (await this.options.autoscaling.describeLifecycleHooks(group)).find((h) => h.name === hookName);
          this.heartbeatTimeoutS = found?.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT_S;
          if (found) this.globalTimeoutS = globalTimeoutOf(found);
        });
      }
      return true;
    }
    if (this.hookNames !== undefined) return true;
    return attempt('describe-hooks', async () => {
      const launching = (await this.options.autoscaling.describeLifecycleHooks(group)).filter((h) => h.transition === LAUNCHING);
      this.hookNames = launching.map((h) => h.name);
      const timeouts = launching.map((h) => h.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT_S);
      this.heartbeatTimeoutS = timeouts.length ? Math.min(...timeouts) : undefined;
      this.globalTimeoutS = launching.length ? Math.min(...launching.map(globalTimeoutOf)) : undefined;
    });
  }

  private firstCallAt(record: Persisted): number {
    const { heartbeatSeconds } = this.options.config;
    return record.since + Math.min(FIRST_CALL_DELAY_MS, heartbeatSeconds !== null ? heartbeatSeconds * 1000 : Infinity);
  }

  private heartbeatIntervalMs(): number | undefined {
    const { heartbeatSeconds } = this.options.config;
    if (heartbeatSeconds !== null) return heartbeatSeconds * 1000;
    // A third of the timeout: two heartbeats may be lost before the hook times out.
    return this.heartbeatTimeoutS !== undefined ? (this.heartbeatTimeoutS * 1000) / 3 : undefined;
  }

  private hookOver(record: Persisted, hook: string, outcome: ActionOutcome): void {
    record.hooks[hook] = { outcome, at: this.options.clock.now() };
    this.recordDirty = true;
  }

  private settle(record: Persisted, reason: string): void {
    if (record.settled) return;
    record.settled = { at: this.options.clock.now(), reason };
    this.recordDirty = true;
    this.options.log.info({ event: 'lifecycle.settled', group: record.group, reason }, `launch lifecycle: ${reason}`);
  }

  // ---- health --------------------------------------------------------------------------------

  /**
   * Unhealthy only when a pass has ended with no good generation running: a bad push that rolled
   * back leaves a good instance, and telling the group otherwise would have it replaced. An
   * abandoned launch is already on its way out, and before the hook is settled ABANDON says it.
   */
  private async health(record: Persisted, attempt: (op: string, fn: () => Promise<void>) => Promise<boolean>): Promise<void> {
    const s = this.status;
    if (!s?.firstConvergenceDone) return;
    const bad = s.noGoodGeneration && s.condition === 'failed';
    if (!bad) {
      this.unhealthyReported = false;
      return;
    }
    if (this.unhealthyReported || !this.options.config.reportUnhealthy) return;
    if (!record.settled || !record.group || record.decision?.result === 'ABANDON') return;
    await attempt('set-instance-health', async () => {
      await this.options.autoscaling.setInstanceHealth(record.instanceId, 'Unhealthy', true);
      this.unhealthyReported = true;
      this.options.log.warn({ event: 'lifecycle.unhealthy', group: record.group }, 'reported Unhealthy to the Auto Scaling group: no good generation runs');
    });
  }

  // ---- persistence ---------------------------------------------------------------------------

  private async load(): Promise<void> {
    const here = await this.options.locate();
    let previous: Persisted | undefined;
    let carried: Readonly<Record<string, unknown>> = {};
    try {
      const read = await readRecord(this.options.store);
      if (read) {
        if ('value' in read) ({ value: previous, carried } = read);
        else if (read.newer) this.options.log.warn({ event: 'lifecycle.state-ignored' }, `${LIFECYCLE_FILE} was ${read.problem}; starting afresh`);
        else this.options.log.warn({ event: 'lifecycle.state-ignored' }, `${LIFECYCLE_FILE} is not a lifecycle record (${read.problem}); starting afresh`);
      }
    } catch (err) {
      this.options.log.warn({ event: 'lifecycle.state-ignored', err: (err as Error).message }, `cannot read ${LIFECYCLE_FILE}; starting afresh`);
    }
    // A record from another instance id came with the image: this launch is a new one.
    if (previous && previous.instanceId === here.instanceId && !this.leftWarmPool(previous, here)) {
      this.record = previous;
      this.carried = carried;
      this.resumed = true;
      if (previous.lastLookFailedAt !== undefined) this.askAfterSleep = 'start';
      if (previous.group === undefined && here.group) {
        previous.group = here.group;
        this.recordDirty = true;
      }
      this.enteringWarmPool(previous, here.targetLifecycleState);
    } else {
      this.beginLaunch(here);
    }
    this.nextWarmLookAt = this.options.clock.now() + (this.options.warmPoolLookMs ?? WARM_POOL_LOOK_MS);
  }

  /**
   * A launch this run reports from its start: the budget counts from now. `whileRunning`: the group
   * took the instance out of its warm pool while this run went on (freshPassFor).
   */
  private beginLaunch(here: Location, whileRunning = false): void {
    this.carried = {};
    this.record = {
      version: FORMAT,
      instanceId: here.instanceId,
      since: this.options.clock.now(),
      ...(here.group ? { group: here.group } : {}),
      hooks: {},
      ...(inWarmPool(here.targetLifecycleState) ? { warm: true } : {}),
    };
    this.recordDirty = true;
    this.resumed = false;
    this.engaged = false;
    this.nextBeatAt = undefined;
    this.hookNames = undefined;
    this.freshPass = undefined;
    if (whileRunning) this.freshPassFor(here);
  }

  /**
   * The group took the instance out of a warm pool kept Running or Hibernated, where this run had
   * converged already: to what the sources said then, hours or days ago for a hibernated instance,
   * and a push made since waits for the next poll. An instance from a Stopped pool boots and
   * converges before its hook is completed; this one gets the same, one pass reading every source
   * again, and its hook waits for it (heartbeated, within the launch's budget).
   */
  private freshPassFor(here: Location): void {
    const ask = this.options.freshPass;
    if (!ask || !this.status?.firstConvergenceDone) return;
    const waiting = { done: false };
    this.freshPass = waiting;
    // A stopping agent runs no more passes: the launch is left to the next start, whose first pass is fresh.
    if (this.stopped) return;
    this.options.log.info({ event: 'lifecycle.fresh-pass', group: here.group }, 'converging afresh before completing the launch hook: what this run converged to predates the launch out of the warm pool');
    void ask()
      .catch(() => undefined)
      .then(() => {
        waiting.done = true;
        this.kick();
      });
  }

  /**
   * A target state read outside the reporter's own looks: into the warm pool, or out of it (a new
   * launch, as `leftWarmPool` says).
   */
  private followTarget(record: Persisted, target: string): void {
    this.observedTarget = undefined;
    this.follow(record, { instanceId: record.instanceId, ...(record.group ? { group: record.group } : {}), targetLifecycleState: target });
  }

  /** Where IMDS says the group is taking the instance: out of its warm pool (a new launch), or into it. */
  private follow(record: Persisted, here: Location): void {
    if (this.leftWarmPool(record, here)) this.beginLaunch(here, true);
    else this.enteringWarmPool(record, here.targetLifecycleState);
  }

  /**
   * A `Warmed:` target means the instance is in its group's warm pool or on its way there: launched
   * into it, or, in service, returned to it by a scale-in under the pool's instance reuse policy
   * (ReuseOnScaleIn). Either way, leaving the pool later is a launch into the group whose hooks the
   * agent completes (warm-pool-instance-lifecycle), so the record says so from now on.
   */
  private enteringWarmPool(record: Persisted, target: string | undefined): void {
    if (record.warm || !inWarmPool(target)) return;
    record.warm = true;
    this.recordDirty = true;
    this.nextWarmLookAt = this.options.clock.now() + (this.options.warmPoolLookMs ?? WARM_POOL_LOOK_MS);
    if (record.settled) this.options.log.info({ event: 'lifecycle.warm-pool-return', group: record.group, target }, `the group is returning the instance to its warm pool (${target}): its launch hook is met again when it leaves`);
  }

  /**
   * The instance slept with the agent running (hibernated): a return to a Hibernated pool that no
   * look saw before the hibernation ends with the instance resumed in Pending:Wait, IMDS reading
   * InService as it did before. Only Auto Scaling can tell that from a pause in service, so it is
   * asked, once per sleep: a launch it holds is one more for the agent to complete. The same at a
   * start after a stop whose last look IMDS never answered (lastLookFailedAt): a return to a Stopped
   * pool between two looks, and the group taking the instance out again, leave the same trace.
   */
  private async askAfterSleeping(record: Persisted, attempt: (op: string, fn: () => Promise<void>) => Promise<boolean>): Promise<void> {
    const group = record.group;
    const after = this.askAfterSleep;
    const asked = () => {
      this.askAfterSleep = false;
      if (record.lastLookFailedAt === undefined) return;
      delete record.lastLookFailedAt;
      this.recordDirty = true;
    };
    if (!record.settled || record.warm || !group) return asked();
    await attempt('describe-instance', async () => {
      const membership = await this.options.autoscaling.describeInstance(record.instanceId);
      asked();
      if (membership && /^Pending(:Wait)?$/.test(membership.lifecycleState)) {
        const how = after === 'start' ? 'started' : 'woke';
        this.options.log.info({ event: 'lifecycle.warm-pool-left', group, state: membership.lifecycleState }, `the instance ${how} in ${membership.lifecycleState}: the group took it out of its warm pool, and its launch hook is met again`);
        // Woken, the run goes on and the launch waits for a pass that reads the sources again; a
        // start's first convergence is that pass.
        this.beginLaunch({ instanceId: record.instanceId, group, targetLifecycleState: 'InService' }, after === 'wake');
      }
    });
  }

  /** The daemon is stopping: one bounded look, kept if it finds the instance going into the pool. */
  private async lookBeforeStop(): Promise<void> {
    const record = this.record;
    if (!record || record.warm || !record.group) return;
    const timer = new AbortController();
    const here = await Promise.race([
      this.options.locate().catch(() => undefined),
      this.options.clock.sleep(LAST_LOOK_MS, timer.signal).then(() => undefined, () => undefined),
    ]).finally(() => timer.abort());
    if (here === undefined && record.settled) {
      // Nothing seen: the next start asks Auto Scaling once instead.
      record.lastLookFailedAt = this.options.clock.now();
      this.recordDirty = true;
    } else if (here?.instanceId === record.instanceId) {
      this.follow(record, here);
    }
    if (this.recordDirty) await this.save().catch((err: unknown) => this.fail('save', err));
  }

  /** A warm pool's instance that kept running: has the group taken it? */
  private async lookOutOfWarmPool(attempt: (op: string, fn: () => Promise<void>) => Promise<boolean>): Promise<void> {
    const now = this.options.clock.now();
    if (this.nextWarmLookAt !== undefined && now < this.nextWarmLookAt) return;
    this.nextWarmLookAt = now + (this.options.warmPoolLookMs ?? WARM_POOL_LOOK_MS);
    await attempt('locate', async () => {
      const here = await this.options.locate();
      if (this.record) this.follow(this.record, here);
    });
  }

  /**
   * A warm pool's instance, once its launch into the pool is over, is stopped (or kept running)
   * until the group takes it, and then held in Pending:Wait: a second launch, with the same
   * instance id, for this run to report. IMDS says so before any Auto Scaling call: the target is
   * no longer the pool (warm-pool-instance-lifecycle; retrieving-target-lifecycle-state-through-imds).
   * Whether or not the record says the launch into the pool was settled: its hook may have timed
   * out while the calls failed, or been completed with the answer lost before the stop. Resumed,
   * such a record would judge the launch into the group by the pool's day-old budget (ABANDON) or
   * complete it with the pool's decision before this boot converged.
   */
  private leftWarmPool(previous: Persisted, here: Location): boolean {
    const target = here.targetLifecycleState;
    if (!previous.warm || target !== 'InService') return false;
    this.options.log.info({ event: 'lifecycle.warm-pool-left', group: previous.group, target }, 'the instance left its warm pool for the group: its launch hook is met again');
    return true;
  }

  private async save(): Promise<void> {
    if (!this.record) return;
    this.recordDirty = false;
    try {
      await this.options.store.saveLifecycle({ ...this.record, ...this.carried });
    } catch (err) {
      this.recordDirty = true;
      throw err;
    }
  }

  private fail(op: string, err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    this.errors++;
    this.lastError = `${op}: ${error.message}`;
    this.options.onError?.(op, error);
    const context = typeof (error as { toJSON?: unknown }).toJSON === 'function' ? (error as unknown as { toJSON(): unknown }).toJSON() : error.message;
    this.options.log.warn({ event: 'lifecycle.error', op, err: context }, `Auto Scaling ${op} failed (tried again later): ${error.message}`);
  }
}

/**
 * A `Warmed:` state, Auto Scaling's own or IMDS's target: the instance is in its group's warm pool
 * or on its way there.
 */
function inWarmPool(state: string | undefined): boolean {
  return state?.startsWith('Warmed:') === true;
}

/** The hook's GlobalTimeout as the service gives it, or as AWS documents it is derived. */
function globalTimeoutOf(hook: LifecycleHook): number {
  return hook.globalTimeout ?? Math.min(GLOBAL_TIMEOUT_FACTOR * (hook.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT_S), GLOBAL_TIMEOUT_MAX_S);
}

/**
 * The caller awaits this wait, so it must keep the process alive; the clock's own timers may not
 * (a one-shot command gives the reporter a clock whose sleeps are unref'd).
 */
async function holdingProcessOpen<T>(fn: () => Promise<T>): Promise<T> {
  const hold = setInterval(() => undefined, 2 ** 30);
  try {
    return await fn();
  } finally {
    clearInterval(hold);
  }
}
