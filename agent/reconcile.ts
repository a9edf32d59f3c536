// The only module that knows the others. One pass: sources → desired state → render → apply →
// verify → report. It alone decides (switch, roll back, hold), writes the durable state, and records
// the facts the Status every report sink reads is derived from.
import { bootEssentials, listGenerations, runningSystem, bootedSystem } from './apply/generations.js';
import type { ClosureRealiser } from './apply/closure.js';
import type { Rebuilder } from './apply/rebuild.js';
import type { Config } from './config.js';
import { shortHash, type DesiredState } from './desired/desired.js';
import { AgentError, ApplyFailedError, InvalidInputError, isAgentError, TransientError } from './errors.js';
import type { RootFs } from './fs.js';
import type { Logger } from './log.js';
import type { Clock, Runner } from './ports.js';
import { PREVIOUS_CONFIGURATION, RENDER_ROOT, renderChannels, renderPlan, type RenderPlan } from './render/render.js';
import type { RenderWriter } from './render/write.js';
import type { FailureReporter } from './rollout/reporter.js';
import { selectDesired, whoOf, type Selection } from './rollout/select.js';
import { ALARM_STAGE } from './rollout/spec.js';
import type { Snapshots } from './sources/index.js';
import { digestOf } from './sources/userdata.js';
import { planScriptLaunch } from './userdata-script.js';
import { planFailure, planPass, planRecovery, passSituation, retryAt, type Realise } from './plan.js';
import { pruneBuilds, STATE_DIR, type DurableState, type StateStore } from './state.js';
import { deriveStatus, type ErrorSummary, type Outcome, type PassProgress, type Status, type StatusFacts } from './status.js';
import type { HealthChecker, Verdict } from './verify/health.js';

/** The capabilities a pass uses, each as narrow as the reconciler needs it. */
export interface Sources {
  read(signal?: AbortSignal): Promise<Snapshots>;
}
export type Writer = Pick<RenderWriter, 'adoptImageConfiguration' | 'prepare' | 'commit' | 'writeSecrets' | 'pruneSecrets' | 'restore' | 'currentConfiguration' | 'gc'>;
export type RebuildSteps = Pick<Rebuilder, 'build' | 'startBuild' | 'activate' | 'setProfile' | 'switchGeneration' | 'switchLegacy' | 'updateChannels'>;
export type Health = Pick<HealthChecker, 'verify'>;
export type Closures = Pick<ClosureRealiser, 'realise' | 'pinRoots'>;
export type DurableStore = Pick<StateStore, 'load' | 'save' | 'lastGoodConfiguration' | 'saveUserDataScript'>;

export interface ReconcilerDeps {
  readonly config: Config;
  readonly clock: Clock;
  readonly fs: RootFs;
  readonly log: Logger;
  readonly runner: Runner;
  readonly sources: Sources;
  readonly writer: Writer;
  readonly rebuilder: RebuildSteps;
  /** Substitutes prebuilt closures (the `system` source); without it, a desired closure fails. */
  readonly closures?: Closures;
  readonly health: Health;
  readonly store: DurableStore;
  /** Called with every new Status; report sinks hang here. */
  readonly onStatus?: (status: Status) => void;
  /** Called at each phase change, so a watchdog knows the loop is alive. */
  readonly onProgress?: () => void;
  /** Records a failed pass to a rollout's candidate where the fleet reads it. */
  readonly rollout?: FailureReporter;
}

export interface PassResult {
  readonly outcome: Outcome;
  readonly desiredHash?: string;
  readonly error?: AgentError;
  /** A request refused before anything was tried (a rollback with nowhere to go): no pass to record. */
  readonly refused?: true;
}

/**
 * An operator's rollback as the command answers it (the control socket, or the command itself when
 * no daemon runs): ok only when it went back and a good generation runs after it; a rollback whose
 * target failed its health check too is the work failing (exit 1).
 */
export function rollbackAnswer(result: PassResult, status: Status): { ok: boolean; outcome: Outcome; error?: string; status: Status } {
  return {
    ok: result.outcome === 'rolled-back' && !status.noGoodGeneration,
    outcome: result.outcome,
    ...(result.refused && result.error ? { error: result.error.message } : {}),
    status,
  };
}

/** Where an earlier agent kept the previous good configuration.nix, before state.json carried it. */
const LEGACY_PREVIOUS_GOOD_CONFIGURATION = `${STATE_DIR}/previous-good-configuration.nix`;

export class Reconciler {
  private state!: DurableState;
  private facts: StatusFacts;
  private current: Status;
  private desired: DesiredState | undefined;
  private selection: Selection | undefined;
  private startProblem: string | undefined;

  constructor(private readonly deps: ReconcilerDeps) {
    this.facts = { pid: process.pid, activity: { kind: 'starting' }, noGoodGeneration: false };
    this.current = deriveStatus(undefined, this.facts, deps.clock.now());
  }

  get status(): Status {
    return this.current;
  }

  get durable(): DurableState {
    return this.state;
  }

  /**
   * Takes over what the reconciler this one replaces recorded (SIGHUP builds every part again, in
   * the same process): the last pass, what runs, whether a good generation does. Those facts are
   * not in the durable state; without them a reload would read as a fresh start. Before start().
   */
  carryOver(previous: Reconciler): void {
    this.facts = { ...previous.facts, pid: this.facts.pid };
    this.desired = previous.desired;
    this.selection = previous.selection;
  }

