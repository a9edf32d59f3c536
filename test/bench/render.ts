// `render`: the pure half of a pass at fleet scale, and what one SSM fetch costs.
//
// 1. Build the desired state from 10,000 SSM parameters (options holding hostile JSON, modules,
//    secrets) and render it to Nix text: buildDesired + renderPlan, exactly as a pass calls them.
//    Baseline, same run: a JSON round trip (JSON.parse + JSON.stringify) of the same parameter
//    values, the least any program that reads and re-serialises them must pay.
// 2. The SSM calls one fetch of N parameters (spread over the three default prefixes) takes,
//    through agent/sources/ssm.ts with the real SDK SSMClient against the SSM emulator, beside the
//    least possible: ceil(n / 10) GetParametersByPath pages per prefix (MaxResults is at most 10).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildDesired } from '../../agent/desired/desired.js';
import { renderPlan, type RenderPlan } from '../../agent/render/render.js';
import { Secret } from '../../agent/secret.js';
import { SsmSource, type SsmParameter, type SsmSnapshot } from '../../agent/sources/ssm.js';
import { interpretUserData } from '../../agent/sources/userdata.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';
import { intFlag, median, parseBenchArgs, ratio, spread, type BenchResult, type Figure, type Print } from './common.js';

const TARGET_MS = 200;
const INSTANCE = 'i-0b22a22eec53b9321';
const GROUP = 'web-asg';
const REGION = 'us-east-1';
/** The agent's default prefixes, filled for one instance. */
const PREFIXES = ['/nixos/fleet', `/nixos/asg/${GROUP}`, `/nixos/instance/${INSTANCE}`];
const PAGE = 10;

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('render', args, { parameters: { type: 'string' } });
  const quick = Boolean(flags.quick);
  const count = intFlag('parameters', flags.parameters, quick ? 300 : 10_000);
  const runs = intFlag('runs', flags.runs, quick ? 2 : 7);
  const figures: Record<string, Figure> = { parameters: count, runs };

  // ---- 1. desired state + render ----
  const snapshot = syntheticSnapshot(count);
  const userData = interpretUserData(Buffer.from('{ ... }: { networking.hostName = "bench"; }\n'));
  const local = { baseConfiguration: undefined, modules: [] };
  const parameters = snapshot.prefixes.flatMap((p) => p.parameters);

  const renderTimes: number[] = [];
  const baselineTimes: number[] = [];
  let plan: RenderPlan | undefined;
  let sink = 0;
  // One warm-up of each, so both are measured with their code optimised.
  for (let i = 0; i < runs + 1; i++) {
    let t0 = performance.now();
    const desired = buildDesired({ userData, ssm: snapshot, local });
    plan = renderPlan(desired);
    const renderMs = performance.now() - t0;

    t0 = performance.now();
    sink += jsonRoundTrip(parameters);
    const baselineMs = performance.now() - t0;
    if (i === 0) continue;
    renderTimes.push(renderMs);
    baselineTimes.push(baselineMs);
  }
  if (!plan || sink === 0) throw new Error('render: nothing was rendered');
  const renderedBytes = [...plan.parts, plan.configuration].reduce((n, f) => n + Buffer.byteLength(f.text), 0);
  const renderMs = median(renderTimes);
  const baselineMs = median(baselineTimes);
  const kinds = countKinds(count);
  print(`render: ${count} parameters (${kinds.options} options with hostile JSON, ${kinds.modules} modules, ${kinds.secrets} secrets) over ${PREFIXES.length} prefixes → ${plan.parts.length + 1} files, ${Math.round(renderedBytes / 1024)} KiB`);
  print(`  buildDesired + renderPlan       ${spread(renderTimes)}`);
  print(`  baseline: JSON parse+stringify  ${spread(baselineTimes)}`);
  print(`  render / baseline = ${ratio(renderMs, baselineMs)}; target ≤ ${TARGET_MS} ms: ${renderMs <= TARGET_MS ? 'met' : 'missed'}`);
  Object.assign(figures, {
    render_ms: renderMs,
    json_roundtrip_ms: baselineMs,
    render_over_json: ratio(renderMs, baselineMs),
    rendered_kib: Math.round(renderedBytes / 1024),
    render_target_ms: TARGET_MS,
    render_target: renderMs <= TARGET_MS ? 'met' : 'missed',
  });

  // The rendered text is only worth timing if it is Nix: the parser gate a pass runs next.
  const parseMs = quick ? undefined : await parseGate(plan);
  if (parseMs !== undefined) {
    print(`  nix-instantiate --parse of every rendered file: ${Math.round(parseMs)} ms (the gate a pass runs next; not in the target)`);
    figures.nix_parse_ms = parseMs;
  }

  // ---- 2. SSM calls per fetch ----
  const sizes = quick ? [10] : [10, 95, 1000];
  for (const n of sizes) {
    const { calls, minimum, logged, fetchMs } = await ssmFetch(n);
    print(`  SSM fetch of ${n} parameters: ${calls} GetParametersByPath calls (${logged} seen by the emulator), least possible ${minimum}; ${Math.round(fetchMs)} ms`);
    figures[`ssm_calls_${n}`] = calls;
    figures[`ssm_min_${n}`] = minimum;
    figures[`ssm_calls_over_min_${n}`] = ratio(calls, minimum);
    figures[`ssm_fetch_ms_${n}`] = fetchMs;
  }
  return { name: 'render', figures };
}

