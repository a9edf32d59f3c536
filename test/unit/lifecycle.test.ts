// The launch lifecycle reporter against a hand-written Auto Scaling and a hand-driven clock: what
// it tells the group, and when, for each way a first convergence can end.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { ActionOutcome, AutoScaling, GroupMembership, LifecycleHook, LifecycleResult } from '../../agent/aws/autoscaling.js';
import { parseConfig, type Config } from '../../agent/config.js';
import { TransientError } from '../../agent/errors.js';
import { RootFs } from '../../agent/fs.js';
import { Writable } from 'node:stream';
import { createLogger, silentLogger } from '../../agent/log.js';
import { describeLaunch, LIFECYCLE_FILE, LifecycleReporter, type Location } from '../../agent/report/lifecycle.js';
import { StateStore } from '../../agent/state.js';
import type { Status } from '../../agent/status.js';
import { ManualClock, settle } from '../support/clock.js';

const INSTANCE = 'i-0123456789abcdef0';
const GROUP = 'web-asg';
const HOOK = 'launch-hook';
const LAUNCHING = 'autoscaling:EC2_INSTANCE_LAUNCHING';

interface Call {
  readonly op: string;
  readonly at: number;
  readonly hook?: string;
  readonly result?: LifecycleResult;
  readonly health?: string;
  readonly respectGrace?: boolean;
}

/** Answers as Auto Scaling would for one instance waiting in its launch hooks. */
class FakeAutoScaling implements AutoScaling {
  readonly calls: Call[] = [];
  hooks: LifecycleHook[] = [{ name: HOOK, transition: LAUNCHING, heartbeatTimeout: 90 }];
  membership: GroupMembership | undefined = { group: GROUP, lifecycleState: 'Pending:Wait' };
  /** Hooks whose action the service no longer has (completed or timed out). */
  readonly gone = new Set<string>();
  /** Per operation, errors to throw on the next calls, in order. */
  readonly failures = new Map<string, Error[]>();

  constructor(private readonly clock: ManualClock) {}

  failNext(op: string, times = 1): void {
    const list = this.failures.get(op) ?? [];
    for (let i = 0; i < times; i++) list.push(new TransientError('Rate exceeded', 'autoscaling', { code: 'Throttling' }));
    this.failures.set(op, list);
  }

  private enter(call: Call): void {
    this.calls.push(call);
    const err = this.failures.get(call.op)?.shift();
    if (err) throw err;
  }

  async describeLifecycleHooks(group: string): Promise<readonly LifecycleHook[]> {
    this.enter({ op: 'describeLifecycleHooks', at: this.clock.now() });
    assert.equal(group, GROUP);
    return this.hooks;
  }

  async completeLifecycleAction(input: { group: string; hook: string; instanceId: string; result: LifecycleResult }): Promise<ActionOutcome> {
    this.enter({ op: 'complete', at: this.clock.now(), hook: input.hook, result: input.result });
    assert.equal(input.instanceId, INSTANCE);
    assert.equal(input.group, GROUP);
    if (this.gone.has(input.hook)) return 'no-active-action';
    this.gone.add(input.hook);
    return 'done';
  }

  async recordHeartbeat(input: { group: string; hook: string; instanceId: string }): Promise<ActionOutcome> {
    this.enter({ op: 'heartbeat', at: this.clock.now(), hook: input.hook });
    return this.gone.has(input.hook) ? 'no-active-action' : 'done';
  }

  async setInstanceHealth(instanceId: string, health: 'Healthy' | 'Unhealthy', respectGrace?: boolean): Promise<void> {
    this.enter({ op: 'health', at: this.clock.now(), health, ...(respectGrace !== undefined ? { respectGrace } : {}) });
    assert.equal(instanceId, INSTANCE);
  }

  async describeInstance(instanceId: string): Promise<GroupMembership | undefined> {
    this.enter({ op: 'describeInstance', at: this.clock.now() });
    assert.equal(instanceId, INSTANCE);
    return this.membership;
  }

  ops(op: string): Call[] {
    return this.calls.filter((c) => c.op === op);
  }
}

function status(patch: Partial<Status> = {}): Status {
  return {
    version: 1,
    pid: 1,
    updatedAt: new Date(0).toISOString(),
    phase: 'building',
    condition: 'converging',
    firstConvergenceDone: false,
    message: 'building',
    instanceId: INSTANCE,
    noGoodGeneration: false,
    reasons: [],
    rebootRequired: false,
    ...patch,
  };
}

const converging = () => status();
const converged = () => status({ phase: 'idle', condition: 'converged', firstConvergenceDone: true, lastResult: { outcome: 'converged', at: '', durationMs: 1 } });
/** A bad push that was rolled back: the last good generation runs again. */
const rolledBack = () => status({ phase: 'idle', condition: 'degraded', firstConvergenceDone: true, lastResult: { outcome: 'rolled-back', at: '', durationMs: 1 } });
/** The rollback target is unhealthy too: nothing good runs. */
const noGood = () =>
  status({ phase: 'idle', condition: 'failed', firstConvergenceDone: true, noGoodGeneration: true, lastResult: { outcome: 'rolled-back', at: '', durationMs: 1 } });

function lifecycleConfig(patch: Record<string, unknown> = {}): Config['lifecycle'] {
  return parseConfig({ lifecycle: patch }).lifecycle;
}