  /** Loads the durable state and finishes whatever a killed agent left half done. */
  async start(): Promise<void> {
    // Before anything watches the local files: the agent's own copy of the image's configuration
    // to base.nix is not a change to converge on.
    await this.deps.writer.adoptImageConfiguration(this.deps.config.local.baseConfiguration);
    const loaded = await this.deps.store.load();
    this.state = loaded.state;
    if (loaded.problem) {
      this.startProblem = loaded.problem;
      this.deps.log.error({ event: 'state.corrupt', problem: loaded.problem }, loaded.problem);
    }
    if (!this.state.lastGood) {
      // The image booted this system: it is the first good generation by definition. Not saved
      // here: the pass's first journal entry (or its end) saves it, and a start killed before then
      // finds the same system again. On a first boot that is two disk flushes fewer before the
      // rebuild.
      const good = (await runningSystem(this.deps.fs)) ?? (await bootedSystem(this.deps.fs));
      if (good) this.state.lastGood = { storePath: good, at: this.deps.clock.now() };
    }
    await this.recover();
    const noGood = this.state.noGoodGeneration;
    if (noGood) {
      // Still true only while the system the rollback left runs (an operator may have switched since).
      if (noGood.storePath === (await runningSystem(this.deps.fs))) this.record({ noGoodGeneration: true });
      else delete this.state.noGoodGeneration;
    }
    const required = this.state.rebootRequired;
    if (required && (await bootedSystem(this.deps.fs)) === required.storePath) {
      // Booted into the generation that needed it: the reboot happened.
      delete this.state.rebootRequired;
      await this.save();
    }
    this.record({});
  }

  /** One pass of the loop. Never throws an AgentError: it becomes the outcome. */
  async converge(trigger: string, signal?: AbortSignal): Promise<PassResult> {
    const started = this.deps.clock.now();
    const log = this.deps.log.child({ trigger });
    log.info({ event: 'pass.start' }, `converging (${trigger})`);
    let result: PassResult;
    try {
      result = await this.pass(log, signal);
    } catch (caught) {
      const err = systemError(caught) ?? caught;
      if (!isAgentError(err)) throw err;
      if (err instanceof TransientError && err.source === 'fs') await this.failWrite(err, log);
      result = { outcome: err.kind === 'invalid-input' ? 'invalid-input' : 'failed', error: err, ...(this.desired ? { desiredHash: this.desired.hash } : {}) };
      log.error({ event: 'pass.error', err: err.toJSON() }, err.message);
    }
    const durationMs = this.deps.clock.now() - started;
    await this.finish(result, durationMs).catch((caught: unknown) => {
      // The status in memory is already up to date; only its durable copy is missing.
      log.error({ event: 'state.write-failed', err: (caught as Error).message }, `cannot save the state: ${(caught as Error).message}`);
    });
    log.info({ event: 'pass.end', outcome: result.outcome, durationMs, desiredHash: result.desiredHash }, `pass ended: ${result.outcome}`);
    return result;
  }

  /**
   * A file under the root could not be written (a full disk, a read-only directory): nothing new
   * was activated (the journal says how far it got), so what was rendered is put back, and the
   * desired state is remembered as failed so the next try waits its backoff. Each step is best
   * effort: the disk that failed the pass may fail these too.
   */
  private async failWrite(err: TransientError, log: Logger): Promise<void> {
    const bestEffort = async (what: string, step: () => Promise<unknown>) => {
      await step().catch((e: unknown) => log.warn({ event: 'pass.cleanup-failed', what, err: (e as Error).message }, `after a write error, cannot ${what}: ${(e as Error).message}`));
    };
    const phase = this.state.journal.phase;
    if (phase === 'rendered' || phase === 'building') {
      await bestEffort('restore configuration.nix', () => this.restoreConfiguration());
      await bestEffort('end the journal entry', () => this.journal('idle'));
    }
    if (phase === 'activating' || phase === 'verifying') {
      // The new system runs, unverified. The entry on disk says activating or verifying, from which a
      // restart rolls back; so does this, now, with its own entries only if the disk takes them.
      await bestEffort('roll back to the last good generation', () => this.rollbackTo(err.message, log, 'best-effort'));
    }
    const desired = this.desired;
    const stage = phase === 'activating' || phase === 'verifying' ? 'verify' : 'render';
    if (desired) await bestEffort('remember the failure', () => this.recordFailure(desired.hash, stage, err.message));
  }