function countKinds(count: number): { options: number; modules: number; secrets: number } {
  let options = 0;
  let modules = 0;
  let secrets = 0;
  for (let i = 0; i < count; i++) {
    const k = kindOf(i);
    if (k === 'options') options++;
    else if (k === 'modules') modules++;
    else secrets++;
  }
  return { options, modules, secrets };
}

/** 80 % options, 15 % modules, 5 % secrets. */
function kindOf(i: number): 'options' | 'modules' | 'secrets' {
  const r = i % 20;
  return r < 16 ? 'options' : r < 19 ? 'modules' : 'secrets';
}

/** Values that try to break out of a Nix string, attribute name or number, deterministic per index. */
function hostileValue(i: number): unknown {
  const s = [
    '${builtins.abort "pwned"}',
    "''${x} '' \\'' end",
    'quote " backslash \\ dollar $ $$ $${y} \\${z}',
    'line1\nline2\r\ttab \u0001 \u007f',
    'unicode: \u00e9 \u4e2d\u6587 \u{1F600} \u202e rtl \u2028 sep',
    '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x; rm -rf / #',
  ];
  const pick = (k: number) => s[(i + k) % s.length] as string;
  switch (i % 8) {
    case 0:
      return pick(0);
    case 1:
      return { [pick(1)]: pick(2), 'a.b': [1, -2, 3.5, -0, 1e308, 5e-324, 2 ** 53], if: null, or: true, inherit: false };
    case 2:
      return [pick(3), { 'with spaces': { nested: [pick(4), []], '': {} } }, 9007199254740993];
    case 3:
      return i % 2 === 0;
    case 4:
      return -123456789 - i;
    case 5:
      return { enable: true, settings: { port: 8000 + (i % 1000), listen: ['0.0.0.0', '::'], 'x-${y}': pick(5) } };
    case 6:
      return 1.5e-300 * (i + 1);
    default:
      return { [`k${i}`]: { inherit: pick(0), rec: [null, pick(1), { let: pick(2) }] } };
  }
}

function syntheticSnapshot(count: number): SsmSnapshot {
  const perPrefix: SsmParameter[][] = PREFIXES.map(() => []);
  for (let i = 0; i < count; i++) {
    const p = i % PREFIXES.length;
    const prefix = PREFIXES[p] as string;
    const kind = kindOf(i);
    const version = 1 + (i % 7);
    const lastModified = 1_700_000_000_000 + i * 1000;
    let parameter: SsmParameter;
    if (kind === 'options') {
      // Some option paths repeat across prefixes, so later prefixes win over earlier ones.
      const path = `services.bench${i % 2500}.settings.value${i % 3}`;
      parameter = { name: `${prefix}/options/${path}`, type: 'String', value: JSON.stringify(hostileValue(i)), version, lastModified };
    } else if (kind === 'modules') {
      const text = `# module ${i}: text with \${x} '' " \\ is written as it is, never escaped\n{ config, lib, pkgs, ... }:\n{\n  services.bench${i}.enable = true;\n  environment.etc."bench-${i}".text = ''\n    line \${"x"} ''' quoted\n  '';\n}\n`;
      parameter = { name: `${prefix}/modules/bench-${i}`, type: 'String', value: text, version, lastModified };
    } else {
      parameter = { name: `${prefix}/secrets/bench-${i}`, type: 'SecureString', value: new Secret(`s3cr3t-${i}-"\${x}''`), version, lastModified };
    }
    perPrefix[p]?.push(parameter);
  }
  return {
    prefixes: PREFIXES.map((prefix, p) => ({
      prefix,
      parameters: (perPrefix[p] ?? []).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    })),
    skipped: [],
    calls: 0,
  };
}

