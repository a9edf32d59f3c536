# Evaluates nix/module.nix with the real nixpkgs lib (lib.evalModules) against stand-ins for the
# NixOS options it reads and writes. Each stand-in keeps the name, type and default of nixpkgs'
# declaration (files named beside it); only what the module touches is declared, so a definition
# the module makes of anything else fails the evaluation. Units are rendered to text as
# nixos/lib/systemd-lib.nix does (serviceToUnit, targetToUnit, attrsToSection), minus the default
# PATH packages that nixos/modules/system/boot/systemd.nix adds to every service.
#
# Returns, as JSON-able data: failed assertion messages, the unit texts, the agent's settings,
# the firewall ports and what /etc gets.
{
  lib,
  modulePath,
  # Modules of the scenario (a configuration that enables the agent, amazon-image-like parts, …).
  modules ? [ ],
}:
let
  inherit (lib) mkOption types;

  store = name: "/nix/store/00000000000000000000000000000000-${name}";
  drv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = store name;
    }
    // extra;

  # pkgs/pkgs-lib/formats.nix: json's value type; generate writes the value as JSON.
  jsonFormat = {
    type =
      let
        valueType =
          types.nullOr (
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]
          )
          // {
            description = "JSON value";
          };
      in
      valueType;
    generate = name: value: drv name { passthru.json = builtins.toJSON value; json = builtins.toJSON value; };
  };

  pkgs = {
    nixos-ec2-agent = drv "nixos-ec2-agent-0.1.0" { meta.mainProgram = "nixos-ec2-agent"; };
    coreutils = drv "coreutils-9.5" { };
    util-linux = drv "util-linux-2.40" { };
    gitMinimal = drv "git-minimal-2.47" { };
    gnutar = drv "gnutar-1.35" { };
    gzip = drv "gzip-1.13" { };
    xz = drv "xz-5.6" { };
    bash = drv "bash-5.2p37" { };
    formats.json = _: jsonFormat;
    runCommand = name: env: script: drv name { inherit script; };
    callPackage = _: _: throw "the package is given: nothing builds it here";
  };

  # nixos/lib/systemd-lib.nix: toOption and attrsToSection.
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  attrsToSection =
    as:
    lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (name: value: map (x: "${name}=${toOption x}\n") (if lib.isList value then value else [ value ])) as
      )
    );

  # nixos/lib/systemd-unit-options.nix: the unit options the module sets.
  unitOption = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    (types.listOf (
      types.oneOf [
        types.bool
        types.int
        types.str
        types.path
      ]
    ))
  ];
  commonUnitOptions =
    { config, ... }:
    {
      options = {
        description = mkOption {
          type = types.str;
          default = "";
        };
        wantedBy = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        wants = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        after = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        before = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        requires = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
      };
      # nixos/lib/systemd-lib.nix (unitConfig): the lists become [Unit] settings.
      config.unitConfig =
        lib.optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
        // lib.optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
        // lib.optionalAttrs (config.after != [ ]) { After = toString config.after; }
        // lib.optionalAttrs (config.before != [ ]) { Before = toString config.before; }
        // lib.optionalAttrs (config.description != "") { Description = config.description; };
    };
  serviceOptions =
    { config, ... }:
    {
      imports = [ commonUnitOptions ];
      options = {
        path = mkOption {
          type = types.listOf (
            types.oneOf [
              types.package
              types.str
            ]
          );
          default = [ ];
        };
        environment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
        };
        serviceConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        reloadTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
      };
      # nixos/lib/systemd-lib.nix (serviceConfig): PATH from `path`.
      config.environment.PATH = lib.mkIf (config.path != [ ]) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
    };

  # nixos/lib/systemd-lib.nix: serviceToUnit and targetToUnit (commonUnitText).
  serviceText =
    def:
    ''
      [Unit]
      ${attrsToSection def.unitConfig}
      [Service]
      ${lib.concatMapStrings (n: lib.optionalString (def.environment.${n} != null) "Environment=${builtins.toJSON "${n}=${def.environment.${n}}"}\n") (lib.attrNames def.environment)}
      ${lib.optionalString (!def.restartIfChanged) "X-RestartIfChanged=false\n"}
      ${attrsToSection def.serviceConfig}
    '';
  targetText = def: ''
    [Unit]
    ${attrsToSection def.unitConfig}
  '';

  standins = {
    options = {
      # nixos/modules/misc/assertions.nix
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      # nixos/modules/misc/meta.nix
      meta.maintainers = mkOption {
        type = types.listOf types.raw;
        default = [ ];
      };
      # nixos/modules/system/etc/etc.nix (the fields the module uses)
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption { type = types.path; };
          }
        );
        default = { };
      };
      # nixos/modules/config/system-path.nix
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      # nixos/modules/system/boot/systemd.nix, nixos/modules/system/boot/systemd/tmpfiles.nix
      systemd.package = mkOption {
        type = types.package;
        default = drv "systemd-257" { };
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule serviceOptions);
        default = { };
      };
      systemd.targets = mkOption {
        type = types.attrsOf (types.submodule commonUnitOptions);
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      # nixos/modules/services/networking/firewall.nix
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      # nixos/modules/config/networking.nix
      networking.proxy.envVars = mkOption {
        type = types.attrs;
        default = { };
      };
      # nixos/modules/services/system/nix-daemon.nix, nixos/modules/config/nix.nix,
      # nixos/modules/config/nix-channel.nix
      nix.enable = mkOption {
        type = types.bool;
        default = true;
      };
      nix.package = mkOption {
        type = types.package;
        default = drv "nix-2.28" { };
      };
      nix.envVars = mkOption {
        type = types.attrs;
        default = { };
      };
      nix.nixPath = mkOption {
        type = types.listOf types.str;
        default = [
          "nixpkgs=/nix/var/nix/profiles/per-user/root/channels/nixos"
          "nixos-config=/etc/nixos/configuration.nix"
          "/nix/var/nix/profiles/per-user/root/channels"
        ];
      };
      # nixos/modules/system/activation/top-level.nix
      system.build = mkOption {
        type = types.lazyAttrsOf types.unspecified;
        default = { };
      };
      # nixos/modules/system/activation/switchable-system.nix
      system.switch.enable = mkOption {
        type = types.bool;
        default = true;
      };
    };
    # nixos/modules/installer/tools/tools.nix: nixos-rebuild-ng is the system's nixos-rebuild.
    config.system.build.nixos-rebuild = drv "nixos-rebuild-ng-25.11" { };
    config._module.args.pkgs = pkgs;
  };

  evaluated = lib.evalModules {
    modules = [
      standins
      modulePath
    ]
    ++ modules;
  };
  inherit (evaluated) config;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  units =
    lib.mapAttrs' (name: def: lib.nameValuePair "${name}.service" (serviceText def)) config.systemd.services
    // lib.mapAttrs' (name: def: lib.nameValuePair "${name}.target" (targetText def)) config.systemd.targets;
  wantedBy =
    lib.mapAttrs' (name: def: lib.nameValuePair "${name}.service" def.wantedBy) config.systemd.services
    // lib.mapAttrs' (name: def: lib.nameValuePair "${name}.target" def.wantedBy) config.systemd.targets;
  settingsJson = builtins.toJSON config.services.nixos-ec2-agent.settings;
  firewall = config.networking.firewall.allowedTCPPorts;
  etc = lib.mapAttrs (_: e: toString e.source) config.environment.etc;
  checkScript = config.environment.etc."nixos-ec2-agent/config.json".source.script or null;
  amazonInit = config.virtualisation.amazon-init.enable or null;
}
