// The crash suite: a live daemon SIGKILLed at random points of converges with changing inputs,
// restarted each time, and checked each time (see test/support/crash.ts for what is checked).
// NEA_CRASH_KILLS sets the number of kills (default 200, over two instances side by side);
// NEA_CRASH_SEED replays a run: the seed is printed at the start.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crashCampaign } from '../support/crash.js';
import { hasNix } from '../support/e2e.js';

const KILLS = Number(process.env.NEA_CRASH_KILLS ?? 200);
const SEED = Number(process.env.NEA_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
const INSTANCES = 2;

test(`${KILLS} SIGKILLs at random points of converges, each followed by a restart`, { timeout: 30 * 60_000, skip: !hasNix && 'needs nix-instantiate (nix-bin) to parse every rendered file' }, async (t) => {
  t.diagnostic(`seed ${SEED} (replay with NEA_CRASH_SEED=${SEED} NEA_CRASH_KILLS=${KILLS})`);
  const share = (k: number) => Math.floor(KILLS / INSTANCES) + (k < KILLS % INSTANCES ? 1 : 0);
  const t0 = Date.now();
  let done = 0;
  const progress = () => {
    done += 1;
    if (done % 20 === 0) process.stdout.write(`crash suite: ${done} kills after ${Math.round((Date.now() - t0) / 1000)} s\n`);
  };
  const results = await Promise.all(Array.from({ length: INSTANCES }, (_, k) => crashCampaign(share(k), SEED + k, progress)));
  const kills = results.reduce((n, r) => n + r.kills, 0);
  const midPass = results.reduce((n, r) => n + r.midPass, 0);
  const phases: Record<string, number> = {};
  for (const r of results) for (const [p, n] of Object.entries(r.phases)) phases[p] = (phases[p] ?? 0) + n;
  const temps = results.reduce((n, r) => n + r.temporariesAtKill, 0);
  const standin = results.reduce((n, r) => n + r.standinTemporaries, 0);
  const restarts: Record<string, number> = {};
  for (const r of results) for (const [p, n] of Object.entries(r.restarts)) restarts[p] = (restarts[p] ?? 0) + n;
  t.diagnostic(`kills: ${kills} (${midPass} with a pass in hand; journal phases ${JSON.stringify(phases)}); the agent's temporary files at the kills: ${temps}, all removed at restart (the stand-in's left: ${standin}); restarted daemons' first passes ${JSON.stringify(restarts)}`);
  process.stdout.write(`crash suite: ${kills} kills, seed ${SEED}\n`);
  assert.equal(kills, KILLS);
  // Kills that all landed between passes would prove little.
  assert.ok(midPass >= kills / 4, `only ${midPass} of ${kills} kills landed in a pass`);
});
