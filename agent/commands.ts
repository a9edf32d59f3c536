// The one-shot commands: each builds what it needs from the Config, does one thing, prints for a
// person (or JSON with --json), and returns its exit code. Each is the composition root of its own
// run: the process's environment and real time are read here and handed down.
import { createAgent, createLifecycleReporter } from './agent.js';
import { listGenerations } from './apply/generations.js';
import { controlSocketPath, type Config } from './config.js';
import { shortHash } from './desired/desired.js';
import { isAlive, RootFs } from './fs.js';
import { createLogger, type Logger } from './log.js';
import { realClock, type Clock, type Runner } from './ports.js';
import { OutDir } from './render/out.js';
import { renderPlan } from './render/render.js';
import { NixParser, refusedByParser, type RefusedFile } from './render/validate.js';
import { TransientError } from './errors.js';
import { LOCK_FILE, lockHolder, lockRoot, RootBusyError, type LockHolder, type RootLock } from './lock.js';
import { PostConvergeHook } from './report/hook.js';
import { describeLaunch, type LifecycleReporter } from './report/lifecycle.js';
import { parseStatus, readStatusFile, StatusFile } from './report/status-file.js';
import { ControlClient, NoAnswerError, STATUS_ANSWER_MS, type ControlOp } from './report/control.js';
import { StateStore } from './state.js';
import { describeRollout } from './rollout/plan.js';
import { selectDesired, whoOf } from './rollout/select.js';
import { rollbackAnswer } from './reconcile.js';
import { isOutcome, passExitCode, statusExitCode, type Status } from './status.js';
import path from 'node:path';


function processEdges() {
  return { clock: realClock(), env: process.env };
}

function stderrLogger(config: Config): Logger {
  // One-shot commands keep stdout for their result; the structured log goes to stderr.
  return createLogger({ level: config.logLevel, destination: process.stderr });
}

export async function convergeOnce(config: Config, json: boolean, client: Pick<ControlClient, 'request'> = new ControlClient(controlSocketPath(config), STATUS_ANSWER_MS)): Promise<number> {
  // A pass of its own beside the daemon's would take the daemon's journal entry for a killed
  // agent's: it would put configuration.nix back and stop the daemon's build under it, and each
  // would write state.json over the other's. The root's lock keeps off the daemon (which holds it
  // while it runs), another converge --once and a rollback acting with no daemon.
  const log = stderrLogger(config);
  const lock = await holdRoot(config, 'converge --once', log);
  if (typeof lock === 'string') {
    // Held by the daemon when it answers on its socket: then the way is converge --now.
    const daemon = await client.request('status').then(() => true, () => false);
    process.stderr.write(`${daemon ? DAEMON_RUNNING : lock}\n`);
    return 2;
  }
  try {
    // Where no lock can be taken at all (an install without the addon), the socket is all there is.
    const busy = lock.unheld ? await daemonAnswering(client) : undefined;
    if (busy !== undefined) {
      process.stderr.write(`${busy}\n`);
      return 2;
    }
    return await passOnce(config, json, log);
  } finally {
    await lock.release();
  }
}

const DAEMON_RUNNING = 'the daemon is running on this root; use converge --now';

/** Why converge --once must not run, as the control socket tells: a daemon answers, or it cannot be asked. */
async function daemonAnswering(client: Pick<ControlClient, 'request'>): Promise<string | undefined> {
  return client.request('status').then(
    () => DAEMON_RUNNING,
    (err: unknown) => {
      const why = unreachable(err);
      if (why === 'needs-root') return `converge --once needs root: ${(err as Error).message}`;
      if (why === 'unreachable') return `cannot tell whether the daemon is running (${(err as Error).message}); nothing was changed`;
      return undefined;
    },
  );
}

