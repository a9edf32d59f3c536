// The real Runner: each command in its own process group, so a timeout or an abort kills the
// command and everything it started (nix-build forks builders; a hung build must not linger).
import { spawn } from 'node:child_process';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { childEnv } from './env.js';
import type { OutputStream, RunRequest, RunResult, Runner } from './ports.js';

const TAIL_LINES = 40;
/** After SIGTERM, how long a process group gets before SIGKILL. */
const KILL_GRACE_MS = 5_000;
/** Keep at most this much of each stream in memory; the rest is streamed to onLine only. */
const MAX_CAPTURE = 4 * 1024 * 1024;

export class ProcessRunner implements Runner {
  private readonly env: Record<string, string>;

  /** `env`: the agent's own environment, which the composition root reads; children get it filtered. */
  constructor(env: NodeJS.ProcessEnv, private readonly killGraceMs = KILL_GRACE_MS) {
    this.env = childEnv(env);
  }

  run(request: RunRequest): Promise<RunResult> {
    const started = Date.now();
    return new Promise<RunResult>((resolve) => {
      const tail: string[] = [];
      const captured: Record<OutputStream, string[]> = { stdout: [], stderr: [] };
      const capturedSize: Record<OutputStream, number> = { stdout: 0, stderr: 0 };
      const partial: Record<OutputStream, string> = { stdout: '', stderr: '' };
      let timedOut = false;
      let aborted = false;
      let settled = false;
      let killTimer: NodeJS.Timeout | undefined;

      const child = spawn(request.command, [...request.args], {
        cwd: request.cwd,
        // Less what systemd gave the agent alone: a child must not report or feed the watchdog for it.
        env: { ...this.env, ...request.env },
        detached: true,
        stdio: [request.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      });

      const killGroup = (sig: NodeJS.Signals) => {
        if (child.pid === undefined) return;
        try {
          process.kill(-child.pid, sig);
        } catch {
          // The group is already gone.
        }
      };
      const terminate = () => {
        killGroup('SIGTERM');
        killTimer ??= setTimeout(() => killGroup('SIGKILL'), this.killGraceMs);
      };

      const line = (stream: OutputStream, text: string) => {
        tail.push(text);
        if (tail.length > TAIL_LINES) tail.shift();
        request.onLine?.(stream, text);
      };
      // One decoder per stream: a multi-byte character split across two chunks stays whole.
      const decoders: Record<OutputStream, StringDecoder> = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
      const onData = (stream: OutputStream) => (chunk: Buffer) => {
        const text = decoders[stream].write(chunk);
        if (capturedSize[stream] < MAX_CAPTURE) {
          captured[stream].push(text);
          capturedSize[stream] += text.length;
        }
        const lines = (partial[stream] + text).split('\n');
        partial[stream] = lines.pop() ?? '';
        for (const l of lines) line(stream, l);
      };
      child.stdout?.on('data', onData('stdout'));
      child.stderr?.on('data', onData('stderr'));

      const timer =
        request.timeoutMs !== undefined
          ? setTimeout(() => {
              timedOut = true;
              terminate();
            }, request.timeoutMs)
          : undefined;
      const onAbort = () => {
        aborted = true;
        terminate();
      };
      if (request.signal?.aborted) onAbort();
      else request.signal?.addEventListener('abort', onAbort, { once: true });

      const finish = (code: number | null, signal: string | null, spawnError?: Error) => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        request.signal?.removeEventListener('abort', onAbort);
        // Children of the command may still hold the group; they go with it.
        if (timedOut || aborted) killGroup('SIGKILL');
        if (killTimer) clearTimeout(killTimer);
        for (const stream of ['stdout', 'stderr'] as const) {
          const rest = decoders[stream].end();
          if (rest) {
            captured[stream].push(rest);
            partial[stream] += rest;
          }
          if (partial[stream]) line(stream, partial[stream]);
          partial[stream] = '';
        }
        if (spawnError) line('stderr', `${request.command}: ${spawnError.message}`);
        resolve({
          code: spawnError ? 127 : code,
          signal,
          timedOut,
          aborted,
          stdout: captured.stdout.join(''),
          stderr: captured.stderr.join('') + (spawnError ? `${request.command}: ${spawnError.message}\n` : ''),
          tail: [...tail],
          durationMs: Date.now() - started,
        });
      };
      child.once('error', (err) => finish(null, null, err));
      child.once('close', (code, signal) => finish(code, signal));
      if (request.stdin !== undefined && child.stdin) {
        // A program that exits, or closes its stdin, before reading all of it makes the write fail
        // (EPIPE): its exit is what is reported, and the agent must not die of it.
        child.stdin.on('error', () => undefined);
        child.stdin.end(request.stdin);
      }
    });
  }

  /**
   * A build's process group is found in /proc by its leader, the nixos-rebuild the runner started:
   * its working directory is at or below `dir` (a build runs in a directory of its own,
   * Rebuilder.startBuild) and its arguments name the configuration (`-I nixos-config=…`), which
   * no shell an operator opened there has. The group is looked up again before SIGKILL, so a group
   * id reused in between is never hit.
   */
  async stopWithin(dir: string): Promise<number[]> {
    const groups = await buildGroupsWithin(dir);
    const signal = (sig: NodeJS.Signals, which: Iterable<number>) => {
      for (const group of which) {
        try {
          process.kill(-group, sig);
        } catch {
          // Gone already.
        }
      }
    };
    signal('SIGTERM', groups);
    if (groups.length > 0) {
      setTimeout(() => {
        void buildGroupsWithin(dir).then((left) => signal('SIGKILL', left.filter((g) => groups.includes(g))));
      }, this.killGraceMs).unref();
    }
    return groups;
  }
}

async function buildGroupsWithin(dir: string): Promise<number[]> {
  const own = await processGroup('self');
  const pids = (await readdir('/proc').catch(() => [] as string[])).filter((name) => /^\d+$/.test(name));
  const found = await Promise.all(
    pids.map(async (pid) => {
      const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => undefined);
      if (cwd === undefined || (cwd !== dir && !cwd.startsWith(`${dir}/`))) return undefined;
      const group = await processGroup(pid);
      if (group === undefined || group !== Number(pid) || group === own) return undefined;
      const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
      return args.some((a) => a.startsWith('nixos-config=')) ? group : undefined;
    }),
  );
  return found.filter((g): g is number => g !== undefined);
}

/** A process's group id, from /proc/PID/stat (the field after the state, past the parenthesised name). */
async function processGroup(pid: string): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return undefined;
  const group = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  return Number.isInteger(group) ? group : undefined;
}

