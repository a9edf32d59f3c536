// What the agent loads before it launches nixos-rebuild on a first boot is time every instance waits
// on (`npm run bench -- boot`), more so when V8 flags are on node's command line, with which Node
// compiles its own built-in modules without their code cache. These stay off that path: the SDK's HTTP stack
// (IMDS is read with node:http; node:https and TLS come only with it), zlib (gzip'd user data
// only), worker_threads and assert (required by pino and sonic-boom for nothing the agent uses),
// node:module (the bundle takes built-ins from process.getBuiltinModule; tools/bundle.mjs) and
// node:crypto (digests are agent/sha256.ts; signatures are checked only for a closure). A preload records Node's loaded built-ins at the moment nixos-rebuild is spawned.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { terminate, waitFor, withInstance } from '../support/e2e.js';
import { shippedLaunch } from '../support/launch.js';

const PRELOAD = `
import { writeFileSync } from 'node:fs';
import { ChildProcess } from 'node:child_process';
const before = new Set(process.moduleLoadList);
const spawn = ChildProcess.prototype.spawn;
ChildProcess.prototype.spawn = function (options) {
  if (String(options.file).endsWith('nixos-rebuild')) {
    const loaded = process.moduleLoadList.filter((m) => !before.has(m) && m.startsWith('NativeModule ')).map((m) => m.slice('NativeModule '.length));
    writeFileSync(process.env.RECORD, JSON.stringify(loaded));
  }
  return spawn.call(this, options);
};
`;

// Records what is loaded when the agent sets the launch's late V8 flags (agent/cli.ts): it imports
// neither child_process nor http itself, so what it finds, the agent loaded.
// At exit it adds what was loaded after the flags: Node's modules compiled without their code cache.
const FLAGS_PRELOAD = `
import { writeFileSync } from 'node:fs';
import v8 from 'node:v8';
const set = v8.setFlagsFromString;
const builtins = () => process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice('NativeModule '.length));
let seen;
v8.setFlagsFromString = function (flags) {
  seen = { flags, loaded: builtins() };
  writeFileSync(process.env.RECORD, JSON.stringify(seen));
  return set.call(this, flags);
};
process.on('exit', () => {
  if (seen) writeFileSync(process.env.RECORD, JSON.stringify({ ...seen, after: builtins().filter((m) => !seen.loaded.includes(m)) }));
});
`;

// On Node >= 22 node:util loads worker_threads itself.
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const NOT_ON_THE_BOOT_PATH = ['https', 'tls', 'zlib', 'assert', 'http2', 'crypto', 'module', ...(NODE_MAJOR >= 22 ? [] : ['worker_threads'])];

/**
 * A first `converge --once` with `preload` imported first; what the preload wrote to the file named
 * by $RECORD, parsed.
 */
async function recordFirstConvergence<T>(hostName: string, preload: string, ssm = false): Promise<T> {
  let seen: T | undefined;
  await withInstance({ userData: `{ ... }:\n{\n  networking.hostName = "${hostName}";\n}\n`, config: { ssm: { enabled: ssm } } }, async (i) => {
    const file = path.join(i.dir, 'record-preload.mjs');
    const record = path.join(i.dir, 'record.json');
    await writeFile(file, preload);
    const result = await i.run(['converge', '--once', '--json'], { NODE_OPTIONS: `--import ${file}`, RECORD: record });
    assert.equal(result.code, 0, result.stderr);
    seen = JSON.parse(await readFile(record, 'utf8')) as T;
  });
  return seen as T;
}

