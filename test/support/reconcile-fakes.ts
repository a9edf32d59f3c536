// Plain-value fakes for the Reconciler's edges: no processes, no real clock. The fake machine keeps
// NixOS's real layout under a temporary root (system-N-link generations, the system profile,
// /run/current-system, /run/booted-system), so the reconciler reads it as it would on an instance.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach } from 'node:test';
import { listGenerations } from '../../agent/apply/generations.js';
import type { Activation } from '../../agent/apply/rebuild.js';
import { parseConfig, type ConfigInput } from '../../agent/config.js';
import { buildDesired } from '../../agent/desired/desired.js';
import { ApplyFailedError } from '../../agent/errors.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { Reconciler, type ReconcilerDeps } from '../../agent/reconcile.js';
import { CONFIGURATION_NIX } from '../../agent/render/render.js';
import type { NixSyntaxError } from '../../agent/render/validate.js';
import { RenderWriter } from '../../agent/render/write.js';
import { Secret } from '../../agent/secret.js';
import type { Snapshots } from '../../agent/sources/index.js';
import type { SsmParameter } from '../../agent/sources/ssm.js';
import { STATE_FILE, StateStore } from '../../agent/state.js';
import type { Status } from '../../agent/status.js';
import type { Verdict } from '../../agent/verify/health.js';
import { ManualClock } from '../support/clock.js';
import { NO_LOCAL, userData } from './desired.js';

export const PROFILES = '/nix/var/nix/profiles';
export const IMAGE_SYSTEM = '/nix/store/00000000000000000000000000000000-nixos-system-image';
export const IMAGE_CONFIGURATION = '{ ... }: { } # the image\n';

/** What `kill` throws: not an AgentError, so the pass ends as a killed process would. */
export class Killed extends Error {}

/** The system a configuration.nix builds to: one store path per desired state, as Nix would. */
export function storePathOf(desiredHash: string): string {
  return `/nix/store/${desiredHash.slice(0, 32)}-nixos-system`;
}

/** A root whose writes fail with an errno while `failWrites` is set (a full disk, a read-only directory). */
export class FaultyFs extends RootFs {
  failWrites: 'ENOSPC' | 'EACCES' | 'EIO' | undefined;
  /** With failWrites: only writes to this path fail. */
  failWritesTo: string | undefined;
  /** Reads of this path fail with the errno. */
  failRead: { readonly path: string; readonly code: 'EACCES' | 'EIO' } | undefined;
  /** The agent "dies" (Killed) at this write from now, counting from 1; every write counts. */
  killAtWrite: number | undefined;
  writes = 0;

  override async read(systemPath: string): Promise<Buffer | undefined> {
    if (this.failRead && systemPath === this.failRead.path) {
      const file = this.resolve(systemPath);
      throw Object.assign(new Error(`${this.failRead.code}: read failed, open '${file}'`), { code: this.failRead.code, path: file, syscall: 'open' });
    }
    return super.read(systemPath);
  }

  override async writeAtomic(systemPath: string, data: string | Uint8Array, options?: Parameters<RootFs['writeAtomic']>[2]): Promise<void> {
    this.writes++;
    if (this.killAtWrite !== undefined && this.writes >= this.killAtWrite) {
      this.killAtWrite = undefined;
      throw new Killed(`killed before writing ${systemPath}`);
    }
    if (this.failWrites && (this.failWritesTo === undefined || this.failWritesTo === systemPath)) {
      const file = this.resolve(systemPath);
      throw Object.assign(new Error(`${this.failWrites}: write failed, open '${file}'`), { code: this.failWrites, path: file, syscall: 'open', errno: -28 });
    }
    return super.writeAtomic(systemPath, data, options);
  }
}

export class FakeMachine {
  readonly calls: string[] = [];
  readonly failBuild = new Set<string>();
  readonly failActivate = new Set<string>();
  readonly unhealthy = new Set<string>();
  /** Systems whose switch-to-configuration exits 100 (an incompatible init): nothing is activated. */
  readonly needReboot = new Set<string>();
  verifyCount = 0;
  /**
   * Each build: the file it was given, how many checks the parser had answered when it began (the
   * world wires its FakeParser to `parserAnswers`), and whether its signal was aborted.
   */
  readonly builds: { configuration: string; parserAnswers: number; aborted: boolean }[] = [];
  parserAnswers: () => number = () => 0;
  /** Builds wait for their signal to abort and throw its reason, as the real Rebuilder does. */
  hangBuild = false;
  /** The call at which the agent "dies" (e.g. `build`, `activate test:after`, `setProfile`, `verify#2`). */
  kill: string | undefined;
  /** Told of every call `kill` could name, as it is reached: to change the machine under the agent. */
  onCall: ((call: string) => void) | undefined;

  constructor(readonly fs: RootFs) {}

  async install(): Promise<void> {
    await this.fs.symlinkAtomic(IMAGE_SYSTEM, `${PROFILES}/system-1-link`);
    await this.fs.symlinkAtomic('system-1-link', `${PROFILES}/system`);
    await this.fs.symlinkAtomic(IMAGE_SYSTEM, '/run/current-system');
    await this.fs.symlinkAtomic(IMAGE_SYSTEM, '/run/booted-system');
    await this.fs.writeAtomic(CONFIGURATION_NIX, IMAGE_CONFIGURATION);
  }