async function passOnce(config: Config, json: boolean, log: Logger): Promise<number> {
  const statusFile = new StatusFile(new RootFs(config.root), (err) => log.warn({ event: 'status.write-failed', err: err.message }, 'cannot write status.json'));
  let lifecycle: LifecycleReporter | undefined;
  const agent = await createAgent(config, log, {
    ...processEdges(),
    onStatus: (s) => {
      statusFile.update(s);
      lifecycle?.update(s);
    },
  });
  const reconciler = agent.reconciler;
  // IMDS (and SSM) answer while the start writes and fsyncs its local files.
  agent.sources.prefetch();
  await reconciler.start();
  // Heartbeats and the launch budget run during the pass, as under the daemon; the reporter's first
  // look waits for the rebuild. Its waits must not hold the command open once the pass is done.
  // No other pass follows this one: a launch it leaves unconverged is decided at its end.
  lifecycle = createLifecycleReporter(agent, log, { clock: realClock({ unref: true }), oneShot: true });
  lifecycle?.update(reconciler.status);
  lifecycle?.start();
  const result = await reconciler.converge('converge --once');
  // The command's result is reported, never changes the exit code.
  await new PostConvergeHook(agent.runner, config.postConvergeCommand, log).run(result, reconciler.status);
  if (lifecycle) {
    // The launch hook is completed before the command exits, so its caller sees the result.
    await lifecycle.stop();
    lifecycle.update(reconciler.status);
    await lifecycle.flush();
  }
  statusFile.update(reconciler.status);
  await statusFile.flush();
  const status = reconciler.status;
  if (json) process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  else process.stdout.write(`${describeStatus(status, config)}\n`);
  return passExitCode(result.outcome);
}

/**
 * The root's lock for a one-shot command, or the line that refuses it: another process holds the
 * root, or this user may not take it.
 */
async function holdRoot(config: Config, command: string, log: Logger): Promise<RootLock | string> {
  try {
    const lock = await lockRoot(config.root, process.pid);
    if (lock.unheld) log.warn({ event: 'lock.unheld', reason: lock.unheld }, `no lock on the root: ${lock.unheld}`);
    return lock;
  } catch (err) {
    if (err instanceof RootBusyError) return `${err.message}; nothing was changed`;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') return `${command} needs root: ${(err as Error).message}`;
    throw err;
  }
}

export async function render(config: Config, out: string | undefined, json: boolean): Promise<number> {
  const target = out !== undefined ? await OutDir.open(out) : undefined;
  try {
    const log = stderrLogger(config);
    const agent = await createAgent(config, log, processEdges());
    const snapshots = await agent.sources.read();
    const { desired } = selectDesired({ userData: snapshots.userData, ssm: snapshots.ssm, local: snapshots.local }, whoOf(snapshots), agent.clock.now());
    // Written to DIR, the files import each other there: a tree that can be built as it lies.
    const plan = renderPlan(desired, target?.dir ?? path.resolve(config.root));
    const files = [...plan.parts, plan.configuration];
    // The local files the render imports (the image's base configuration, local.d), as they are.
    const imported = await Promise.all(plan.imported.map(async (f) => ({ path: f.path, source: f.source, text: (await agent.fs.readText(f.path)) ?? '' })));
    // The parser gate a converge runs, on the same texts: what a pass would refuse, render refuses,
    // and writes none of.
    const { errors, skipped } = await parseRendered(config, agent.runner, [...files, ...imported]);
    if (target && errors.length === 0) await target.write([...files, ...imported]);
    const notes = skipped ? [...desired.notes, skipped] : desired.notes;
    if (json) {
      process.stdout.write(
        `${JSON.stringify({ desiredHash: desired.hash, notes, files: files.map((f) => ({ path: f.path, source: f.source, text: f.text })), secrets: desired.secrets.map((s) => ({ name: s.name, path: `/run/nixos-ec2-agent/secrets/${s.name}`, from: s.from })), parseErrors: errors }, null, 2)}\n`,
      );
    } else {
      process.stdout.write(`# desired state ${desired.hash}\n`);
      for (const note of notes) process.stdout.write(`# note: ${note}\n`);
      for (const f of files) process.stdout.write(`\n### ${f.path}  (${f.source})\n${f.text}`);
      for (const s of desired.secrets) process.stdout.write(`\n### /run/nixos-ec2-agent/secrets/${s.name}  (SecureString ${s.from.name}, value not shown)\n`);
      if (target && errors.length === 0) process.stdout.write(`\nwritten under ${out}\n`);
    }
    const [first, ...more] = errors;
    if (first) throw refusedByParser([first, ...more]);
    return 0;
  } finally {
    await target?.discard();
  }
}