  private async pass(log: Logger, signal?: AbortSignal): Promise<PassResult> {
    if (planPass(passSituation(this.state, undefined, undefined, this.deps.clock.now())).kind === 'suspended') return { outcome: 'suspended' };
    this.step({ step: 'fetching' });
    await this.deps.writer.adoptImageConfiguration(this.deps.config.local.baseConfiguration);
    const snapshots = await this.deps.sources.read(signal);
    this.record({ instanceId: snapshots.identity.instanceId });
    await this.runUserDataScript(snapshots, log);

    const selection = selectDesired({ userData: snapshots.userData, ssm: snapshots.ssm, local: snapshots.local }, whoOf(snapshots), this.deps.clock.now());
    const desired = selection.desired;
    this.desired = desired;
    this.selection = selection;
    if (selection.rejected) await this.reportRollout(selection.rejected.taken, 'validate', selection.rejected.reason);
    if (selection.alarmed) await this.reportRollout(selection.alarmed.taken, ALARM_STAGE, selection.alarmed.reason);
    const notes = [...snapshots.notes, ...desired.notes];
    for (const note of notes) log.warn({ event: 'source.note' }, note);
    // A refused script is logged once, when refused, and stays in the status while it is the user data.
    this.record({ rollout: selection.rollouts, desired: { hash: desired.hash, sources: desired.sources, notes: [...notes, ...this.userDataScriptNotes(snapshots)], runs: desired.system ? 'closure' : 'configuration', ...(desired.system ? { closure: { storePath: desired.system.storePath, substituter: desired.system.substituter } } : {}) } });
    const short = shortHash(desired.hash);

    const running = await runningSystem(this.deps.fs);
    const step = planPass(passSituation(this.state, desired.hash, running, this.deps.clock.now(), { closure: desired.system !== undefined, mode: this.deps.config.rebuild.mode }));
    log.debug({ event: 'pass.plan', step }, `next step: ${step.kind}`);
    if (step.kind === 'unchanged' || step.kind === 'hold-rollback' || (step.kind === 'hold-failed' && step.stage !== 'validate')) {
      // /run is a tmpfs: after a reboot the running system's secrets are gone until written again.
      // A hold finds them as the held desired state's pass left them (a failure past the parser and
      // a rollback leave them as they were), so they are written back the same way; a desired state
      // the parser refused never wrote any.
      await this.deps.writer.writeSecrets(desired.secrets);
    }
    if (step.kind === 'hold-rollback') return { outcome: 'held', desiredHash: desired.hash };
    if (step.kind === 'suspended' || step.kind === 'fetch') throw new Error(`a pass with its sources read cannot plan ${step.kind}`);
    if (step.releaseHold) {
      delete this.state.held;
    }
    if (step.kind === 'unchanged') return { outcome: 'unchanged', desiredHash: desired.hash };
    if (step.kind === 'hold-failed') {
      log.info({ event: 'pass.held', desiredHash: desired.hash, retryAt: iso(step.retryAt) }, `desired ${short} failed before (${step.reason}); not retried before ${iso(step.retryAt)}`);
      return { outcome: 'held', desiredHash: desired.hash, error: new ApplyFailedError(step.reason, step.stage as ApplyFailedError['stage']) };
    }

    this.step({ step: 'rendering', desiredHash: desired.hash });
    const plan = renderPlan(desired, this.deps.fs.root);
    // The entry that lets a restart put configuration.nix back, written while the parser runs (a
    // restart that finds it with configuration.nix untouched puts back the same text). A build that
    // needs no channel update first is journaled as building at once (recovered as rendered is).
    const channels = this.channelsDue(desired);
    const buildsNext = step.realise !== 'switch' && channels === undefined;
    // That build starts as soon as the files are written, from the copy the parser checks, while
    // the parser runs: a build switches nothing, and nothing is switched before the parser's verdict
    // (activation waits for it). A verdict against the text stops the build.
    const early = step.realise === 'build' && channels === undefined ? new EarlyBuild() : undefined;
    let journaled = false;
    try {
      try {
        await this.deps.writer.prepare(plan, {
          ...(early ? { launch: (checked: string) => early.start((s) => this.deps.rebuilder.startBuild(s, checked), signal) } : {}),
          alongside: async () => {
            await this.journal(buildsNext ? 'building' : 'rendered', desired.hash);
            journaled = true;
          },
        });
      } catch (err) {
        await early?.stop();
        if (journaled && !(err instanceof TransientError && err.source === 'fs')) await this.journal('idle');
        if (err instanceof InvalidInputError) {
          await this.recordFailure(desired.hash, 'validate', err.message);
          await this.reportRollout(selection.taken, 'validate', err.message);
        }
        throw err;
      }
      await this.deps.writer.commit(plan);
      await this.deps.writer.writeSecrets(desired.secrets);
    } catch (err) {
      await early?.stop();
      throw err;
    }

    try {
      return await this.apply(desired, step.realise, plan, channels, log, signal, early?.result);
    } catch (err) {
      // A cancellation is the pass signal's own reason, whatever step it stopped.
      const cancelled = signal?.aborted === true && err === signal.reason;
      if (!cancelled && !(err instanceof ApplyFailedError)) throw err;
      return this.failApply(desired, err as AgentError, cancelled, log);
    }
  }

  /** The channels file to apply before building, when it differs from the one last applied. */
  private channelsDue(desired: DesiredState): string | undefined {
    const channels = renderChannels(desired);
    return channels !== undefined && digestOf(Buffer.from(channels)) !== this.state.channelsDigest ? channels : undefined;
  }

