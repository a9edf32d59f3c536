# The agent as a Nix package: the npm package built with buildNpmPackage, its Node-API addon
# (sd_notify) built with the node-gyp that ships inside nodejs, and a wrapper that finds
# nixos-rebuild, nix and systemctl.
{
  lib,
  buildNpmPackage,
  nodejs_22,
  makeWrapper,
  # nixos-rebuild-ng by name: on nixpkgs-unstable `nixos-rebuild` is only an alias of it (the bash
  # one is gone), and aliases fail with `allowAliases = false`. Under the NixOS module the
  # system's own nixos-rebuild comes first on PATH.
  nixos-rebuild-ng,
  nix,
  systemd,
}:

let
  root = ../.;
  # How the wrapper starts node: its flags and environment. The tests and the benchmarks launch
  # the bin the same way (test/support/launch.ts), so they test and measure what ships.
  launch = lib.importJSON ./launch.json;
  # A value of launch.json as a word of the wrapper's command line; a leading @package@ is the
  # installed package's directory, which only the build's shell knows.
  wrapperWord =
    value:
    let
      tag = "@package@";
      n = builtins.stringLength tag;
    in
    if builtins.substring 0 n value == tag then
      "\"$packageOut\"" + lib.escapeShellArg (builtins.substring n (builtins.stringLength value) value)
    else
      lib.escapeShellArg value;