/**
 * Each text through the Nix parser, as the pass's gate (render/write.ts) checks the files it wrote;
 * given on stdin, so nothing is written. Skipped, and said so, where a pass would skip it.
 */
async function parseRendered(config: Config, runner: Runner, texts: readonly { source: string; text: string }[]): Promise<{ errors: RefusedFile[]; skipped?: string }> {
  const parser = new NixParser(runner, { command: config.rebuild.nixInstantiate });
  if (config.rebuild.validate === 'if-available' && !(await parser.available())) return { errors: [], skipped: `${config.rebuild.nixInstantiate} is not available: nothing was parsed` };
  const verdicts = await Promise.all(texts.map((t) => parser.checkText(t.text, t.source)));
  return { errors: verdicts.filter((v) => v !== undefined).map((v) => ({ source: v.file, line: v.line, column: v.column, message: v.message })) };
}

/**
 * How long `status --wait` goes on with no agent holding the root before it says none runs. At
 * boot the waiter (cloud-init, a unit ordered after the network) may start before the daemon, and
 * the daemon's start (Node and the agent's modules, read from a store on an EBS volume that is
 * still being filled from its snapshot) can take tens of seconds before it takes the lock: a minute
 * covers that with room, and still tells a script waiting on an instance with no agent at all.
 */
export const NO_AGENT_GRACE_MS = 60_000;
/** How often `status --wait` looks again: the daemon answers from memory, status.json is small. */
const WAIT_POLL_MS = 250;

/** What `status --wait` waits with; tests give a clock of their own. */
export interface StatusWait {
  readonly clock: Clock;
  readonly graceMs: number;
  readonly holder: (root: string) => Promise<LockHolder>;
}

export async function status(config: Config, json: boolean, wait: boolean, waitWith: Partial<StatusWait> = {}): Promise<number> {
  const { clock, graceMs, holder } = { clock: realClock(), graceMs: NO_AGENT_GRACE_MS, holder: lockHolder, ...waitWith };
  const fs = new RootFs(config.root);
  let { status: current, live } = await fetchStatus(config, fs);
  // As cloud-init's `status --wait`: poll until the first convergence has ended, for as long as an
  // agent works on the root or one may still be starting.
  let agentSeenAt = clock.now();
  while (wait && !current?.firstConvergenceDone) {
    if (live || (await agentRunning(config.root, current, holder))) agentSeenAt = clock.now();
    else if (clock.now() - agentSeenAt >= graceMs) {
      throw new TransientError(
        `no nixos-ec2-agent is running on ${config.root} (none has held ${path.join(path.resolve(config.root), LOCK_FILE)} for ${Math.round(graceMs / 1000)} s) and the first convergence has not ended`,
        'status',
        { where: config.root, graceMs },
      );
    }
    await clock.sleep(WAIT_POLL_MS);
    ({ status: current, live } = await fetchStatus(config, fs));
  }
  if (!current) {
    if (json) process.stdout.write(`${JSON.stringify({ condition: 'unknown', message: 'the agent has not run yet' })}\n`);
    else process.stdout.write('the agent has not run yet (no status.json)\n');
    return 1;
  }
  if (json) process.stdout.write(`${JSON.stringify(current, null, 2)}\n`);
  else {
    const launch = config.lifecycle.enabled ? await describeLaunch(new StateStore(fs, () => clock.now()), current.instanceId, config.lifecycle.budgetSeconds) : undefined;
    process.stdout.write(`${describeStatus(current, config, launch)}\n`);
  }
  return statusExitCode(current);
}

/**
 * The daemon's status, else status.json's. One that cannot be read as this agent's (another
 * version's, or damaged) throws InvalidInputError, exit 2: status's own exit codes are an API
 * scripts act on (cloud-init's lesson), and 1 says the instance has no good generation, on which
 * automation may replace it. A status that cannot be read says nothing of the kind; 2 is both
 * "not known to be converged" there and the contract's "invalid input" for any command.
 */