  /**
   * `channels`: the channels file to apply first (channelsDue), if any. `built`: the build already
   * under way (EarlyBuild), if any.
   */
  private async apply(desired: DesiredState, realise: Realise, plan: RenderPlan, channels: string | undefined, log: Logger, signal?: AbortSignal, built?: Promise<string>): Promise<PassResult> {
    if (channels !== undefined) {
      this.step({ step: 'updating-channels', desiredHash: desired.hash });
      await this.deps.rebuilder.updateChannels(channels, signal);
      this.state.channelsDigest = digestOf(Buffer.from(channels));
    }
    let storePath: string;
    let rebootToActivate = false;
    if (realise === 'switch') {
      await this.journal('activating', desired.hash);
      this.step({ step: 'switching', desiredHash: desired.hash });
      // `nixos-rebuild switch` activates: like every activation, it is never cancelled midway.
      await this.deps.rebuilder.switchLegacy();
      storePath = (await runningSystem(this.deps.fs)) ?? '';
      this.recordBuild(storePath, desired);
      await this.journal('verifying', desired.hash, storePath);
    } else {
      if (this.state.journal.phase !== 'building') await this.journal('building', desired.hash);
      const generations = await listGenerations(this.deps.fs);
      const next = Math.max(0, ...generations.map((g) => g.number)) + 1;
      this.step({ step: 'building', desiredHash: desired.hash, generation: next });
      storePath = realise === 'substitute' ? await this.realiseClosure(desired, signal) : await (built ?? this.deps.rebuilder.build(signal));
      // Recorded before activation: `generations` names what built it even if the agent dies next.
      this.recordBuild(storePath, desired);
      await this.journal('activating', desired.hash, storePath);
      this.step({ step: 'activating', desiredHash: desired.hash, storePath });
      // Exit 100: switch-to-configuration activated nothing, the new init being incompatible with
      // the running one (switch-to-configuration-ng main.rs, init-interface-version); only a boot
      // into it applies it, whatever its kernel.
      rebootToActivate = (await this.deps.rebuilder.activate(storePath, 'test')).rebootRequired;
      await this.journal('verifying', desired.hash, storePath);
    }
    // nixos-rebuild switch already made it the boot default; every other order does that only now.
    await this.verifyAndCommit(desired.hash, storePath, plan.dir, log, realise !== 'switch', rebootToActivate);
    const removed = await this.deps.writer.pruneSecrets(desired.secrets.map((s) => s.name));
    if (removed.length) log.info({ event: 'secrets.pruned', names: removed }, `removed secrets no longer set: ${removed.join(', ')}`);
    return { outcome: 'converged', desiredHash: desired.hash };
  }

  /** A prebuilt closure in place of a build: substituted, checked, rooted; nothing switched yet. */
  private async realiseClosure(desired: DesiredState, signal?: AbortSignal): Promise<string> {
    const closures = this.deps.closures;
    if (!closures || !desired.system) throw new ApplyFailedError('this agent cannot substitute prebuilt closures', 'build');
    this.step({ step: 'substituting', storePath: desired.system.storePath, substituter: desired.system.substituter });
    const realised = await closures.realise(desired.system, signal);
    await closures.pinRoots({ current: realised.storePath, ...(this.state.lastGood ? { lastGood: this.state.lastGood.storePath } : {}) });
    return realised.storePath;
  }

  private recordBuild(storePath: string, desired: DesiredState): void {
    this.state.builds[storePath] = { desiredHash: desired.hash, sources: { userData: desired.sources.userData, parameters: [...desired.sources.parameters] }, at: this.deps.clock.now() };
    this.state.builds = pruneBuilds(this.state);
  }

  /** Verify the activated system; only a healthy one becomes the boot default and the last good. */
  private async verifyAndCommit(desiredHash: string, storePath: string, renderDir: string | undefined, log: Logger, setBootDefault: boolean, rebootToActivate = false): Promise<void> {
    this.step({ step: 'verifying', storePath });
    const verdict = await this.verify();
    if (!verdict.healthy) {
      throw new ApplyFailedError(`health verification failed: ${verdict.reasons.join('; ')}`, 'verify', { reasons: verdict.reasons });
    }
    await this.journal('committing', desiredHash, storePath);
    this.step({ step: 'committing', storePath });
    if (setBootDefault) {
      await this.deps.rebuilder.setProfile(storePath);
      await this.deps.rebuilder.activate(storePath, 'boot');
    }
    const previousGood = this.state.lastGood;
    const now = this.deps.clock.now();
    if (previousGood && previousGood.storePath !== storePath) {
      await this.noteKernelChange(previousGood.storePath, storePath, log, rebootToActivate);
    }
    const configuration = await this.deps.writer.currentConfiguration();
    if (previousGood && previousGood.storePath !== storePath) {
      // Kept with it, so an operator's rollback puts the matching configuration.nix back. The image's
      // system has none saved: its configuration.nix is the one this pass's commit replaced (every
      // failure before put the last good one back), which the commit kept beside the parts.
      const previousConfiguration = (await this.deps.store.lastGoodConfiguration(this.state)) ?? (await this.deps.fs.readText(PREVIOUS_CONFIGURATION));
      this.state.previousGood = { ...previousGood, ...(previousConfiguration !== undefined ? { configuration: previousConfiguration } : {}) };
    }
    this.state.lastGood = { storePath, desiredHash, ...(renderDir ? { renderDir } : {}), ...(configuration !== undefined ? { configuration } : {}), at: now };
    this.state.running = { desiredHash, storePath, at: now };
    delete this.state.noGoodGeneration;
    delete this.state.failed[desiredHash];
    await this.deps.closures?.pinRoots({ current: storePath, lastGood: storePath });
    await this.journal('idle');
    await this.deps.writer.gc([renderDir, this.state.previousGood?.renderDir].filter((d): d is string => d !== undefined));
  }

