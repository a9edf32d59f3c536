// What every benchmark shares: its calling convention, the statistics, the one `RESULT` line a
// script reads, the table `npm run bench` prints, and how a timed process is launched. Figures are reported, never asserted: a
// machine's speed is not a property of the code.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A figure: a number (rounded when printed) or a short word; never a value with spaces. */
export type Figure = number | string;

export interface BenchResult {
  readonly name: string;
  /** In print order: the measured figures first, then their ratios to the baseline. */
  readonly figures: Readonly<Record<string, Figure>>;
}

/** Where a benchmark writes its human-readable lines (the RESULT line is written by run.ts). */
export type Print = (line: string) => void;

/** A benchmark module: `run.ts` imports it by path and calls `run`. */
export interface BenchModule {
  run(args: readonly string[], print: Print): Promise<BenchResult>;
}

export class BenchUsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;

/** Every benchmark takes `--quick` (a tiny run for the smoke test) and `--runs N`. */
export function parseBenchArgs<O extends Options>(name: string, args: readonly string[], options: O) {
  try {
    const { values } = parseArgs({
      args: [...args],
      options: { quick: { type: 'boolean' }, runs: { type: 'string' }, ...options },
      strict: true,
      allowPositionals: false,
    });
    return values as Record<string, string | boolean | undefined>;
  } catch (err) {
    throw new BenchUsageError(`${name}: ${(err as Error).message}`);
  }
}

export function intFlag(name: string, value: string | boolean | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = typeof value === 'string' ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1) throw new BenchUsageError(`--${name} wants a positive integer, not ${String(value)}`);
  return n;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Milliseconds with a precision a person can read and a script can parse. */
export function round(value: number): number {
  if (!Number.isFinite(value)) return value;
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 1 : abs >= 1 ? 2 : 3;
  return Number(value.toFixed(digits));
}

/** `a / b`, to two decimals; a ratio to a zero baseline is not a number. */
export function ratio(a: number, b: number): number {
  return b === 0 ? NaN : Number((a / b).toFixed(2));
}

export function spread(values: readonly number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  return `min ${round(sorted[0] ?? NaN)} / median ${round(median(values))} / max ${round(sorted.at(-1) ?? NaN)} ms over ${values.length}`;
}

const KEY = /^[a-z][a-z0-9_]*$/;

/** `RESULT name=NAME key=value …`: the one line a script reads. */
export function resultLine(result: BenchResult): string {
  const parts = [`name=${result.name}`];
  for (const [key, value] of Object.entries(result.figures)) {
    if (!KEY.test(key)) throw new RangeError(`figure name ${JSON.stringify(key)} is not [a-z][a-z0-9_]*`);
    const text = typeof value === 'number' ? String(round(value)) : value;
    if (text === '' || /\s|=/.test(text)) throw new RangeError(`figure ${key} has an unprintable value ${JSON.stringify(text)}`);
    parts.push(`${key}=${text}`);
  }
  return `RESULT ${parts.join(' ')}`;
}

/** The inverse of resultLine, for run.ts's table and for tests. */
export function parseResultLine(line: string): BenchResult | undefined {
  const m = /^RESULT name=([a-z][a-z0-9_-]*)((?: [a-z][a-z0-9_]*=\S+)*)$/.exec(line);
  if (!m) return undefined;
  const figures: Record<string, Figure> = {};
  for (const pair of (m[2] ?? '').trim().split(' ').filter(Boolean)) {
    const eq = pair.indexOf('=');
    const raw = pair.slice(eq + 1);
    const n = Number(raw);
    figures[pair.slice(0, eq)] = raw !== '' && Number.isFinite(n) ? n : raw;
  }
  return { name: m[1] as string, figures };
}

/** A plain text table, columns padded; numbers right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly Figure[])[]): string {
  const cells = [header.map(String), ...rows.map((r) => r.map((c) => (typeof c === 'number' ? String(round(c)) : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(cells[0] as string[]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

/** Wall-clock now in epoch milliseconds with sub-millisecond resolution. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * The environment a timed Node process gets: this one's without Node's own variables, as the
 * systemd unit runs the agent (nix/launch.json sets none). A developer's or CI machine's
 * NODE_EXTRA_CA_CERTS alone makes Node 20 read and parse a CA bundle before the first line runs
 * (~35 ms here, more than a bare `node -e 0` takes without it), and NODE_OPTIONS may load anything:
 * either would be measured in the agent and in its baseline alike, and hide the agent's own cost.
 */
export function unitEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !k.startsWith('NODE_')) out[k] = v;
  return out;
}

/** Where `command` is on PATH, as a shell would find it; undefined when it is not. */
export function onPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}
