// Is the instance leaving? One monitor per IMDS source, as aws-node-termination-handler has:
// `autoscaling/target-lifecycle-state` (where Auto Scaling is taking the instance) and
// `spot/instance-action` (the two-minute spot interruption notice). IMDS is on the instance, so
// these are polled without touching the account's API budget; still, each look wakes the daemon,
// so each is polled only as often as it needs (`imdsMonitors`).
//
// Leaving means a rebuild started now would be cut off: `Terminated` and `Warmed:Terminated`, or
// any spot action (terminate, stop, hibernate). Not leaving: `InService`; `Standby` (taken out of
// service to be worked on and put back: converging is the point); `Detached` (the instance leaves
// the group but keeps running on its own); `Warmed:Stopped`/`Warmed:Hibernated`/`Warmed:Running`
// (a warm pool's launch is exactly when the configuration should be built, before the stop).
import type { Imds } from '../aws/imds.js';
import type { Clock } from '../ports.js';

export interface LeavingNotice {
  readonly kind: 'autoscaling' | 'spot';
  /** For people: what IMDS said. */
  readonly detail: string;
}

export interface Monitor {
  readonly kind: LeavingNotice['kind'];
  /** A notice while the instance is leaving; undefined otherwise. Throws on IMDS failure. */
  check(): Promise<LeavingNotice | undefined>;
  /**
   * Whether this instance can ever have the notice, asked once when the watch starts; a monitor
   * that cannot is never polled. Absent: it can.
   */
  applies?(): Promise<boolean>;
}

export const LEAVING_TARGET_STATES: ReadonlySet<string> = new Set(['Terminated', 'Warmed:Terminated']);

export class TargetLifecycleMonitor implements Monitor {
  readonly kind = 'autoscaling' as const;
  /** `onState` hears every state read: the lifecycle reporter follows the warm pool's with it. */
  constructor(
    private readonly imds: Imds,
    private readonly onState?: (state: string) => void,
  ) {}

  async check(): Promise<LeavingNotice | undefined> {
    // 404 until the first transition, and always outside an Auto Scaling group.
    const state = (await this.imds.get('latest/meta-data/autoscaling/target-lifecycle-state'))?.trim();
    if (state) this.onState?.(state);
    if (state === undefined || !LEAVING_TARGET_STATES.has(state)) return undefined;
    return { kind: this.kind, detail: `Auto Scaling target lifecycle state ${state}` };
  }
}

export class SpotInterruptionMonitor implements Monitor {
  readonly kind = 'spot' as const;
  constructor(private readonly imds: Imds) {}

  /**
   * Only a spot instance is interrupted, and an instance's purchasing option never changes
   * (`instance-life-cycle`: on-demand, spot, …; EC2 user guide, instance metadata categories). On
   * an on-demand instance, most of a fleet, the look every few seconds was the idle daemon's most
   * frequent wake-up. When IMDS cannot tell, the notice is polled.
   */
  async applies(): Promise<boolean> {
    const lifeCycle = await this.imds.get('latest/meta-data/instance-life-cycle').catch(() => undefined);
    return lifeCycle?.trim() !== 'on-demand';
  }

  async check(): Promise<LeavingNotice | undefined> {
    // 404 while nothing is scheduled; on-demand instances never have it.
    const text = await this.imds.get('latest/meta-data/spot/instance-action');
    if (text === undefined) return undefined;
    let action = 'an action';
    let time = '';
    try {
      const parsed = JSON.parse(text) as { action?: unknown; time?: unknown };
      if (typeof parsed.action === 'string') action = parsed.action;
      if (typeof parsed.time === 'string') time = ` at ${parsed.time}`;
    } catch {
      // Present but unreadable is still a notice.
    }
    return { kind: this.kind, detail: `spot interruption notice: ${action}${time}` };
  }
}

/** A monitor and how often it is looked at. */
export interface Polled {
  readonly monitor: Monitor;
  readonly intervalMs: number;
}

