// `npm run bench`: every benchmark, each in its own process (so one's heap and loaded modules do
// not colour the next), then one table of all their figures. `npm run bench -- NAME [flags]` runs
// one here. A new benchmark is one line in BENCHMARKS and a module exporting `run` (common.ts).
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BenchUsageError, parseResultLine, ratio, resultLine, table, type BenchModule, type BenchResult, type Figure } from './common.js';

export interface BenchEntry {
  /** Relative to this file, as compiled. */
  readonly module: string;
  readonly summary: string;
  /** Figure → the figure measured in the same run that it is read against. */
  readonly baselines: Readonly<Record<string, string>>;
}

export const BENCHMARKS: Readonly<Record<string, BenchEntry>> = {
  boot: {
    module: './boot.js',
    summary: 'agent start → rebuild launched, beside `node -e 0` and an amazon-init equivalent',
    baselines: { agent_ms: 'node_ms', amazon_init_ms: 'node_ms' },
  },
  render: {
    module: './render.js',
    summary: 'desired state + render of 10,000 parameters; SSM calls per fetch',
    baselines: { render_ms: 'json_roundtrip_ms' },
  },
  crash: {
    module: './crash.js',
    summary: 'SIGKILL a live daemon at random points of converges and restart it, 1,000 times, checking each (--kills N, --seed S)',
    baselines: { ms_per_kill: 'baseline_start_ms' },
  },
  rollout: {
    module: './rollout.js',
    summary: "progressive rollout over the fleet simulation (--instances N): a bad push's blast radius beside the first step, a good push's time beside its strategy, a scale-out mid-rollout",
    baselines: { blast_radius: 'first_step', good_push_ms: 'strategy_ms' },
  },
  closure: {
    module: './closure.js',
    summary: 'pushed system parameter → generation activated (closure from a signed cache), beside the same change built',
    baselines: { closure_ms: 'build_ms' },
  },
  watch: {
    module: './watch.js',
    summary: 'change → rebuild latency (SSM, file), rebuilds per burst, idle SSM calls, RSS and CPU beside bare node',
    baselines: { idle_rss_mib: 'baseline_rss_mib', idle_cpu_percent: 'baseline_cpu_percent' },
  },
  fleet: {
    module: './fleet.js',
    summary: 'N instances of the real agent on one simulated clock sharing 40 SSM reads/s: change convergence beside the minimum, idle SSM calls',
    baselines: {
      converge_s: 'min_s',
      poll_change_max_s: 'poll_interval_s',
      idle_calls_per_instance_hour: 'idle_calls_per_instance_hour_before',
      idle_reads_per_second_at_10000: 'idle_reads_per_second_at_10000_before',
    },
  },
};

const SELF = fileURLToPath(import.meta.url);

function usage(): string {
  const width = Math.max(...Object.keys(BENCHMARKS).map((n) => n.length));
  return [
    'usage: npm run bench [-- [NAME] [--quick] [--runs N] [flags]]',
    '',
    ...Object.entries(BENCHMARKS).map(([name, b]) => `  ${name.padEnd(width)}  ${b.summary}`),
    '',
    'Each benchmark ends with one line `RESULT name=NAME key=value …`.',
    '',
  ].join('\n');
}

export async function runOne(name: string, args: readonly string[], print: (line: string) => void): Promise<BenchResult> {
  const entry = BENCHMARKS[name];
  if (!entry) throw new BenchUsageError(`unknown benchmark "${name}"`);
  const mod = (await import(new URL(entry.module, import.meta.url).href)) as BenchModule;
  const result = await mod.run(args, print);
  print(resultLine(result));
  return result;
}

/** Runs NAME as `node run.js NAME ARGS`, its output passed through; its RESULT line, parsed. */
function runChild(name: string, args: readonly string[]): Promise<{ code: number; result: BenchResult | undefined }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SELF, name, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let last: BenchResult | undefined;
    let partial = '';
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) last = parseResultLine(line) ?? last;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (partial) last = parseResultLine(partial) ?? last;
      resolve({ code: code ?? 1, result: last });
    });
  });
}

/** One row per figure; a figure with a baseline shows it and their ratio beside it. */
export function summaryRows(name: string, result: BenchResult): Figure[][] {
  const baselines = BENCHMARKS[name]?.baselines ?? {};
  return Object.entries(result.figures).map(([key, value]) => {
    const base = baselines[key];
    const baseValue = base === undefined ? undefined : result.figures[base];
    if (base === undefined || baseValue === undefined) return [name, key, value, '', '', ''];
    return [name, key, value, base, baseValue, typeof value === 'number' && typeof baseValue === 'number' ? ratio(value, baseValue) : ''];
  });
}

async function runAll(args: readonly string[]): Promise<number> {
  const rows: Figure[][] = [];
  let failed = 0;
  for (const name of Object.keys(BENCHMARKS)) {
    process.stdout.write(`\n== ${name} ==\n`);
    const { code, result } = await runChild(name, args);
    if (code !== 0 || !result) {
      failed++;
      rows.push([name, 'error', `exit ${code}`, '', '', '']);
      continue;
    }
    rows.push(...summaryRows(name, result));
  }
  process.stdout.write(`\nSummary: ${cpus().length} cores, Node ${process.version}; every baseline measured in the same run\n`);
  process.stdout.write(`${table(['benchmark', 'figure', 'value', 'baseline', 'baseline value', 'ratio'], rows)}\n`);
  return failed === 0 ? 0 : 1;
}

export async function main(argv: readonly string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(usage());
    return 0;
  }
  try {
    if (first === undefined || first.startsWith('-')) return await runAll(argv);
    await runOne(first, rest, (line) => process.stdout.write(`${line}\n`));
    return 0;
  } catch (err) {
    if (err instanceof BenchUsageError) {
      process.stderr.write(`bench: ${err.message}\n\n${usage()}`);
      return 2;
    }
    throw err;
  }
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