/** The baseline: read every value's JSON and write it out again (modules and secrets are copied). */
function jsonRoundTrip(parameters: readonly SsmParameter[]): number {
  let bytes = 0;
  for (const p of parameters) {
    if (typeof p.value !== 'string') bytes += p.value.reveal().length;
    else if (p.name.includes('/options/')) bytes += JSON.stringify(JSON.parse(p.value)).length;
    else bytes += p.value.length;
  }
  return bytes;
}

/** Writes the plan to a scratch directory and runs the real parser over every file at once. */
async function parseGate(plan: RenderPlan): Promise<number | undefined> {
  const nix = ['/usr/bin/nix-instantiate', ...(process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, 'nix-instantiate'))].find((p) => existsSync(p));
  if (!nix) return undefined;
  const dir = await mkdtemp(path.join(tmpdir(), 'nixos-ec2-agent-bench-render-'));
  try {
    const files: string[] = [];
    for (const f of [...plan.parts, plan.configuration]) {
      const target = path.join(dir, f.path);
      await mkdir(path.dirname(target), { recursive: true });
      await writeFile(target, f.text);
      files.push(target);
    }
    const storeArgs = process.getuid?.() === 0 ? [] : ['--store', 'dummy://'];
    const t0 = performance.now();
    const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve, reject) => {
      const child = spawn(nix, ['--parse', ...storeArgs, '--', ...files], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
      child.on('error', reject);
      child.on('close', (c) => resolve({ code: c ?? 1, stderr: err }));
    });
    const ms = performance.now() - t0;
    if (code !== 0) throw new Error(`render: the rendered Nix does not parse:\n${stderr.slice(0, 2000)}`);
    return ms;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function ssmFetch(n: number): Promise<{ calls: number; minimum: number; logged: number; fetchMs: number }> {
  const ssm = await SsmEmulator.start({ region: REGION, throughput: null });
  try {
    const perPrefix = PREFIXES.map(() => 0);
    for (let i = 0; i < n; i++) {
      const p = i % PREFIXES.length;
      perPrefix[p] = (perPrefix[p] ?? 0) + 1;
      ssm.put({ Name: `${PREFIXES[p]}/options/services.bench${i}.enable`, Value: 'true', Type: 'String' });
    }
    const { SSMClient, GetParametersByPathCommand } = await import('@aws-sdk/client-ssm');
    const client = new SSMClient({
      region: REGION,
      endpoint: ssm.url,
      credentials: { accessKeyId: 'AKIDBENCHEXAMPLE', secretAccessKey: 'bench-secret-access-key' },
      maxAttempts: 5,
      retryMode: 'adaptive',
    });
    try {
      const source = SsmSource.fromClient(client, GetParametersByPathCommand);
      const before = ssm.requests.length;
      const t0 = performance.now();
      const snapshot = await source.fetch(['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}'], { 'instance-id': INSTANCE, region: REGION, asg: GROUP });
      const fetchMs = performance.now() - t0;
      const got = snapshot.prefixes.reduce((k, p) => k + p.parameters.length, 0);
      if (got !== n) throw new Error(`render: the SSM fetch returned ${got} parameters, not ${n}`);
      const logged = ssm.requests.slice(before).filter((r) => r.operation === 'GetParametersByPath').length;
      // An empty prefix still costs its one call.
      const minimum = perPrefix.reduce((k, c) => k + Math.max(1, Math.ceil(c / PAGE)), 0);
      return { calls: snapshot.calls, minimum, logged, fetchMs };
    } finally {
      client.destroy();
    }
  } finally {
    await ssm.close();
  }
}
