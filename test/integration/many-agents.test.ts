// Many agents in one process: fifty real daemons (the event loop, the reconciler, the real IMDS,
// SSM and Auto Scaling clients, the reporters) share one SSM and one Auto Scaling emulator, each
// with its own instance (its own IMDS, as on EC2), root and clock. Each converges to its own
// parameter; all stop on their signal and leave no handle behind. Nothing of the process is
// shared between them: no signal handler, no environment, no global timer.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import { startDaemon, type Daemon } from '../../agent/loop.js';
import { realClock, type RunRequest, type RunResult, type Runner } from '../../agent/ports.js';
import { createNotify } from '../../agent/report/notify.js';
import { Watchdog } from '../../agent/report/watchdog.js';
import { ProcessRunner } from '../../agent/runner.js';
import type { Status } from '../../agent/status.js';
import { AutoScalingEmulator } from '../../sandbox/emulators/autoscaling.js';
import { defaultInstance, ImdsEmulator } from '../../sandbox/emulators/imds.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { main as standin } from '../../sandbox/standin/cli.js';
import { bootMachine, installStandins, type StandinPaths } from '../../sandbox/standin/install.js';

const AGENTS = 50;
const REGION = 'us-east-1';
const ACCOUNT = '123456789012';
const CREDENTIALS = { accessKeyId: 'AKIDMANYAGENTS', secretAccessKey: 'many-agents-secret' };

/** At most `limit` at once: fifty agents' child processes together would swamp a small machine. */
class Gate {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  constructor(private readonly limit: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((resolve) => this.queue.push(resolve));
    this.running++;
    try {
      return await fn();
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }
}

const PROCESSES = new Gate(4);

/**
 * Runs the stand-in tools in this process; what needs a process of its own (nix-instantiate, the
 * build, which leaves its `result` link in its working directory) runs as one, a few at a time.
 */
class InProcessStandins implements Runner {
  private readonly processes = new ProcessRunner(process.env);
  constructor(
    private readonly root: string,
    private readonly tools: StandinPaths,
  ) {}

  async run(request: RunRequest): Promise<RunResult> {
    const argv = this.argv(request);
    if (!argv) return PROCESSES.run(() => this.processes.run(request));
    const lines: string[] = [];
    const io = { out: (l: string) => lines.push(l), err: (l: string) => lines.push(l) };
    const started = Date.now();
    const code = await standin(['--root', this.root, ...argv], io);
    for (const l of lines) request.onLine?.('stdout', l);
    return { code, signal: null, timedOut: false, aborted: false, stdout: lines.join('\n'), stderr: '', tail: lines.slice(-40), durationMs: Date.now() - started };
  }

