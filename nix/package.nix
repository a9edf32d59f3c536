# The agent as a Nix package: the npm package built with buildNpmPackage, its Node-API addon
# (sd_notify) built with the node-gyp that ships inside nodejs, and a wrapper that finds
# nixos-rebuild, nix and systemctl.
{
  lib,
  buildNpmPackage,
  nodejs_22,
  makeWrapper,
  # The legacy nixos-rebuild; `.override { nixos-rebuild = nixos-rebuild-ng; }` is the newer
  # rewrite. The agent accepts both (they differ only in passing switch-to-configuration's exit
  # code through). Under the NixOS module the system's own nixos-rebuild comes first on PATH.
  nixos-rebuild,
  nix,
  systemd,
}:

let
  root = ../.;
in
buildNpmPackage {
  pname = "nixos-ec2-agent";
  version = (lib.importJSON ../package.json).version;

  # Only what `npm ci`, `tsc`, the bundler (tools/bundle.mjs) and node-gyp read: editing the
  # NixOS module, the unit file or the docs must not rebuild the package. The build compiles agent/ and sandbox/ (the `emulate` and
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

  # One line, the SRI hash `prefetch-npm-deps package-lock.json` prints. Kept in its own file so
  # that a test can compare it with the lockfile without evaluating Nix.
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
  # build/ is not in "files", so the addon is copied beside dist/, where the agent looks for it.
  postInstall = ''
    packageOut="$out/lib/node_modules/nixos-ec2-agent"
    install -Dm444 build/Release/sd_notify.node "$packageOut/build/Release/sd_notify.node"

    # node runs the bin with V8's --lite-mode, which NODE_OPTIONS refuses: measured by
    # `npm run bench -- watch`, it cuts the idle daemon's resident memory by 7-25 MiB, for a start
    # 0-30 % slower (`npm run bench -- boot --compare=--flags=--lite-mode`) and slower CPU-bound
    # work such as rendering thousands of parameters, which runs once per change.
    # --suffix, not --prefix: a unit's own PATH (the NixOS module puts the system's
    # nixos-rebuild, nix and systemd there) must win over these fallbacks.
    rm "$out/bin/nixos-ec2-agent"
    makeWrapper ${nodejs_22}/bin/node "$out/bin/nixos-ec2-agent" \
      --add-flags "--lite-mode $packageOut/dist/agent/cli.js" \
      --suffix PATH : ${
        lib.makeBinPath [
          nixos-rebuild
          nix
          systemd
        ]
      }
  '';

  meta = {
    description = "Converge NixOS EC2 instances to the configuration in EC2 user data and SSM Parameter Store";
    license = lib.licenses.mit;
    mainProgram = "nixos-ec2-agent";
    platforms = lib.platforms.linux;
  };
}