  async running(): Promise<string | undefined> {
    return this.fs.readlink('/run/current-system');
  }

  async profile(): Promise<{ generation: number; storePath: string | undefined }> {
    const link = (await this.fs.readlink(`${PROFILES}/system`)) ?? '';
    return { generation: Number(/system-(\d+)-link/.exec(link)?.[1]), storePath: await this.fs.readlink(`${PROFILES}/${link}`) };
  }

  private checkKill(call: string): void {
    this.onCall?.(call);
    if (this.kill === call) {
      this.kill = undefined;
      throw new Killed(`killed at ${call}`);
    }
  }

  private async desiredHash(configuration = CONFIGURATION_NIX): Promise<string> {
    const text = (await this.fs.readText(configuration)) ?? '';
    const hash = /Desired state ([0-9a-f]{64})/.exec(text)?.[1];
    if (!hash) throw new ApplyFailedError('configuration.nix is not one the agent rendered', 'build');
    return hash;
  }

  readonly rebuilder = {
    build: async (signal?: AbortSignal, configuration = CONFIGURATION_NIX): Promise<string> => {
      this.calls.push('build');
      const build = { configuration, parserAnswers: this.parserAnswers(), aborted: false };
      this.builds.push(build);
      signal?.addEventListener('abort', () => (build.aborted = true), { once: true });
      this.checkKill('build');
      if (this.hangBuild) {
        await new Promise<void>((_, reject) => {
          if (signal?.aborted) reject(signal.reason);
          signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
        });
      }
      const hash = await this.desiredHash(configuration);
      if (this.failBuild.has(hash)) throw new ApplyFailedError('nixos-rebuild build exited with 1', 'build', { exitCode: 1, tail: ['error: builder failed'] });
      return storePathOf(hash);
    },
    startBuild: async (signal?: AbortSignal, configuration = CONFIGURATION_NIX): Promise<{ done: Promise<string> }> => {
      const done = this.rebuilder.build(signal, configuration);
      done.catch(() => undefined);
      return { done };
    },
    activate: async (storePath: string, action: Activation): Promise<{ rebootRequired: boolean }> => {
      this.calls.push(`activate ${action} ${storePath}`);
      this.checkKill(`activate ${action}:before`);
      if (action === 'boot') return { rebootRequired: false };
      if (this.needReboot.has(storePath)) return { rebootRequired: true };
      await this.fs.symlinkAtomic(storePath, '/run/current-system');
      this.checkKill(`activate ${action}:after`);
      if (this.failActivate.has(storePath)) {
        throw new ApplyFailedError(`switch-to-configuration ${action} exited with 2`, action === 'switch' ? 'rollback' : 'activate', { exitCode: 2 });
      }
      return { rebootRequired: false };
    },
    setProfile: async (storePath: string): Promise<void> => {
      this.calls.push(`setProfile ${storePath}`);
      this.checkKill('setProfile');
      const generations = await listGenerations(this.fs);
      const newest = generations.at(-1);
      // `nix-env --set` with the newest generation's path reuses it.
      const number = newest?.storePath === storePath ? newest.number : (newest?.number ?? 0) + 1;
      await this.fs.symlinkAtomic(storePath, `${PROFILES}/system-${number}-link`);
      await this.fs.symlinkAtomic(`system-${number}-link`, `${PROFILES}/system`);
    },
    switchGeneration: async (generation: number): Promise<void> => {
      this.calls.push(`switchGeneration ${generation}`);
      this.checkKill('switchGeneration');
      await this.fs.symlinkAtomic(`system-${generation}-link`, `${PROFILES}/system`);
    },
    switchLegacy: async (): Promise<void> => {
      this.calls.push('switchLegacy');
      const storePath = storePathOf(await this.desiredHash());
      await this.rebuilder.setProfile(storePath);
      await this.rebuilder.activate(storePath, 'switch');
    },
    updateChannels: async (text: string): Promise<void> => {
      this.calls.push(`updateChannels ${text.trim()}`);
      this.checkKill('updateChannels');
    },
  };

  /** Each verdict asked for, whether it asked the endpoints too (HealthChecker.verify's `reach`). */
  readonly reachAsked: boolean[] = [];

  readonly health = {
    verify: async (_onAttempt?: unknown, how: { readonly reach?: boolean } = {}): Promise<Verdict> => {
      this.reachAsked.push(how.reach ?? true);
      this.verifyCount++;
      const running = await this.running();
      this.calls.push(`verify ${running}`);
      this.checkKill(`verify#${this.verifyCount}`);
      const healthy = running !== undefined && !this.unhealthy.has(running);
      return { healthy, reasons: healthy ? [] : ['systemd: failed units: app.service'], checks: [], attempts: 1 };
    },
  };

