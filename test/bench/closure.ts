// `npm run bench -- closure`: from a pushed `system` parameter to the new generation activated in
// the sandbox (a real signed closure substituted by the real Nix from a binary cache on
// 127.0.0.1), beside the same change pushed as a configuration that the stand-in builds with a
// build delay standing for evaluation and build on the instance. Both sides are one
// `converge --once` of the agent after the push, on a freshly booted sandbox instance.
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildSystem, generateKey, nixStoreMissing, publish, serveCache, systemValue } from '../support/binary-cache.js';
import { Instance } from '../support/e2e.js';
import { epochMs, intFlag, median, parseBenchArgs, ratio, round, type BenchResult, type Print } from './common.js';

/**
 * Pushes a change, converges once, and returns the milliseconds from the push to the end of
 * `switch-to-configuration test` (the generation activated), read from the agent's log.
 */
async function pushToActivated(i: Instance, push: () => void, env: Record<string, string>): Promise<{ ms: number; narBytes: number }> {
  const t0 = epochMs();
  push();
  const result = await i.run(['converge', '--once', '--json'], env);
  if (result.code !== 0) throw new Error(`converge --once exited ${result.code}: ${result.stdout.slice(-400)}`);
  const events = await i.logEvents();
  const activated = events.find((e) => e.event === 'step.end' && e.stage === 'activate');
  if (!activated) throw new Error('no activation in the agent\'s log');
  const realised = events.find((e) => e.event === 'closure.realised') as { narBytes?: number } | undefined;
  return { ms: Date.parse(String(activated.time)) - t0, narBytes: realised?.narBytes ?? 0 };
}

/** The stand-in's nixos-rebuild behind a delay: the time evaluation and build take on an instance. */
async function delayedRebuild(i: Instance, dir: string, delayMs: number): Promise<string> {
  const config = JSON.parse(await readFile(i.sandbox.layout.config, 'utf8')) as { rebuild: { nixosRebuild: string } };
  const wrapper = path.join(dir, `nixos-rebuild-delayed-${path.basename(i.dir)}`);
  await writeFile(wrapper, `#!/bin/sh\n[ "$1" = build ] && sleep ${(delayMs / 1000).toFixed(3)}\nexec ${JSON.stringify(config.rebuild.nixosRebuild)} "$@"\n`);
  await chmod(wrapper, 0o755);
  return wrapper;
}

export async function run(args: readonly string[], print: Print): Promise<BenchResult> {
  const flags = parseBenchArgs('closure', args, { 'build-delay-ms': { type: 'string' }, 'kernel-kib': { type: 'string' } });
  const quick = Boolean(flags.quick);
  const runs = intFlag('runs', flags.runs, quick ? 1 : 3);
  const delayMs = intFlag('build-delay-ms', flags['build-delay-ms'], quick ? 500 : 5_000);
  const kernelKiB = intFlag('kernel-kib', flags['kernel-kib'], quick ? 4 : 8_192);
  const missing = nixStoreMissing();
  if (missing) {
    print(`closure: skipped: ${missing}`);
    return { name: 'closure', figures: { skipped: 'no-nix' } };
  }

  const work = await mkdtemp(path.join(tmpdir(), 'nea-bench-closure-'));
  const key = await generateKey(work, 'bench-1');
  const cacheDir = path.join(work, 'cache');
  const server = await serveCache(cacheDir);
  const closureMs: number[] = [];
  const buildMs: number[] = [];
  let served = 0;
  let narBytes = 0;
  try {
    print(`closure: ${runs} run(s); the build side's nixos-rebuild build waits ${delayMs} ms; a ${kernelKiB} KiB kernel in the closure`);
    for (let r = 0; r < runs; r++) {
      const system = await buildSystem(work, { kernelBytes: kernelKiB * 1024 });
      await publish(system, key, cacheDir);

      const c = await Instance.launch({});
      try {
        const env = { XDG_CACHE_HOME: path.join(c.dir, 'xdg-cache') };
        const before = server.narBytesServed;
        const done = await pushToActivated(c, () => c.put('/nixos/fleet/system', systemValue(system, server.url, [key])), env);
        closureMs.push(done.ms);
        narBytes = done.narBytes;
        served = server.narBytesServed - before;
        if ((await c.running()) !== path.join(c.root, system)) throw new Error('the closure is not the running system');
      } finally {
        await c.close();
      }

      const b = await Instance.launch({});
      try {
        await b.configure({ rebuild: { nixosRebuild: await delayedRebuild(b, work, delayMs) } });
        buildMs.push((await pushToActivated(b, () => b.put('/nixos/fleet/options/environment.variables.BENCH', `"${r}"`), {})).ms);
      } finally {
        await b.close();
      }
    }
  } finally {
    await server.close();
    await rm(work, { recursive: true, force: true });
  }
  const closure = median(closureMs);
  const build = median(buildMs);
  print(`  push → activated, closure  median ${round(closure)} ms over ${closureMs.length}; ${narBytes} bytes substituted (${served} over the wire)`);
  print(`  push → activated, build    median ${round(build)} ms over ${buildMs.length} (with a ${delayMs} ms build)`);
  return {
    name: 'closure',
    figures: { closure_ms: closure, build_ms: build, bytes_substituted: narBytes, bytes_downloaded: served, build_delay_ms: delayMs, closure_over_build: ratio(closure, build) },
  };
}