/**
 * The target lifecycle state is read this many times less often than the spot notice. A spot
 * notice comes two minutes before the instance goes, so every `checkSeconds` (5 s) it is seen
 * with most of them left. The target state turns `Terminated` when Auto Scaling starts taking the
 * instance out, before its terminate hook, the load balancer's deregistration delay or its
 * shutdown: a rebuild it would have spared starts on an instance that is going anyway, so half a
 * minute costs nothing, where every 5 s was most of the idle daemon's CPU.
 */
export const TARGET_STATE_EVERY = 6;

/**
 * The IMDS monitors at their cadences: the spot notice every `checkMs`, the target state less often
 * (each state read also goes to `onTargetState`, with how often it is read).
 */
export function imdsMonitors(imds: Imds, checkMs: number, onTargetState?: (state: string, everyMs: number) => void): readonly Polled[] {
  const targetEveryMs = checkMs * TARGET_STATE_EVERY;
  return [
    { monitor: new TargetLifecycleMonitor(imds, onTargetState && ((state) => onTargetState(state, targetEveryMs))), intervalMs: targetEveryMs },
    { monitor: new SpotInterruptionMonitor(imds), intervalMs: checkMs },
  ];
}

export interface LeavingWatchOptions {
  readonly clock: Clock;
  /** Called when the instance starts leaving (a notice), or stops (undefined: e.g. the hook was abandoned). */
  readonly onChange: (notice: LeavingNotice | undefined) => void;
  readonly onError?: (kind: string, err: Error, inARow: number) => void;
  /**
   * The notice the watch starts from: a reloaded daemon's new watch takes over what the one before
   * it saw, so that its first look ends the notice when it is gone (a watch starting from nothing
   * would see no change, and the daemon would stay blocked until restarted).
   */
  readonly initial?: LeavingNotice;
}

/** Polls every monitor on its own loop; an error is reported and the loop goes on. */
export class LeavingWatch {
  private readonly notices = new Map<string, LeavingNotice>();
  private stopper: AbortController | undefined;
  private loops: Promise<void>[] = [];
  private current: LeavingNotice | undefined;

  constructor(
    private readonly monitors: readonly Polled[],
    private readonly options: LeavingWatchOptions,
  ) {
    this.current = options.initial;
    if (options.initial) this.notices.set(options.initial.kind, options.initial);
  }

  get leaving(): LeavingNotice | undefined {
    return this.current;
  }

  /**
   * Checks every monitor that applies to this instance once (so the first pass already knows), then
   * keeps polling them.
   */
  async start(): Promise<void> {
    if (this.stopper) return;
    const stopper = new AbortController();
    this.stopper = stopper;
    const applying = (await Promise.all(this.monitors.map(async (m) => ((await (m.monitor.applies?.() ?? true)) ? [m] : [])))).flat();
    // A notice taken over from the watch before whose monitor no longer applies is gone.
    for (const kind of this.notices.keys()) if (!applying.some((m) => m.monitor.kind === kind)) this.notices.delete(kind);
    await Promise.all(applying.map((m) => this.checkOne(m.monitor, 0)));
    this.publish();
    if (stopper.signal.aborted) return;
    this.loops = applying.map((m) => this.loop(m, stopper.signal));
  }

  async stop(): Promise<void> {
    this.stopper?.abort();
    this.stopper = undefined;
    await Promise.all(this.loops);
    this.loops = [];
  }

  private async loop({ monitor, intervalMs }: Polled, signal: AbortSignal): Promise<void> {
    let errors = 0;
    for (;;) {
      try {
        await this.options.clock.sleep(intervalMs, signal);
      } catch {
        return;
      }
      errors = await this.checkOne(monitor, errors);
    }
  }

  private async checkOne(monitor: Monitor, errors: number): Promise<number> {
    try {
      const notice = await monitor.check();
      if (notice) this.notices.set(monitor.kind, notice);
      else this.notices.delete(monitor.kind);
      this.publish();
      return 0;
    } catch (err) {
      // A failed look keeps the last answer: a flaky IMDS neither starts nor ends leaving.
      this.options.onError?.(monitor.kind, err as Error, errors + 1);
      return errors + 1;
    }
  }

  private publish(): void {
    const next = this.notices.get('spot') ?? this.notices.get('autoscaling');
    if (next?.detail === this.current?.detail) return;
    this.current = next;
    this.options.onChange(next);
  }
}
