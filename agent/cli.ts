#!/usr/bin/env node
// The composition root: parse the command line, build the real edges, run, and map the outcome to
// an exit code (0 success, 1 the work failed and the instance is on a good generation, 2 bad usage
// or invalid input, nothing switched). Imports are lazy per command so the daemon's start stays
// fast; `emulate` and `sandbox` hand over to the sandbox, a program of its own (sandbox/) that the
// agent never imports.
import { parseArgs, type ParseArgsConfig } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

const common: Options = {
  config: { type: 'string' },
  root: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const emulateFlags: Options = {
  'user-data': { type: 'string' },
  parameters: { type: 'string' },
  instance: { type: 'string' },
  host: { type: 'string' },
  'imds-port': { type: 'string' },
  'ssm-port': { type: 'string' },
  'autoscaling-port': { type: 'string' },
};

interface Command {
  readonly summary: string;
  readonly usage: string;
  readonly options: Options;
  run(values: Record<string, string | boolean | undefined>, positionals: string[]): Promise<number>;
}

export class UsageError extends Error {}

/**
 * V8 flags for the agent's own run (NIXOS_EC2_AGENT_V8_FLAGS, which the Nix package's wrapper sets
 * from nix/launch.json), set once a command's modules are loaded rather than on node's command
 * line. Any V8 flag there makes V8 refuse the code cache Node ships for its own modules, so
 * child_process, http, net and fs/promises were compiled from source at every start; set after
 * they are loaded, the flags cost the start nothing. `--no-opt --no-sparkplug` keep the idle
 * daemon about as small as --lite-mode did (`npm run bench -- watch`): no optimised or baseline
 * machine code, nor the compiler memory that makes it.
 */
let lateV8FlagsSet = false;
function lateV8Flags(): void {
  const flags = process.env.NIXOS_EC2_AGENT_V8_FLAGS?.trim();
  if (lateV8FlagsSet || !flags) return;
  lateV8FlagsSet = true;
  const words = flags.split(/\s+/);
  // V8 takes anything, and some words end the process (`--help` prints every option and exits 0)
  // or print plain text on stdout, where a command's --json output goes: only --name[=value] words
  // reach it, and none when one is refused.
  const refused = words.find((w) => !V8_FLAG.test(w) || /^--help\b/.test(w));
  if (refused !== undefined) {
    process.emitWarning(`NIXOS_EC2_AGENT_V8_FLAGS: ${JSON.stringify(refused)} is not a V8 flag (--name or --name=value); none of its flags were set`);
    return;
  }
  process.getBuiltinModule('node:v8').setFlagsFromString(words.join(' '));
}
const V8_FLAG = /^--[a-z][a-z0-9_-]*(=[A-Za-z0-9_.:+-]+)?$/;

/**
 * What the SSM client (the AWS SDK: SigV4, its HTTPS handler, its checksums, its user agent) loads
 * on the first pass: these built-ins (node:process through the bundle's facade for the SDK's
 * import of it, tools/bundle.mjs), and Node's web streams and Web Crypto, which load at the first
 * read of the globals the SDK's stream checks and request ids read. With SSM on they are loaded
 * anyway; loaded before the late flags, they come from the code cache too. Nothing more:
 * node:stream/web, once on this list, brought Node's compression, encoding and transform streams,
 * which the SDK never reads.
 */
const SSM_BUILTINS = ['node:https', 'node:crypto', 'node:zlib', 'node:process'] as const;
const SSM_GLOBALS = ['ReadableStream', 'crypto'] as const;

/**
 * A command's module, loaded with everything it imports (and what the configured sources will
 * load); the late V8 flags apply from then on.
 */
async function load<T>(module: Promise<T>, config?: { readonly ssm: { readonly enabled: boolean } }): Promise<T> {
  const loaded = await module;
  if (config?.ssm.enabled) {
    for (const id of SSM_BUILTINS) process.getBuiltinModule(id);
    for (const name of SSM_GLOBALS) void (globalThis as Record<string, unknown>)[name];
  }
  lateV8Flags();
  return loaded;
}

/**
 * A command that reads the configuration: the configuration first, then the command's module (with
 * `sources`, what the configured sources load too), then the late V8 flags. The package's compile
 * cache was made in that order (seedCompileCache), and V8 takes a cached module only under the
 * flags it was compiled under.
 */
async function configThen<M>(v: Flags, module: () => Promise<M>, act: (m: M, c: Configured) => Promise<number>, options: { sources?: boolean; root?: boolean } = {}): Promise<number> {
  const configured = await config(v, { root: options.root ?? true });
  return act(await load(module(), options.sources ? configured : undefined), configured);
}
type Configured = Awaited<ReturnType<typeof config>>;

const commands: Record<string, Command> = {
  run: {
    summary: 'the daemon: converge at start, keep converging while sources change',
    usage: 'run [--config FILE] [--root DIR]',
    options: common,
    run: (v) => configThen(v, () => import('./daemon.js'), (m, c) => m.runDaemon(c, { reload: () => config(v) }), { sources: true }),
  },
  converge: {
    summary: 'one pass of the loop (--once), or ask the running daemon to converge now (--now)',
    usage: 'converge --once|--now [--config FILE] [--root DIR] [--json]',
    options: { ...common, once: { type: 'boolean' }, now: { type: 'boolean' } },
    run: async (v) => {
      // Both would have the daemon's pass and one of this process's asked for at once: say which.
      if (v.now && v.once) throw new UsageError('--once (one pass here, with no daemon) and --now (ask the running daemon) exclude each other');
      if (v.now) return configThen(v, () => import('./commands.js'), (m, c) => m.control(c, 'converge', Boolean(v.json)));
      if (!v.once) throw new UsageError('converge needs --once (one pass here) or --now (ask the running daemon)');
      return configThen(v, () => import('./commands.js'), (m, c) => m.convergeOnce(c, Boolean(v.json)), { sources: true });
    },
  },
  render: {
    summary: 'fetch the sources and show (or write to DIR) what would be rendered; switches nothing',
    usage: 'render [--config FILE] [--root DIR] [--out DIR] [--json]',
    options: { ...common, out: { type: 'string' } },
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.render(c, v.out as string | undefined, Boolean(v.json)), { sources: true }),
  },
  status: {
    summary: "the agent's state; --wait blocks until the first convergence has ended, or no agent has held the root for a minute (exit 0 converged, 1 failed or none running, 2 degraded)",
    usage: 'status [--json] [--wait] [--config FILE] [--root DIR]',
    options: { ...common, wait: { type: 'boolean' } },
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.status(c, Boolean(v.json), Boolean(v.wait))),
  },
  generations: {
    summary: "the system's generations, each with what built it",
    usage: 'generations [--json] [--config FILE] [--root DIR]',
    options: common,
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.generations(c, Boolean(v.json))),
  },
  rollback: {
    summary: 'switch to the previous good generation and hold there until the sources change',
    usage: 'rollback [--config FILE] [--root DIR] [--json]',
    options: common,
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.control(c, 'rollback', Boolean(v.json))),
  },
  suspend: {
    summary: 'pause convergence on this instance (shown in status)',
    usage: 'suspend [--config FILE] [--root DIR] [--json]',
    options: common,
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.control(c, 'suspend', Boolean(v.json))),
  },
  resume: {
    summary: 'resume convergence on this instance',
    usage: 'resume [--config FILE] [--root DIR] [--json]',
    options: common,
    run: (v) => configThen(v, () => import('./commands.js'), (m, c) => m.control(c, 'resume', Boolean(v.json))),
  },
  rollout: {
    summary: 'progressive rollout of a candidate desired state across the fleet, through SSM',
    usage:
      'rollout start|status|halt|resume|abandon|promote [--prefix PATH] [--json] [--config FILE]\n' +
      '  start:   [--strategy linear|exponential] [--step PERCENT] [--interval SECONDS] [--bake SECONDS] [--threshold FAILURES] [--at ISO-TIME] [--alarms NAME,…] [--fleet-size INSTANCES] [--force]   (--force: begin again one already under way; --fleet-size: the alarms are read by turns, about once a second across the fleet)\n' +
      '  halt:    [--reason TEXT]\n' +
      '  promote: [--force]   (copies the candidate over the stable parameters; without --force only once complete)',
    options: {
      ...common,
      prefix: { type: 'string' },
      strategy: { type: 'string' },
      step: { type: 'string' },
      interval: { type: 'string' },
      bake: { type: 'string' },
      threshold: { type: 'string' },
      at: { type: 'string' },
      alarms: { type: 'string' },
      'fleet-size': { type: 'string' },
      reason: { type: 'string' },
      force: { type: 'boolean' },
    },
    // Only SSM is read and written: the root plays no part (an operator's workstation has none).
    run: (v, positionals) => configThen(v, () => import('./rollout/commands.js'), (m, c) => m.rolloutCommand(c, v, positionals), { root: false }),
  },
  'check-config': {
    summary: 'validate a configuration file; exit 2 naming each bad field',
    usage: 'check-config FILE',
    options: { help: common.help as Options[string] },
    run: async (_v, positionals) => {
      const file = positionals[0];
      if (!file) throw new UsageError('check-config needs a FILE');
      // `check-config *.json` would otherwise call the first one valid and never read the rest.
      if (positionals.length > 1) throw new UsageError(`check-config takes one FILE, got ${positionals.length}`);
      const { loadConfig } = await import('./config.js');
      await loadConfig(file);
      process.stdout.write(`${file}: valid\n`);
      return 0;
    },
  },
  'seed-compile-cache': {
    summary: "(package builds) compile every module of the agent into Node's compile cache, NODE_COMPILE_CACHE, for USER (default root)",
    usage: 'seed-compile-cache [--uid USER]',
    options: { uid: { type: 'string' }, help: common.help as Options[string] },
    run: async (v) => seedCompileCache(parseUid(v.uid)),
  },
  emulate: {
    summary: 'start the IMDS, SSM and Auto Scaling emulators on 127.0.0.1 and print their endpoints',
    usage: 'emulate [--user-data FILE] [--parameters FILE] [--instance FILE] [--host ADDR] [--imds-port N] [--ssm-port N] [--autoscaling-port N]',
    options: { ...emulateFlags, help: common.help as Options[string] },
    run: async (v) => (await loadSandbox()).emulateCommand(v),
  },
  sandbox: {
    summary: 'emulators + agent over a sandboxed root with the stand-in nixos-rebuild',
    usage: 'sandbox [--dir DIR] [--once] [--json] [emulate flags]',
    options: { ...emulateFlags, dir: { type: 'string' }, once: { type: 'boolean' }, json: { type: 'boolean' }, help: common.help as Options[string] },
    run: async (v) => (await loadSandbox()).sandboxCommand(v),
  },
};

