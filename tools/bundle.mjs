// Bundles the agent's command line and everything it imports (the agent, pino, zod, chokidar,
// prom-client, the AWS SDK) into one file, so that the daemon's start reads and compiles one file
// instead of resolving and reading some 700 modules (`npm run bench -- boot` measures it). Run
// after `tsc -b agent sandbox`, which type-checks and compiles every module.
//
// What it writes, in dist/agent/:
// - nixos-ec2-agent.js, the bundle of agent/cli.ts;
// - cli.js, the bin, over tsc's compiled cli.ts: it turns on Node's compile cache where the
//   runtime has it (Node >= 22.1) and then imports the bundle, so the bundle itself is compiled
//   with the cache on (a module cannot enable the cache for its own compilation).
// The other files tsc wrote under dist/agent stay: the sandbox imports agent modules from there.
//
// Left out of the bundle: the sandbox (dist/sandbox), a program of its own that cli.ts loads by a
// computed specifier only for `emulate` and `sandbox` (esbuild leaves such an import() as it is),
// and the sd_notify addon, which notify.ts loads with createRequire at run time.
//
// One file, no code splitting: a lazy `import('./daemon.js')` becomes a call that runs the
// module's top level on first use, so what is not needed at start is read but not run.
import { build } from 'esbuild';
import { chmod, rm, stat, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const out = `${root}dist/agent/`;
const bundle = 'nixos-ec2-agent.js';

const result = await build({
  absWorkingDir: root,
  entryPoints: ['agent/cli.ts'],
  outfile: out + bundle,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // The AWS SDK's ES module builds before its CommonJS ones: an ES module bundles as plain
  // declarations, where a CommonJS one is wrapped and its exports copied for every importer (that
  // copying and the larger text measured ~10 % slower to start).
  mainFields: ['module', 'main'],
  // The CommonJS dependencies (pino, prom-client) call require() for Node's built-ins; an ES
  // module has no require of its own.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module';\nconst require = __bundleRequire(import.meta.url);" },
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
});
// The shebang esbuild kept from cli.ts belongs to the bin only.
await chmod(out + bundle, 0o644);

await writeFile(
  `${out}cli.js`,
  [
    '#!/usr/bin/env node',
    '// Written by tools/bundle.mjs: the compile cache first, then the bundled agent.',
    "import module from 'node:module';",
    'module.enableCompileCache?.();',
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
process.stdout.write(`bundle: dist/agent/${bundle}, ${inputs} modules, ${Math.round((await stat(out + bundle)).size / 1024)} KiB\n`);
