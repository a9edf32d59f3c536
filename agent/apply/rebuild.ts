// The only caller of nixos-rebuild, switch-to-configuration and nix-env, through the Runner. Each
// step runs in its own process group with a timeout, its output streamed to the log line by line;
// a failure becomes an ApplyFailedError carrying the step, exit status and the last lines.
import path from 'node:path';
import { ApplyFailedError, type ApplyStage } from '../errors.js';
import type { RootFs } from '../fs.js';
import type { Logger } from '../log.js';
import type { RunResult, Runner } from '../ports.js';
import { CHANNELS_FILE, CONFIGURATION_NIX } from '../render/render.js';

export const SYSTEM_PROFILE = '/nix/var/nix/profiles/system';
/** Each build runs in a directory of its own under this one (Rebuilder.startBuild). */
export const BUILD_DIR = '/var/lib/nixos-ec2-agent/build';
/** switch-to-configuration holds this (flock) while it runs (pkgs/by-name/sw/switch-to-configuration-ng). */
export const SWITCH_LOCK = '/run/nixos/switch-to-configuration.lock';

export type Activation = 'test' | 'switch' | 'boot';

export interface RebuildOptions {
  readonly nixosRebuild: string;
  readonly nixEnv: string;
  readonly nixChannel: string;
  readonly extraArgs: readonly string[];
  readonly buildTimeoutMs: number;
  readonly activateTimeoutMs: number;
}

export class Rebuilder {
  constructor(
    private readonly runner: Runner,
    private readonly fs: RootFs,
    private readonly options: RebuildOptions,
    private readonly log: Logger,
  ) {}

  /**
   * `nixos-rebuild build`: the new system's store path. Nothing is switched. `configuration`: the
   * file to build, by default configuration.nix; a copy of the same text builds the same system
   * (the only use nixpkgs makes of the path itself, `system.copySystemConfiguration`, copies the file
   * by its name, configuration.nix: nixos/modules/system/activation/top-level.nix).
   */
  async build(signal?: AbortSignal, configuration: string = CONFIGURATION_NIX): Promise<string> {
    return (await this.startBuild(signal, configuration)).done;
  }

  /**
   * `build`, resolved once nixos-rebuild has been started; `done` is the build's outcome.
   *
   * nixos-rebuild build leaves its `result` link in its working directory, so each build gets a
   * directory of its own, and its store path is read from there: the unit's KillMode=process lets a
   * build outlive an agent that was restarted (until its next line of output finds the agent's pipe
   * gone: a long silent step can run for minutes), and such a build finishing later must never hand
   * the next agent's pass its system (an older desired state) to activate. What earlier builds left is
   * removed first: anything still running there is an earlier agent's build, stopped (two builds
   * at once would double the memory of an instance that may have little), and the links go, which
   * keeps the newest build's result a GC root until the next one (activated systems are rooted by
   * their profile generations).
   */
  async startBuild(signal?: AbortSignal, configuration: string = CONFIGURATION_NIX): Promise<{ done: Promise<string> }> {
    // The agent's state directory is root's alone (0700, as the state store makes it); on a first
    // start the build may be the first to need it.
    const [earlier] = await Promise.all([this.fs.list(BUILD_DIR), this.fs.mkdirp(BUILD_DIR, 0o700)]);
    if (earlier.length > 0) await this.clearEarlierBuilds(earlier);
    const dir = await this.fs.uniqueDir(BUILD_DIR, 'run-');
    // The Runner starts the process before step's first await.
    const ran = this.step('build', this.options.nixosRebuild, ['build', ...this.configArgs(configuration)], this.options.buildTimeoutMs, { cwd: this.fs.resolve(dir), signal });
    const done = ran.then(async () => {
      const storePath = await this.fs.readlink(`${dir}/result`);
      if (!storePath) throw new ApplyFailedError('nixos-rebuild build left no result link', 'build');
      return storePath;
    });
    return { done };
  }

  /** `names`: what BUILD_DIR holds before a build starts; no build of this agent is running then. */
  private async clearEarlierBuilds(names: readonly string[]): Promise<void> {
    const stopped = (await this.runner.stopWithin?.(this.fs.resolve(BUILD_DIR))) ?? [];
    if (stopped.length > 0) {
      this.log.warn({ event: 'build.stray-stopped', processGroups: stopped }, `stopped ${stopped.length} build process group(s) an earlier agent left running in ${BUILD_DIR}`);
    }
    await Promise.all(names.map((name) => this.fs.remove(path.posix.join(BUILD_DIR, name))));
  }

  /** `nixos-rebuild switch`, the legacy one-step order (configured `rebuild.mode = switch`). */
  async switchLegacy(signal?: AbortSignal): Promise<void> {
    await this.step('activate', this.options.nixosRebuild, ['switch', ...this.configArgs()], this.options.buildTimeoutMs, { signal });
  }

  /**
   * Runs the system's own switch-to-configuration. Resolves with whether it asked for a reboot
   * (exit 100); every other non-zero exit is a failure, read by `switchExit`.
   */
  async activate(storePath: string, action: Activation): Promise<{ rebootRequired: boolean }> {
    await this.waitForSwitchLock();
    const failedUnits: string[] = [];
    const onLine = (line: string) => {
      const units = FAILED_UNITS.exec(line)?.[1];
      if (units) failedUnits.push(...units.split(', '));
    };
    // Activation is never interrupted by a newer desired state: no signal, only the timeout.
    const result = await this.step(action === 'boot' ? 'commit' : 'activate', path.join(storePath, 'bin', 'switch-to-configuration'), [action], this.options.activateTimeoutMs, { onLine }, (code) =>
      switchExit(code, failedUnits),
    );
    return { rebootRequired: result.code === SWITCH_REBOOT_REQUIRED };
  }