async function fetchStatus(config: Config, fs: RootFs): Promise<{ status: Status | undefined; live: boolean }> {
  const socket = controlSocketPath(config);
  const live = await new ControlClient(socket, STATUS_ANSWER_MS).request('status').catch(() => undefined);
  if (live && typeof live === 'object' && 'status' in live) return { status: parseStatus(live.status, `the daemon's status on ${socket}`), live: true };
  return { status: await readStatusFile(fs), live: false };
}

/**
 * Whether an agent works on the root, the control socket aside: one holds its lock. Where the lock
 * cannot be looked at (a user other than root, who may not enter the state directory), the process
 * that wrote status.json is taken for the agent while it is alive.
 */
async function agentRunning(root: string, current: Status | undefined, holder: StatusWait['holder']): Promise<boolean> {
  const probe = await holder(root);
  if (probe.held !== undefined) return probe.held;
  return current !== undefined && isAlive(current.pid);
}

export async function generations(config: Config, json: boolean): Promise<number> {
  const fs = new RootFs(config.root);
  // Only read: the daemon beside this command owns the file, and may be another version of the agent.
  const { state, problem } = await new StateStore(fs, Date.now).peek();
  if (problem) process.stderr.write(`nixos-ec2-agent generations: ${problem}; listed without what it records\n`);
  const list = (await listGenerations(fs)).map((g) => {
    const built = state.builds[g.storePath];
    return {
      ...g,
      lastGood: state.lastGood?.storePath === g.storePath,
      ...(built ? { desiredHash: built.desiredHash, sources: built.sources, builtAt: new Date(built.at).toISOString() } : {}),
    };
  });
  if (json) {
    process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
    return 0;
  }
  if (list.length === 0) process.stdout.write('no generations under nix/var/nix/profiles\n');
  for (const g of list) {
    const flags = [g.current && 'current', g.booted && 'booted', g.running && 'running', g.lastGood && 'last good'].filter(Boolean).join(', ');
    const what = 'desiredHash' in g && g.desiredHash ? `desired ${shortHash(g.desiredHash)} (${g.sources?.parameters.map((p) => `${p.name}@${p.version}`).join(', ') || 'user data only'})` : 'not built by the agent';
    process.stdout.write(`${String(g.number).padStart(4)}  ${g.date}  ${g.storePath}${flags ? `  [${flags}]` : ''}\n      ${what}\n`);
  }
  return 0;
}

/**
 * Why the control socket did not answer: nothing listens (no daemon runs), the caller may not use
 * it, or a daemon is there but could not be reached (busy, wedged, timed out).
 */
export function unreachable(err: unknown): 'no-daemon' | 'needs-root' | 'unreachable' {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') return 'no-daemon';
  if (code === 'EACCES' || code === 'EPERM') return 'needs-root';
  return 'unreachable';
}

/**
 * rollback, suspend, resume, converge --now: through the running daemon. Only when no daemon runs
 * at all do rollback, suspend and resume act on the durable state here: a daemon that is there
 * but cannot be reached would overwrite whatever this wrote.
 */