describe('the boot path', () => {
  test('a first convergence launches nixos-rebuild without loading the SDK HTTP stack, zlib, worker_threads, assert, node:module or node:crypto', async () => {
    const loaded = await recordFirstConvergence<string[]>('boot-path', PRELOAD);
    // The check can see what it looks for: the agent's own HTTP client is there.
    assert.ok(loaded.includes('http'), loaded.join(' '));
    assert.deepEqual(
      NOT_ON_THE_BOOT_PATH.filter((m) => loaded.includes(m)),
      [],
      `loaded before nixos-rebuild: ${loaded.join(' ')}`,
    );
  });

  // What an instance runs at boot is the daemon, whose watches, control socket and Auto Scaling
  // reporter start beside its first pass: the reporter's first look (DescribeAutoScalingInstances,
  // with the SDK it loads and node:crypto to sign) waits for the rebuild.
  test('the daemon, as the unit starts it at boot, launches nixos-rebuild before its Auto Scaling reporter loads anything, with none of the built-ins kept off converge --once\'s path', async () => {
    await withInstance({ userData: '{ ... }:\n{\n  networking.hostName = "boot-path-daemon";\n}\n', config: { ssm: { enabled: false }, lifecycle: { enabled: true } } }, async (i) => {
      assert.equal(i.world.autoscaling.instance(i.instanceId)?.lifecycleState, 'Pending:Wait', 'the instance waits in its launch hook');
      const file = path.join(i.dir, 'record-preload.mjs');
      const record = path.join(i.dir, 'record.json');
      await writeFile(file, PRELOAD);
      const daemon = i.start(['run'], { NODE_OPTIONS: `--import ${file}`, RECORD: record });
      let loaded: string[];
      try {
        loaded = await waitFor('the daemon to launch nixos-rebuild', async () => (existsSync(record) ? (JSON.parse(await readFile(record, 'utf8')) as string[]) : undefined));
      } finally {
        await terminate(daemon);
      }
      assert.ok(loaded.includes('http'), loaded.join(' '));
      assert.deepEqual(
        NOT_ON_THE_BOOT_PATH.filter((m) => loaded.includes(m)),
        [],
        `loaded before nixos-rebuild: ${loaded.join(' ')}`,
      );
    });
  });

  // Any V8 flag on node's command line makes V8 refuse the code cache of Node's own modules, so the
  // wrapper's flags wait until the command has loaded its modules and their built-ins, and those
  // the SSM client will load.
  test("the launch's V8 flags are set once the command's modules and their built-ins are loaded", async () => {
    const flags = shippedLaunch().env.NIXOS_EC2_AGENT_V8_FLAGS;
    assert.ok(flags, 'nix/launch.json sets NIXOS_EC2_AGENT_V8_FLAGS');
    const seen = await recordFirstConvergence<{ flags: string; loaded: string[] }>('late-flags', FLAGS_PRELOAD);
    assert.equal(seen.flags, flags);
    for (const m of ['child_process', 'http', 'fs/promises']) assert.ok(seen.loaded.includes(m), `${m} loaded before the flags: ${seen.loaded.join(' ')}`);
    assert.ok(!seen.loaded.includes('tls'), 'without SSM, no TLS');
    // With SSM on, what its client loads on the first pass is loaded before the flags too.
    const withSsm = await recordFirstConvergence<{ flags: string; loaded: string[]; after: string[] }>('late-flags-ssm', FLAGS_PRELOAD, true);
    for (const m of ['https', 'tls', 'crypto', 'zlib']) assert.ok(withSsm.loaded.includes(m), `${m} loaded before the flags: ${withSsm.loaded.join(' ')}`);
    // Nothing of Node's was left to compile without its cache: not Node's web streams nor Web Crypto,
    // which the SDK reaches through globals, nor what an ES module import of node:process or
    // node:util would read (the diagnostic report, worker_threads; tools/bundle.mjs).
    assert.deepEqual(withSsm.after, [], 'loaded after the flags');
    // Node's own options there are fine (they leave V8's flags, and so its code caches, alone).
    const v8Options = new Set([...execFileSync(process.execPath, ['--v8-options'], { encoding: 'utf8' }).matchAll(/^ {2}--([a-z0-9-]+)/gm)].map((m) => m[1]));
    assert.ok(v8Options.has('lite-mode'), 'V8 lists its options');
    const v8OnCommandLine = shippedLaunch().nodeFlags.filter((f) => v8Options.has(f.replace(/^--(no-)?/, '').replace(/=.*$/, '').replace(/_/g, '-')));
    assert.deepEqual(v8OnCommandLine, [], "no V8 flag on node's command line");
  });

  test("keeps Node's compile cache where the launch names it, never in Node's default under the temporary directory", { skip: NODE_MAJOR >= 22 ? false : 'Node < 22 has no compile cache' }, async () => {
    const cache = shippedLaunch().env.NODE_COMPILE_CACHE as string;
    const tmp = await mkdtemp(path.join(tmpdir(), 'boot-path-tmp-'));
    try {
      await withInstance({ userData: '{ ... }:\n{\n  networking.hostName = "compile-cache";\n}\n', config: { ssm: { enabled: false } } }, async (i) => {
        const withCache = await i.run(['converge', '--once', '--json'], { TMPDIR: tmp });
        assert.equal(withCache.code, 0, withCache.stderr);
        // Without the variable (a run outside the package's wrapper): no cache at all.
        const without = await i.run(['status', '--json'], { TMPDIR: tmp, NODE_COMPILE_CACHE: '' });
        assert.equal(without.code, 0, without.stderr);
      });
      assert.ok((await readdir(cache)).some((d) => d.startsWith(`v${process.versions.node}-`)), `the cache is in ${cache}`);
      assert.deepEqual(await readdir(tmp), [], "nothing in the temporary directory (Node's default is node-compile-cache there)");
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  test('a launch whose V8 flags hold a word that is not a flag: one warning line, no flag set, the command runs', async () => {
    await withInstance({ config: { ssm: { enabled: false } } }, async (i) => {
      // --help would have V8 print every option and end the process with 0.
      const result = await i.run(['status', '--json'], { NIXOS_EC2_AGENT_V8_FLAGS: '--no-opt --help' });
      assert.equal(result.code, 1, 'the agent never ran here: status says so');
      assert.doesNotThrow(() => JSON.parse(result.stdout), `stdout is the status alone: ${result.stdout.slice(0, 200)}`);
      const warnings = result.stderr.split('\n').filter((l) => l.includes('NIXOS_EC2_AGENT_V8_FLAGS'));
      assert.equal(warnings.length, 1, result.stderr);
      const line = JSON.parse(warnings[0] as string) as { level: number; event: string; msg: string };
      assert.equal(line.event, 'runtime.warning');
      assert.match(line.msg, /"--help" is not a V8 flag/);
    });
  });
});