  private argv(request: RunRequest): string[] | undefined {
    const { command, args } = request;
    if (command.endsWith('/bin/switch-to-configuration')) return ['switch-to-configuration', '--system', path.dirname(path.dirname(command)), ...args];
    // `nixos-rebuild build` leaves its `result` link in its working directory: a process of its own.
    if (command === this.tools.nixosRebuild && args[0] === 'build') return undefined;
    if (command === this.tools.nixosRebuild) return ['nixos-rebuild', ...args];
    if (command === this.tools.nixEnv) return ['nix-env', ...args];
    if (command === this.tools.nixChannel) return ['nix-channel', ...args];
    if (command === this.tools.systemctl) return ['systemctl', ...args];
    return undefined;
  }
}

interface Member {
  readonly id: string;
  readonly root: string;
  readonly imds: ImdsEmulator;
  daemon?: Daemon;
  converged: Promise<Status>;
}

function instanceId(i: number): string {
  return `i-${(0x0a000000 + i).toString(16).padStart(17, '0')}`;
}

describe(`${AGENTS} agents in one process`, { timeout: 600_000 }, () => {
  let dir: string;
  let ssm: SsmEmulator;
  let autoscaling: AutoScalingEmulator;
  const members: Member[] = [];
  let before_: Map<string, number>;

  before(async () => {
    before_ = resources();
    dir = await mkdtemp(path.join(tmpdir(), 'nea-many-'));
    ssm = await SsmEmulator.start({ region: REGION, accountId: ACCOUNT, throughput: null });
    autoscaling = await AutoScalingEmulator.start({ region: REGION, accountId: ACCOUNT });
    ssm.load([{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }]);
    for (let i = 0; i < AGENTS; i++) {
      const id = instanceId(i);
      ssm.load([{ Name: `/nixos/instance/${id}/options/networking.hostName`, Value: JSON.stringify(`host-${i}`), Type: 'String' }]);
      const imds = await ImdsEmulator.start({ instance: defaultInstance({ instanceId: id, region: REGION, accountId: ACCOUNT }) });
      members.push({ id, root: path.join(dir, id, 'root'), imds, converged: Promise.resolve(undefined as unknown as Status) });
    }
  });

  after(async () => {
    // A failed assertion must not leave daemons running.
    for (const m of members) m.daemon?.signal('SIGTERM');
    await Promise.all(members.map((m) => m.daemon?.done));
    await Promise.all(members.map((m) => m.imds.close()));
    await ssm?.close();
    await autoscaling?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('each converges to its own desired state, and all stop with nothing left running', async () => {
    await Promise.all(
      members.map(async (m) => {
        const tools = await installStandins({ binDir: path.join(dir, m.id, 'bin'), root: m.root });
        await bootMachine(m.root);
        const config = parseConfig({
          root: m.root,
          logLevel: 'error',
          rebuild: { nixosRebuild: tools.nixosRebuild, nixEnv: tools.nixEnv, nixChannel: tools.nixChannel, validate: 'if-available', buildTimeoutSeconds: 120, activateTimeoutSeconds: 120 },
          health: { systemctl: tools.systemctl, graceSeconds: 1, intervalSeconds: 0.25 },
          imds: { retries: 3, timeoutMs: 5_000 },
          ssm: { pollIntervalSeconds: 3600, maxAttempts: 3 },
          http: { listen: null },
          controlSocket: '/run/ctl.sock',
          lifecycle: { enabled: false },
        });
        const clock = realClock();
        const env = {
          AWS_EC2_METADATA_SERVICE_ENDPOINT: m.imds.url,
          AWS_ENDPOINT_URL_SSM: ssm.url,
          AWS_ENDPOINT_URL_AUTO_SCALING: autoscaling.url,
          AWS_REGION: REGION,
        };
        const notify = createNotify(env);
        let done!: (s: Status) => void;
        m.converged = new Promise((resolve) => (done = resolve));
        m.daemon = await startDaemon(config, {
          log: silentLogger(),
          clock,
          env,
          notify,
          watchdog: new Watchdog(notify, env, clock),
          edges: { runner: new InProcessStandins(m.root, tools), credentials: async () => async () => CREDENTIALS },
          onStatus: (s) => {
            if (s.firstConvergenceDone) done(s);
          },
        });
      }),
    );
    const statuses = await Promise.all(members.map((m) => m.converged));
    for (const [i, s] of statuses.entries()) {
      assert.equal(s.condition, 'converged', `${members[i]!.id}: ${s.message}`);
      assert.equal(s.instanceId, members[i]!.id);
    }
    // Each rendered its own instance's parameter, under its own root.
    for (const [i, m] of members.entries()) {
      const configuration = await readFile(path.join(m.root, 'etc/nixos/configuration.nix'), 'utf8');
      const options = /^\s*(\/\S+\/ec2-agent\/[0-9a-f]+\/options\.nix)/m.exec(configuration)?.[1];
      assert.ok(options?.startsWith(path.join(m.root, 'etc/nixos/')), `${m.id}: configuration.nix imports no options.nix of its own root`);
      const text = await readFile(options ?? '', 'utf8');
      assert.match(text, new RegExp(`"host-${i}"`), m.id);
      assert.doesNotMatch(text, new RegExp(`"host-(?!${i}")`), m.id);
    }
    for (const m of members) m.daemon!.signal('SIGTERM');
    const codes = await Promise.all(members.map((m) => m.daemon!.done));
    assert.deepEqual(codes, members.map(() => 0));
  });

  it('leaves no handle behind once the emulators are closed', async () => {
    await Promise.all(members.map((m) => m.imds.close()));
    await ssm.close();
    await autoscaling.close();
    // Sockets closed by the peer are let go on the next turns of the event loop.
    for (let i = 0; i < 20 && leaked(resources(), before_).length > 0; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual(leaked(resources(), before_), [], `active resources now: ${JSON.stringify(Object.fromEntries(resources()))}, before: ${JSON.stringify(Object.fromEntries(before_))}`);
  });
});

function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

/** Kinds of resource there are more of now than before (a request in flight then may be gone now). */
function leaked(now: Map<string, number>, then: Map<string, number>): string[] {
  return [...now].filter(([kind, n]) => n > (then.get(kind) ?? 0)).map(([kind, n]) => `${kind}: ${n}`);
}
