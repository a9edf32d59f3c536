// The crash campaign: a live daemon on a sandboxed instance is SIGKILLed (with everything it
// started, as systemd ends a crashed unit's control group) at random points of converges whose
// inputs keep changing (good and bad options, modules, secrets, local files, user data), then
// restarted; after every kill, and again after every restart, what must hold is checked.
// Randomness comes from a seeded PRNG and the seed is printed, so a failure can be replayed.
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { temporaryWriter } from '../../agent/fs.js';
import { hasNix, Instance, isAlive, killTree, LiveLog, markerModule, NIX_INSTANTIATE, waitFor, type DurableStateJson, type Running } from './e2e.js';

import { prng } from './prng.js';

export interface CampaignResult {
  readonly kills: number;
  /** Kills that landed while the journal was open (a pass was in hand). */
  readonly midPass: number;
  /** Journal phases the kills landed in, with counts. */
  readonly phases: Record<string, number>;
  readonly temporariesAtKill: number;
  /** Temporary files of the nixos-rebuild stand-in seen after restarts (not the agent's). */
  readonly standinTemporaries: number;
  /** The outcome of each restarted daemon's first pass, with counts. */
  readonly restarts: Record<string, number>;
}

const SECRET = '/nixos/fleet/secrets/db-password';
const LOCAL = 'etc/nixos-ec2-agent/local.d/extra.nix';

/** The inputs of one step, chosen at random. */
type Change = (i: Instance, n: number, secrets: Map<string, string>) => Promise<string>;

const CHANGES: readonly Change[] = [
  async (i, n) => (i.put('/nixos/fleet/options/time.timeZone', JSON.stringify(`Etc/GMT+${n % 12}`)), 'good option'),
  async (i, n) => (i.put('/nixos/fleet/options/services.app.port', String(8000 + (n % 1000))), 'good option'),
  async (i, n) => (i.put('/nixos/fleet/modules/app', `{ ... }:\n{\n  users.motd = "motd ${n}";\n}\n`), 'good module'),
  async (i, n, s) => {
    const value = `s3cret-value-${n}`;
    s.set('db-password', value);
    i.put(SECRET, value, 'SecureString');
    return 'secret';
  },
  async (i, n) => {
    await mkdir(path.dirname(i.file(LOCAL)), { recursive: true });
    await writeFile(i.file(LOCAL), `{ ... }:\n{\n  environment.etc."local-${n % 3}".text = "${n}";\n}\n`);
    return 'local file';
  },
  async (i, n) => (i.world.imds.setUserData(`{ ... }:\n{\n  networking.hostName = "host-${n}";\n}\n`), 'user data'),
  async (i) => (i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-build')), 'bad: build fails'),
  async (i) => (i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-switch')), 'bad: activation fails'),
  async (i) => (i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-unit')), 'bad: a unit fails'),
  async (i) => (i.put('/nixos/fleet/options/bad.json', '{ not json'), 'bad: invalid JSON'),
  async (i) => (i.put('/nixos/fleet/modules/bad', '{ ... }: { users.motd = ; }\n'), 'bad: module does not parse'),
];

const BAD = ['/nixos/fleet/modules/bad', '/nixos/fleet/options/bad.json'];

/** Back to good: the bad parameters go away. Whether there were any. */
function fix(i: Instance): boolean {
  const present = BAD.filter((name) => i.world.ssm.get(name) !== undefined);
  for (const name of present) i.world.ssm.delete(name);
  return present.length > 0;
}

/** Every regular file and symlink under `dir`, relative path → content (a link: `-> target`). */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isSymbolicLink()) out.set(path.relative(dir, full), `-> ${await readlink(full)}`);
      else if (e.isFile()) out.set(path.relative(dir, full), await readFile(full, 'utf8'));
    }
  };
  await walk(dir);
  return out;
}

/** Files under root of the agent's temp naming whose writer is gone, and of any `*.tmp*` naming (the stand-in's). */
async function temporaries(root: string): Promise<{ agent: string[]; other: string[] }> {
  const agent: string[] = [];
  const other: string[] = [];
  for (const name of (await readdir(root, { recursive: true })).map(String)) {
    const base = path.basename(name);
    const writer = temporaryWriter(base);
    // A live writer's file is a write in flight (the running daemon rewrites status.json often).
    if (writer !== undefined) {
      if (!isAlive(writer)) agent.push(name);
    }
    else if (/\.tmp(-|$)/.test(base)) other.push(name);
  }
  return { agent, other };
}

/**
 * The real parser over every `*.nix` under `dir` (etc/nixos) that a configuration can import:
 * configuration.nix, the previous one, and the render directories they name (a desired state
 * rejected at the parser gate leaves its own directory behind, imported by nothing). One process
 * for the batch; failures listed.
 */