type Flags = Record<string, string | boolean | undefined>;

function parseUid(value: string | boolean | undefined): number {
  if (value === undefined) return 0;
  if (typeof value !== 'string' || !/^\d{1,10}$/.test(value) || Number(value) > 0xfffffffe) throw new UsageError(`--uid wants a numeric user id, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** What node:module has from Node 22.1 (the directory) and 22.10 (the flush); @types/node 20 has neither. */
interface CompileCacheApi {
  getCompileCacheDir?(): string | undefined;
  flushCompileCache?(): void;
  enableCompileCache?(directory: string): unknown;
}

/**
 * The package's compile cache is root's: Node names the cache's directory after the user
 * (src/compile_cache.cc) and the package's build makes root's (seed-compile-cache --uid 0). Another
 * user's command under the wrapper (`status`, `generations` as an operator) finds no directory of
 * its own there and cannot make one in the read-only store, so Node keeps no cache for it. Such a
 * command keeps one of its own, in the user's cache directory as any user program does: compiled on
 * its first run, read from there after. Never /tmp, where any user could make it first. Root's
 * commands and the daemon never come here, nor load node:module for it.
 */
function userCompileCache(): void {
  const { NODE_COMPILE_CACHE, XDG_CACHE_HOME, HOME } = process.env;
  if (!NODE_COMPILE_CACHE || (process.getuid?.() ?? 0) === 0) return;
  const node = process.getBuiltinModule('node:module') as CompileCacheApi;
  if (node.enableCompileCache === undefined || node.getCompileCacheDir?.() !== undefined) return;
  // XDG's base directories are absolute or ignored; HOME unset or relative: no cache at all.
  const base = XDG_CACHE_HOME?.startsWith('/') ? XDG_CACHE_HOME : HOME?.startsWith('/') ? `${HOME}/.cache` : undefined;
  if (base) node.enableCompileCache(`${base}/nixos-ec2-agent/compile-cache`);
}

/**
 * Fills Node's compile cache (the directory NODE_COMPILE_CACHE names) with every module of the
 * agent, each compiled as a start compiles it, for the Nix package to keep in the store beside
 * them: an instance's first start, most starts in an Auto Scaling group, then finds it warm, where
 * a cache kept on the instance is only ever warm from the second.
 *
 * V8 takes a cached module only when its flags are the ones it was compiled under, so what the
 * commands load before the late V8 flags (configThen) is compiled before them, and every other
 * chunk of the bundle after. Node names the cache's directory after the user
 * (src/compile_cache.cc: version, arch, V8's cache tag, then getuid()); the package's builder is
 * not the root the unit runs the agent as, so the directory is renamed for `uid`.
 */
async function seedCompileCache(uid: number): Promise<number> {
  const node = process.getBuiltinModule('node:module') as CompileCacheApi;
  const dir = node.getCompileCacheDir?.();
  if (dir === undefined || node.flushCompileCache === undefined) {
    throw new UsageError(`Node ${process.version} keeps no compile cache here: it needs NODE_COMPILE_CACHE set and Node >= 22.10`);
  }
  const ownSuffix = `-${process.getuid?.() ?? 0}`;
  if (!dir.endsWith(ownSuffix)) throw new UsageError(`Node ${process.version} names its compile cache directory ${dir}, not after the user (-${ownSuffix.slice(1)}) as Node 22 does: the cache cannot be made for --uid ${uid}`);
  // As the commands load them (configThen): the configuration, then the module (run: the daemon;
  // the other commands: commands).
  await import('./config.js');
  await load(Promise.all([import('./daemon.js'), import('./commands.js')]), { ssm: { enabled: true } });
  const { readdir, rename, rm } = process.getBuiltinModule('node:fs/promises');
  const here = new URL('.', import.meta.url);
  // The bundle's chunks (tools/bundle.mjs); importing one that is loaded already is a no-op.
  const chunks = (await readdir(here)).filter((f) => /^chunk-[A-Z0-9]+\.js$/.test(f)).sort();
  for (const chunk of chunks) await import(new URL(chunk, here).href);
  node.flushCompileCache();
  let target = dir;
  if (`-${uid}` !== ownSuffix) {
    target = dir.slice(0, -ownSuffix.length) + `-${uid}`;
    await rm(target, { recursive: true, force: true });
    await rename(dir, target);
  }
  process.stdout.write(`seed-compile-cache: ${chunks.length} chunks and the command modules compiled into ${target}\n`);
  return 0;
}

interface SandboxCommands {
  emulateCommand(flags: Flags): Promise<number>;
  sandboxCommand(flags: Flags): Promise<number>;
}

/**
 * The sandbox is compiled apart (dist/sandbox) and shipped beside the agent. The specifier is a
 * variable so the compiler does not pull the sandbox's sources into the agent's program.
 */
async function loadSandbox(): Promise<SandboxCommands> {
  const specifier: string = '../sandbox/index.js';
  return (await import(specifier)) as SandboxCommands;
}

/** Where the NixOS module and the unit put the configuration; commands find it without --config. */
const DEFAULT_CONFIG = '/etc/nixos-ec2-agent/config.json';

/** The configuration of this run; with `root`, its root must be an existing directory (checkRoot). */
async function config(values: Record<string, string | boolean | undefined>, options: { root: boolean } = { root: true }) {
  const [{ loadConfig, checkRoot }, { existsSync }] = await Promise.all([import('./config.js'), import('node:fs')]);
  const overrides: Record<string, unknown> = {};
  if (typeof values.root === 'string') overrides.root = values.root;
  const file =
    typeof values.config === 'string'
      ? values.config
      : process.env.NIXOS_EC2_AGENT_CONFIG || (existsSync(DEFAULT_CONFIG) ? DEFAULT_CONFIG : undefined);
  const loaded = await loadConfig(file, overrides);
  if (options.root) await checkRoot(loaded.root, typeof values.root === 'string' || file === undefined ? { flag: '--root' } : { file });
  return loaded;
}

function help(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  return [
    'nixos-ec2-agent: converge a NixOS EC2 instance to its user data and SSM parameters',
    '',
    'usage: nixos-ec2-agent COMMAND [flags]   (COMMAND --help for its flags)',
    '',
    ...Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'exit codes: 0 success; 1 the work failed (the instance is left on, or rolled back to, a good generation); 2 bad usage or invalid input (nothing was switched)',
    '--debug (any command): print the stack trace of an error',
    '',
  ].join('\n');
}

/** An error as one line: what went wrong and where, never a stack (unless --debug). */
function oneLine(err: unknown, debug: boolean): string {
  if (debug && err instanceof Error && err.stack) return err.stack;
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

export async function main(argv: string[], debug = false): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(help());
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`nixos-ec2-agent: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: command.options, allowPositionals: name === 'check-config' || name === 'rollout', strict: true });
  } catch (err) {
    process.stderr.write(`nixos-ec2-agent ${name}: ${oneLine(err, false)}\nusage: nixos-ec2-agent ${command.usage}\n`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(`usage: nixos-ec2-agent ${command.usage}\n\n${command.summary}\n`);
    return 0;
  }
  try {
    return await command.run(parsed.values as Record<string, string | boolean | undefined>, parsed.positionals);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`nixos-ec2-agent ${name}: ${err.message}\nusage: nixos-ec2-agent ${command.usage}\n`);
      return 2;
    }
    const kind = (err as { kind?: string }).kind;
    if (kind === undefined) {
      // Not one of the expected failures: a bug, or the machine refusing (a port taken, a full disk).
      process.stderr.write(`nixos-ec2-agent ${name}: unexpected error: ${oneLine(err, debug)}${debug ? '' : ' (--debug shows where)'}\n`);
      return 1;
    }
    process.stderr.write(`nixos-ec2-agent ${name}: ${oneLine(err, debug)}\n`);
    return kind === 'invalid-input' ? 2 : 1;
  }
}

