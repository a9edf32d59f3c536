// Reads every source once: IMDS (identity, user data, tags), SSM, local files. Each source is its
// own module; this only gathers their snapshots for one pass.
import { ASG_TAG, type GroupLocator } from '../aws/autoscaling.js';
import type { Imds, InstanceIdentity } from '../aws/imds.js';
import { TransientError } from '../errors.js';
import type { RootFs } from '../fs.js';
import type { LocalSnapshot } from '../desired/desired.js';
import { readLocal } from './local.js';
import type { SsmFetcher } from './revision.js';
import type { SsmSnapshot } from './ssm.js';
import { alarmsDue, type AlarmWatcher } from '../rollout/alarms.js';
import { carriesRollout, type AlarmState } from '../rollout/spec.js';
import { interpretUserData, type UserData } from './userdata.js';

export interface Snapshots {
  readonly identity: InstanceIdentity;
  readonly asg: string | undefined;
  readonly userData: UserData;
  readonly ssm: SsmSnapshot | undefined;
  readonly local: LocalSnapshot;
  /** The canary tag said "true": this instance takes a rollout's candidate with the first cohort. */
  readonly canary?: boolean;
  /** The CloudWatch alarms named by the rollouts under way, as last read; absent when none is. */
  readonly alarms?: readonly AlarmState[];
  readonly notes: readonly string[];
}

export interface SourceOptions {
  readonly userData: boolean;
  /** Undefined: SSM is off. */
  readonly ssmPrefixes: readonly string[] | undefined;
  readonly baseConfiguration: string;
  readonly modulesDir: string;
  /**
   * An instance tag whose value "true" pins the instance to a rollout's first cohort, read from
   * IMDS (EC2 exposes tags there only with "Allow tags in instance metadata") and only while the
   * SSM tree carries a rollout: an idle fleet makes no extra call. Absent or null: not read.
   */
  readonly canaryTag?: string | null;
  /** Reads the alarms a rollout under way names (DescribeAlarms, at most once per poll interval). */
  readonly alarms?: Pick<AlarmWatcher, 'read'>;
  /**
   * A read taken with peek() serves the next read() when it is at most this old, so a look just
   * before a pass (the scheduler's probe) costs the pass nothing. 0: every read() reads.
   */
  readonly reuseMs?: number;
  /**
   * A read of the instance's remote sources started with prefetch() serves the first read() that
   * begins at most this long after it started. Default 10 s: a start that recovered without
   * activating anything, not one that rolled back.
   */
  readonly prefetchMaxAgeMs?: number;
  readonly now?: () => number;
}

/** What a read asks of the network (IMDS, SSM, CloudWatch), apart from the local files. */
interface Remote {
  readonly identity: InstanceIdentity;
  readonly asg: string | undefined;
  readonly userData: UserData;
  readonly ssm: SsmSnapshot | undefined;
  readonly canary: boolean;
  readonly alarms: readonly AlarmState[] | undefined;
  readonly notes: readonly string[];
}

const DEFAULT_PREFETCH_MAX_AGE_MS = 10_000;

export { ASG_TAG };

export class SourceReader {
  private kept: { at: number; read: { snapshots: Snapshots } | { error: unknown } } | undefined;
  private early: { at: number; remote: Promise<Remote> } | undefined;
  private latestLocal: LocalSnapshot | undefined;

  constructor(
    private readonly imds: Imds,
    /** Created on first use: the SSM client is the heaviest import on the boot path. */
    private readonly ssm: () => Promise<SsmFetcher>,
    private readonly fs: RootFs,
    private readonly options: SourceOptions,
    /** Where `{asg}` comes from when a prefix names it; without it, only the IMDS tag. */
    private readonly groups?: Pick<GroupLocator, 'group'>,
  ) {}

  /**
   * Reads every source, and keeps the outcome for the next read() (see reuseMs): a failure too, so
   * a pass right after a failed look reports it without asking a failing SSM again.
   */
  async peek(signal?: AbortSignal): Promise<Snapshots> {
    try {
      const snapshots = await this.readAll(signal);
      this.kept = { at: this.now(), read: { snapshots } };
      return snapshots;
    } catch (error) {
      this.kept = signal?.aborted ? undefined : { at: this.now(), read: { error } };
      throw error;
    }
  }

  async read(signal?: AbortSignal): Promise<Snapshots> {
    const kept = this.kept;
    this.kept = undefined;
    if (kept && this.now() - kept.at <= (this.options.reuseMs ?? 0)) {
      if ('error' in kept.read) throw kept.read.error;
      return kept.read.snapshots;
    }
    return this.readAll(signal);
  }

  /**
   * Starts reading the remote sources (IMDS, SSM) for the first pass while the agent still loads
   * its state and recovers: on a first boot those round trips would otherwise wait until the
   * start's local writes are done. The local files are read by the pass itself (the start may
   * write base.nix). The pass takes the outcome, a failure too, so an IMDS that is turned off is
   * still asked once; a prefetch no pass takes is dropped.
   */
  prefetch(): void {
    const remote = this.readRemote();
    // Taken (and reported) by the pass; never an unhandled rejection if no pass comes.
    remote.catch(() => undefined);
    this.early = { at: this.now(), remote };
  }