  private async noteKernelChange(from: string, to: string, log: Logger, rebootToActivate = false): Promise<void> {
    const booted = (await bootedSystem(this.deps.fs)) ?? from;
    if (!rebootToActivate && (await bootEssentials(booted)) === (await bootEssentials(to))) {
      if (this.state.rebootRequired) {
        delete this.state.rebootRequired;
        this.record({});
      }
      return;
    }
    this.state.rebootRequired = { since: this.deps.clock.now(), storePath: to };
    this.record({});
    const why = rebootToActivate
      ? "switch-to-configuration cannot activate the new generation's init without a reboot; it applies at the next boot"
      : 'the new generation changes the kernel, initrd or kernel modules; they apply at the next boot';
    log.warn({ event: 'reboot.required', storePath: to, policy: this.deps.config.kernel.policy }, why);
  }

  /** `reach: false` for a rollback's verdict (health.ts, verify). */
  private async verify(how: { readonly reach: boolean } = { reach: true }): Promise<Verdict> {
    const verdict = await this.deps.health.verify(() => this.deps.onProgress?.(), how);
    this.deps.log.info({ event: 'verify.end', healthy: verdict.healthy, reasons: verdict.reasons, attempts: verdict.attempts }, verdict.healthy ? 'healthy' : `unhealthy: ${verdict.reasons.join('; ')}`);
    return verdict;
  }

  /** A step failed: nothing was switched (build), or the last good generation is activated again. */
  private async failApply(desired: DesiredState, err: AgentError, cancelled: boolean, log: Logger): Promise<PassResult> {
    const stage = err instanceof ApplyFailedError ? err.stage : 'build';
    const step = planFailure({ phase: this.state.journal.phase, stage, cancelled });
    if (step.rollback) {
      await this.rollbackTo(err.message, log);
    } else {
      await this.restoreConfiguration();
      await this.journal('idle');
    }
    if (step.remember) {
      await this.recordFailure(desired.hash, stage, err.message);
      await this.reportRollout(this.selection?.taken ?? [], stage, err.message);
    }
    return step.outcome === 'cancelled' ? { outcome: 'cancelled', desiredHash: desired.hash } : { outcome: step.outcome, desiredHash: desired.hash, error: err };
  }

  /** A pass to a rollout's candidate failed: the fleet hears of it (the reporter never throws). */
  private async reportRollout(taken: Selection['taken'], stage: string, reason: string): Promise<void> {
    const instanceId = this.facts.instanceId;
    if (taken.length && instanceId) await this.deps.rollout?.report(taken, instanceId, { stage, reason });
  }

  /**
   * Activates the recorded last good generation again, never merely "the previous number".
   * `journal`: 'best-effort' when the disk already refused a write and the entry on it already
   * leads a restart to this same rollback; the rollback then goes on whether its entries are saved.
   */
  private async rollbackTo(reason: string, log: Logger, journal: 'required' | 'best-effort' = 'required'): Promise<void> {
    const entry = (phase: DurableState['journal']['phase'], storePath?: string) =>
      this.journal(phase, undefined, storePath, phase === 'idle' ? undefined : reason).catch((e: unknown) => {
        if (journal === 'required') throw e;
        log.warn({ event: 'rollback.journal-failed', phase, err: (e as Error).message }, `cannot save the journal entry ${phase}: ${(e as Error).message}`);
      });
    const target = this.state.lastGood;
    await entry('rolling-back', target?.storePath);
    if (!target) {
      const running = await runningSystem(this.deps.fs);
      this.state.noGoodGeneration = { since: this.deps.clock.now(), ...(running !== undefined ? { storePath: running } : {}) };
      this.record({ noGoodGeneration: true });
      throw new ApplyFailedError(`${reason}; and there is no recorded good generation to roll back to`, 'rollback');
    }
    this.step({ step: 'rolling-back', storePath: target.storePath, reason });
    log.warn({ event: 'rollback.start', to: target.storePath, reason }, `rolling back to ${target.storePath}`);
    await this.pointProfileAt(target.storePath);
    await this.deps.closures?.pinRoots({ current: target.storePath });
    await this.deps.rebuilder.activate(target.storePath, 'switch').catch((e: unknown) => {
      // An activation warning on the way back is reported; the verdict below decides health.
      log.error({ event: 'rollback.activate-failed', err: isAgentError(e) ? e.toJSON() : String(e) }, 'activating the last good generation reported a failure');
    });
    await this.restoreConfiguration();
    this.step({ step: 'verifying-rollback', storePath: target.storePath });
    const verdict = await this.verify({ reach: false });
    if (verdict.healthy) delete this.state.noGoodGeneration;
    else this.state.noGoodGeneration = { since: this.deps.clock.now(), storePath: target.storePath };
    this.record({ noGoodGeneration: !verdict.healthy });
    if (verdict.healthy) {
      this.state.running = this.state.running?.storePath === target.storePath ? this.state.running : undefined;
    }
    await entry('idle');
    log.warn({ event: 'rollback.end', to: target.storePath, healthy: verdict.healthy }, `rolled back to ${target.storePath} (${verdict.healthy ? 'healthy' : 'still unhealthy'})`);
  }