  /** Makes `storePath` the system profile's current generation (a new one, or the newest reused). */
  async setProfile(storePath: string, stage: ApplyStage = 'commit'): Promise<void> {
    await this.step(stage, this.options.nixEnv, ['-p', this.fs.resolve(SYSTEM_PROFILE), '--set', storePath], this.options.activateTimeoutMs, {});
  }

  async switchGeneration(generation: number): Promise<void> {
    await this.step('rollback', this.options.nixEnv, ['-p', this.fs.resolve(SYSTEM_PROFILE), '--switch-generation', String(generation)], this.options.activateTimeoutMs, {});
  }

  /** amazon-init's `###` channel lines: the channels file, then `nix-channel --update`. */
  async updateChannels(text: string, signal?: AbortSignal): Promise<void> {
    await this.fs.writeAtomic(CHANNELS_FILE, text);
    await this.step('channels', this.options.nixChannel, ['--update'], this.options.buildTimeoutMs, { signal });
  }

  /**
   * Waits until no switch-to-configuration holds its lock. The unit's KillMode=process lets an
   * activation outlive an agent that was stopped or restarted; the next agent would otherwise
   * start its own, which switch-to-configuration refuses at once while the lock is held
   * (nixos/tests/switch-test.nix, "aborts on already locked lock file"), and roll back under
   * the one still running.
   */
  private async waitForSwitchLock(): Promise<void> {
    await this.fs.mkdirp(path.dirname(SWITCH_LOCK));
    const seconds = Math.ceil(this.options.activateTimeoutMs / 1000);
    const result = await this.runner.run({
      command: 'flock',
      args: ['--wait', String(seconds), this.fs.resolve(SWITCH_LOCK), 'true'],
      timeoutMs: this.options.activateTimeoutMs + 10_000,
    });
    if (result.code !== 0) {
      throw new ApplyFailedError(`switch-to-configuration's lock ${SWITCH_LOCK} is still held after ${seconds} s`, 'activate', {
        exitCode: result.code,
        timedOut: result.timedOut,
        tail: result.tail.slice(-20),
      });
    }
  }

  private configArgs(configuration: string = CONFIGURATION_NIX): string[] {
    return ['-I', `nixos-config=${this.fs.resolve(configuration)}`, ...this.options.extraArgs];
  }

  private async step(
    stage: ApplyStage,
    command: string,
    args: readonly string[],
    timeoutMs: number,
    extra: { cwd?: string; signal?: AbortSignal | undefined; onLine?: (line: string) => void },
    readExit: (code: number) => string | undefined = (code) => (code === 0 ? undefined : `exited with ${code}`),
  ): Promise<RunResult> {
    const log = this.log.child({ stage, command: path.basename(command) });
    log.info({ event: 'step.start', args }, `${path.basename(command)} ${args.join(' ')}`);
    const result = await this.runner.run({
      command,
      args,
      timeoutMs,
      ...(extra.cwd ? { cwd: extra.cwd } : {}),
      ...(extra.signal ? { signal: extra.signal } : {}),
      onLine: (stream, line) => {
        log.info({ event: 'step.output', stream }, line);
        extra.onLine?.(line);
      },
    });
    log.info({ event: 'step.end', exitCode: result.code, signal: result.signal, timedOut: result.timedOut, durationMs: result.durationMs }, 'step ended');
    // Cancelled (a newer desired state, the instance leaving, a stop): the signal's reason is the
    // one value that says so, carried as it is to the reconciler.
    if (result.aborted && extra.signal?.aborted) throw extra.signal.reason;
    const failure = result.code === null ? undefined : readExit(result.code);
    if (result.code !== null && failure === undefined && !result.timedOut && !result.aborted) return result;
    const why = result.timedOut
      ? `timed out after ${Math.round(timeoutMs / 1000)} s (process group killed)`
      : result.aborted
        ? 'cancelled by a newer desired state'
        : result.code === null
          ? `killed by ${result.signal}`
          : (failure ?? `exited with ${result.code}`);
    throw new ApplyFailedError(`${path.basename(command)} ${args[0] ?? ''} ${why}`.replace(/\s+/g, ' '), stage, {
      exitCode: result.code,
      timedOut: result.timedOut,
      tail: result.tail.slice(-20),
    });
  }
}

/** switch-to-configuration asked for a reboot to finish the switch: not a failure. */
export const SWITCH_REBOOT_REQUIRED = 100;

/** The line switch-to-configuration-ng prints before exiting 4 (`do_system_switch` in main.rs). */
const FAILED_UNITS = /^warning: the following units failed: (.+)$/;

/**
 * switch-to-configuration's exit status, as nixpkgs' switch-to-configuration-ng defines it
 * (pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs): 0 switched; 1 usage, the lock held
 * by another switch, pre-switch checks or the boot loader failed; 2 the activation script failed;
 * 4 some units failed to start, restart or reload, or were found failed at the end (it sets
 * `exit_code = 4` and carries on, so the rest of the switch happened); 100 a reboot is required.
 * 4 is a failure like 2: the system is not what was asked for, and rolls back. `failedUnits`: those
 * its warning line named. Undefined: not a failure.
 */
export function switchExit(code: number, failedUnits: readonly string[] = []): string | undefined {
  switch (code) {
    case 0:
    case SWITCH_REBOOT_REQUIRED:
      return undefined;
    case 1:
      return 'exited with 1 (usage, lock held, pre-switch check or boot loader failed)';
    case 2:
      return 'exited with 2 (the activation script failed)';
    case 4:
      return failedUnits.length ? `exited with 4 (units failed: ${failedUnits.join(', ')})` : 'exited with 4 (some units failed)';
    default:
      return `exited with ${code}`;
  }
}
