// Every registered benchmark runs in its quick mode and ends with one well-formed RESULT line.
// Times are never asserted: they are the benchmark's output, not a property of the code.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { median, onPath, parseResultLine, ratio, resultLine, table } from '../bench/common.js';
import { BENCHMARKS } from '../bench/run.js';

const RUN = fileURLToPath(new URL('../bench/run.js', import.meta.url));
const WELL_FORMED = /^RESULT name=([a-z][a-z0-9_-]*)( [a-z][a-z0-9_]*=[^\s=]+)+$/;

function bench(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

describe('benchmarks, quick mode', () => {
  for (const name of Object.keys(BENCHMARKS)) {
    // Headroom for a loaded 2-core machine: the quick runs start daemons and real Nix.
    it(`${name} ends with exactly one RESULT line naming it`, { timeout: 300_000 }, async () => {
      const { code, stdout, stderr } = await bench([name, '--quick']);
      assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
      const lines = stdout.split('\n').filter((l) => l.trim() !== '');
      const last = lines.at(-1) ?? '';
      assert.match(last, WELL_FORMED, `last line: ${last}`);
      assert.equal(WELL_FORMED.exec(last)?.[1], name);
      assert.equal(lines.filter((l) => l.startsWith('RESULT')).length, 1);
      const parsed = parseResultLine(last);
      assert.ok(parsed && Object.keys(parsed.figures).length > 0);
    });
  }

  it('fleet: every instance of a small fleet converges, and idle polling costs less SSM than the former defaults', { timeout: 300_000 }, async () => {
    const { code, stdout, stderr } = await bench(['fleet', '--quick', '--instances', '12']);
    assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
    assert.match(stdout, /time is simulated/);
    const result = parseResultLine(stdout.trim().split('\n').at(-1) ?? '');
    assert.ok(result, stdout);
    const f = result.figures;
    assert.equal(f.instances, 12);
    assert.equal(f.failed, 0, 'an instance did not converge');
    assert.equal(f.idle_tag_calls_per_instance_hour, 0, 'with the revision tag in IMDS, idle polls make no SSM call');
    assert.ok(typeof f.idle_calls_per_instance_hour === 'number' && typeof f.idle_calls_per_instance_hour_before === 'number');
    assert.ok(f.idle_calls_per_instance_hour <= 7, `idle: ${f.idle_calls_per_instance_hour} calls per instance-hour`);
    assert.ok(f.idle_calls_per_instance_hour < f.idle_calls_per_instance_hour_before);
  });

  it('fleet: a quick run is the same from the same seed, and differs from another seed', { timeout: 180_000 }, async () => {
    const last = async (seed: string) => {
      const { code, stdout, stderr } = await bench(['fleet', '--quick', '--instances', '8', '--seed', seed]);
      assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
      return stdout.trim().split('\n').at(-1) ?? '';
    };
    const first = await last('7');
    assert.equal(await last('7'), first, 'two runs from seed 7');
    assert.notEqual(await last('8'), first, 'seed 8 makes other choices');
  });

  it('boot --flush-ms runs the agent on a slowed disk, and refuses a value out of range with exit 2', { timeout: 300_000, skip: onPath('strace') ? false : 'strace is not on PATH' }, async () => {
    const { code, stdout, stderr } = await bench(['boot', '--quick', '--flush-ms', '1']);
    assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
    assert.match(stdout, /every disk flush of the agent's runs 1 ms longer/);
    assert.ok(parseResultLine(stdout.trim().split('\n').at(-1) ?? ''), stdout);
    const bad = await bench(['boot', '--quick', '--flush-ms', 'soon']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--flush-ms wants milliseconds/);
  });

  it('boot --daemon times the daemon (`run`) to its first rebuild and stops it there', { timeout: 300_000 }, async () => {
    const { code, stdout, stderr } = await bench(['boot', '--quick', '--daemon']);
    assert.equal(code, 0, `exit ${code}; stderr:\n${stderr}`);
    assert.match(stdout, /agent run \(daemon\) \(→ rebuild\)/);
    const result = parseResultLine(stdout.trim().split('\n').at(-1) ?? '');
    assert.ok(result && typeof result.figures.agent_ms === 'number' && result.figures.agent_ms > 0, stdout);
  });

  it('refuses an unknown benchmark with exit 2 and lists the known ones', async () => {
    const { code, stderr } = await bench(['no-such-benchmark']);
    assert.equal(code, 2);
    for (const name of Object.keys(BENCHMARKS)) assert.match(stderr, new RegExp(`\\b${name}\\b`));
  });

  it('refuses an unknown flag with exit 2', async () => {
    const { code, stderr } = await bench(['render', '--no-such-flag']);
    assert.equal(code, 2);
    assert.match(stderr, /no-such-flag/);
  });
});

describe('RESULT line', () => {
  it('prints numbers and words, and reads back what it printed', () => {
    const line = resultLine({ name: 'boot', figures: { node_ms: 41.234567, agent_over_node: 2.5, target: 'met' } });
    assert.equal(line, 'RESULT name=boot node_ms=41.23 agent_over_node=2.5 target=met');
    assert.deepEqual(parseResultLine(line), { name: 'boot', figures: { node_ms: 41.23, agent_over_node: 2.5, target: 'met' } });
  });

  it('refuses values a space-separated line cannot carry', () => {
    assert.throws(() => resultLine({ name: 'x', figures: { note: 'two words' } }), RangeError);
    assert.throws(() => resultLine({ name: 'x', figures: { 'Bad-Key': 1 } }), RangeError);
    assert.throws(() => resultLine({ name: 'x', figures: { a: 'k=v' } }), RangeError);
  });

  it('is not read from other lines', () => {
    assert.equal(parseResultLine('RESULT name=boot node_ms=1 extra'), undefined);
    assert.equal(parseResultLine('  RESULT name=boot a=1'), undefined);
  });
});

describe('statistics', () => {
  it('median of odd and even counts, unsorted input', () => {
    assert.equal(median([5, 1, 3]), 3);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.throws(() => median([]), RangeError);
  });

  it('ratio to a zero baseline is not a number', () => {
    assert.equal(ratio(3, 2), 1.5);
    assert.ok(Number.isNaN(ratio(1, 0)));
  });

  it('table pads columns and right-aligns numbers', () => {
    const text = table(['what', 'ms'], [['a', 1.5], ['longer', 100]]);
    assert.deepEqual(text.split('\n'), ['what     ms', '------  ---', 'a       1.5', 'longer  100']);
  });
});
