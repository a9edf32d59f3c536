// The rollout benchmark's quick run on the fleet simulation holds the rollout's promises: a bad
// push stops within the first step and leaves every instance it touched on stable, a good push
// completes within its strategy's time plus one poll interval, and a scale-out gets stable.
// Simulated time: the figures are the simulation's, not this machine's speed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseResultLine } from '../bench/common.js';

const RUN = fileURLToPath(new URL('../bench/run.js', import.meta.url));

test('rollout --quick: blast radius within the first step, good push on time, scale-out on stable', { timeout: 180_000 }, async () => {
  const child = spawn(process.execPath, [RUN, 'rollout', '--quick'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const code = await new Promise<number>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c ?? 1));
  });
  assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
  const result = parseResultLine(stdout.trim().split('\n').at(-1) ?? '');
  assert.ok(result, stdout);
  const f = result.figures;
  assert.equal(f.instances, 24);
  assert.ok(typeof f.touched === 'number' && f.touched >= 1, `the bad push was never tried: ${stdout}`);
  assert.ok(typeof f.blast_radius === 'number' && typeof f.first_step === 'number' && f.blast_radius <= f.first_step, stdout);
  assert.equal(f.touched_ended_on_stable, 1, stdout);
  assert.equal(f.good_push_completed, 1, stdout);
  assert.equal(f.scaleout_got_stable, 1, stdout);
});