  /** Generations as `number:storePath`, current marked with `*`. */
  async generations(): Promise<string[]> {
    return (await listGenerations(this.fs)).map((g) => `${g.number}:${g.storePath}${g.current ? '*' : ''}`);
  }
}

/** The sources as one mutable snapshot; `options` become SSM parameters under /nixos/fleet. */
export class FakeSources {
  reads = 0;
  userDataText: string | undefined = undefined;
  parameters: SsmParameter[] = [];
  private versions = new Map<string, number>();

  set(name: string, value: string, type: SsmParameter['type'] = 'String'): void {
    const full = `/nixos/fleet/${name}`;
    const version = (this.versions.get(full) ?? 0) + 1;
    this.versions.set(full, version);
    // As the real source does, a SecureString arrives as a Secret.
    const held = type === 'SecureString' ? new Secret(value) : value;
    this.parameters = [...this.parameters.filter((p) => p.name !== full), { name: full, type, value: held, version, lastModified: Date.UTC(2024, 0, 1) }];
  }

  /** What buildDesired makes of the current snapshot: the hash a pass will see. */
  desiredHash(): string {
    return buildDesired({ userData: userData(this.userDataText), ssm: this.ssm(), local: NO_LOCAL }).hash;
  }

  private ssm() {
    return { prefixes: [{ prefix: '/nixos/fleet', parameters: this.parameters }], skipped: [], calls: 1 };
  }

  readonly reader = {
    read: async (): Promise<Snapshots> => {
      this.reads++;
      return {
        identity: { instanceId: 'i-0123456789abcdef0', region: 'us-east-1', availabilityZone: 'us-east-1a', instanceType: 't3.micro', amiId: 'ami-1', accountId: '123456789012' },
        asg: 'web',
        userData: userData(this.userDataText),
        ssm: this.ssm(),
        local: NO_LOCAL,
        notes: [],
      };
    },
  };
}

/** The Nix parser gate, answering from a table: file path suffix → error. */
export class FakeParser {
  readonly errors = new Map<string, Omit<NixSyntaxError, 'file'>>();
  /** Checks answered so far; like the real parser's process, each answers on a later turn of the loop. */
  answers = 0;

  async check(files: readonly string[]): Promise<NixSyntaxError[]> {
    await new Promise((resolve) => setImmediate(resolve));
    this.answers++;
    const out: NixSyntaxError[] = [];
    for (const file of files) {
      for (const [suffix, e] of this.errors) if (file.endsWith(suffix)) out.push({ file, ...e });
    }
    return out;
  }

  async checkText(): Promise<NixSyntaxError | undefined> {
    return undefined;
  }
}

export class FakeRunner implements Runner {
  readonly requests: RunRequest[] = [];
  async run(request: RunRequest): Promise<RunResult> {
    this.requests.push(request);
    return { code: 0, signal: null, timedOut: false, aborted: false, stdout: '', stderr: '', tail: [], durationMs: 0 };
  }
}

export interface World {
  readonly dir: string;
  readonly fs: FaultyFs;
  readonly clock: ManualClock;
  readonly machine: FakeMachine;
  readonly sources: FakeSources;
  readonly parser: FakeParser;
  readonly runner: FakeRunner;
  readonly statuses: Status[];
  /** A new Reconciler over the same root, as after a restart; `start()` already called. */
  agent(config?: ConfigInput, extra?: Pick<ReconcilerDeps, 'closures'>): Promise<Reconciler>;
}

export async function world(): Promise<World> {
  const dir = await mkdtemp(path.join(tmpdir(), 'reconcile-test-'));
  const fs = new FaultyFs(dir);
  const clock = new ManualClock(Date.UTC(2024, 0, 1, 12));
  const machine = new FakeMachine(fs);
  await machine.install();
  const sources = new FakeSources();
  const parser = new FakeParser();
  machine.parserAnswers = () => parser.answers;
  const runner = new FakeRunner();
  const statuses: Status[] = [];
  return {
    dir,
    fs,
    clock,
    machine,
    sources,
    parser,
    runner,
    statuses,
    agent: async (config: ConfigInput = {}, extra: Pick<ReconcilerDeps, 'closures'> = {}) => {
      const log = silentLogger();
      const reconciler = new Reconciler({
        config: parseConfig({ ...config, root: dir }),
        clock,
        fs,
        log,
        runner,
        sources: sources.reader,
        writer: new RenderWriter(fs, parser, log),
        rebuilder: machine.rebuilder,
        health: machine.health,
        store: new StateStore(fs, () => clock.now()),
        onStatus: (s) => statuses.push(s),
        ...extra,
      });
      await reconciler.start();
      return reconciler;
    },
  };
}

export function sha(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * A fresh world for each test, its root removed after the test: called once at a test file's top
 * level, it returns the `setup` each test calls.
 */
export function worldPerTest(): () => Promise<World> {
  let current: World | undefined;
  afterEach(async () => {
    if (current) await rm(current.dir, { recursive: true, force: true });
    current = undefined;
  });
  return async () => (current = await world());
}

/** The state file as the agent last wrote it. */
export async function stateOf(w: World) {
  return JSON.parse((await w.fs.readText(STATE_FILE)) ?? '{}');
}