export async function unparsable(dir: string): Promise<string[]> {
  if (!hasNix) return [];
  const all = await snapshot(dir);
  const tops = ['configuration.nix', 'ec2-agent/previous-configuration.nix'];
  const used = new Set<string>();
  for (const top of tops) for (const m of (all.get(top) ?? '').matchAll(/ec2-agent\/([0-9a-f]+)\//g)) used.add(m[1]!);
  const files = [...all.keys()]
    .filter((f) => f.endsWith('.nix') && (tops.includes(f) || used.has(f.split('/')[1] ?? '') || !f.startsWith('ec2-agent/')))
    .map((f) => path.join(dir, f));
  const bad: string[] = [];
  let pending = files;
  // One call for all; on a failure the file it names is set aside and the rest parsed again.
  while (pending.length > 0) {
    const r = spawnSync(NIX_INSTANTIATE, ['--store', 'dummy://', '--parse', ...pending], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (r.status === 0) break;
    const named = /at (.+?):\d+:\d+:/.exec(r.stderr)?.[1];
    const at = named ? pending.indexOf(named) : -1;
    if (at < 0) return [...bad, `${pending.join(' ')}: ${r.stderr.trim()}`];
    bad.push(`${pending[at]}: ${r.stderr.trim()}`);
    pending = pending.slice(at + 1);
  }
  return bad;
}

export class CrashCampaign {
  private daemon: { run: Running; log: LiveLog } | undefined;
  private readonly verified = new Set<string>();
  private readonly secrets = new Map<string, string>();
  private passMs: number[] = [];
  private readonly standinTemporaries = new Set<string>();
  /** From SIGHUP to the start of the pass it triggers (the reload), measured once. */
  private overheadMs = 100;
  readonly result = { kills: 0, midPass: 0, phases: {} as Record<string, number>, temporariesAtKill: 0, restarts: {} as Record<string, number> };

  constructor(
    private readonly i: Instance,
    private readonly random: () => number,
    private readonly note: (line: string) => void = () => {},
  ) {}

  private fail(what: string, detail = ''): never {
    throw new Error(`${what}${detail ? `\n${detail}` : ''}\n(instance ${this.i.dir}, after ${this.result.kills} kills)`);
  }

  private async state(): Promise<DurableStateJson> {
    const text = await readFile(this.i.file('var/lib/nixos-ec2-agent/state.json'), 'utf8');
    try {
      return JSON.parse(text) as DurableStateJson;
    } catch {
      this.fail('state.json does not parse', text.slice(0, 500));
    }
  }

  /** Measures how long a SIGHUP takes to start a pass, on a pass with nothing to do. */
  async calibrate(): Promise<void> {
    const d = this.daemon!;
    const before = d.log.of('pass.end').length;
    const sent = Date.now();
    d.run.child.kill('SIGHUP');
    await this.passEnded(before);
    const ms = Number(d.log.of('pass.end').at(-1)?.durationMs);
    this.overheadMs = Math.max(50, Date.now() - sent - (Number.isFinite(ms) ? ms : 0));
  }

  /** Starts the daemon and waits for its first pass to end. */
  async start(): Promise<void> {
    const run = this.i.start(['run']);
    const log = new LiveLog(run);
    this.daemon = { run, log };
    await this.passEnded(0);
    const ms = Number(log.of('pass.end').at(-1)?.durationMs);
    if (Number.isFinite(ms)) this.passMs.push(ms);
  }

  private async passEnded(before: number): Promise<void> {
    const d = this.daemon!;
    let exited = false;
    void d.run.done.then(() => (exited = true));
    await waitFor('the end of a pass', async () => {
      if (exited) this.fail('the daemon ended', (await d.run.done).stderr.slice(-3000));
      return d.log.of('pass.end').length > before ? true : undefined;
    }, 120_000, 10);
  }

  /** What holds whenever the daemon is between passes. */
  private async checkQuiet(): Promise<void> {
    const state = await this.state();
    if (state.journal.phase !== 'idle') this.fail(`journal left in ${state.journal.phase}`);
    if (!state.lastGood) this.fail('no last good generation');
    this.verified.add(state.lastGood.storePath);
    if ((await this.i.running()) !== state.lastGood.storePath) this.fail('the running system is not the last good one');
    if ((await this.i.profileSystem()) !== state.lastGood.storePath) this.fail('the boot default is not the last good system');
    const temps = await temporaries(this.i.root);
    if (temps.agent.length > 0) this.fail('the agent left temporary files', temps.agent.join('\n'));
    // The stand-in's are reported, not asserted: the real nixos-rebuild's are Nix's to collect.
    for (const t of temps.other) this.standinTemporaries.add(t);
    const bad = await unparsable(this.i.file('etc/nixos'));
    if (bad.length > 0) this.fail('a rendered file does not parse', bad.join('\n'));
  }

  /** One step: change the inputs, trigger a pass, kill at a random point, check, restart, check. */
  async step(n: number): Promise<void> {
    if (!this.daemon) await this.start();
    const before = await snapshot(this.i.file('etc/nixos'));
    // The old value is what the disk held (a rejected pass may not have written the last one set).
    const secretsBefore = new Map<string, string | undefined>();
    for (const name of this.secrets.keys()) secretsBefore.set(name, await readFile(this.i.file(`run/nixos-ec2-agent/secrets/${name}`), 'utf8').catch(() => undefined));
    // A bad input stays for a step or two, as an operator's mistake would, then is fixed.
    const fixed = this.random() < 0.5 && fix(this.i);
    const what = `${fixed ? 'fix + ' : ''}${await CHANGES[Math.floor(this.random() * CHANGES.length)]!(this.i, n, this.secrets)}`;
    const d = this.daemon!;
    // A pass's own length (from its log), plus a little for the signal to be taken.
    const recent = this.passMs.slice(-20);
    const typical = recent.length > 0 ? recent.reduce((a, b) => a + b, 0) / recent.length : 500;
    const delay = Math.floor(this.random() * (this.overheadMs + typical * 1.2));
    d.run.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, delay));
    await killTree(d.run.child.pid as number);
    await d.run.done;
    this.daemon = undefined;
    this.result.kills += 1;

    // Right after the kill.
    const state = await this.state();
    this.result.phases[state.journal.phase] = (this.result.phases[state.journal.phase] ?? 0) + 1;
    if (state.journal.phase !== 'idle') this.result.midPass += 1;
    if (state.lastGood) this.verified.add(state.lastGood.storePath);
    // Committing: the system passed verification; the boot default may move before lastGood is written.
    if (state.journal.phase === 'committing' && state.journal.storePath) this.verified.add(state.journal.storePath);
    const boot = await this.i.profileSystem();
    if (!this.verified.has(boot)) this.fail(`killed after "${what}" (${delay} ms): the boot default ${boot} was never verified`);
    const atKill = await snapshot(this.i.file('etc/nixos'));
    const bad = await unparsable(this.i.file('etc/nixos'));
    if (bad.length > 0) this.fail(`killed after "${what}" (${delay} ms): a rendered file does not parse`, bad.join('\n'));
    for (const [name, value] of [...this.secrets]) {
      const file = this.i.file(`run/nixos-ec2-agent/secrets/${name}`);
      const text = await readFile(file, 'utf8').catch(() => undefined);
      if (text !== undefined && text !== value && text !== secretsBefore.get(name)) this.fail(`secret ${name} is neither the old nor the new value`);
    }
    const temps = await temporaries(this.i.root);
    this.result.temporariesAtKill += temps.agent.length;

    // Restarted: the daemon recovers and its first pass ends on a good generation.
    await this.start();
    await this.checkQuiet();
    const last = this.daemon!.log.of('pass.end').at(-1);
    const outcome = String(last?.outcome);
    this.result.restarts[outcome] = (this.result.restarts[outcome] ?? 0) + 1;

    // Each file at the kill was the old or the new version: configuration.nix one of the
    // complete texts the agent ever had for it, every other rendered file what a complete render
    // (before, or after recovery) holds at that path.
    const afterRecovery = await snapshot(this.i.file('etc/nixos'));
    const candidates = new Set([...atKill].filter(([f]) => /^ec2-agent\/[^/]+\/configuration\.nix$/.test(f)).map(([, t]) => t));
    for (const [file, text] of atKill) {
      if (temporaryWriter(path.basename(file)) !== undefined) continue;
      const known = [before.get(file), afterRecovery.get(file)];
      if (file === 'configuration.nix' || file === 'ec2-agent/previous-configuration.nix') {
        if (!known.includes(text) && !candidates.has(text)) this.fail(`killed after "${what}" (${delay} ms): ${file} is neither the old nor a new version`, text);
      } else if (known.some((k) => k !== undefined) && !known.includes(text)) {
        this.fail(`killed after "${what}" (${delay} ms): ${file} is neither the old nor the new version`, text);
      }
    }
    this.note(`kill ${this.result.kills}: "${what}" +${delay} ms, journal ${state.journal.phase}, restart ${last?.outcome}`);
  }

  get standinLeftovers(): number {
    return this.standinTemporaries.size;
  }

  async stop(): Promise<void> {
    if (this.daemon) {
      await killTree(this.daemon.run.child.pid as number);
      await this.daemon.run.done;
      this.daemon = undefined;
    }
  }
}

/** Runs `kills` kill-and-restart steps on a fresh instance; returns its figures. */
export async function crashCampaign(kills: number, seed: number, note?: (line: string) => void): Promise<CampaignResult> {
  const i = await Instance.launch({
    parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }],
    config: {
      ssm: { pollIntervalSeconds: 3600 },
      watch: { quietPeriodMs: 50 },
      // A failed desired state is retried at every change, not held back for long.
      retry: { failedBackoffSeconds: 1 },
      health: { graceSeconds: 0.2, intervalSeconds: 0.1 },
    },
  });
  const campaign = new CrashCampaign(i, prng(seed), note);
  try {
    await campaign.start();
    await campaign.calibrate();
    for (let n = 0; n < kills; n++) await campaign.step(n);
    return { ...campaign.result, standinTemporaries: campaign.standinLeftovers };
  } finally {
    await campaign.stop();
    await i.close();
  }
}
