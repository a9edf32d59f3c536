// The crash campaign at scale: `npm run bench -- crash [--kills N] [--seed S]` (default 1,000
// kills; `--quick` 4) SIGKILLs a live daemon at random points of converges with changing inputs,
// restarting and checking it each time (test/support/crash.ts). Any broken promise fails the run.
// Figures: kills, how many landed mid-pass, the seconds per kill, and their ratio to a plain
// daemon start and first pass measured in the same run (the baseline).
import { crashCampaign } from '../support/crash.js';
import { prng } from '../support/prng.js';
import { hasNix, Instance, LiveLog, terminate, waitFor } from '../support/e2e.js';
import { epochMs, intFlag, median, parseBenchArgs, ratio, round, type BenchResult, type Print } from './common.js';

/** A daemon start and its first pass on a fresh instance, in ms. */
async function baselineStart(): Promise<number> {
  const i = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
  try {
    const t0 = epochMs();
    const run = i.start(['run']);
    const log = new LiveLog(run);
    await waitFor('the first pass', async () => (log.of('pass.end').length > 0 ? true : undefined), 120_000, 10);
    const ms = epochMs() - t0;
    await terminate(run);
    return ms;
  } finally {
    await i.close();
  }
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('crash', args, { kills: { type: 'string' }, seed: { type: 'string' } });
  const kills = flags.quick ? 4 : intFlag('kills', flags.kills, 1000);
  const seed = flags.seed !== undefined ? intFlag('seed', flags.seed, 1) : Math.floor(prng(Date.now())() * 2 ** 31) + 1;
  if (!hasNix) print('nix-instantiate is missing: rendered files are not parsed');
  print(`seed ${seed} (replay with --seed ${seed} --kills ${kills})`);
  const starts: number[] = [];
  for (let k = 0; k < (flags.quick ? 1 : 3); k++) starts.push(await baselineStart());
  const baseline = median(starts);
  const t0 = epochMs();
  let done = 0;
  const result = await crashCampaign(kills, seed, (line) => {
    done += 1;
    if (done % 100 === 0) print(line);
  });
  const perKill = (epochMs() - t0) / kills;
  print(`journal phases at the kills: ${JSON.stringify(result.phases)}; restarted daemons' first passes: ${JSON.stringify(result.restarts)}`);
  return {
    name: 'crash',
    figures: {
      kills: result.kills,
      mid_pass: result.midPass,
      temporaries_at_kill: result.temporariesAtKill,
      seed,
      ms_per_kill: round(perKill),
      baseline_start_ms: round(baseline),
      kill_vs_start: ratio(perKill, baseline),
    },
  };
}
