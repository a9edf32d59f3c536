// The Nix files: every one parses with the real Nix parser; the NixOS module, evaluated without
// nixpkgs against a stub `lib` whose mk* functions return plain data, declares the documented
// options with the agent's own defaults, and writes a configuration that the agent's schema
// accepts; the package builds what the npm package publishes; npmDepsHash matches the lockfile.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod/v3';

import { ConfigSchema } from '../../agent/config.js';
import { launchFile } from '../support/launch.js';

// Compiled to dist/test/unit/; the Nix files stay at the repository root.
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const NIX_DIR = join(ROOT, 'nix');
const MODULE = join(NIX_DIR, 'module.nix');
const PACKAGE = join(NIX_DIR, 'package.nix');
const HASH_FILE = join(NIX_DIR, 'npm-deps-hash.txt');

const hasNix = spawnSync('nix-instantiate', ['--version'], { stdio: 'ignore' }).status === 0;
const nixSkip = hasNix ? false : 'nix-instantiate is not on PATH (Debian: apt-get install nix-bin)';
// Without root, Nix cannot open the local store; nothing here needs one.
const STORE_ARGS = process.getuid?.() === 0 ? [] : ['--store', 'dummy://'];

function nixFiles(): string[] {
  const found: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.nix')) found.push(path);
    }
  };
  walk(NIX_DIR);
  if (existsSync(join(ROOT, 'flake.nix'))) found.push(join(ROOT, 'flake.nix'));
  return found.sort();
}