  private async pointProfileAt(storePath: string): Promise<void> {
    const generations = await listGenerations(this.deps.fs);
    const current = generations.find((g) => g.current);
    if (current?.storePath === storePath) return;
    const existing = [...generations].reverse().find((g) => g.storePath === storePath);
    if (existing) await this.deps.rebuilder.switchGeneration(existing.number);
    else await this.deps.rebuilder.setProfile(storePath, 'rollback');
  }

  private async restoreConfiguration(): Promise<void> {
    const good = await this.deps.store.lastGoodConfiguration(this.state);
    if (good !== undefined) await this.deps.writer.restore(good);
    else {
      const previous = await this.deps.fs.readText('/etc/nixos/ec2-agent/previous-configuration.nix');
      if (previous !== undefined) await this.deps.writer.restore(previous);
    }
  }

  private async recordFailure(desiredHash: string, stage: string, reason: string): Promise<void> {
    const now = this.deps.clock.now();
    const attempts = (this.state.failed[desiredHash]?.attempts ?? 0) + 1;
    this.state.failed[desiredHash] = { at: now, stage, reason, attempts, retryAt: retryAt(now, attempts, this.deps.config.retry) };
    // Keep the record small: only the most recent failures matter.
    const entries = Object.entries(this.state.failed).sort((a, b) => b[1].at - a[1].at);
    this.state.failed = Object.fromEntries(entries.slice(0, 20));
    await this.save();
  }

  /** A killed agent finds out where it was and finishes the job. */
  private async recover(): Promise<void> {
    const { phase, desiredHash, storePath, reason } = this.state.journal;
    const log = this.deps.log.child({ event: 'recover', phase });
    const step = planRecovery({ phase, desiredHash, storePath, running: phase === 'idle' ? undefined : await runningSystem(this.deps.fs) });
    switch (step.kind) {
      case 'none':
        return;
      case 'restore':
        // Nothing was switched; the next pass renders and builds again.
        log.warn(`a pass was interrupted while ${phase}; nothing was switched`);
        await this.restoreConfiguration();
        await this.journal('idle');
        return;
      case 'rollback':
        if (step.failedHash === undefined) {
          log.warn('a rollback was interrupted; finishing it');
          await this.rollbackTo(reason ?? 'interrupted rollback', log);
          return;
        }
        log.warn(`a pass was interrupted while ${phase} ${storePath}; verifying now`);
        await this.rollbackTo(`interrupted while ${phase}; the system did not finish activating`, log);
        await this.recordFailure(step.failedHash, 'activate', 'interrupted during activation');
        return;
      case 'finish':
        if (phase === 'committing') log.warn(`a pass was interrupted while making ${step.storePath} the boot default; finishing`);
        else log.warn(`a pass was interrupted while ${phase} ${step.storePath}; verifying now`);
        await this.finishInterrupted(step.desiredHash, step.storePath, log);
        return;
      case 'back-to-last-good':
        log.warn(`a pass was interrupted while making ${storePath} the boot default, and the machine has booted another system since; back to the last good generation, the next pass applies it again`);
        await this.rollbackTo('rebooted before the boot default was made', log);
        return;
      case 'reset':
        await this.journal('idle');
        return;
    }
  }

  /** The activated system is running: verify it and make it permanent, or roll back. */
  private async finishInterrupted(desiredHash: string, storePath: string, log: Logger): Promise<void> {
    try {
      // The render configuration.nix imports is the desired state's own directory (renderPlan): named
      // as the last good's, or the commit's gc removes it from under configuration.nix. The boot
      // default is always made again: the journal cannot tell nixos-rebuild switch's order from the
      // safe one (a prebuilt closure takes it under rebuild.mode = switch too), and `nix-env --set`
      // to the newest generation's path and `switch-to-configuration boot` are idempotent.
      await this.verifyAndCommit(desiredHash, storePath, `${RENDER_ROOT}/${shortHash(desiredHash)}`, log, true);
    } catch (err) {
      if (!(err instanceof ApplyFailedError)) throw err;
      await this.rollbackTo(err.message, log);
      await this.recordFailure(desiredHash, err.stage, err.message);
    }
  }

  /**
   * The store path an operator's rollback would switch to, or undefined when it would be refused:
   * none is recorded, or that one runs already.
   */
  async rollbackTarget(): Promise<string | undefined> {
    return (await this.rollbackCandidate())?.storePath;
  }

  private async rollbackCandidate(): Promise<DurableState['lastGood']> {
    const target = this.state.previousGood ?? this.state.lastGood;
    return target && target.storePath !== (await runningSystem(this.deps.fs)) ? target : undefined;
  }