export async function control(config: Config, op: Exclude<ControlOp, 'status'>, json: boolean, client: Pick<ControlClient, 'request'> = new ControlClient(controlSocketPath(config))): Promise<number> {
  let answer: unknown;
  try {
    answer = await client.request(op);
  } catch (err) {
    const why = unreachable(err);
    if (why === 'needs-root') {
      process.stderr.write(`${op} needs root: ${(err as Error).message}\n`);
      return 2;
    }
    if (err instanceof NoAnswerError) {
      // The daemon has the request queued behind the pass under way and carries it out when that
      // ends, this command gone or not: "nothing was changed" would be untrue, and exit 2 says so.
      process.stderr.write(`${op}: the daemon took the request but gave ${err.message}: it waits for the pass under way to end and may still carry it out then (see \`status\`)\n`);
      return 1;
    }
    if (why === 'unreachable') {
      process.stderr.write(`${op}: cannot reach the daemon (${(err as Error).message}); nothing was changed\n`);
      return 2;
    }
    if (op === 'converge') {
      process.stderr.write(`the daemon is not running (${(err as Error).message}); use converge --once\n`);
      return 1;
    }
    // No daemon runs: act on the durable state directly, holding the root as a daemon would.
    const log = stderrLogger(config);
    const lock = await holdRoot(config, op, log);
    if (typeof lock === 'string') {
      process.stderr.write(`${lock}\n`);
      return 2;
    }
    try {
      const acted = await actOnState(config, op, log);
      if (typeof acted === 'number') return acted;
      answer = acted;
    } finally {
      await lock.release();
    }
  }
  const a = answer as { ok?: boolean; status?: Status; outcome?: string; error?: string };
  if (json) process.stdout.write(`${JSON.stringify(a, null, 2)}\n`);
  else process.stdout.write(`${a.error ?? (a.status ? describeStatus(a.status, config) : a.outcome ?? 'ok')}\n`);
  // The pass's outcome decides, as for converge --once, whatever `ok` a daemon of another version
  // says (one before this mapping called a held or suspended pass ok).
  if (op === 'converge' && isOutcome(a.outcome)) return passExitCode(a.outcome);
  return a.ok === false ? 1 : 0;
}

/** `rollback`, `suspend` or `resume` with no daemon: the answer a daemon would give, or an exit code. */
async function actOnState(config: Config, op: Exclude<ControlOp, 'converge' | 'status'>, log: Logger): Promise<unknown> {
  const agent = await createAgent(config, log, processEdges());
  try {
    await agent.reconciler.start();
  } catch (caught) {
    if ((caught as { context?: { errno?: string } }).context?.errno === 'EACCES') {
      process.stderr.write(`${op} needs root: ${(caught as Error).message}\n`);
      return 2;
    }
    throw caught;
  }
  let answer: unknown;
  if (op === 'rollback') {
    const result = await agent.reconciler.rollback();
    answer = rollbackAnswer(result, agent.reconciler.status);
  } else if (op === 'suspend') {
    await agent.reconciler.suspend('cli');
    answer = { ok: true, status: agent.reconciler.status };
  } else {
    await agent.reconciler.resume();
    answer = { ok: true, status: agent.reconciler.status };
  }
  const file = new StatusFile(new RootFs(config.root));
  file.update(agent.reconciler.status);
  await file.flush();
  return answer;
}

/** `launch`: where the launch hook stands (describeLaunch), when there is something to say. */
export function describeStatus(s: Status, config: Config, launch?: string): string {
  const lines = [
    `${s.condition}: ${s.message}`,
    `  phase:      ${s.phase}${s.suspended ? ` (suspended since ${s.suspended.since})` : ''}${s.held ? ` (held since ${s.held.since})` : ''}`,
  ];
  if (s.desired) lines.push(`  desired:    ${s.desired.hash}`);
  if (s.desired?.runs) lines.push(`  runs:       ${s.desired.closure ? `prebuilt closure ${s.desired.closure.storePath} from ${s.desired.closure.substituter}` : 'the configuration, built here'}`);
  if (s.running) lines.push(`  running:    ${s.running.storePath}${s.running.generation !== undefined ? ` (generation ${s.running.generation})` : ''}`);
  if (s.lastGood) lines.push(`  last good:  ${s.lastGood.storePath}`);
  if (s.lastResult) lines.push(`  last pass:  ${s.lastResult.outcome} at ${s.lastResult.at} in ${s.lastResult.durationMs} ms`);
  for (const r of s.reasons) lines.push(`  reason:     ${r}`);
  for (const r of s.rollout ?? []) lines.push(`  rollout:    ${describeRollout(r)}`);
  if (s.rebootRequired) lines.push('  reboot required: the running generation changed the kernel, initrd or modules');
  if (launch !== undefined) lines.push(`  launch hook: ${launch}`);
  lines.push(`  root:       ${config.root}`);
  return lines.join('\n');
}