in
buildNpmPackage {
  pname = "nixos-ec2-agent";
  version = (lib.importJSON ../package.json).version;

  # Only what `npm ci`, `tsc`, the bundler (tools/bundle.mjs) and node-gyp read: editing the
  # NixOS module or the docs must not rebuild the package (the unit files, installed below, and
  # fill-lockfile.mjs do). The build compiles agent/ and sandbox/ (the `emulate` and
  # `sandbox` commands load the emulators and the stand-in from dist/sandbox); test/ is not shipped.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../package.json
      ../package-lock.json
      ../tsconfig.base.json
      ../binding.gyp
      ../native
      ../agent
      ../sandbox
      ../tools
    ];
  };

  nodejs = nodejs_22;

  # package-lock.json carries no `resolved` URLs (the registry's host is not written into the
  # repository), and prefetch-npm-deps caches only entries that have one
  # (pkgs/build-support/node/prefetch-npm-deps/src/parse/lock.rs). This fills them from npm's
  # built-in default registry, where npm itself would put them. buildNpmPackage hands postPatch to
  # fetchNpmDeps too (pkgs/build-support/node/build-npm-package/default.nix), so the fetcher, its
  # hash and `npm ci --offline` all see the same filled file.
  postPatch = ''
    ${nodejs_22}/bin/node ${./fill-lockfile.mjs} package-lock.json
  '';

  # One line: the SRI hash prefetch-npm-deps prints for the filled lockfile (fetcher version 1).
  # `npm run nix-deps-hash -- --update` computes it without Nix and records the lockfile's digest
  # beside it, so that a test notices a lockfile change that was not followed by a new hash.
  npmDepsHash = lib.fileContents ./npm-deps-hash.txt;

  npmBuildScript = "build";

  nativeBuildInputs = [ makeWrapper ];
  # python3 for node-gyp is already there: buildNpmPackage adds nodejs.python.

  # `npm ci --ignore-scripts` never runs the root package's implicit `node-gyp rebuild` install
  # step, so the addon is built here, offline, against the headers npmConfigHook points
  # npm_config_nodedir at.
  postBuild = ''
    node ${nodejs_22}/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js rebuild
  '';

  # npmInstallHook copies what `npm pack` would publish (package.json "files": dist/) and the
  # production node_modules (`npm prune --omit=dev`; typescript and the test libraries go).
  # build/ is not in "files", so the addons (sd_notify, and flock for the root's lock) are copied
  # beside dist/, where the agent looks for them (agent/native.ts).
  postInstall = ''
    packageOut="$out/lib/node_modules/nixos-ec2-agent"
    install -Dm444 build/Release/sd_notify.node "$packageOut/build/Release/sd_notify.node"
    install -Dm444 build/Release/flock.node "$packageOut/build/Release/flock.node"

    # For images without the NixOS module: `systemd.packages = [ pkgs.nixos-ec2-agent ]` links
    # these into the system's unit directory (README.md, "Without the module").
    install -Dm444 ${../systemd/nixos-ec2-agent.service} "$out/lib/systemd/system/nixos-ec2-agent.service"
    install -Dm444 ${../systemd/nixos-ec2-agent-converged.target} "$out/lib/systemd/system/nixos-ec2-agent-converged.target"

    # node runs the bin with the flags and environment of launch.json, chosen by measuring
    # (`npm run bench -- boot` and `-- watch`):
    # - no V8 flag on node's command line: any V8 flag there makes V8 refuse the code cache Node
    #   ships for its own modules, which every start then compiles from source (~10 ms).
    # - --preserve-symlinks, one of Node's own options: the module loader takes each chunk's path
    #   as it is instead of resolving it through realpath (the package holds no symlinks). On Node
    #   22 those realpath walks alone made node:path's character loop hot enough for V8 to compile
    #   it with its optimising compiler before the agent turns that off, which brought ~5 MiB of
    #   the compiler's own machine code into the idle daemon's resident memory.
    # - NIXOS_EC2_AGENT_V8_FLAGS="--no-opt --no-sparkplug", which the agent sets once its modules
    #   are loaded (agent/cli.ts): no optimised or baseline machine code, nor the compiler memory
    #   behind it, keeps the idle daemon ~5 MiB smaller, about what --lite-mode saved (which, on
    #   the command line, also cost the code cache and took WebAssembly away).
    # - NODE_COMPILE_CACHE=$packageOut/compile-cache: Node 22's compile cache for every module of
    #   the agent, made below (postFixup) and kept in the store with the code it is for, so that an
    #   instance's very first start, most starts in an Auto Scaling group, finds it warm. The store
    #   is read-only: Node reads the cache there and silently writes nothing. Never Node's default,
    #   /tmp/node-compile-cache: any user can make that directory first and fill it with code cache
    #   for a root process to run. The cache is root's (seed-compile-cache --uid 0); another user's
    #   commands keep one of their own under ~/.cache (agent/cli.ts, userCompileCache).
    # Weighed and left out, as no better than the spread between runs: --optimize-for-size,
    # --single-threaded(-gc), --max-semi-space-size=1, MALLOC_ARENA_MAX=2, UV_THREADPOOL_SIZE=2
    # (=1 was slower); a V8 startup snapshot of the agent (node --snapshot-blob) started faster and
    # held 8 MiB more at idle (README.md).
    # --suffix, not --prefix: a unit's own PATH (the NixOS module puts the system's
    # nixos-rebuild, nix and systemd there) must win over these fallbacks.
    rm "$out/bin/nixos-ec2-agent"
    makeWrapper ${nodejs_22}/bin/node "$out/bin/nixos-ec2-agent" \
      --add-flags "${builtins.concatStringsSep " " (launch.nodeFlags ++ [ "$packageOut/dist/agent/cli.js" ])}" \
      ${builtins.concatStringsSep " " (map (name: "--set-default ${name} ${wrapperWord launch.env.${name}}") (builtins.attrNames launch.env))} \
      --suffix PATH : ${
        lib.makeBinPath [
          nixos-rebuild-ng
          nix
          systemd
        ]
      }
  '';

  # The compile cache, made once the files are final (fixupPhase has patched cli.js's shebang; Node
  # takes an entry only for the source it was made from). Through the wrapper, so with the flags and
  # environment the agent starts with: V8 takes a cached module only under the flags it was compiled
  # under. Node names the cache after the user (src/compile_cache.cc); the builder is not root,
  # whom the unit runs the agent as, hence --uid 0.
  postFixup = ''
    packageOut="$out/lib/node_modules/nixos-ec2-agent"
    "$out/bin/nixos-ec2-agent" seed-compile-cache --uid 0
  '';

  meta = {
    description = "Converge NixOS EC2 instances to the configuration in EC2 user data and SSM Parameter Store";
    license = lib.licenses.mit;
    mainProgram = "nixos-ec2-agent";
    platforms = lib.platforms.linux;
  };
}