  /**
   * The answer to a rollback with nothing to go back to (rollbackTarget undefined). Nothing is
   * tried, and the status stays as it was: recorded as a failed pass, a request that changed
   * nothing would turn /readyz away and leave `status` degraded until the next pass.
   */
  refuseRollback(): PassResult {
    const err = new ApplyFailedError('there is no previous good generation to roll back to', 'rollback');
    this.deps.log.warn({ event: 'rollback.refused', trigger: 'rollback', err: err.message }, err.message);
    return { outcome: 'failed', error: err, refused: true };
  }

  /** `rollback`: back to the previous good generation, held there until the sources change. */
  async rollback(): Promise<PassResult> {
    const log = this.deps.log.child({ trigger: 'rollback' });
    const target = await this.rollbackCandidate();
    if (!target) return this.refuseRollback();
    const current = this.state.lastGood;
    // The configuration.nix of each travels with it, so the one restored matches the system that
    // runs; the swap is saved in one write when the rollback is journaled.
    const currentConfiguration = current ? await this.deps.store.lastGoodConfiguration(this.state) : undefined;
    const targetConfiguration = target.configuration ?? (await this.deps.fs.readText(LEGACY_PREVIOUS_GOOD_CONFIGURATION));
    this.state.lastGood = { ...target, ...(targetConfiguration !== undefined ? { configuration: targetConfiguration } : {}) };
    this.state.previousGood = current ? { ...current, ...(currentConfiguration !== undefined ? { configuration: currentConfiguration } : {}) } : undefined;
    // Held on what the sources said when the operator rolled back: without a pass in this process,
    // that is the desired state of the generation rolled back from, not the one rolled back to.
    // Saved with the rollback's journal entry, so that a restart which finishes the rollback holds
    // there too instead of converging straight back.
    const heldBefore = this.state.held;
    const heldHash = this.desired?.hash ?? current?.desiredHash ?? target.desiredHash ?? '';
    this.state.held = { desiredHash: heldHash, since: this.deps.clock.now() };
    try {
      await this.rollbackTo('operator rollback', log);
    } catch (err) {
      if (!isAgentError(err)) throw err;
      this.state.held = heldBefore;
      await this.finish({ outcome: 'failed', error: err }, 0);
      return { outcome: 'failed', error: err };
    }
    this.state.running = target.desiredHash ? { desiredHash: target.desiredHash, storePath: target.storePath, at: this.deps.clock.now() } : undefined;
    this.record({});
    await this.finish({ outcome: 'rolled-back' }, 0);
    return { outcome: 'rolled-back' };
  }

  /** The generation whose kernel, initrd or modules wait for a reboot, if any. */
  get rebootRequired(): { readonly storePath: string; readonly since: number } | undefined {
    return this.state.rebootRequired;
  }

  /**
   * The instance is leaving (Auto Scaling termination, spot interruption), or no longer: status says
   * so, and no pass starts meanwhile (the scheduler's gate).
   */
  setLeaving(reason: string | undefined): void {
    if (reason) this.record({ leaving: reason, activity: { kind: 'leaving', reason } });
    else if (this.current.phase === 'stopping') this.record({ leaving: undefined, activity: { kind: 'staying' } });
    else this.record({ leaving: undefined });
  }

  async suspend(by?: string): Promise<void> {
    this.state.suspended = { since: this.deps.clock.now(), ...(by ? { by } : {}) };
    await this.save();
    this.record({ activity: { kind: 'suspended' } });
  }

  async resume(): Promise<void> {
    delete this.state.suspended;
    await this.save();
    this.record({ activity: { kind: 'resumed' } });
  }

  private async runUserDataScript(snapshots: Snapshots, log: Logger): Promise<void> {
    const ud = snapshots.userData;
    if (ud.kind !== 'script') return;
    const done = this.state.userDataScript;
    // Once per instance id, as cloud-init does; amazon-init reruns it at every boot (nixpkgs#41826).
    // A script that was never started has done nothing to repeat: the user data that replaces it runs.
    if (done && done.instanceId === snapshots.identity.instanceId && (done.notRun === undefined || done.digest === ud.digest)) return;
    this.step({ step: 'user-data-script' });
    const saved = await this.deps.store.saveUserDataScript(ud.script);
    const launch = await planScriptLaunch(ud.script, saved, this.deps.fs);
    const record = { instanceId: snapshots.identity.instanceId, digest: ud.digest };
    if (launch.kind === 'refused') {
      this.state.userDataScript = { ...record, exitCode: null, at: this.deps.clock.now(), notRun: launch.error.message };
      await this.save();
      log.error({ event: 'userdata.script.end', exitCode: null, err: launch.error.toJSON() }, launch.error.message);
      return;
    }
    if (launch.kind === 'bash') {
      log.warn({ event: 'userdata.script.interpreter', interpreter: launch.absent, runWith: 'bash' }, `user-data script: ${launch.absent} is not on this machine; running it with bash from PATH, as amazon-init does`);
    }
    const result = await this.deps.runner.run({
      command: launch.command,
      args: launch.args,
      timeoutMs: this.deps.config.userData.scriptTimeoutSeconds * 1000,
      onLine: (stream, line) => log.info({ event: 'userdata.script.output', stream }, line),
    });
    this.state.userDataScript = { ...record, exitCode: result.code, at: this.deps.clock.now() };
    await this.save();
    const level = result.code === 0 ? 'info' : 'error';
    log[level]({ event: 'userdata.script.end', exitCode: result.code, timedOut: result.timedOut }, `user-data script exited with ${result.code}`);
  }