/**
 * The runtime's warnings become one structured `warn` line on stderr instead of Node's multi-line
 * text: the AWS SDK warns about the Node version on the first client it makes (process.emitWarning
 * in @aws-sdk/core's emitWarningIfUnsupportedVersion), and the journal must stay one JSON object per
 * line for `journalctl -o cat | jq`. Removing the listeners drops Node's own printer too.
 */
function structuredWarnings(debug: boolean): void {
  let log: Promise<import('./log.js').Logger> | undefined;
  process.removeAllListeners('warning');
  process.on('warning', (warning: Error & { code?: string }) => {
    log ??= import('./log.js').then(({ createLogger }) => createLogger({ destination: process.stderr, level: 'warn' }));
    void log.then((l) =>
      l.warn(
        { event: 'runtime.warning', warning: warning.name, ...(warning.code ? { code: warning.code } : {}), ...(debug && warning.stack ? { stack: warning.stack } : {}) },
        oneLine(warning, false),
      ),
    );
  });
}

/**
 * A reader that closes its end early (`generations | head -1`, `rollback 2>&1 | head`) makes every
 * later write EPIPE, since Node ignores SIGPIPE: what is written there is lost, and the command goes
 * on with its work and ends with its own exit code, rather than dying of an unhandled 'error' event
 * with a stack trace, possibly halfway through a rollback. Not for the daemon (`run`): its output is
 * the journal, and one that cannot log any more is better ended and restarted by systemd.
 */
function tolerateClosedPipes(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
    });
  }
}

// The composition root owns the process: --debug is taken out before any command sees its flags,
// and when the command is done the process ends with its code even if something still holds the
// event loop open (a server a failed start left listening must never make a command hang).
const args = process.argv.slice(2);
const debug = args.includes('--debug');
userCompileCache();
structuredWarnings(debug);
if (args[0] !== 'run') tolerateClosedPipes();
main(
  args.filter((a) => a !== '--debug'),
  debug,
).then(
  (code) => {
    process.exitCode = code;
    setTimeout(() => process.exit(code), 2_000).unref();
  },
  (err: unknown) => {
    process.stderr.write(`nixos-ec2-agent: unexpected error: ${oneLine(err, debug)}\n`);
    process.exit(1);
  },
);