function nixEval(expr: string): unknown {
  const dir = mkdtempSync(join(tmpdir(), 'nix-eval-'));
  try {
    const file = join(dir, 'eval.nix');
    writeFileSync(file, expr);
    const run = spawnSync('nix-instantiate', [...STORE_ARGS, '--eval', '--strict', '--json', file], {
      encoding: 'utf8',
    });
    // A failing evaluation may already have printed part of its JSON: the exit code decides.
    assert.equal(run.status, 0, `nix-instantiate --eval failed:\n${run.stderr}`);
    return JSON.parse(run.stdout);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const nixString = (s: string): string => JSON.stringify(s).replace(/\$\{/g, '\\${');

// A `lib` in which option declarations and mk* properties are plain data, and a `pkgs` whose
// packages are strings: enough to read what the module declares and sets without nixpkgs.
const STUB_LIB = `
  lib = rec {
    mkOption = attrs: { _type = "option"; } // attrs;
    mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable " + name + "."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    getExe = p: "\${p}/bin/nixos-ec2-agent";
    optional = c: x: if c then [ x ] else [ ];
    filter = builtins.filter;
    elem = builtins.elem;
    hasSuffix = suffix: s: let ls = builtins.stringLength s; lx = builtins.stringLength suffix; in ls >= lx && builtins.substring (ls - lx) lx s == suffix;
    removeSuffix = suffix: s: if hasSuffix suffix s then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suffix) s else s;
    optionalAttrs = c: a: if c then a else { };
    concatStringsSep = builtins.concatStringsSep;
    toInt = s: builtins.fromJSON s;
    types = {
      bool = { name = "bool"; };
      str = { name = "str"; };
      package = { name = "package"; };
      listOf = t: { name = "listOf"; elemType = t; };
      nullOr = t: { name = "nullOr"; elemType = t; };
      enum = values: { name = "enum"; inherit values; };
      submodule = m: { name = "submodule"; module = m; };
      numbers = {
        positive = { name = "positive"; };
        nonnegative = { name = "nonnegative"; };
        between = lo: hi: { name = "between"; inherit lo hi; };
      };
    };
  };
  pkgs = {
    nixos-ec2-agent = "/nix/store/stub-nixos-ec2-agent";
    coreutils = "/nix/store/stub-coreutils";
    util-linux = "/nix/store/stub-util-linux";
    gitMinimal = "/nix/store/stub-git";
    gnutar = "/nix/store/stub-gnutar";
    gzip = "/nix/store/stub-gzip";
    xz = "/nix/store/stub-xz";
    bash = "/nix/store/stub-bash";
    formats.json = _: {
      type = { name = "json"; };
      generate = name: value: "/nix/store/stub-" + name;
    };
    runCommand = name: env: script: { __toString = _: "/nix/store/stub-" + name; inherit name script; };
  };
  # Resolves mkIf and mkMerge; keeps mkDefault visible unless strip is set.
  unwrap = strip: v:
    if builtins.isAttrs v && v ? _type then
      if v._type == "if" then (if v.condition then unwrap strip v.content else { })
      else if v._type == "merge" then builtins.foldl' merge2 { } (map (unwrap strip) v.contents)
      else if v._type == "override" && strip then unwrap strip v.content
      else v
    else if builtins.isAttrs v && !(v ? __toString) then builtins.mapAttrs (_: unwrap strip) v
    else v;
  merge2 = a: b: a // builtins.mapAttrs (n: bv:
    if !(a ? \${n}) then bv
    else if builtins.isList bv then a.\${n} ++ bv
    else if builtins.isAttrs bv && builtins.isAttrs a.\${n} then merge2 a.\${n} bv
    else bv) b;
  optionDefaults = tree: builtins.mapAttrs (_: o: if o ? _type && o._type == "option" then o.default or null else optionDefaults o) tree;
`;

interface ModuleEval {
  readonly options: Record<string, unknown>;
  readonly config: Record<string, any>;
  readonly settings: Record<string, unknown>;
  readonly checkScript: string | null;
}

/** Applies module.nix to the stub; `cfg` overrides the option values (enable is on). */
function evalModule(cfg: Record<string, unknown> = {}, opts: { amazonInit?: boolean; switchOption?: boolean } = {}): ModuleEval {
  const optionsStub = [
    opts.amazonInit !== false ? 'virtualisation.amazon-init.enable = { };' : '',
    opts.switchOption !== false ? 'system.switch.enable = { };' : '',
  ].join(' ');
  return nixEval(`
    let
      ${STUB_LIB}
      module = import ${nixString(MODULE)};
      overrides = builtins.fromJSON ${nixString(JSON.stringify(cfg))};
      result = module { inherit config options lib pkgs; };
      declared = result.options.services.nixos-ec2-agent;
      set = unwrap false result.config;
      settings = unwrap true set.services.nixos-ec2-agent.settings;
      cfg = optionDefaults declared // { enable = true; } // overrides // { inherit settings; };
      options = { ${optionsStub} };
      config = {
        services.nixos-ec2-agent = cfg;
        system.build.nixos-rebuild = "/nix/store/stub-nixos-rebuild";
        system.switch.enable = true;
        systemd.package = "/nix/store/stub-systemd";
        systemd.services = { };
        nix = { package = "/nix/store/stub-nix"; envVars = { }; nixPath = [ "nixpkgs=/stub/nixpkgs" ]; enable = true; };
        networking.proxy.envVars = { };
        virtualisation.amazon-init.enable = false;
      };
    in {
      options = declared;
      config = set;
      settings = settings;
      checkScript = set.environment.etc."nixos-ec2-agent/config.json".source.script or null;
    }
  `) as ModuleEval;
}

// --- the agent's schema, walked through zod's wrappers (default, nullable, optional) ---
type AnyZod = z.ZodTypeAny & { _def: { typeName: string; innerType?: AnyZod; shape?: () => Record<string, AnyZod> } };

function unwrapped(schema: AnyZod | undefined): AnyZod | undefined {
  let s = schema;
  while (s?._def.innerType) s = s._def.innerType;
  return s;
}

function objectShape(schema: AnyZod): Record<string, AnyZod> | null {
  const s = unwrapped(schema);
  return s?._def.typeName === 'ZodObject' && s._def.shape ? s._def.shape() : null;
}

function enumValues(schema: AnyZod | undefined): unknown {
  return (unwrapped(schema) as unknown as { options?: unknown } | undefined)?.options;
}

function schemaHasPath(path: string): boolean {
  let shape: Record<string, AnyZod> | null = objectShape(ConfigSchema as unknown as AnyZod);
  for (const part of path.split('.')) {
    const field = shape?.[part];
    if (!field) return false;
    shape = objectShape(field);
  }
  return true;
}

const isOverride = (v: unknown): v is { _type: 'override'; priority: number; content: unknown } =>
  typeof v === 'object' && v !== null && (v as { _type?: unknown })._type === 'override';

/** Leaves of the module's settings, each either a mkDefault wrapper or a plain value. */
function settingLeaves(value: unknown, prefix = ''): Array<[string, unknown]> {
  if (isOverride(value) || value === null || typeof value !== 'object' || Array.isArray(value)) return [[prefix, value]];
  return Object.entries(value).flatMap(([k, v]) => settingLeaves(v, prefix ? `${prefix}.${k}` : k));
}

describe('Nix files', () => {
  it('parse with the real Nix parser', { skip: nixSkip }, () => {
    const files = nixFiles();
    assert.ok(files.includes(MODULE) && files.includes(PACKAGE), `nix/module.nix and nix/package.nix exist: ${files}`);
    for (const file of files) {
      const run = spawnSync('nix-instantiate', [...STORE_ARGS, '--parse', file], { encoding: 'utf8' });
      assert.equal(run.status, 0, `${relative(ROOT, file)} does not parse:\n${run.stderr}`);
    }
  });

  it('takes the arguments callPackage and the module system pass', { skip: nixSkip }, () => {
    const args = nixEval(`{
      package = builtins.functionArgs (import ${nixString(PACKAGE)});
      module = builtins.functionArgs (import ${nixString(MODULE)});
    }`) as { package: Record<string, boolean>; module: Record<string, boolean> };
    for (const name of ['lib', 'buildNpmPackage', 'makeWrapper', 'nixos-rebuild-ng', 'nix', 'systemd']) {
      assert.ok(name in args.package, `package.nix takes ${name}`);
    }
    assert.ok(Object.keys(args.package).some((a) => /^nodejs/.test(a)), 'package.nix takes a nodejs');
    // An alias of nixos-rebuild-ng on nixpkgs-unstable (pkgs/top-level/aliases.nix): it would fail
    // with `allowAliases = false`.
    assert.ok(!('nixos-rebuild' in args.package), 'package.nix takes nixos-rebuild-ng by name, not its alias');
    for (const name of ['config', 'lib', 'pkgs', 'options']) assert.ok(name in args.module, `module.nix takes ${name}`);
  });
});

describe('nix/package.nix, applied to a stub buildNpmPackage', { skip: nixSkip }, () => {
  const pkg = (): Record<string, any> =>
    nixEval(`
      let
        lib = {
          importJSON = p: builtins.fromJSON (builtins.readFile p);
          fileContents = p: builtins.head (builtins.match "([^\\n]*)\\n?" (builtins.readFile p));
          makeBinPath = ps: builtins.concatStringsSep ":" (map (p: p + "/bin") ps);
          # nixpkgs' own, from lib/strings.nix.
          escapeShellArg = arg: let string = toString arg; in
            if builtins.match "[[:alnum:],._+:@%/-]+" string == null then "'" + builtins.replaceStrings [ "'" ] [ "'\\\\''" ] string + "'" else string;
          licenses.mit = "mit";
          platforms.linux = [ "x86_64-linux" ];
          fileset = {
            unions = ps: map toString ps;
            toSource = { root, fileset }: { root = toString root; inherit fileset; };
          };
        };
      in import ${nixString(PACKAGE)} {
        inherit lib;
        buildNpmPackage = attrs: attrs;
        nodejs_22 = "/nix/store/stub-nodejs";
        makeWrapper = "/nix/store/stub-makeWrapper";
        nixos-rebuild-ng = "/nix/store/stub-nixos-rebuild";
        nix = "/nix/store/stub-nix";
        systemd = "/nix/store/stub-systemd";
      }
    `) as Record<string, any>;

  it('builds the npm package from a source that has what npm ci, tsc and node-gyp read', () => {
    const p = pkg();
    const pkgJson = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };
    assert.equal(p.pname, 'nixos-ec2-agent');
    assert.equal(p.version, pkgJson.version);
    assert.equal(p.npmBuildScript, 'build');
    assert.equal(p.meta.mainProgram, Object.keys(pkgJson.bin)[0]);
    const files: string[] = p.src.fileset.map((f: string) => relative(ROOT, f));
    // `npm run build` is `tsc -b agent sandbox`: their tsconfig.json files extend tsconfig.base.json.
    for (const needed of ['package.json', 'package-lock.json', 'tsconfig.base.json', 'binding.gyp', 'native', 'agent', 'sandbox']) {
      assert.ok(files.includes(needed), `the source includes ${needed}: ${files}`);
    }
    // lib.fileset refuses a path that does not exist, so each one must.
    for (const f of files) assert.ok(existsSync(join(ROOT, f)), `${f} exists`);
    assert.equal(relative(ROOT, p.src.root), '');
  });

  it('fills the lockfile before fetchNpmDeps and npm ci read it (postPatch, which the fetcher inherits)', () => {
    const p = pkg();
    assert.match(p.postPatch, /^\s*\/nix\/store\/stub-nodejs\/bin\/node \S+-fill-lockfile\.mjs package-lock\.json\s*$/);
  });

  it('installs the addon beside dist/ and puts nixos-rebuild, nix and systemctl on PATH as fallbacks', () => {
    const p = pkg();
    assert.match(p.postBuild, /node-gyp\.js rebuild/);
    // Every addon binding.gyp builds (sd_notify, flock), each where agent/native.ts looks.
    const targets = (JSON.parse(readFileSync(join(ROOT, 'binding.gyp'), 'utf8')) as { targets: { target_name: string }[] }).targets.map((t) => t.target_name);
    assert.deepEqual(targets.sort(), ['flock', 'sd_notify']);
    for (const name of targets) assert.ok(p.postInstall.includes(`install -Dm444 build/Release/${name}.node "$packageOut/build/Release/${name}.node"`), `${name}.node is installed`);
    // The bin is node with the flags and environment the benchmarks chose (nix/launch.json, which
    // the tests and benchmarks launch with too), running the package's cli.js.
    assert.match(p.postInstall, /makeWrapper \/nix\/store\/stub-nodejs\/bin\/node "\$out\/bin\/nixos-ec2-agent"/);
    const launch = launchFile();
    assert.ok(launch.env.NIXOS_EC2_AGENT_V8_FLAGS?.includes('--no-opt'), 'the agent turns V8\'s optimising compiler off once loaded');
    // Node's compile cache in the package's own directory, in the store, never its /tmp default.
    assert.equal(launch.env.NODE_COMPILE_CACHE, '@package@/compile-cache');
    assert.ok(p.postInstall.includes(`--add-flags "${[...launch.nodeFlags, '$packageOut/dist/agent/cli.js'].join(' ')}"`), p.postInstall);
    for (const [name, value] of Object.entries(launch.env)) {
      const m = new RegExp(`--set-default ${name} ('[^']*'|"\\$packageOut"\\S*|[^ '"]+) `).exec(p.postInstall);
      assert.ok(m, `the wrapper sets ${name}: ${p.postInstall}`);
      // What the build's shell makes of the word, with the package's directory as it knows it.
      const word = execFileSync('bash', ['-c', `packageOut=/nix/store/x-nixos-ec2-agent/lib/node_modules/nixos-ec2-agent; printf %s ${m[1]}`], { encoding: 'utf8' });
      assert.equal(word, value.replace(/^@package@/, '/nix/store/x-nixos-ec2-agent/lib/node_modules/nixos-ec2-agent'), name);
    }
    // The cache is made through the wrapper once the files are final, for root.
    assert.match(p.postFixup, /packageOut="\$out\/lib\/node_modules\/nixos-ec2-agent"\n\s*"\$out\/bin\/nixos-ec2-agent" seed-compile-cache --uid 0\n/);
    for (const unit of ['nixos-ec2-agent.service', 'nixos-ec2-agent-converged.target']) {
      assert.ok(p.postInstall.includes(`-${unit} "$out/lib/systemd/system/${unit}"`), `ships ${unit} for systemd.packages`);
    }
    assert.match(p.postInstall, /--suffix PATH : \/nix\/store\/stub-nixos-rebuild\/bin:\/nix\/store\/stub-nix\/bin:\/nix\/store\/stub-systemd\/bin/);
    assert.equal(p.npmDepsHash, readFileSync(HASH_FILE, 'utf8').trim());
  });
});

describe('nix/module.nix, applied to a stub lib', { skip: nixSkip }, () => {
  const defaults = ConfigSchema.parse({});

  it('declares the documented options, each typed and described', () => {
    const { options } = evalModule();
    const expected = [
      'enable', 'package', 'checkConfig', 'logLevel', 'ssm.prefixes', 'ssm.pollInterval', 'ssm.pollJitter',
      'quietPeriod', 'rebuild.mode', 'rebuild.timeout', 'health.probes', 'health.graceSeconds',
      'lifecycle.hookName', 'http.listen', 'openFirewall', 'baseConfiguration', 'localModulesDir', 'before', 'settings',
    ];
    const declared = leafPathsOfOptions(options);
    assert.deepEqual([...declared].sort(), [...expected].sort());
    for (const path of expected) {
      const option = get(options, path) as { type?: unknown; description?: unknown };
      assert.ok(option.type, `${path} has a type`);
      assert.equal(typeof option.description, 'string', `${path} has a description`);
      assert.ok((option.description as string).length > 10, `${path}'s description says something`);
    }
    assert.deepEqual((get(options, 'settings') as { type: unknown }).type, {
      name: 'submodule',
      module: { freeformType: { name: 'json' } },
    });
  });

  it("defaults to the agent's own defaults", () => {
    const { options } = evalModule();
    const d = (path: string): unknown => (get(options, path) as { default: unknown }).default;
    assert.equal(d('enable'), false);
    assert.equal(d('logLevel'), defaults.logLevel);
    assert.deepEqual(d('ssm.prefixes'), defaults.ssm.prefixes);
    assert.equal(d('ssm.pollInterval'), defaults.ssm.pollIntervalSeconds);
    assert.equal(d('ssm.pollJitter'), defaults.ssm.pollJitter);
    assert.equal((d('quietPeriod') as number) * 1000, defaults.watch.quietPeriodMs);
    assert.equal(d('rebuild.mode'), defaults.rebuild.mode);
    assert.equal(d('rebuild.timeout'), defaults.rebuild.buildTimeoutSeconds);
    assert.deepEqual(d('health.probes'), defaults.health.probes);
    assert.equal(d('health.graceSeconds'), defaults.health.graceSeconds);
    assert.equal(d('lifecycle.hookName'), defaults.lifecycle.hookName);
    assert.equal(d('http.listen'), defaults.http.listen);
    assert.equal(d('baseConfiguration'), defaults.local.baseConfiguration);
    assert.equal(d('localModulesDir'), defaults.local.modulesDir);
    const enums = (path: string): unknown => ((get(options, path) as { type: { values: unknown } }).type.values);
    const schema = objectShape(ConfigSchema as unknown as AnyZod);
    assert.deepEqual(enums('logLevel'), enumValues(schema?.['logLevel']));
    assert.deepEqual(enums('rebuild.mode'), enumValues(objectShape(schema!['rebuild']!)?.['mode']));
  });

  it("sets only fields of the agent's schema, each with mkDefault so that settings wins", () => {
    const { config } = evalModule();
    const leaves = settingLeaves(config.services['nixos-ec2-agent'].settings);
    assert.ok(leaves.length >= 12, `the typed options map onto settings: ${leaves.map(([p]) => p)}`);
    for (const [path, value] of leaves) {
      assert.ok(schemaHasPath(path), `settings.${path} is a field of the agent's configuration`);
      assert.ok(isOverride(value) && value.priority === 1000, `settings.${path} is set with mkDefault`);
    }
  });

  it('writes a configuration that the agent accepts, with the option values in it', () => {
    const { settings } = evalModule({
      ssm: { prefixes: ['/fleet', '/instance/{instance-id}'], pollInterval: 30, pollJitter: 0.5 },
      quietPeriod: 0.5,
      rebuild: { mode: 'switch', timeout: 7200 },
      health: { probes: [{ name: 'web', http: { url: 'http://127.0.0.1:8080/' } }], graceSeconds: 0 },
      lifecycle: { hookName: 'converged' },
      http: { listen: '127.0.0.1:9000' },
    });
    const parsed = ConfigSchema.safeParse(settings);
    assert.ok(parsed.success, `the agent rejects the module's configuration: ${JSON.stringify(parsed.error?.issues)}`);
    assert.deepEqual(parsed.data.ssm.prefixes, ['/fleet', '/instance/{instance-id}']);
    assert.equal(parsed.data.ssm.pollIntervalSeconds, 30);
    assert.equal(parsed.data.watch.quietPeriodMs, 500);
    assert.equal(ConfigSchema.parse(evalModule({ quietPeriod: 1.001 }).settings).watch.quietPeriodMs, 1001, 'seconds to milliseconds rounded, not floored');
    assert.equal(parsed.data.rebuild.mode, 'switch');
    assert.equal(parsed.data.rebuild.buildTimeoutSeconds, 7200);
    assert.equal(parsed.data.health.probes[0]?.name, 'web');
    assert.equal(parsed.data.lifecycle.hookName, 'converged');
    assert.equal(parsed.data.http.listen, '127.0.0.1:9000');
    // The defaults too.
    assert.ok(ConfigSchema.safeParse(evalModule().settings).success);
  });

  it("validates the file with the agent's checker and installs it where the unit reads it", () => {
    const { config, checkScript } = evalModule();
    assert.match(checkScript ?? '', /\/bin\/nixos-ec2-agent check-config \/nix\/store\/stub-nixos-ec2-agent\.json/);
    const service = config.systemd.services['nixos-ec2-agent'];
    assert.equal(service.serviceConfig.ExecStart, '/nix/store/stub-nixos-ec2-agent/bin/nixos-ec2-agent run --config /etc/nixos-ec2-agent/config.json');
    assert.ok(config.environment.etc['nixos-ec2-agent/config.json'].source, 'config.json is in /etc');
    assert.ok(!evalModule({ checkConfig: false }).checkScript, 'checkConfig = false skips the check');
  });

  it('runs a notify service that activation neither restarts nor stops', () => {
    const { config } = evalModule({ before: ['app.service'] });
    const s = config.systemd.services['nixos-ec2-agent'];
    assert.equal(s.serviceConfig.Type, 'notify');
    assert.equal(s.serviceConfig.NotifyAccess, 'main');
    assert.equal(s.restartIfChanged, false);
    assert.equal(s.unitConfig['X-StopOnRemoval'], false);
    assert.equal(s.reloadTriggers, undefined, 'a reload queued behind the first convergence would wait for it');
    assert.equal(s.serviceConfig.Restart, 'on-failure');
    assert.match(s.serviceConfig.WatchdogSec, /^\d+s$/);
    assert.match(s.serviceConfig.ExecReload, /kill -HUP \$MAINPID$/);
    assert.equal(s.serviceConfig.RuntimeDirectory, 'nixos-ec2-agent');
    assert.equal(s.serviceConfig.StateDirectory, 'nixos-ec2-agent');
    assert.equal(s.serviceConfig.CacheDirectory, undefined, "the compile cache is the package's, in the store");
    assert.deepEqual(s.wantedBy, ['multi-user.target']);
    assert.ok(s.after.includes('network-online.target') && s.wants.includes('network-online.target'));
    // After multi-user.target (as amazon-init); `before` units wait for the converged target.
    assert.ok(s.after.includes('multi-user.target'));
    assert.equal(s.before, undefined);
    const target = config.systemd.targets['nixos-ec2-agent-converged'];
    assert.deepEqual(target.before, ['app.service']);
    assert.deepEqual(target.wants, ['app.service']);
    assert.deepEqual(target.after, ['nixos-ec2-agent.service']);
    assert.equal(target.unitConfig.DefaultDependencies, false);
    assert.ok(s.wants.includes('nixos-ec2-agent-converged.target'));
    assert.equal(s.serviceConfig.KillMode, 'process');
    assert.ok(s.path.includes('/nix/store/stub-nixos-rebuild'), "the system's own nixos-rebuild is on PATH");
    assert.equal(s.environment.NIX_PATH, 'nixos-config=/etc/nixos/configuration.nix:nixpkgs=/stub/nixpkgs');
    assert.equal(s.environment.HOME, '/root');
    // Any of these would give the unit its own mount namespace, where activation's mounts would stay.
    for (const key of ['ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectKernelTunables', 'ProtectHostname']) {
      assert.equal(s.serviceConfig[key], undefined, `${key} is not set`);
    }
  });

  it('turns amazon-init off where it is imported, and asserts it stays off', () => {
    const { config } = evalModule();
    // mkDefault: a configuration that turns it on meets the assertion, not a definition conflict.
    assert.deepEqual(config.virtualisation['amazon-init'].enable, { _type: 'override', priority: 1000, content: false });
    const assertion = (config.assertions as Array<{ assertion: boolean; message: string }>).find((a) => /amazon-init/.test(a.message));
    assert.ok(assertion, 'an assertion names amazon-init');
    const without = evalModule({}, { amazonInit: false });
    assert.equal(without.config.virtualisation, undefined, 'no amazon-init option, no definition');
  });

  it('opens the port of http.listen only when asked', () => {
    assert.deepEqual(evalModule().config.networking.firewall.allowedTCPPorts, []);
    assert.deepEqual(evalModule({ openFirewall: true }).config.networking.firewall.allowedTCPPorts, [9731]);
    const v6 = evalModule({ openFirewall: true, http: { listen: '[::]:8080' } });
    assert.deepEqual(v6.config.networking.firewall.allowedTCPPorts, [8080]);
    const off = evalModule({ openFirewall: true, http: { listen: null } });
    const failing = (off.config.assertions as Array<{ assertion: boolean; message: string }>).filter((a) => !a.assertion);
    assert.equal(failing.length, 1);
    assert.match(failing[0]!.message, /openFirewall/);
  });
});

describe('nix/npm-deps-hash.txt', () => {
  const hash = existsSync(HASH_FILE) ? readFileSync(HASH_FILE, 'utf8').trim() : '';

  it('holds one SRI sha256 hash', () => {
    assert.match(hash, /^sha256-[A-Za-z0-9+/]{43}=$/);
  });

  // lib.fakeHash: the value to start from, before a build prints the real one.
  it('has been computed (not lib.fakeHash)', () => {
    assert.notEqual(hash, 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=');
  });

  const prefetch = spawnSync('prefetch-npm-deps', ['--help'], { stdio: 'ignore' }).error === undefined;
  it('matches package-lock.json', {
    skip: prefetch
      ? false
      : 'prefetch-npm-deps is not on PATH (`nix-shell -p prefetch-npm-deps`); a build of nix/package.nix fails on the same drift',
  }, () => {
    // The lockfile as the build's postPatch leaves it.
    const dir = mkdtempSync(join(tmpdir(), 'prefetch-'));
    try {
      writeFileSync(join(dir, 'package-lock.json'), readFileSync(join(ROOT, 'package-lock.json')));
      const filled = spawnSync(process.execPath, [join(NIX_DIR, 'fill-lockfile.mjs'), join(dir, 'package-lock.json')], { encoding: 'utf8' });
      assert.equal(filled.status, 0, filled.stderr);
      const run = spawnSync('prefetch-npm-deps', [join(dir, 'package-lock.json')], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.equal(hash, run.stdout.trim(), 'package-lock.json changed: run `npm run nix-deps-hash -- --update`');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// --- option tree helpers ---
function get(tree: Record<string, unknown>, path: string): unknown {
  return path.split('.').reduce<unknown>((node, key) => (node as Record<string, unknown>)[key], tree);
}

function leafPathsOfOptions(tree: Record<string, unknown>, prefix = ''): string[] {
  return Object.entries(tree).flatMap(([k, v]) => {
    const path = prefix ? `${prefix}.${k}` : k;
    return (v as { _type?: string })._type === 'option' ? [path] : leafPathsOfOptions(v as Record<string, unknown>, path);
  });
}
