// Bundles the agent's command line and everything it imports (the agent, pino, zod, chokidar,
// prom-client, the AWS SDK) into a few files, so that the daemon's start reads and compiles a few
// files instead of resolving and reading some 700 modules (`npm run bench -- boot` measures it).
// Run after `tsc -b agent sandbox`, which type-checks and compiles every module.
//
// What it writes, in dist/agent/:
// - nixos-ec2-agent.js, the bundle of agent/cli.ts, and its chunks, chunk-HASH.js;
// - cli.js, the bin, over tsc's compiled cli.ts: it imports the bundle. Node's compile cache (Node
//   >= 22.1) is on only where NODE_COMPILE_CACHE names its directory, as the Nix package's wrapper
//   does (nix/launch.json): never Node's default, a directory under the world-writable /tmp.
// The other files tsc wrote under dist/agent stay: the sandbox imports agent modules from there.
//
// Left out of the bundle: the sandbox (dist/sandbox), a program of its own that cli.ts loads by a
// computed specifier only for `emulate` and `sandbox` (esbuild leaves such an import() as it is),
// and the sd_notify addon, which notify.ts loads with createRequire at run time.
//
// Split at every lazy import(): what a command does not need (the Auto Scaling and SSM clients,
// prom-client, chokidar, the other commands) is a chunk of its own, read only when imported. In
// one file, all of it was read, kept as source text and pre-parsed at every start: at idle the
// daemon was ~4 MiB larger (`npm run bench -- watch`). The chunks sit beside the entry, so paths
// taken from import.meta.url (the sandbox, the sd_notify addon, package.json) are the same in all.
import { build } from 'esbuild';
import { chmod, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const out = `${root}dist/agent/`;
const bundle = 'nixos-ec2-agent.js';
const CHUNK = /^chunk-[A-Z0-9]+\.js(\.map)?$/;

// The chunks of an earlier build would otherwise stay beside the new ones.
for (const name of await readdir(out).catch(() => [])) if (CHUNK.test(name)) await rm(out + name);

// pino's worker-thread transports (pino/lib/transport.js and thread-stream, ~20 KiB read and
// compiled at every start) are never used: the agent logs to a stream (agent/log.ts). In their
// place, a transport() that says so.
const noPinoTransport = {
  name: 'no-pino-transport',
  setup(b) {
    b.onResolve({ filter: /^\.\/(lib\/)?transport$/ }, (a) =>
      path.resolve(a.resolveDir, a.path) === path.join(root, 'node_modules/pino/lib/transport') ? { path: 'pino-transport', namespace: 'no-pino-transport' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'no-pino-transport' }, () => ({
      loader: 'js',
      contents: "module.exports = function transport() { throw new Error('pino transports are not part of the nixos-ec2-agent bundle (tools/bundle.mjs)'); };",
    }));
  },
};

// Two built-ins pino's modules require at load for almost nothing, each several modules of Node's
// own JavaScript compiled at every start (no code cache for them under the wrapper's V8 flags;
// `npm run bench -- boot`): worker_threads in pino/lib/tools.js, for `isMainThread` (the agent
// logs from its main thread only: it starts no worker), and assert in sonic-boom, for two checks of
// its options. In their place, the same answers.
const lighterPinoBuiltins = {
  name: 'lighter-pino-builtins',
  setup(b) {
    const stubs = {
      worker_threads: { from: 'node_modules/pino/lib/', contents: 'module.exports = { isMainThread: true };' },
      assert: {
        from: 'node_modules/sonic-boom/',
        contents: 'module.exports = function assert(ok, message) { if (!ok) throw new Error(message); };',
      },
    };
    b.onResolve({ filter: /^(worker_threads|assert)$/ }, (a) => {
      const stub = stubs[a.path];
      return `${a.resolveDir}/`.startsWith(path.join(root, stub.from)) ? { path: a.path, namespace: 'lighter-pino-builtins' } : undefined;
    });
    b.onLoad({ filter: /.*/, namespace: 'lighter-pino-builtins' }, (a) => ({ loader: 'js', contents: stubs[a.path].contents }));
  },
};

// An ES module import of a built-in reads every one of its exports as Node makes the module's
// facade, and some exports are lazy getters that load more of Node:
// - node:http (Node 22) has undici's WebSocket, CloseEvent and MessageEvent: `import … from
//   'node:http'` loaded undici, which compiles its HTTP parser as WebAssembly as it loads, at every
//   start on Node 22, the Nix package's runtime; under --lite-mode or --jitless (no WebAssembly;
//   the wrapper once ran node with --lite-mode) the process died at its first HTTP import;
// - node:process has `report` and `finalization`, node:util `MIMEType` and, on Node 22, what
//   brings worker_threads, util's diff and the terminal colours: imported by the AWS SDK (its user
//   agent, the credential chain's process provider) and by the agent itself (parseArgs, inspect),
//   they loaded Node's diagnostic report, worker_threads and a dozen more of Node's modules, at
//   every start or after the late V8 flags (agent/cli.ts) without their code cache;
// - node:net has `BlockList` and `SocketAddress`.
// The bundle takes these built-ins from process.getBuiltinModule instead, reading only the names
// listed (a name the code imports and its list lacks fails the build).
const FACADES = {
  http: ['Agent', 'ClientRequest', 'IncomingMessage', 'OutgoingMessage', 'Server', 'ServerResponse', 'METHODS', 'STATUS_CODES', 'createServer', 'get', 'request', 'validateHeaderName', 'validateHeaderValue'],
  process: ['env', 'versions'],
  util: ['inspect', 'parseArgs', 'promisify'],
  net: [],
};
const builtinFacades = {
  name: 'builtin-facades',
  setup(b) {
    const names = Object.keys(FACADES).join('|');
    b.onResolve({ filter: new RegExp(`^(node:)?(${names})$`) }, (a) => (a.kind === 'require-call' ? undefined : { path: a.path.replace(/^node:/, ''), namespace: 'builtin-facades' }));
    b.onLoad({ filter: /.*/, namespace: 'builtin-facades' }, (a) => ({
      loader: 'js',
      contents: `const m = process.getBuiltinModule('node:${a.path}');\nexport default m;\n${FACADES[a.path].length ? `export const { ${FACADES[a.path].join(', ')} } = m;\n` : ''}`,
    }));
  },
};

// zod v3 makes every schema bind 24 of its methods to itself as it is made (ZodType's constructor
// in zod/v3/types.js), so that a caller may pass `schema.parse` around detached. The agent never
// does: it calls each as a method. Its ~360 schemas held some 8,600 bound functions, ~0.4 MiB of the
// idle daemon's heap, and binding them was most of the time the start spent building its schemas.
// In the bundle those lines are dropped (the `spa` alias stays); a zod whose constructor no longer
// reads so fails the build.
const zodUnbound = {
  name: 'zod-unbound',
  setup(b) {
    b.onLoad({ filter: /[\\/]node_modules[\\/]zod[\\/]v3[\\/]types\.js$/ }, async (a) => {
      const source = await readFile(a.path, 'utf8');
      const binds = /^[ \t]*this\.(\w+) = this\.\1\.bind\(this\);\r?\n/gm;
      const found = source.match(binds)?.length ?? 0;
      if (found !== 24) throw new Error(`zod-unbound: ${a.path} binds ${found} methods in its constructor, not the 24 expected: look again at what to drop`);
      return { loader: 'js', contents: source.replace(binds, '') };
    });
  },
};

const result = await build({
  absWorkingDir: root,
  entryPoints: { 'nixos-ec2-agent': 'agent/cli.ts' },
  outdir: out,
  chunkNames: 'chunk-[hash]',
  bundle: true,
  splitting: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // The AWS SDK's ES module builds before its CommonJS ones: an ES module bundles as plain
  // declarations, where a CommonJS one is wrapped and its exports copied for every importer (that
  // copying and the larger text measured ~10 % slower to start).
  mainFields: ['module', 'main'],
  // The CommonJS dependencies (pino, prom-client) call require() for Node's built-ins; an ES
  // module has no require of its own. Built-ins come straight from the runtime: node:module (and
  // its source-map support) would otherwise be compiled at every start for createRequire alone.
  banner: {
    js: "let __bundleRequire;\nconst require = (id) => process.getBuiltinModule(id) ?? (__bundleRequire ??= process.getBuiltinModule('node:module').createRequire(import.meta.url))(id);",
  },
  // Start-up compiles the whole text (V8 pre-parses what it does not run yet): the fewer bytes,
  // the sooner the first line runs. Identifiers keep their names: error classes name themselves
  // (errors.ts) and logs name them, and esbuild's keepNames, which would keep them under renaming,
  // measured 8 MiB more resident memory at idle (a defineProperty on every function). The source
  // map (read only under --enable-source-maps) leads back to the sources.
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: 'linked',
  sourcesContent: false,
  legalComments: 'eof',
  logLevel: 'warning',
  metafile: true,
  plugins: [noPinoTransport, lighterPinoBuiltins, builtinFacades, zodUnbound],
});
// The shebang esbuild kept from cli.ts belongs to the bin only.
await chmod(out + bundle, 0o644);

await writeFile(
  `${out}cli.js`,
  [
    '#!/usr/bin/env node',
    '// Written by tools/bundle.mjs: the bundled agent. Node >= 22.1 keeps its compile cache where',
    "// NODE_COMPILE_CACHE says (the Nix package: its own, in the store), and only there: its",
    "// default, /tmp/node-compile-cache, is a directory anyone on the machine can make first and fill",
    '// with code for a root process to run (Node takes a directory that exists, whoever owns it).',
    `await import('./${bundle}');`,
    '',
  ].join('\n'),
  { mode: 0o755 },
);
await chmod(`${out}cli.js`, 0o755);

// tsc -b re-emits only the files whose source changed, so after an edit elsewhere in agent/ a plain
// `tsc -b` would leave this launcher (and so a stale bundle) as the bin. Without its build info tsc
// rebuilds the agent project in full the next time, writing its own cli.js back.
await rm(`${root}dist/.types/agent.tsbuildinfo`, { force: true });

const inputs = Object.keys(result.metafile.inputs).length;
const chunks = Object.keys(result.metafile.outputs).filter((f) => f.endsWith('.js') && !f.endsWith(bundle));
process.stdout.write(`bundle: dist/agent/${bundle}, ${Math.round((await stat(out + bundle)).size / 1024)} KiB, and ${chunks.length} chunks; ${inputs} modules\n`);