/** Polls real time briefly: the reporter's file writes are real I/O. */
async function until(what: string, check: () => boolean): Promise<void> {
  // Headroom for a loaded machine: a passing wait ends at its event.
  const deadline = Date.now() + 30_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('LifecycleReporter', () => {
  let dir: string;
  let fs: RootFs;
  let clock: ManualClock;
  let asg: FakeAutoScaling;
  const reporters: LifecycleReporter[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-lifecycle-'));
    fs = new RootFs(dir);
    clock = new ManualClock(1_700_000_000_000);
    asg = new FakeAutoScaling(clock);
  });

  afterEach(async () => {
    await Promise.all(reporters.splice(0).map((r) => r.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  function reporter(
    config: Record<string, unknown> = {},
    options: { locate?: () => Promise<Location>; retryMs?: number; completed?: LifecycleResult[]; beats?: number[]; freshPass?: () => Promise<unknown>; oneShot?: boolean; lines?: string[] } = {},
  ): LifecycleReporter {
    const r = new LifecycleReporter({
      autoscaling: asg,
      clock,
      store: new StateStore(fs, () => clock.now()),
      log: options.lines ? createLogger({ level: 'info', destination: new Writable({ write: (chunk: Buffer, _e, done) => (options.lines!.push(chunk.toString('utf8')), done()) }) }) : silentLogger(),
      config: lifecycleConfig(config),
      locate: options.locate ?? (async () => ({ instanceId: INSTANCE, group: GROUP })),
      ...(options.retryMs !== undefined ? { retryMs: options.retryMs } : {}),
      ...(options.freshPass ? { freshPass: options.freshPass } : {}),
      ...(options.oneShot ? { oneShot: true } : {}),
      onCompleted: (result) => options.completed?.push(result),
      onHeartbeat: () => options.beats?.push(clock.now()),
    });
    reporters.push(r);
    return r;
  }

  /**
   * An instance launched into a warm pool kept `state`: IMDS's target state says so, and Auto
   * Scaling holds it in Warmed:Pending:Wait. `leave()` is the group taking it: IMDS reads
   * InService, and Auto Scaling holds it in Pending:Wait with a new action per hook.
   */
  function warmInstance(state: 'Warmed:Stopped' | 'Warmed:Running') {
    let target: string = state;
    let looks = 0;
    asg.membership = { group: GROUP, lifecycleState: 'Warmed:Pending:Wait' };
    return {
      locate: async (): Promise<Location> => (looks++, { instanceId: INSTANCE, group: GROUP, targetLifecycleState: target }),
      looks: () => looks,
      leave: () => {
        target = 'InService';
        asg.membership = { group: GROUP, lifecycleState: 'Pending:Wait' };
        asg.gone.clear();
      },
    };
  }

  /** Steps the clock one heartbeat interval at a time, each once the reporter waits again (a step may write its record), until `n` heartbeats were sent. */
  async function heartbeatsSent(n: number, intervalMs: number): Promise<void> {
    for (let i = 0; i < 12 * n && asg.ops('heartbeat').length < n; i++) {
      await clock.whenSleeping(1);
      await clock.advanceAsync(intervalMs);
    }
    await until(`${n} heartbeats`, () => asg.ops('heartbeat').length >= n);
  }

  /** A reporter in the pool whose every heartbeat is throttled, once two were tried: its hook times out there undecided. */
  async function throttledInPool(locate: () => Promise<Location>): Promise<LifecycleReporter> {
    asg.failNext('heartbeat', 100);
    const r = reporter({ heartbeatSeconds: 5 }, { locate });
    r.update(converging());
    r.start();
    await heartbeatsSent(2, 5_000);
    return r;
  }

  /** What a started reporter first does about the hook (a heartbeat or a completion, and for which hook) after the call numbered `before`. */
  async function firstActAfter(before: number): Promise<[string, string | undefined]> {
    await clock.whenSleeping(1);
    await clock.advanceAsync(10_000);
    const first = () => asg.calls.slice(before).find((c) => c.op === 'heartbeat' || c.op === 'complete');
    await until('a heartbeat or a completion', () => first() !== undefined);
    return [first()!.op, first()!.hook];
  }

  async function persisted(): Promise<Record<string, unknown>> {
    return JSON.parse(await readFile(fs.resolve(LIFECYCLE_FILE), 'utf8')) as Record<string, unknown>;
  }

  it('completes with CONTINUE once the first convergence converges, and not before', async () => {
    const completed: LifecycleResult[] = [];
    const r = reporter({}, { completed });
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    assert.deepEqual(asg.ops('complete'), []);

    r.update(converged());
    await until('the completion', () => asg.ops('complete').length === 1);
    assert.deepEqual(asg.ops('complete').map((c) => [c.hook, c.result]), [[HOOK, 'CONTINUE']]);
    assert.deepEqual(completed, ['CONTINUE']);
    await until('the record', () => r.view().settled !== undefined);
    const record = await persisted();
    assert.equal(record.instanceId, INSTANCE);
    assert.deepEqual((record.decision as { result: string }).result, 'CONTINUE');

    // Later passes, good or bad, say nothing more about the launch.
    r.update(converging());
    r.update(rolledBack());
    await clock.advanceAsync(3_600_000);
    await settle();
    assert.equal(asg.ops('complete').length, 1);
    assert.deepEqual(asg.ops('health'), []);
  });

  it('a launch whose first pass was rolled back to a good generation is heartbeated, not completed, until a later pass converges: CONTINUE', async () => {
    const lines: string[] = [];
    const r = reporter({ heartbeatSeconds: 60, budgetSeconds: 600 }, { lines });
    const start = clock.now();
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    r.update(rolledBack());
    await heartbeatsSent(3, 60_000);
    assert.deepEqual(asg.ops('complete'), [], 'the image generation running is not the launch converged');
    assert.equal(r.view().decision, undefined);
    const waiting = lines.map((l) => JSON.parse(l) as { event?: string; abandonAt?: string; outcome?: string }).filter((l) => l.event === 'lifecycle.waiting');
    assert.deepEqual(
      waiting.map((l) => [l.outcome, l.abandonAt]),
      [['rolled-back', new Date(start + 600_000).toISOString()]],
      'said once for the pass, with when the launch is abandoned',
    );

    // The daemon's retry (or a fixed push) converges within the budget.
    r.update(converging());
    r.update(converged());
    await until('the completion', () => asg.ops('complete').length === 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    assert.equal(r.view().decision?.reason, 'the launch converged');
    assert.ok((asg.ops('complete')[0]?.at ?? 0) >= start + 180_000);
    assert.deepEqual(asg.ops('health'), [], 'a good generation ran throughout: never Unhealthy');
  });

  it('a launch rolled back to a generation the sources built before (a warm pool instance after a bad push) CONTINUEs: what the fleet rolled back to', async () => {
    const r = reporter();
    r.update(status({ ...rolledBack(), running: { storePath: '/nix/store/aaaa-nixos-system', desiredHash: 'd'.repeat(64), generation: 3 } }));
    const view = await r.flush(1);
    assert.equal(view.decision?.result, 'CONTINUE');
    assert.equal(view.decision?.reason, `the launch ended on the good generation of desired ${'d'.repeat(12)}, which the sources built before`);
    assert.deepEqual(asg.ops('health'), []);
  });

  it('a launch that stays on a good generation without converging is ABANDONed when the budget passes, never reported Unhealthy', async () => {
    const r = reporter({ heartbeatSeconds: 60, budgetSeconds: 600 });
    const start = clock.now();
    r.update(rolledBack());
    r.start();
    await heartbeatsSent(9, 60_000);
    assert.deepEqual(asg.ops('complete'), []);
    await clock.whenSleeping(1);
    await clock.advanceAsync(60_000);
    await until('the ABANDON', () => asg.ops('complete').length === 1);
    assert.equal(asg.ops('complete')[0]?.result, 'ABANDON');
    assert.equal(asg.ops('complete')[0]?.at, start + 600_000);
    assert.match(r.view().decision?.reason ?? '', /600 s launch budget/);
    assert.deepEqual(asg.ops('health'), []);
  });

  it('one-shot (converge --once): a pass that ends on a good generation without converging ABANDONs at once; one that converges CONTINUEs', async () => {
    const r = reporter({}, { oneShot: true });
    r.update(rolledBack());
    const view = await r.flush(1);
    assert.equal(view.decision?.result, 'ABANDON');
    assert.equal(view.decision?.reason, 'the launch ended rolled-back, not converged, and this run makes no other pass');
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['ABANDON']);
    assert.deepEqual(asg.ops('health'), []);

    await rm(fs.resolve(LIFECYCLE_FILE));
    asg.gone.clear();
    const next = reporter({}, { oneShot: true });
    next.update(converged());
    assert.equal((await next.flush(1)).decision?.result, 'CONTINUE');
  });

  it('describeLaunch: one line for status from the kept record, while the launch waits and once it is decided', async () => {
    const store = new StateStore(fs, () => clock.now());
    assert.equal(await describeLaunch(store, INSTANCE, 600), undefined, 'no record');
    const start = clock.now();
    const r = reporter({ heartbeatSeconds: 60, budgetSeconds: 600 });
    r.update(rolledBack());
    r.start();
    await heartbeatsSent(1, 60_000);
    // The record is written by the step that heartbeats: real file I/O, waited for.
    await until('the record on disk', () => existsSync(fs.resolve(LIFECYCLE_FILE)));
    await r.stop();
    assert.equal(
      await describeLaunch(store, INSTANCE, 600),
      `waiting since ${new Date(start).toISOString()} for a pass that converges; the launch budget ends at ${new Date(start + 600_000).toISOString()} (ABANDON)`,
    );
    assert.equal(await describeLaunch(store, 'i-0someoneelse000000', 600), undefined, "another instance's record, baked into the image");
    const next = reporter({ heartbeatSeconds: 60, budgetSeconds: 600 });
    next.update(converged());
    assert.equal((await next.flush(1)).settled, 'completed with CONTINUE');
    assert.equal(await describeLaunch(store, INSTANCE, 600), 'CONTINUE (the launch converged)');
  });

  it('completes with ABANDON when the first convergence ends with no good generation, without SetInstanceHealth', async () => {
    const r = reporter();
    r.update(noGood());
    await r.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['ABANDON']);
    assert.deepEqual(asg.ops('health'), [], 'an abandoned launch is terminated already');
  });

  it('heartbeats while a build hangs and ABANDONs when the budget runs out', async () => {
    const beats: number[] = [];
    const r = reporter({ heartbeatSeconds: 60, budgetSeconds: 600 }, { beats });
    const start = clock.now();
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(599_000);
    await settle();
    assert.deepEqual(asg.ops('complete'), [], 'nothing is decided before the budget ends');
    assert.deepEqual(
      asg.ops('heartbeat').map((c) => (c.at - start) / 1000),
      [60, 120, 180, 240, 300, 360, 420, 480, 540],
    );
    await clock.advanceAsync(1_000);
    await until('the ABANDON', () => asg.ops('complete').length === 1);
    assert.equal(asg.ops('complete')[0]?.result, 'ABANDON');
    assert.equal(asg.ops('complete')[0]?.at, start + 600_000);
    assert.equal(beats.length, 9);

    // The build ends well after all: too late, the launch was abandoned.
    r.update(converged());
    await clock.advanceAsync(600_000);
    await settle();
    assert.equal(asg.ops('complete').length, 1);
    assert.equal(asg.ops('heartbeat').length, 9);
  });

  it("ABANDONs before the hook's global timeout ends the wait, when that comes before the budget", async () => {
    // LifecycleHook.GlobalTimeout: heartbeats keep an action waiting at most 100 × HeartbeatTimeout
    // (or 48 h); then the DefaultResult applies. 30 s → 3000 s, shorter than the 3600 s budget.
    asg.hooks = [{ name: HOOK, transition: LAUNCHING, heartbeatTimeout: 30, globalTimeout: 3_000 }];
    const r = reporter();
    const start = clock.now();
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(2_969_000);
    await settle();
    assert.deepEqual(asg.ops('complete'), []);
    // One heartbeat timeout early: the action began at launch, before the agent.
    await clock.advanceAsync(1_000);
    await until('the ABANDON', () => asg.ops('complete').length === 1);
    const [complete] = asg.ops('complete');
    assert.equal(complete?.result, 'ABANDON');
    assert.equal(complete.at - start, 2_970_000, `completed at ${(complete.at - start) / 1000} s`);
    assert.match(r.view().decision?.reason ?? '', /global timeout/);
  });

  it('heartbeats every third of the hook timeout by default, and stops once completed', async () => {
    asg.hooks = [{ name: HOOK, transition: LAUNCHING, heartbeatTimeout: 90 }];
    const r = reporter();
    const start = clock.now();
    r.update(converging());
    r.start();
    for (let i = 0; i < 4; i++) {
      await clock.whenSleeping(1);
      await clock.advanceAsync(30_000);
    }
    await until('four heartbeats', () => asg.ops('heartbeat').length === 4);
    assert.deepEqual(asg.ops('heartbeat').map((c) => (c.at - start) / 1000), [30, 60, 90, 120]);

    r.update(converged());
    await until('the completion', () => asg.ops('complete').length === 1);
    await clock.advanceAsync(600_000);
    await settle();
    assert.equal(asg.ops('heartbeat').length, 4, 'no heartbeat after the hook is completed');
  });

  it('leaves the first seconds of boot to the first convergence: no Auto Scaling call before 10 s', async () => {
    const r = reporter({ heartbeatSeconds: null });
    const start = clock.now();
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(9_000);
    await settle();
    assert.equal(asg.calls.length, 0, JSON.stringify(asg.calls));
    await clock.advanceAsync(1_000);
    await until('the hooks to be described', () => asg.calls.length === 1);
    assert.deepEqual(asg.calls.map((c) => [c.op, (c.at - start) / 1000]), [['describeLifecycleHooks', 10]]);
  });

  it('discovers every launch hook (not terminate hooks) and completes each', async () => {
    asg.hooks = [
      { name: 'a', transition: LAUNCHING, heartbeatTimeout: 300 },
      { name: 'drain', transition: 'autoscaling:EC2_INSTANCE_TERMINATING', heartbeatTimeout: 300 },
      { name: 'b', transition: LAUNCHING, heartbeatTimeout: 60 },
    ];
    const r = reporter();
    r.update(converged());
    await r.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => `${c.hook}:${c.result}`), ['a:CONTINUE', 'b:CONTINUE']);
  });

  it('uses the configured hook name and heartbeat interval without describing the hooks', async () => {
    const r = reporter({ hookName: 'named-hook', heartbeatSeconds: 10 });
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(10_000);
    await until('a heartbeat', () => asg.ops('heartbeat').length === 1);
    r.update(converged());
    await until('the completion', () => asg.ops('complete').length === 1);
    assert.deepEqual(asg.ops('describeLifecycleHooks'), []);
    assert.deepEqual(asg.calls.filter((c) => c.hook).map((c) => c.hook), ['named-hook', 'named-hook']);
  });

  it('completes only once per instance id across a restart, and a restarted agent neither heartbeats nor completes again', async () => {
    const first = reporter();
    first.update(converged());
    await first.flush(1);
    assert.equal(asg.ops('complete').length, 1);
    await first.stop();
    const callsBefore = asg.calls.length;

    const second = reporter({ heartbeatSeconds: 5 });
    second.update(converging());
    second.start();
    await clock.advanceAsync(60_000);
    second.update(converged());
    await second.flush(1);
    assert.equal(asg.calls.length, callsBefore, `no call at all after the restart: ${JSON.stringify(asg.calls.slice(callsBefore))}`);
  });

  it('a warm pool\'s instance completes its launch into the pool, and again when it leaves the pool for the group; a restart after that does not', async () => {
    const pool = warmInstance('Warmed:Stopped');
    const { locate } = pool;
    const inPool = reporter({}, { locate });
    inPool.update(converged());
    await inPool.flush(1);
    await inPool.stop();
    assert.deepEqual(asg.ops('complete').map((c) => [c.hook, c.result]), [[HOOK, 'CONTINUE']]);
    assert.equal((await persisted()).warm, true);
    const since = (await persisted()).since as number;

    // Stopped in the pool; a day later the group takes it: started again, held in Pending:Wait.
    await clock.advanceAsync(86_400_000);
    pool.leave();
    await secondLaunchCompleted(locate, since);

    // In service: a restart is no third launch.
    const calls = asg.calls.length;
    const restarted = reporter({ heartbeatSeconds: 5 }, { locate });
    restarted.update(converged());
    await restarted.flush(1);
    assert.equal(asg.calls.length, calls, `no call after a restart in service: ${JSON.stringify(asg.calls.slice(calls))}`);
  });

  it('a launch into the warm pool that ended without the agent (its hook timed out while the calls failed) is over once the group takes the instance: the second launch is judged on its own', async () => {
    const pool = warmInstance('Warmed:Stopped');
    const { locate } = pool;
    // In the pool, every heartbeat is throttled; the hook times out (DefaultResult CONTINUE) and the
    // instance is stopped mid-build: the record is left undecided.
    const inPool = await throttledInPool(locate);
    await inPool.stop();
    assert.deepEqual(asg.ops('complete'), []);
    assert.equal((await persisted()).warm, true);
    assert.equal((await persisted()).settled, undefined);
    const since = (await persisted()).since as number;
    asg.failures.clear();

    // A day later the group takes it: started again, held in Pending:Wait, building afresh.
    await clock.advanceAsync(86_400_000);
    pool.leave();
    await secondLaunchCompleted(locate, since, 0);
  });

  it('a warm pool kept Running: a launch into the pool still unsettled when the group takes the instance gives way to the launch into the group', async () => {
    const pool = warmInstance('Warmed:Running');
    const { locate } = pool;
    const r = await throttledInPool(locate);
    const since = (await persisted()).since as number;
    // The hook timed out into the pool meanwhile; the group takes the instance.
    pool.leave();
    await clock.advanceAsync(30_000);
    await r.flush(1);
    const record = await persisted();
    assert.equal(record.warm, undefined);
    assert.ok((record.since as number) > since, 'its budget counts from when the group took it');
  });

  it('a launch into the warm pool decided but not known to be completed (the answer was lost before the stop) does not complete the launch into the group before it converges', async () => {
    const pool = warmInstance('Warmed:Stopped');
    const { locate } = pool;
    asg.failNext('complete');
    const inPool = reporter({}, { locate });
    inPool.update(converged());
    await inPool.flush(1);
    await inPool.stop();
    assert.equal((await persisted()).settled, undefined);
    assert.equal((await persisted() as { decision?: { result: string } }).decision?.result, 'CONTINUE');

    await clock.advanceAsync(86_400_000);
    pool.leave();
    const before = asg.calls.length;
    const completions = asg.ops('complete').length;
    const leaving = reporter({ heartbeatSeconds: 5 }, { locate });
    leaving.update(converging());
    leaving.start();
    assert.deepEqual(await firstActAfter(before), ['heartbeat', HOOK], 'nothing is completed while this boot still converges');
    leaving.update(converged());
    await until('the completion', () => asg.ops('complete').length === completions + 1);
    assert.equal(asg.ops('complete').at(-1)?.result, 'CONTINUE');
  });

  it('a warm pool kept Running: the agent, never restarted, sees the group take its instance (IMDS, every 30 s) and completes the second launch hook', async () => {
    const pool = warmInstance('Warmed:Running');
    const { locate } = pool;
    const r = reporter({}, { locate });
    r.update(converged());
    r.start();
    await until('the completion in the pool', () => r.view().settled !== undefined);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    // The record saved, the loop waits for its next look.
    await clock.whenSleeping(1);
    const calls = asg.calls.length;
    // Waiting in the pool: IMDS is read every 30 s, Auto Scaling never.
    const before = pool.looks();
    for (let i = 0; i < 3; i++) {
      await clock.advanceAsync(30_000);
      await clock.whenSleeping(1);
    }
    assert.equal(pool.looks() - before, 3);
    assert.equal(asg.calls.length, calls);

    pool.leave();
    await clock.advanceAsync(30_000);
    await until('the second completion', () => asg.ops('complete').length === 2);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
    // In service: once the second launch's record is saved, nothing is left to look at.
    for (const deadline = Date.now() + 30_000; ; ) {
      const record = await persisted().catch(() => undefined);
      if (record?.settled !== undefined && record.warm === undefined) break;
      if (Date.now() > deadline) throw new Error('timed out waiting for the second launch\'s record');
      await new Promise((done) => setTimeout(done, 2));
    }
    await settle();
    assert.equal(clock.pendingSleeps, 0, 'no look is scheduled once in service');
  });

  /** The daemon's side of a fresh pass (freshPass): each ask is held until the test ends the pass. */
  function freshPasses() {
    const asked: (() => void)[] = [];
    return {
      freshPass: () => new Promise<void>((resolve) => asked.push(resolve)),
      asked: () => asked.length,
      /** The pass asked for ends (its status fed first, as the daemon's loop feeds it). */
      end: () => asked.at(-1)!(),
    };
  }

  it("a warm pool kept Running: once the group takes the instance, its launch hook waits, heartbeated, for a pass that reads the sources again, and is completed with that pass's result", async () => {
    const pool = warmInstance('Warmed:Running');
    const passes = freshPasses();
    const r = reporter({ heartbeatSeconds: 5 }, { locate: pool.locate, freshPass: passes.freshPass });
    r.update(converged());
    r.start();
    await until('the completion in the pool', () => r.view().settled !== undefined);
    assert.equal(passes.asked(), 0, "the launch into the pool was this run's first convergence: no pass asked");

    pool.leave();
    await clock.whenSleeping(1);
    await clock.advanceAsync(30_000);
    await until('the fresh pass asked', () => passes.asked() === 1);
    // What this run converged to in the pool is old: no completion on it, heartbeats meanwhile.
    const before = asg.calls.length;
    assert.deepEqual(await firstActAfter(before), ['heartbeat', HOOK]);
    assert.equal(asg.ops('complete').length, 1);
    r.update(status({ phase: 'fetching', condition: 'converged', firstConvergenceDone: true }));
    r.update(converged());
    await r.flush(1);
    assert.equal(asg.ops('complete').length, 1, 'not before the pass asked for has ended');
    passes.end();
    await until('the completion out of the pool', () => asg.ops('complete').length === 2);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
    assert.equal(r.view().decision?.reason, 'the pass after leaving the warm pool converged');
    assert.equal(passes.asked(), 1);
  });

  it('a look at the pool still under way as the daemon stops, finding the instance taken out: no pass asked, no completion, the launch left to the next start', async () => {
    const pool = warmInstance('Warmed:Running');
    let release: (() => void) | undefined;
    const locate = async (): Promise<Location> => {
      if (release === undefined) return pool.locate();
      await new Promise<void>((resolve) => (release = resolve));
      return pool.locate();
    };
    const passes = freshPasses();
    const r = reporter({}, { locate, freshPass: passes.freshPass });
    r.update(converged());
    r.start();
    await until('the completion in the pool', () => r.view().settled !== undefined);
    await clock.whenSleeping(1);
    release = () => undefined;
    const held = release;
    await clock.advanceAsync(30_000);
    await until('the look in flight', () => release !== held);
    const stopped = r.stop();
    pool.leave();
    release!();
    await stopped;
    assert.equal(passes.asked(), 0, 'a stopping agent runs no more passes');
    assert.equal(asg.ops('complete').length, 1, 'the launch out of the pool is not completed on what the pool converged to');
    const record = await persisted();
    assert.equal(record.warm, undefined, 'the launch out of the pool is recorded, for the next start to complete');
    assert.equal(record.decision, undefined);
  });

  /**
   * An instance launched into the group itself, in service, that a scale-in may return to the
   * group's warm pool (instance reuse policy): `returned(pool)` moves IMDS's target state there,
   * `leave()` is the group taking it back (Pending:Wait, a new action per hook).
   */
  function inService() {
    let target = 'InService';
    let hang = false;
    return {
      locate: async (): Promise<Location> => (hang ? new Promise<Location>(() => undefined) : { instanceId: INSTANCE, group: GROUP, targetLifecycleState: target }),
      returned: (pool: 'Warmed:Stopped' | 'Warmed:Running') => {
        target = pool;
      },
      leave: () => {
        target = 'InService';
        asg.membership = { group: GROUP, lifecycleState: 'Pending:Wait' };
        asg.gone.clear();
      },
      /** IMDS stops answering. */
      hang: () => {
        hang = true;
      },
    };
  }

  /** A launch into the group, completed and settled by a first reporter, which is returned running. */
  async function settledInService(locate: () => Promise<Location>): Promise<LifecycleReporter> {
    const r = reporter({}, { locate });
    r.update(converged());
    r.start();
    await until('the launch into the group completed', () => r.view().settled !== undefined);
    await until('its record', () => asg.ops('complete').length === 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    return r;
  }

  /**
   * A day later the group takes the instance out of its pool: a started reporter heartbeats the
   * launch hook while this boot converges (never judging it by the record's day-old budget), and
   * completes it once it has. `completedBefore`: the completions Auto Scaling saw until then.
   */
  async function secondLaunchCompleted(locate: () => Promise<Location>, since: number, completedBefore = 1): Promise<void> {
    const leaving = reporter({ heartbeatSeconds: 5 }, { locate });
    leaving.update(converging());
    leaving.start();
    const before = asg.calls.length;
    assert.deepEqual(await firstActAfter(before), ['heartbeat', HOOK], 'the launch out of the pool is heartbeated while it converges');
    leaving.update(converged());
    await until('the completion out of the pool', () => asg.ops('complete').length === completedBefore + 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), Array<LifecycleResult>(completedBefore + 1).fill('CONTINUE'));
    await until('the record', () => leaving.view().settled !== undefined);
    await leaving.stop();
    const record = await persisted();
    assert.equal(record.warm, undefined, 'the launch out of the pool was into the group');
    assert.ok((record.since as number) > since, 'its budget counts from the start out of the pool');
  }

  it('an instance in service that a scale-in returns to its warm pool (reuse policy) meets the launch hook again when it leaves: the leaving watch\'s reading of the target state says so', async () => {
    const instance = inService();
    const r = await settledInService(instance.locate);
    const since = (await persisted()).since as number;
    assert.equal((await persisted()).warm, undefined);
    // The leaving watch reads InService over and over: nothing to do, and no call.
    const calls = asg.calls.length;
    r.observeTarget('InService', 30_000);
    instance.returned('Warmed:Stopped');
    r.observeTarget('Warmed:Stopped', 30_000);
    await until('the record says the instance is going into the pool', () => r.view().settled !== undefined && asg.calls.length === calls);
    for (const deadline = Date.now() + 30_000; (await persisted()).warm !== true; ) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the warm record');
      await new Promise((done) => setTimeout(done, 2));
    }
    await r.stop();
    assert.equal(asg.calls.length, calls, 'following the target state makes no Auto Scaling call');

    await clock.advanceAsync(86_400_000);
    instance.leave();
    await secondLaunchCompleted(instance.locate, since);
  });

  it('a stopping daemon looks at the target state once more: a return to a Stopped pool stops the instance sooner than the next look would come', async () => {
    const instance = inService();
    const r = await settledInService(instance.locate);
    const since = (await persisted()).since as number;
    instance.returned('Warmed:Stopped');
    await r.stop({ lastLook: true });
    assert.equal((await persisted()).warm, true);

    await clock.advanceAsync(86_400_000);
    instance.leave();
    await secondLaunchCompleted(instance.locate, since);
  });

  it('a stop in service looks once and changes nothing; a stop whose look IMDS never answers still ends', async () => {
    const instance = inService();
    const calls = asg.calls.length;
    const first = await settledInService(instance.locate);
    await first.stop({ lastLook: true });
    assert.equal((await persisted()).warm, undefined);
    assert.equal(asg.calls.length, calls + 2, 'describe hooks and complete only');

    const second = reporter({}, { locate: instance.locate });
    second.update(converged());
    await second.flush(1);
    instance.hang();
    let stopped = false;
    const stopping = second.stop({ lastLook: true }).then(() => (stopped = true));
    await clock.whenSleeping(1);
    assert.equal(stopped, false);
    await clock.advanceAsync(2_000);
    await stopping;
    assert.equal((await persisted()).warm, undefined);
  });

  it('a warm pool kept Stopped: after a stop whose look IMDS never answered, the next start asks Auto Scaling once, and completes the launch hook the group holds; a start after a stop that looked asks nothing', async () => {
    const instance = inService();
    let down = false;
    const locate = async (): Promise<Location> => {
      if (down) throw new Error('connect ECONNREFUSED 169.254.169.254:80');
      return instance.locate();
    };
    const first = await settledInService(locate);
    down = true;
    await first.stop({ lastLook: true });
    assert.equal((await persisted()).lastLookFailedAt, clock.now(), 'the stop saw nothing, and says so');

    // Returned to the Stopped pool between two looks, and taken out again: started, held in Pending:Wait.
    instance.leave();
    down = false;
    await clock.advanceAsync(86_400_000);
    const completed: LifecycleResult[] = [];
    const second = reporter({}, { locate, completed });
    second.update(converging());
    second.start();
    await until('the question to Auto Scaling', () => asg.ops('describeInstance').length === 1);
    await clock.advanceAsync(30_000);
    assert.equal(asg.ops('complete').length, 1, 'not completed before this boot converged');
    second.update(converged());
    await until('the completion', () => completed.length === 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
    await until('the record', () => second.view().settled !== undefined);
    await second.stop({ lastLook: true });
    assert.equal((await persisted()).lastLookFailedAt, undefined);

    const third = reporter({}, { locate });
    third.update(converged());
    third.start();
    await third.flush(1);
    assert.equal(asg.ops('describeInstance').length, 1, 'a start after a stop that looked asks nothing');
  });

  it('a warm pool kept Running: an agent restarted in the pool after a scale-in returned its instance there knows it from IMDS, and completes the launch hook when the group takes the instance back', async () => {
    const instance = inService();
    const first = await settledInService(instance.locate);
    await first.stop();
    const since = (await persisted()).since as number;
    instance.returned('Warmed:Running');

    const restarted = reporter({}, { locate: instance.locate });
    restarted.update(converged());
    restarted.start();
    for (const deadline = Date.now() + 30_000; (await persisted()).warm !== true; ) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the warm record');
      await new Promise((done) => setTimeout(done, 2));
    }
    instance.leave();
    // Its look every 30 s finds the instance taken; this boot converged long ago, so CONTINUE at once.
    await clock.whenSleeping(1);
    await clock.advanceAsync(30_000);
    await until('the second completion', () => asg.ops('complete').length === 2);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
    await until('the record', () => restarted.view().settled !== undefined);
    await restarted.stop();
    assert.ok(((await persisted()).since as number) > since);
  });

  it('a warm pool kept Hibernated: an instance that slept with the agent running (no look saw the return) asks Auto Scaling once when it wakes, and completes the launch hook the group holds', async () => {
    const instance = inService();
    const r = await settledInService(instance.locate);
    // The leaving watch reads InService every 30 s: no Auto Scaling call for that.
    const calls = asg.calls.length;
    for (let i = 0; i < 3; i++) {
      r.observeTarget('InService', 30_000);
      await clock.advanceAsync(30_000);
    }
    await r.flush(1);
    assert.equal(asg.calls.length, calls, `no call while awake: ${JSON.stringify(asg.calls.slice(calls))}`);

    // Returned to the pool and hibernated between two looks; a day later resumed, held in Pending:Wait.
    instance.leave();
    await clock.advanceAsync(86_400_000);
    r.observeTarget('InService', 30_000);
    await until('the completion after the wake', () => asg.ops('complete').length === 2);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
    assert.equal(asg.ops('describeInstance').length, 1);
    await until('the record', () => r.view().settled !== undefined);

    // A pause in service (the group still has it InService) costs one call and changes nothing.
    asg.membership = { group: GROUP, lifecycleState: 'InService' };
    await clock.advanceAsync(86_400_000);
    r.observeTarget('InService', 30_000);
    await until('the second question', () => asg.ops('describeInstance').length === 2);
    await r.flush(1);
    assert.equal(asg.ops('complete').length, 2);

    // Read every 10 minutes (a long termination.checkSeconds), readings 10 minutes apart are no sleep.
    for (let i = 0; i < 3; i++) {
      await clock.advanceAsync(600_000);
      r.observeTarget('InService', 600_000);
    }
    await r.flush(1);
    assert.equal(asg.ops('describeInstance').length, 2);
  });

  it('a warm pool kept Hibernated: the launch hook the group holds after the wake waits for a fresh pass, and ABANDONs when that pass leaves no good generation', async () => {
    const instance = inService();
    const passes = freshPasses();
    const r = reporter({}, { locate: instance.locate, freshPass: passes.freshPass });
    r.update(converged());
    r.start();
    await until('the launch into the group completed', () => asg.ops('complete').length === 1 && r.view().settled !== undefined);
    r.observeTarget('InService', 30_000);
    await clock.advanceAsync(30_000);
    r.observeTarget('InService', 30_000);
    instance.leave();
    await clock.advanceAsync(86_400_000);
    r.observeTarget('InService', 30_000);
    await until('the fresh pass asked', () => passes.asked() === 1);
    assert.equal(asg.ops('complete').length, 1);
    r.update(noGood());
    passes.end();
    await until('the completion after the wake', () => asg.ops('complete').length === 2);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'ABANDON']);
    assert.equal(r.view().decision?.reason, 'the pass after leaving the warm pool ended with no good generation running');
  });

  it('a launch into the warm pool is known from DescribeAutoScalingInstances too, when IMDS serves no target state', async () => {
    asg.membership = { group: GROUP, lifecycleState: 'Warmed:Pending:Wait' };
    const r = reporter({}, { locate: async () => ({ instanceId: INSTANCE }) });
    r.update(converged());
    await r.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    assert.equal((await persisted()).warm, true);
  });

  it('a restart after deciding but before completing completes with the decision already made', async () => {
    asg.failNext('complete');
    const first = reporter();
    first.update(noGood());
    await first.flush(1);
    assert.equal(first.view().errors, 1);
    await first.stop();

    const second = reporter();
    // The instance is better now, but the launch was already judged: the same ABANDON is sent.
    second.update(converged());
    await second.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['ABANDON', 'ABANDON']);
    assert.equal(second.view().settled, 'completed with ABANDON');
  });

  it("a restart under an older agent (a rollback) resumes a newer agent's record it can read, and writes the newer fields back", async () => {
    asg.failNext('complete');
    const first = reporter();
    first.update(noGood());
    await first.flush(1);
    await first.stop();
    await fs.writeAtomic(LIFECYCLE_FILE, JSON.stringify({ ...(await persisted()), version: 2, minReaderVersion: 1, notes: ['from format 2'] }));

    const second = reporter();
    second.update(converged());
    await second.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['ABANDON', 'ABANDON'], 'the decision the newer agent made holds');
    const record = await persisted();
    assert.equal(record.version, 1);
    assert.equal('minReaderVersion' in record, false);
    assert.deepEqual(record.notes, ['from format 2']);
    assert.ok(record.settled, 'and the record moved on');
  });

  it("a newer agent's record this agent cannot read is a launch begun afresh, not a crash", async () => {
    await fs.writeAtomic(LIFECYCLE_FILE, JSON.stringify({ version: 2, instanceId: INSTANCE, since: 0, hooks: {}, settled: { at: 0, reason: 'x' } }));
    const r = reporter();
    r.update(converged());
    await r.flush(1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    assert.equal((await persisted()).version, 1);
  });

  it('a record left by another instance id (baked into the image) is not this launch', async () => {
    await fs.writeAtomic(
      LIFECYCLE_FILE,
      JSON.stringify({
        version: 1,
        instanceId: 'i-00000000000000001',
        since: clock.now() - 86_400_000,
        group: GROUP,
        decision: { result: 'CONTINUE', reason: 'the first convergence converged', at: clock.now() },
        hooks: { [HOOK]: { outcome: 'done', at: clock.now() } },
        settled: { at: clock.now(), reason: 'completed with CONTINUE' },
      }),
    );
    const r = reporter({ budgetSeconds: 60 });
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    // The budget counts from this instance's first sight, not from the old record's.
    await clock.advanceAsync(59_000);
    await settle();
    assert.deepEqual(asg.ops('complete'), []);
    r.update(converged());
    await until('the completion', () => asg.ops('complete').length === 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE']);
    await until('the record', () => r.view().settled !== undefined);
    assert.equal((await persisted()).instanceId, INSTANCE);
  });

  it('finds the group with DescribeAutoScalingInstances when IMDS has no group tag', async () => {
    const r = reporter({}, { locate: async () => ({ instanceId: INSTANCE }) });
    r.update(converged());
    await r.flush(1);
    assert.deepEqual(asg.calls.map((c) => c.op), ['describeInstance', 'describeLifecycleHooks', 'complete']);
  });

  it('does nothing more for an instance in no group', async () => {
    asg.membership = undefined;
    const r = reporter({}, { locate: async () => ({ instanceId: INSTANCE }) });
    r.update(converging());
    r.start();
    await clock.advanceAsync(7_200_000);
    r.update(noGood());
    await r.flush(1);
    assert.deepEqual(asg.calls.map((c) => c.op), ['describeInstance']);
    assert.equal(r.view().settled, 'not in an Auto Scaling group');
  });

  it('stops heartbeating a hook whose action is gone (timed out elsewhere) and does not try to complete it', async () => {
    const r = reporter({ heartbeatSeconds: 30 });
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    asg.gone.add(HOOK);
    await clock.advanceAsync(30_000);
    await until('the hook to be over', () => r.view().settled !== undefined);
    r.update(converged());
    await clock.advanceAsync(300_000);
    await settle();
    assert.deepEqual(asg.calls.map((c) => c.op), ['describeLifecycleHooks', 'heartbeat']);
  });

  it('reports Unhealthy (respecting the grace period) only when a pass ends with no good generation, once while it stays so', async () => {
    asg.hooks = [];
    const r = reporter();
    r.update(converged());
    await r.flush(1);
    r.update(rolledBack());
    await r.flush(1);
    // Mid-pass, a rollback may say "no good generation" before its verdict: not a reason yet.
    r.update(status({ phase: 'rolling-back', condition: 'converging', firstConvergenceDone: true, noGoodGeneration: true }));
    await r.flush(1);
    assert.deepEqual(asg.ops('health'), []);

    r.update(noGood());
    await r.flush(1);
    r.update(noGood());
    await r.flush(1);
    assert.deepEqual(asg.ops('health').map((c) => [c.health, c.respectGrace]), [['Unhealthy', true]]);

    // Good again, then bad again: a new report.
    r.update(converged());
    await r.flush(1);
    r.update(noGood());
    await r.flush(1);
    assert.equal(asg.ops('health').length, 2);
  });

  it('reports Unhealthy after a CONTINUE when a later pass leaves no good generation', async () => {
    const r = reporter();
    r.update(converged());
    await r.flush(1);
    r.update(noGood());
    await r.flush(1);
    assert.deepEqual(asg.calls.map((c) => c.op), ['describeLifecycleHooks', 'complete', 'health']);
  });

  it('does not report Unhealthy when reportUnhealthy is off', async () => {
    asg.hooks = [];
    const r = reporter({ reportUnhealthy: false });
    r.update(noGood());
    await r.flush(1);
    assert.deepEqual(asg.ops('health'), []);
  });

  it('retries a failed completion on the next tick, and a failed heartbeat before the next interval', async () => {
    const completed: LifecycleResult[] = [];
    const r = reporter({ heartbeatSeconds: 60 }, { retryMs: 5_000, completed });
    const start = clock.now();
    asg.failNext('heartbeat');
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(60_000);
    await until('the failed heartbeat', () => asg.ops('heartbeat').length === 1);
    await clock.whenSleeping(1);
    await clock.advanceAsync(5_000);
    await until('the retried heartbeat', () => asg.ops('heartbeat').length === 2);
    assert.deepEqual(asg.ops('heartbeat').map((c) => (c.at - start) / 1000), [60, 65]);
    assert.equal(r.view().errors, 1);

    asg.failNext('complete', 2);
    r.update(converged());
    await until('the first failed completion', () => asg.ops('complete').length === 1);
    await clock.whenSleeping(1);
    await clock.advanceAsync(5_000);
    await until('the second failed completion', () => asg.ops('complete').length === 2);
    await clock.whenSleeping(1);
    await clock.advanceAsync(5_000);
    await until('the completion', () => asg.ops('complete').length === 3 && r.view().settled !== undefined);
    assert.deepEqual(completed, ['CONTINUE']);
    assert.equal(r.view().errors, 3);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE', 'CONTINUE']);
  });

  it('flush() (converge --once) retries a failed completion before it returns', async () => {
    asg.failNext('complete');
    const r = reporter();
    r.update(converged());
    const flushed = r.flush(3, 1_000);
    await clock.whenSleeping(1);
    clock.advance(1_000);
    const view = await flushed;
    assert.equal(view.settled, 'completed with CONTINUE');
    assert.equal(view.errors, 1);
    assert.deepEqual(asg.ops('complete').map((c) => c.result), ['CONTINUE', 'CONTINUE']);
  });

  it('retries when the instance cannot be located yet', async () => {
    let attempts = 0;
    const r = reporter({}, {
      retryMs: 1_000,
      locate: async () => {
        attempts++;
        if (attempts === 1) throw new TransientError('IMDS unavailable', 'imds');
        return { instanceId: INSTANCE, group: GROUP };
      },
    });
    r.update(converged());
    r.start();
    await clock.whenSleeping(1);
    await clock.advanceAsync(1_000);
    await until('the completion', () => asg.ops('complete').length === 1);
    assert.equal(attempts, 2);
  });

  it('stop() ends the loop: no call after it, whatever the clock does', async () => {
    const r = reporter({ heartbeatSeconds: 10 });
    r.update(converging());
    r.start();
    await clock.whenSleeping(1);
    await r.stop();
    await clock.advanceAsync(600_000);
    await settle();
    assert.deepEqual(asg.ops('heartbeat'), []);
  });
});