  /** The local files as the latest read found them: what a watch started later compares with. */
  get lastLocal(): LocalSnapshot | undefined {
    return this.latestLocal;
  }

  /** A request to read everything again (converge --now, SIGHUP) is not answered from a peek. */
  forget(): void {
    this.kept = undefined;
    this.early = undefined;
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  private async readAll(signal?: AbortSignal): Promise<Snapshots> {
    const early = this.early;
    this.early = undefined;
    const fresh = early !== undefined && this.now() - early.at <= (this.options.prefetchMaxAgeMs ?? DEFAULT_PREFETCH_MAX_AGE_MS);
    const [remote, local] = await Promise.all([
      fresh ? untilAborted(early.remote, signal) : this.readRemote(signal),
      readLocal(this.fs, this.options.baseConfiguration, this.options.modulesDir).then((local) => {
        this.latestLocal = local.snapshot;
        return local;
      }),
    ]);
    const { identity, asg, userData, ssm, canary, alarms } = remote;
    return { identity, asg, userData, ssm, local: local.snapshot, canary, ...(alarms ? { alarms } : {}), notes: [...local.notes, ...remote.notes] };
  }

  private async readRemote(signal?: AbortSignal): Promise<Remote> {
    const ssmReady = this.options.ssmPrefixes ? this.ssm() : undefined;
    // Read alongside: each waits on the network, none depends on another but SSM on identity.
    const [identity, asg, userDataRaw] = await Promise.all([
      this.imds.identity(),
      this.group(),
      this.options.userData ? this.imds.getBytes('latest/user-data') : Promise.resolve(undefined),
    ]);
    const userData = interpretUserData(userDataRaw);
    let ssm: SsmSnapshot | undefined;
    if (ssmReady && this.options.ssmPrefixes) {
      const source = await ssmReady;
      ssm = await source.fetch(this.options.ssmPrefixes, { 'instance-id': identity.instanceId, region: identity.region, asg }, signal);
    }
    const [pin, alarms] = ssm ? await Promise.all([this.canary(ssm), this.readAlarms(ssm, identity.instanceId)]) : [{ canary: false }, undefined];
    const notes = [...(pin.note ? [pin.note] : []), ...(alarms?.notes ?? [])];
    return { identity, asg, userData, ssm, canary: pin.canary, alarms: alarms?.states, notes };
  }

  /** A rollout under way that names alarms: their states, and a note for what could not be read. */
  private async readAlarms(ssm: SsmSnapshot, instanceId: string): Promise<{ states: readonly AlarmState[]; notes: string[] } | undefined> {
    const watcher = this.options.alarms;
    if (!watcher) return undefined;
    const { names, fleetSize } = alarmsDue(ssm, this.now());
    if (names.length === 0) return undefined;
    const reading = await watcher.read(names, fleetSize !== undefined ? { instanceId, fleetSize } : undefined);
    // Not this instance's turn: the others read them, and one record halts everyone.
    if (reading === undefined) return undefined;
    // Unread alarms halt nothing: the failure records still do, and the note says why.
    if ('error' in reading) return { states: [], notes: [reading.error] };
    const missing = names.filter((n) => !reading.alarms.some((a) => a.name === n));
    return { states: reading.alarms, notes: missing.map((n) => `CloudWatch alarm ${n}, named by a rollout strategy, does not exist`) };
  }

  private async canary(ssm: SsmSnapshot): Promise<{ canary: boolean; note?: string }> {
    const tag = this.options.canaryTag;
    if (!tag || !carriesRollout(ssm)) return { canary: false };
    const value = (await this.imds.get(`latest/meta-data/tags/instance/${tag}`))?.trim();
    if (value === undefined || value === 'false') return { canary: false };
    if (value === 'true') return { canary: true };
    return { canary: false, note: `instance tag ${tag}: must be "true" or "false", not ${JSON.stringify(value)}; not a canary` };
  }

  /**
   * The group, when a prefix needs it, from the tag or Auto Scaling. A group that cannot be found
   * out fails the pass: converging without that layer would drop what it configures. An instance in
   * no group skips the prefix, and the pass notes it.
   */
  private async group(): Promise<string | undefined> {
    const needed = this.options.ssmPrefixes?.some((p) => p.includes('{asg}')) ?? false;
    if (!needed || !this.groups) return this.imds.get(`latest/meta-data/tags/instance/${ASG_TAG}`);
    try {
      return await this.groups.group();
    } catch (err) {
      const prefix = this.options.ssmPrefixes?.find((p) => p.includes('{asg}'));
      throw new TransientError(`cannot resolve {asg} in SSM prefix ${prefix}: the instance's tags are not in IMDS and ${(err as Error).message}`, 'sources', { prefix }, { cause: err });
    }
  }
}

/** The pass stops waiting when its signal fires; the read it waited on goes on, unobserved. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => (signal.removeEventListener('abort', onAbort), resolve(value)),
      (err: unknown) => (signal.removeEventListener('abort', onAbort), reject(err as Error)),
    );
  });
}
