// Local inputs, watched: the image's base configuration and the drop-in directory of modules.
// A change calls `onChange` (the scheduler's trigger, whose quiet period collapses a burst into one
// pass). Only those inputs are watched, never what the agent writes itself (configuration.nix, the
// rendered parts, state): their directories are watched with everything else in them ignored, so a
// file that does not exist yet is seen when it appears. A change is reported only when a file's
// content differs from what was last seen, so an editor's save-by-rename or a touch is not a pass.
import { sha256Hex } from '../sha256.js';
import { isLocalModuleName } from './local.js';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { FSWatcher } from 'chokidar';

export interface LocalWatchOptions {
  /** Absolute real paths (already under the agent's root). */
  readonly baseConfiguration: string;
  readonly modulesDir: string;
  readonly onChange: (reason: string) => void;
  readonly onError?: (err: Error) => void;
  /**
   * The local files as the agent last read them (absolute path → digest), when it read them before
   * this watch was in place: a difference found once it is is a change, so none falls between the
   * read and the watch.
   */
  readonly baseline?: () => ReadonlyMap<string, string> | undefined;
  /**
   * Polling instead of inotify (network filesystems; tests on odd filesystems). Polling stats every
   * file every 100 ms, a steady cost an idle agent must not pay, so it is never the default.
   */
  readonly usePolling?: boolean;
}

/** The files whose content is an input: the base file, and `*.nix` directly in the drop-in directory. */
export function isWatchedInput(file: string, baseConfiguration: string, modulesDir: string): boolean {
  const f = path.resolve(file);
  if (f === path.resolve(baseConfiguration)) return true;
  return path.dirname(f) === path.resolve(modulesDir) && f.endsWith('.nix') && !path.basename(f).startsWith('.');
}

export class LocalWatcher {
  private watcher: FSWatcher | undefined;
  /** Set by stop(): a start still under way ends without watching (a watcher is not started again). */
  private stopped = false;
  /** Ends a start waiting for the initial scan of a watcher that stop() closed meanwhile. */
  private abandonStart: (() => void) | undefined;
  private readonly digests = new Map<string, string | undefined>();
  private events = 0;
  private changes = 0;

  constructor(private readonly options: LocalWatchOptions) {}

  /**
   * `polling` is what chokidar chose: CHOKIDAR_USEPOLLING in the environment overrides the
   * options, so it is read back rather than assumed.
   */
  get stats(): { readonly events: number; readonly changes: number; readonly watching: boolean; readonly polling: boolean } {
    return { events: this.events, changes: this.changes, watching: this.watcher !== undefined, polling: this.watcher?.options.usePolling === true };
  }

  /** Resolves once the initial scan is done: later changes are reported. */
  async start(): Promise<void> {
    if (this.watcher || this.stopped) return;
    const { watch } = await import('chokidar');
    const { baseConfiguration, modulesDir } = this.options;
    // A directory that does not exist yet could not be watched; the drop-in directory is ours to make.
    await mkdir(path.resolve(modulesDir), { recursive: true, mode: 0o755 });
    if (this.stopped) return;
    const baseDir = path.dirname(path.resolve(baseConfiguration));
    // The drop-in directory is watched through its parent: a watch on the directory itself dies
    // with it, so one that a tool removes and makes again (or swaps in by a rename) would go unseen.
    const dropIn = path.resolve(modulesDir);
    const dirs = [...new Set([baseDir, path.dirname(dropIn), dropIn])];
    const watcher = watch([...new Set([baseDir, path.dirname(dropIn)])], {
      ignoreInitial: true,
      // One level below the drop-in directory's parent; any other directory is ignored below.
      depth: 1,
      persistent: true,
      // inotify unless asked: no timer runs while nothing changes.
      usePolling: this.options.usePolling === true,
      ...(this.options.usePolling ? { interval: 100 } : {}),
      // Directories themselves pass (so they are entered); files only when they are inputs.
      ignored: (file, stats) => {
        const f = path.resolve(file);
        if (dirs.includes(f)) return false;
        if (stats?.isDirectory()) return true;
        return !isWatchedInput(f, baseConfiguration, modulesDir);
      },
    });
    this.watcher = watcher;
    for (const event of ['add', 'change', 'unlink'] as const) {
      watcher.on(event, (file: string) => void this.seen(event, file));
    }
    watcher.on('error', (err: unknown) => this.options.onError?.(err as Error));
    // A watcher closed before its initial scan never says it is ready: stop() ends the wait, or a
    // daemon stopped during a start (or a reload) would wait for it for ever.
    const scanned = await new Promise<boolean>((resolve) => {
      watcher.once('ready', () => resolve(true));
      this.abandonStart = () => resolve(false);
    });
    this.abandonStart = undefined;
    if (!scanned) return;
    // What is there now is the baseline for the events to come.
    for (const file of [path.resolve(baseConfiguration), ...(await this.listInputs())]) {
      this.digests.set(file, await digestOf(file));
    }
    const read = this.options.baseline?.();
    if (read && this.watcher && this.differsFrom(read)) {
      this.changes++;
      this.options.onChange('local inputs changed while their watch started');
    }
  }

  /** Whether the files there now are not those `read` (the render reads the base file and the drop-ins it takes). */
  private differsFrom(read: ReadonlyMap<string, string>): boolean {
    const base = path.resolve(this.options.baseConfiguration);
    const now = [...this.digests].filter(([f, digest]) => digest !== undefined && (f === base || isLocalModuleName(path.basename(f))));
    return now.length !== read.size || now.some(([f, digest]) => read.get(f) !== digest);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abandonStart?.();
    const watcher = this.watcher;
    this.watcher = undefined;
    await watcher?.close();
  }

  private async listInputs(): Promise<string[]> {
    const dir = path.resolve(this.options.modulesDir);
    const names = await readdir(dir).catch(() => [] as string[]);
    return names.map((n) => path.join(dir, n)).filter((f) => isWatchedInput(f, this.options.baseConfiguration, this.options.modulesDir));
  }

  private async seen(event: string, file: string): Promise<void> {
    const f = path.resolve(file);
    if (!isWatchedInput(f, this.options.baseConfiguration, this.options.modulesDir)) return;
    this.events++;
    const digest = await digestOf(f);
    if (this.digests.has(f) && this.digests.get(f) === digest) return;
    this.digests.set(f, digest);
    if (!this.watcher) return;
    this.changes++;
    this.options.onChange(`${event === 'unlink' ? 'removed' : event === 'add' ? 'added' : 'changed'} ${f}`);
  }
}

async function digestOf(file: string): Promise<string | undefined> {
  try {
    return sha256Hex(await readFile(file));
  } catch {
    return undefined;
  }
}
