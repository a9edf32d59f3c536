// What the agent loads before it launches nixos-rebuild on a first boot is time every instance waits
// on (`npm run bench -- boot`), more so when V8 flags are on node's command line, with which Node
// compiles its own built-in modules without their code cache. These stay off that path: the SDK's HTTP stack
// (IMDS is read with node:http; node:https and TLS come only with it), zlib (gzip'd user data
// only), worker_threads and assert (required by pino and sonic-boom for nothing the agent uses),
// node:module (the bundle takes built-ins from process.getBuiltinModule; tools/bundle.mjs) and
// node:crypto (digests are agent/sha256.ts; signatures are checked only for a closure). A preload records Node's loaded built-ins at the moment nixos-rebuild is spawned.
import assert from 'node:assert/strict';
import { chmod, copyFile, link, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { CLI, terminate, waitFor, withInstance } from '../support/e2e.js';
import { canSeedCompileCache, launchFile, seedCompileCache, shippedLaunch } from '../support/launch.js';

const NODE22 = node22();

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

  // What the package ships (nix/package.nix: seed-compile-cache through the wrapper, the cache in the
  // store) must be what a first start finds: every module of the agent compiled under the flags it
  // runs with. Node >= 22.10 makes the cache; CI brings one (NODE22_TEST_BIN, .ci/run).
  test('a first converge --once, a first run and the other commands take every module from the compile cache the package makes, and write nothing there', { skip: NODE22 ? false : 'no Node >= 22.10 here (NODE22_TEST_BIN names one)' }, async (t) => {
    const node = NODE22 as string;
    const launch = launchFile();
    const cache = await mkdtemp(path.join(tmpdir(), 'boot-path-seeded-'));
    const tmp = await mkdtemp(path.join(tmpdir(), 'boot-path-tmp-'));
    t.after(() => Promise.all([rm(cache, { recursive: true, force: true }), rm(tmp, { recursive: true, force: true })]));
    const uid = process.getuid?.() ?? 0;
    seedCompileCache(node, launch, cache, uid);
    const [dir, ...others] = await readdir(cache);
    assert.equal(others.length, 0, 'one directory, for one Node, its flags and one user');
    assert.match(dir as string, new RegExp(`-${uid}$`), 'named after the user the cache is for');
    const seeded = await snapshot(path.join(cache, dir as string));
    const env = { ...launch.env, NODE_COMPILE_CACHE: cache, NODE_DEBUG_NATIVE: 'COMPILE_CACHE', TMPDIR: tmp };
    let onceModules = new Set<string>();

    await withInstance({ userData: '{ ... }:\n{\n  networking.hostName = "compile-cache";\n}\n', config: { ssm: { enabled: false } } }, async (i) => {
      const once = await i.run(['converge', '--once', '--json'], env, { node });
      assert.equal(once.code, 0, once.stderr);
      onceModules = assertAllFromCache(once.stderr, ['cli.js', 'nixos-ec2-agent.js'], 'converge --once');
      // The other commands load their configuration first too, as the cache was made.
      for (const args of [['status', '--json'], ['generations', '--json'], ['render', '--json']]) {
        const other = await i.run(args, env, { node });
        assert.equal(other.code, 0, other.stderr);
        assertAllFromCache(other.stderr, ['cli.js', 'nixos-ec2-agent.js'], args[0] as string);
      }
    });
    // The daemon with SSM on: what it loads after the late V8 flags (the SDK) is in the cache too.
    await withInstance({ parameters: [{ Name: '/nixos/fleet/revision', Value: '1', Type: 'String' }] }, async (i) => {
      const run = i.start(['run'], env, { node });
      try {
        await waitFor('the first convergence', async () => ((await i.statusFile())?.firstConvergenceDone ? true : undefined));
      } finally {
        await terminate(run);
      }
      const { stderr } = await run.done;
      const daemon = assertAllFromCache(stderr, ['cli.js', 'nixos-ec2-agent.js'], 'run');
      const sdk = [...daemon].filter((f) => !onceModules.has(f));
      assert.ok(sdk.length > 0, `run (SSM on) took modules that converge --once (SSM off) never loads from the cache too: ${[...daemon].join(' ')}`);
    });
    assert.deepEqual(await snapshot(path.join(cache, dir as string)), seeded, 'nothing written into the cache');
    assert.deepEqual(await readdir(tmp), [], "nothing in the temporary directory (Node's default is node-compile-cache there)");
  });

  // The package's cache is root's; an operator's own commands keep theirs in their cache directory.
  test("another user's command under the wrapper keeps a compile cache in that user's cache directory, and takes it from there the next time", { skip: !NODE22 ? 'no Node >= 22.10 here (NODE22_TEST_BIN names one)' : process.getuid?.() !== 0 ? 'runs commands as another user: needs root' : false }, async (t) => {
    const node = NODE22 as string;
    const launch = launchFile();
    const user = 65534;
    const dir = await mkdtemp(path.join(tmpdir(), 'boot-path-user-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    // The store as an operator meets it: root's cache, readable by all, written by none.
    const store = path.join(dir, 'store-cache');
    await mkdir(store);
    seedCompileCache(node, launch, store, 0);
    execFileSync('chmod', ['-R', 'a-w,a+rX', store]);
    const seeded = await snapshot(store);
    await chmod(dir, 0o755);
    const home = path.join(dir, 'home');
    await mkdir(home);
    const config = path.join(home, 'config.json');
    await writeFile(config, '{}\n');
    execFileSync('chown', ['-R', `${user}:${user}`, home]);
    // That user may not reach the Node that runs the tests (CI keeps it under root's home): a link
    // to it (or a copy, across file systems) in the test's own directory.
    const userNode = path.join(dir, 'node');
    await link(node, userNode).catch(() => copyFile(node, userNode));
    await chmod(userNode, 0o755);
    const asUser = () =>
      spawnSync(userNode, [...launch.nodeFlags, CLI, 'check-config', config], {
        uid: user,
        gid: user,
        env: { ...launch.env, NODE_COMPILE_CACHE: store, HOME: home, PATH: process.env.PATH ?? '', NODE_DEBUG_NATIVE: 'COMPILE_CACHE' },
        encoding: 'utf8',
      });
    const first = asUser();
    if (first.error || (first.status !== 0 && /EACCES|Cannot find module|permission denied/i.test(first.stderr))) {
      return t.skip(`this checkout is not readable by uid ${user}: ${first.error?.message ?? first.stderr.split('\n')[0]}`);
    }
    assert.equal(first.status, 0, first.stderr);
    assert.match(first.stdout, /: valid$/m);
    const own = path.join(home, '.cache/nixos-ec2-agent/compile-cache');
    const [tagged, ...others] = await readdir(own);
    assert.equal(others.length, 0);
    assert.match(tagged as string, new RegExp(`-${user}$`), "named after the user, as Node names it");
    assert.ok((await readdir(path.join(own, tagged as string))).length > 0, 'the modules check-config loaded were kept');
    const second = asUser();
    assert.equal(second.status, 0, second.stderr);
    // Every module loaded after the entry (which runs before the cache is chosen) comes from it.
    assertAllFromCache(second.stderr, [], 'check-config as another user, the second time');
    assert.deepEqual(await snapshot(store), seeded, "nothing written into root's cache");
  });

  test('seed-compile-cache makes the cache for the user it names; without NODE_COMPILE_CACHE it refuses in one line', { skip: NODE22 ? false : 'no Node >= 22.10 here (NODE22_TEST_BIN names one)' }, async (t) => {
    const node = NODE22 as string;
    const cache = await mkdtemp(path.join(tmpdir(), 'boot-path-seeded-'));
    t.after(() => rm(cache, { recursive: true, force: true }));
    // The package's build runs as a build user and makes the cache for root (--uid 0); here, for another.
    seedCompileCache(node, launchFile(), cache, 4242);
    const dirs = await readdir(cache);
    assert.equal(dirs.length, 1, dirs.join(' '));
    assert.match(dirs[0] as string, /^v\d+\.\d+\.\d+-[a-z0-9]+-[0-9a-f]+-4242$/);
    assert.ok((await readdir(path.join(cache, dirs[0] as string))).length > 10, 'the modules are in it');
    const refused = spawnSync(node, [CLI, 'seed-compile-cache'], { env: { PATH: process.env.PATH ?? '' }, encoding: 'utf8' });
    assert.equal(refused.status, 2);
    assert.match(refused.stderr, /^nixos-ec2-agent seed-compile-cache: Node v\S+ keeps no compile cache here: it needs NODE_COMPILE_CACHE set/);
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

/** A Node that makes compile caches: this one, or the one NODE22_TEST_BIN names. */
function node22(): string | undefined {
  for (const node of [process.execPath, process.env.NODE22_TEST_BIN]) if (node && existsSync(node) && canSeedCompileCache(node)) return node;
  return undefined;
}

/** Each file of a directory with its size and modification time. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) {
    const st = await stat(path.join(dir, f));
    out[f] = `${st.size} ${st.mtimeMs}`;
  }
  return out;
}

/**
 * From Node's compile-cache debug lines (NODE_DEBUG_NATIVE=COMPILE_CACHE): every module of the agent
 * it read was accepted from the cache, none rejected or compiled anew, and the named ones among them.
 */
function assertAllFromCache(stderr: string, named: readonly string[], what: string): Set<string> {
  const lines = stderr.split('\n').filter((l) => l.startsWith('[compile cache]') && l.includes('/dist/agent/'));
  const accepted = new Set(lines.flatMap((l) => /^\[compile cache\] cache for file:\/\/\S*\/dist\/agent\/(\S+) was accepted/.exec(l)?.[1] ?? []));
  const other = lines.filter((l) => !/was accepted|^\[compile cache\] reading cache from .* success|because cache was the same/.test(l));
  assert.deepEqual(other, [], `${what}: modules not taken from the cache`);
  for (const f of named) assert.ok(accepted.has(f), `${what}: ${f} from the cache (${[...accepted].join(' ')})`);
  assert.ok([...accepted].some((f) => f.startsWith('chunk-')), `${what}: chunks from the cache`);
  return accepted;
}
