// The post-convergence command (`postConvergeCommand`): run after each pass that did something,
// with what happened in NIXOS_EC2_AGENT_* variables, as comin's postDeploymentCommand gets COMIN_*.
// It reports; it never decides: its failure or timeout is logged and counted, and the pass's
// outcome stays what it was.
import type { Logger } from '../log.js';
import type { Runner } from '../ports.js';
import type { PassResult } from '../reconcile.js';
import type { Outcome, Status } from '../status.js';
import type { HookOutcome } from './metrics.js';

export interface PostConvergeOptions {
  readonly argv: readonly string[];
  readonly timeoutSeconds: number;
}

export interface HookRun {
  readonly outcome: HookOutcome;
  readonly exitCode: number | null;
  readonly durationMs: number;
  readonly tail: readonly string[];
}

/** Outcomes that changed something or failed; a quiet poll (unchanged, held, …) runs nothing. */
const ACTED: ReadonlySet<Outcome> = new Set<Outcome>(['converged', 'rolled-back', 'failed', 'invalid-input']);
/** An environment variable holds one line; a long error is cut here. */
const MAX_ERROR = 2_000;

export function hookShouldRun(outcome: Outcome): boolean {
  return ACTED.has(outcome);
}

/** The command's environment: every variable is set (empty when unknown), so scripts can rely on them. */
export function hookEnv(result: PassResult, status: Status): Record<string, string> {
  const message = result.error?.message ?? status.lastResult?.error?.message ?? '';
  return {
    NIXOS_EC2_AGENT_OUTCOME: result.outcome,
    NIXOS_EC2_AGENT_GENERATION: status.running?.generation !== undefined ? String(status.running.generation) : '',
    NIXOS_EC2_AGENT_STORE_PATH: status.running?.storePath ?? '',
    NIXOS_EC2_AGENT_DESIRED_HASH: result.desiredHash ?? status.desired?.hash ?? '',
    NIXOS_EC2_AGENT_ERROR: oneLine(message),
    NIXOS_EC2_AGENT_INSTANCE_ID: status.instanceId ?? '',
  };
}

export class PostConvergeHook {
  constructor(
    private readonly runner: Runner,
    private readonly options: PostConvergeOptions | null,
    private readonly log: Logger,
    private readonly onRun: (run: HookRun) => void = () => {},
  ) {}

  get enabled(): boolean {
    return this.options !== null;
  }

  /**
   * Runs the command for this pass when it did something; undefined when nothing ran. Never
   * throws: a command that cannot even start is a failed run.
   */
  async run(result: PassResult, status: Status): Promise<HookRun | undefined> {
    const options = this.options;
    if (!options || !hookShouldRun(result.outcome)) return undefined;
    const [command, ...args] = options.argv;
    if (command === undefined) return undefined;
    const env = hookEnv(result, status);
    const log = this.log.child({ event: 'post-converge', outcome: result.outcome, desiredHash: env.NIXOS_EC2_AGENT_DESIRED_HASH });
    log.info({ event: 'post-converge.start', command }, `running the post-convergence command ${command}`);
    let run: HookRun;
    try {
      const r = await this.runner.run({
        command,
        args,
        env,
        timeoutMs: options.timeoutSeconds * 1000,
        onLine: (stream, line) => log.info({ event: 'post-converge.output', stream }, line),
      });
      run = { outcome: r.timedOut ? 'timed-out' : r.code === 0 ? 'ok' : 'failed', exitCode: r.code, durationMs: r.durationMs, tail: r.tail.slice(-20) };
    } catch (err) {
      run = { outcome: 'failed', exitCode: null, durationMs: 0, tail: [String((err as Error).message ?? err)] };
    }
    const fields = { event: 'post-converge.end', result: run.outcome, exitCode: run.exitCode, durationMs: run.durationMs };
    if (run.outcome === 'ok') log.info(fields, 'post-convergence command succeeded');
    else log.warn({ ...fields, tail: run.tail }, run.outcome === 'timed-out' ? `post-convergence command timed out after ${options.timeoutSeconds} s (process group killed)` : `post-convergence command exited with ${run.exitCode}`);
    this.onRun(run);
    return run;
  }
}

function oneLine(text: string): string {
  const flat = text.replace(/\s*[\r\n]+\s*/g, ' ').replace(/\0/g, '').trim();
  return flat.length > MAX_ERROR ? `${flat.slice(0, MAX_ERROR - 1)}…` : flat;
}
