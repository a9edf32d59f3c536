// While a pass builds: have the sources moved on from the desired state it builds? The scheduler
// asks to cancel a build the sources have overtaken, and `converge --now` asks before it waits on a
// pass. One object per daemon (agent/loop.ts), and per instance in the fleet simulation, which runs
// the daemon's own parts.
import type { Agent } from './agent.js';
import type { Config } from './config.js';
import { shortHash } from './desired/desired.js';
import type { Clock } from './ports.js';
import { selectDesired, whoOf } from './rollout/select.js';
import type { Snapshots } from './sources/index.js';

/** The hash of the desired state a pass would select from these sources (a rollout included). */
export function desiredHashOf(snapshots: Snapshots, nowMs: number): string {
  const input = { userData: snapshots.userData, ssm: snapshots.ssm, local: snapshots.local };
  return selectDesired(input, whoOf(snapshots), nowMs).desired.hash;
}

export class NewerDesired {
  /** When the sources were last read whole to look for a newer desired state during a build. */
  private fullCheckAt = Number.NEGATIVE_INFINITY;

  constructor(
    /** The daemon's current parts: a reload replaces them, this check stays. */
    private readonly parts: () => { readonly agent: Pick<Agent, 'ssm' | 'sources' | 'reconciler'>; readonly config: Config },
    private readonly clock: Clock,
  ) {}

  /**
   * Why the desired state differs from the one building, or undefined. The revision (tag or
   * parameter) answers cheaply; without one, the sources are read whole and the desired hash
   * compared, at most once per poll interval (`now`: at once), the price a poll pays anyway.
   */
  async check(signal: AbortSignal | undefined, now: boolean): Promise<string | undefined> {
    const { agent, config } = this.parts();
    const cheap = config.ssm.enabled ? await agent.ssm.changed(signal) : undefined;
    if (cheap !== undefined) return cheap;
    const building = agent.reconciler.status.desired?.hash;
    if (building === undefined || agent.reconciler.status.phase !== 'building') return undefined;
    const at = this.clock.now();
    if (!now && at - this.fullCheckAt < config.ssm.pollIntervalSeconds * 1000) return undefined;
    this.fullCheckAt = at;
    const hash = desiredHashOf(await agent.sources.read(signal), this.clock.now());
    return hash === building ? undefined : `desired state ${shortHash(hash)} differs from the one building (${shortHash(building)})`;
  }
}
