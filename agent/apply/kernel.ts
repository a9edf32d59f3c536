// What to do when the committed generation changes the kernel, initrd or kernel modules, which a
// switch cannot apply: `report` (status and metrics say a reboot is required), `reboot` (run the
// reboot command inside a local-time window, as nixpkgs' system.autoUpgrade.rebootWindow, waiting
// for the window when outside it), or `replace` (ask Auto Scaling for a fresh instance:
// SetInstanceHealth Unhealthy, respecting the group's grace period). Policy only: the reconciler
// decides that a reboot is required; this decides when and how to act on it.
import type { Clock, Runner } from '../ports.js';

export type KernelPolicyName = 'report' | 'reboot' | 'replace';

export interface RebootWindow {
  /** HH:MM, local time. */
  readonly lower: string;
  readonly upper: string;
}

/** Auto Scaling's SetInstanceHealth, the one call `replace` needs; injectable. */
export type SetInstanceHealth = (input: { InstanceId: string; HealthStatus: 'Unhealthy'; ShouldRespectGracePeriod: boolean }) => Promise<void>;

export interface KernelPolicyOptions {
  readonly policy: KernelPolicyName;
  readonly window: RebootWindow | null;
  readonly rebootCommand: readonly string[];
  readonly clock: Clock;
  readonly runner: Runner;
  /** Absent when the instance is in no Auto Scaling group: `replace` then only reports. */
  readonly setInstanceHealth?: SetInstanceHealth;
  /** Minutes since local midnight for an epoch time; injectable so tests do not depend on TZ. */
  readonly localMinutes?: (epochMs: number) => number;
  readonly log?: (level: 'info' | 'warn' | 'error', event: string, message: string, fields?: Record<string, unknown>) => void;
}

export type KernelAction =
  | { readonly kind: 'none' }
  | { readonly kind: 'report'; readonly why: string }
  | { readonly kind: 'wait'; readonly untilMs: number }
  | { readonly kind: 'reboot' }
  | { readonly kind: 'replace' };

export function parseHHMM(text: string): number {
  const m = /^(\d\d):(\d\d)$/.exec(text);
  const h = Number(m?.[1]);
  const min = Number(m?.[2]);
  if (!m || h > 23 || min > 59) throw new RangeError(`${JSON.stringify(text)} is not a time HH:MM`);
  return h * 60 + min;
}

/**
 * Is `minutes` (since local midnight) inside the window? Lower bound included, upper excluded. A
 * window whose lower bound is later than its upper crosses midnight (23:00–06:00 holds 23:30 and
 * 05:59). Equal bounds are an empty window (nixpkgs' comparison never matches either).
 */
export function inWindow(minutes: number, window: RebootWindow): boolean {
  const lower = parseHHMM(window.lower);
  const upper = parseHHMM(window.upper);
  if (lower === upper) return false;
  return lower < upper ? minutes >= lower && minutes < upper : minutes >= lower || minutes < upper;
}

/** Minutes from `minutes` to the next opening of the window; 0 inside it. */
export function minutesUntilWindow(minutes: number, window: RebootWindow): number {
  if (inWindow(minutes, window)) return 0;
  const lower = parseHHMM(window.lower);
  return (lower - minutes + 1440) % 1440;
}

export function defaultLocalMinutes(epochMs: number): number {
  const d = new Date(epochMs);
  return d.getHours() * 60 + d.getMinutes() + d.getSeconds() / 60;
}

export class KernelPolicy {
  private acted: string | undefined;
  private readonly localMinutes: (epochMs: number) => number;

  constructor(private readonly options: KernelPolicyOptions) {
    this.localMinutes = options.localMinutes ?? defaultLocalMinutes;
    if (options.window) {
      parseHHMM(options.window.lower);
      parseHHMM(options.window.upper);
    }
  }

  /**
   * What to do now for a required reboot into `storePath` (undefined: none required). Pure but for
   * the clock: once acted on for a store path, it is not acted on again.
   */
  decide(required: { readonly storePath: string } | undefined, hasGroup: boolean): KernelAction {
    if (!required) return { kind: 'none' };
    if (this.acted === required.storePath) return { kind: 'none' };
    switch (this.options.policy) {
      case 'report':
        return { kind: 'report', why: 'kernel.policy is report' };
      case 'replace':
        if (!hasGroup || !this.options.setInstanceHealth) return { kind: 'report', why: 'kernel.policy is replace, but the instance is in no Auto Scaling group' };
        return { kind: 'replace' };
      case 'reboot': {
        const window = this.options.window;
        const now = this.options.clock.now();
        if (!window) return { kind: 'reboot' };
        const minutes = this.localMinutes(now);
        const wait = minutesUntilWindow(minutes, window);
        if (wait === 0) return { kind: 'reboot' };
        // To the start of the minute the window opens.
        const untilMs = now + (wait - (minutes % 1)) * 60_000;
        return { kind: 'wait', untilMs: Math.ceil(untilMs / 60_000) * 60_000 };
      }
    }
  }

  /** Carries out a reboot or replace decision. Errors are reported; the next decision retries. */
  async act(action: KernelAction, storePath: string, instanceId: string | undefined): Promise<boolean> {
    const log = this.options.log ?? (() => {});
    if (action.kind === 'reboot') {
      const [command, ...args] = this.options.rebootCommand;
      if (!command) return false;
      log('warn', 'kernel.reboot', `rebooting into ${storePath} (kernel, initrd or modules changed): ${this.options.rebootCommand.join(' ')}`, { storePath });
      this.acted = storePath;
      const result = await this.options.runner.run({ command, args, timeoutMs: 60_000 });
      if (result.code !== 0) {
        this.acted = undefined;
        log('error', 'kernel.reboot-failed', `${this.options.rebootCommand.join(' ')} exited ${result.code}`, { tail: result.tail });
        return false;
      }
      return true;
    }
    if (action.kind === 'replace') {
      if (!instanceId || !this.options.setInstanceHealth) return false;
      log('warn', 'kernel.replace', `asking Auto Scaling to replace ${instanceId}: the new generation changes the kernel, initrd or modules`, { storePath });
      this.acted = storePath;
      try {
        await this.options.setInstanceHealth({ InstanceId: instanceId, HealthStatus: 'Unhealthy', ShouldRespectGracePeriod: true });
        return true;
      } catch (err) {
        this.acted = undefined;
        log('error', 'kernel.replace-failed', `SetInstanceHealth failed: ${(err as Error).message}`);
        return false;
      }
    }
    return false;
  }
}
