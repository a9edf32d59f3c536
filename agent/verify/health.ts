// After activation: is the new system healthy? Failed systemd units, HTTP probes and command
// probes, retried within a grace window (services take a moment to start), ending in a Verdict.
import type { Clock, Runner } from '../ports.js';
import { reachChecks, type Reachable } from './reach.js';

export type Probe =
  | { readonly name: string; readonly http: { readonly url: string; readonly expectStatus: number; readonly timeoutMs: number } }
  | { readonly name: string; readonly command: { readonly argv: readonly string[]; readonly timeoutMs: number } };

export interface HealthOptions {
  readonly systemctl: string;
  readonly checkFailedUnits: boolean;
  readonly graceMs: number;
  readonly intervalMs: number;
  readonly probes: readonly Probe[];
  /** What the instance is managed through, asked after a switch (reach.ts); none: not asked. */
  readonly reach?: readonly Reachable[];
  /** Each endpoint's answer is waited for this long. */
  readonly reachTimeoutMs?: number;
}

/** How long an endpoint is given to answer a new connection, unless the options say otherwise. */
const REACH_TIMEOUT_MS = 5_000;

export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface Verdict {
  readonly healthy: boolean;
  readonly reasons: readonly string[];
  readonly checks: readonly CheckResult[];
  readonly attempts: number;
}

/** The HTTP capability a probe needs: the status of a GET, redirects not followed. */
export type HttpGet = (url: string, timeoutMs: number) => Promise<number>;

/**
 * node:http and node:https, not fetch: fetch loads undici, whose HTTP parser (llhttp) is
 * WebAssembly, compiled at its first use, and absent under V8 flags a launch may carry
 * (--lite-mode, --jitless): every probe then failed with "WebAssembly is not defined".
 */
const defaultHttpGet: HttpGet = async (url, timeoutMs) => {
  const { get } = url.startsWith('https:') ? await import('node:https') : await import('node:http');
  const signal = AbortSignal.timeout(timeoutMs);
  return new Promise((resolve, reject) => {
    const request = get(url, { signal }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    // The timeout's own reason (a TimeoutError), not the request's AbortError.
    request.on('error', (err) => reject(signal.aborted ? (signal.reason as Error) : err));
  });
};

export class HealthChecker {
  constructor(
    private readonly runner: Runner,
    private readonly clock: Clock,
    private readonly options: HealthOptions,
    private readonly httpGet: HttpGet = defaultHttpGet,
  ) {}

  /**
   * Checks until all pass or the grace window ends; the last round's failures are the reasons.
   * `reach: false` leaves out the endpoints (a rollback's verdict): the generation rolled back to
   * ran well before, and an endpoint down on AWS's side then must not make the instance's last good
   * generation look bad, which would report it Unhealthy to its group.
   */
  async verify(onAttempt?: (checks: readonly CheckResult[]) => void, how: { readonly reach?: boolean } = {}): Promise<Verdict> {
    const deadline = this.clock.now() + this.options.graceMs;
    // An endpoint that answered once in this verdict is not asked again while other checks are
    // retried: a cohort of a rollout whose units fail would otherwise read SSM every interval of
    // its grace window, instance by instance, against the account's shared throughput.
    const reached = new Map<string, CheckResult>();
    let attempts = 0;
    for (;;) {
      attempts++;
      const checks = await this.checkOnce(how.reach === false ? null : reached);
      onAttempt?.(checks);
      const failed = checks.filter((c) => !c.ok);
      if (failed.length === 0) return { healthy: true, reasons: [], checks, attempts };
      if (this.clock.now() + this.options.intervalMs > deadline) {
        return { healthy: false, reasons: failed.map((c) => `${c.name}: ${c.detail}`), checks, attempts };
      }
      await this.clock.sleep(this.options.intervalMs);
    }
  }

  /**
   * One round of every check. `reached`: the endpoints that answered so far in this verdict, added
   * to here (those in it are not asked again); null: the endpoints are left out.
   */
  async checkOnce(reached: Map<string, CheckResult> | null = new Map()): Promise<CheckResult[]> {
    const checks: Promise<CheckResult>[] = [];
    if (this.options.checkFailedUnits) checks.push(this.failedUnits());
    for (const probe of this.options.probes) checks.push('http' in probe ? this.http(probe.name, probe.http) : this.command(probe.name, probe.command));
    const endpoints = reached ? (this.options.reach ?? []) : [];
    const ask = endpoints.filter((e) => !reached?.has(e.name));
    const [own, asked] = await Promise.all([Promise.all(checks), reachChecks(ask, this.options.reachTimeoutMs ?? REACH_TIMEOUT_MS)]);
    for (const answer of asked) if (answer.ok) reached?.set(answer.name, answer);
    return [...own, ...endpoints.map((e) => reached?.get(e.name) ?? asked.find((c) => c.name === e.name)).filter((c) => c !== undefined)];
  }

  private async failedUnits(): Promise<CheckResult> {
    // A service that crashes and has Restart= with a RestartSec long enough never reaches its start
    // limit (5 starts in 10 s by default), so it is never `failed`: it waits in the `auto-restart`
    // sub-state between its crashes. Listed too, it keeps the verdict from passing until it stays up.
    const result = await this.runner.run({
      command: this.options.systemctl,
      args: ['list-units', '--state=failed,auto-restart', '--no-legend', '--plain', '--no-pager'],
      timeoutMs: 30_000,
    });
    if (result.code !== 0) {
      return { name: 'systemd', ok: false, detail: `systemctl exited with ${result.code}: ${result.tail.slice(-1)[0] ?? ''}` };
    }
    // UNIT LOAD ACTIVE SUB DESCRIPTION
    const rows = result.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => (f[0] ?? '') !== '');
    const restarting = rows.filter((f) => f[3]?.startsWith('auto-restart')).map((f) => f[0] as string);
    const failed = rows.filter((f) => !f[3]?.startsWith('auto-restart')).map((f) => f[0] as string);
    if (rows.length === 0) return { name: 'systemd', ok: true, detail: 'no failed units' };
    const detail = [failed.length ? `failed units: ${failed.join(', ')}` : '', restarting.length ? `restarting after a failure: ${restarting.join(', ')}` : ''].filter(Boolean).join('; ');
    return { name: 'systemd', ok: false, detail };
  }

  private async http(name: string, probe: { url: string; expectStatus: number; timeoutMs: number }): Promise<CheckResult> {
    try {
      const status = await this.httpGet(probe.url, probe.timeoutMs);
      return status === probe.expectStatus
        ? { name, ok: true, detail: `HTTP ${status}` }
        : { name, ok: false, detail: `HTTP ${status} from ${probe.url}, expected ${probe.expectStatus}` };
    } catch (err) {
      return { name, ok: false, detail: `${probe.url}: ${(err as Error).name === 'TimeoutError' ? `no answer within ${probe.timeoutMs} ms` : (err as Error).message}` };
    }
  }

  private async command(name: string, probe: { argv: readonly string[]; timeoutMs: number }): Promise<CheckResult> {
    const [command, ...args] = probe.argv;
    const result = await this.runner.run({
      command: command as string,
      args,
      timeoutMs: probe.timeoutMs,
    });
    if (result.code === 0) return { name, ok: true, detail: 'exit 0' };
    const why = result.timedOut ? `timed out after ${probe.timeoutMs} ms` : `exited with ${result.code}`;
    return { name, ok: false, detail: `${probe.argv.join(' ')} ${why}${result.tail.length ? `: ${result.tail.at(-1)}` : ''}` };
  }
}