  /** Why this instance's user-data script did not run, while that is still the user data. */
  private userDataScriptNotes(snapshots: Snapshots): string[] {
    const done = this.state.userDataScript;
    const ud = snapshots.userData;
    if (ud.kind !== 'script' || done?.notRun === undefined) return [];
    return done.instanceId === snapshots.identity.instanceId && done.digest === ud.digest ? [done.notRun] : [];
  }

  private async journal(phase: DurableState['journal']['phase'], desiredHash?: string, storePath?: string, reason?: string): Promise<void> {
    this.state.journal = {
      phase,
      since: this.deps.clock.now(),
      ...(desiredHash ? { desiredHash } : {}),
      ...(storePath ? { storePath } : {}),
      ...(reason ? { reason } : {}),
    };
    await this.save();
  }

  private async save(): Promise<void> {
    await this.deps.store.save(this.state);
  }

  /** The pass moved on: the status says to what, and a watchdog hears the loop is alive. */
  private step(step: PassProgress): void {
    this.deps.onProgress?.();
    this.record({ activity: { kind: 'pass', step } });
  }

  private async finish(result: PassResult, durationMs: number): Promise<void> {
    const now = this.deps.clock.now();
    const running = await runningSystem(this.deps.fs);
    const generations = await listGenerations(this.deps.fs).catch(() => []);
    const converged = result.outcome === 'converged' || result.outcome === 'unchanged';
    const onGood = running !== undefined && running === this.state.lastGood?.storePath;
    const reasons = result.error?.context.reasons as string[] | undefined;
    if (converged) delete this.state.noGoodGeneration;
    this.record({
      activity: { kind: 'ended' },
      lastPass: {
        outcome: result.outcome,
        at: now,
        durationMs,
        ...(result.desiredHash ? { desiredHash: result.desiredHash } : {}),
        ...(result.error ? { error: summarise(result.error), ...(reasons ? { errorReasons: reasons } : {}) } : {}),
        ...(this.startProblem ? { startProblem: this.startProblem } : {}),
        generation: generations.find((g) => g.current)?.number,
      },
      ...(running ? { running } : {}),
      // A good convergence clears it; otherwise it holds until a healthy generation runs again.
      noGoodGeneration: converged ? false : this.facts.noGoodGeneration || !onGood,
      ...(converged ? { lastSuccessAt: now } : {}),
      firstConvergencePending: result.outcome === 'cancelled' && (this.facts.lastPass === undefined || this.facts.firstConvergencePending === true),
    });
    this.startProblem = undefined;
    await this.save();
  }

  /** The one way the status changes: record what happened, and derive the whole status again. */
  private record(facts: Partial<StatusFacts>): void {
    this.facts = { ...this.facts, ...facts };
    this.current = deriveStatus(this.state, this.facts, this.deps.clock.now());
    this.deps.onStatus?.(this.current);
  }
}

function summarise(err: AgentError): ErrorSummary {
  const c = err.context;
  return {
    kind: err.kind,
    message: err.message,
    ...(typeof c.stage === 'string' ? { stage: c.stage } : {}),
    ...(typeof c.where === 'string' ? { where: c.where } : {}),
    ...(c.exitCode !== undefined ? { exitCode: c.exitCode as number | null } : {}),
    ...(Array.isArray(c.tail) ? { tail: c.tail as string[] } : {}),
  };
}

/**
 * A system call's failure (ENOSPC, EACCES, EROFS, EIO, …) as the agent's transient error, naming
 * the path and the errno; undefined for anything else.
 */
function systemError(err: unknown): TransientError | undefined {
  if (isAgentError(err) || !(err instanceof Error)) return undefined;
  const { code, path, syscall } = err as NodeJS.ErrnoException;
  if (typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) return undefined;
  const where = typeof path === 'string' ? path : 'a file under the root';
  return new TransientError(`cannot ${syscall ?? 'write'} ${where}: ${code}`, 'fs', { where, errno: code, ...(syscall ? { syscall } : {}) }, { cause: err });
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * A build begun before the parser's verdict. Its outcome is kept (so a failure that comes first is
 * never unhandled) until the pass takes it; `stop` ends it when the pass goes no further, and waits
 * until its process is gone, so no build of a refused text outlives the pass.
 */
class EarlyBuild {
  private readonly stopper = new AbortController();
  private running: Promise<string> | undefined;

  /** Resolves once the build's process has started. */
  async start(build: (signal: AbortSignal) => Promise<{ done: Promise<string> }>, passSignal: AbortSignal | undefined): Promise<void> {
    const signal = passSignal ? AbortSignal.any([passSignal, this.stopper.signal]) : this.stopper.signal;
    const launched = build(signal);
    const running = launched.then((b) => b.done);
    this.running = running;
    running.catch(() => undefined);
    // A build that could not even start fails the pass where any build's failure does: in apply.
    await launched.then(
      () => undefined,
      () => undefined,
    );
  }

  /** The build's store path; undefined when none was started (the pass builds then). */
  get result(): Promise<string> | undefined {
    return this.running;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.stopper.abort(new Error('the pass went no further than the parser'));
    await this.running.catch(() => undefined);
  }
}
