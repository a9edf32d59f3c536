# services.nixos-ec2-agent: the agent that converges an EC2 instance to the NixOS configuration
# declared in its user data and in SSM Parameter Store.
#
# The typed options below are the ones most fleets set; each one writes the matching field of
# `settings` with mkDefault, and `settings` is the agent's JSON configuration one to one (the field
# names of its schema), so anything not typed here is still reachable there and wins.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixos-ec2-agent;

  settingsFormat = pkgs.formats.json { };

  # A stable path, not the store path, on the command line: the CLI's other commands
  # (`converge --once`, `render`) find the same file, and a new configuration does not change
  # the unit file.
  configPath = "/etc/nixos-ec2-agent/config.json";

  configFile = settingsFormat.generate "nixos-ec2-agent.json" cfg.settings;

  # As vector.nix does: a configuration the agent would reject fails the system's build, not
  # the agent's start on a running instance.
  checkedConfigFile =
    if cfg.checkConfig then
      pkgs.runCommand "nixos-ec2-agent-checked.json" { preferLocalBuild = true; } ''
        ${lib.getExe cfg.package} check-config ${configFile}
        cp ${configFile} $out
      ''
    else
      configFile;

  listen = cfg.settings.http.listen or null;
  # "0.0.0.0:9731", "[::]:9731", ":9731"
  listenPort =
    let
      m = if listen == null then null else builtins.match ".*:([0-9]+)" listen;
    in
    if m == null then null else lib.toInt (builtins.head m);

  hasAmazonInit = options ? virtualisation.amazon-init.enable;
  hasSwitchOption = options ? system.switch.enable;

  convergedTarget = "nixos-ec2-agent-converged.target";

  # `before` services that multi-user.target also wants: multi-user.target is ordered after what
  # it wants (systemd.target(5)), and such a service after the converged target, after the agent,
  # after multi-user.target: an ordering cycle, which systemd breaks by dropping a job.
  cyclicBefore = lib.filter (
    unit:
    lib.hasSuffix ".service" unit
    && config.systemd.services ? ${lib.removeSuffix ".service" unit}
    && lib.elem "multi-user.target" config.systemd.services.${lib.removeSuffix ".service" unit}.wantedBy
  ) cfg.before;
in
{
  options.services.nixos-ec2-agent = {
    enable = lib.mkEnableOption "nixos-ec2-agent, which converges this instance to the NixOS configuration in EC2 user data and SSM Parameter Store";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.nixos-ec2-agent or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.nixos-ec2-agent or (pkgs.callPackage ./package.nix { })";
      description = "The nixos-ec2-agent package to run.";
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to validate the generated configuration with `nixos-ec2-agent check-config` while
        the system is built. Turn it off only when the package cannot run on the build platform.
      '';
    };

    logLevel = lib.mkOption {
      type = lib.types.enum [
        "fatal"
        "error"
        "warn"
        "info"
        "debug"
        "trace"
        "silent"
      ];
      default = "info";
      description = "The agent's log level (`settings.logLevel`). Logs go to the journal.";
    };

    ssm = {
      prefixes = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [
          "/nixos/fleet"
          "/nixos/asg/{asg}"
          "/nixos/instance/{instance-id}"
        ];
        example = [
          "/nixos/fleet"
          "/nixos/role/web"
          "/nixos/instance/{instance-id}"
        ];
        description = ''
          SSM Parameter Store path prefixes, in order; a later prefix's option wins over
          every earlier definition it overlaps, at the same, a longer or a shorter path.
          `{instance-id}`, `{asg}` and `{region}` are read from the instance metadata service.
          Under each prefix, `options/<dotted.option.path>` holds a JSON value, `modules/<name>`
          the text of a NixOS module and `secrets/<name>` a SecureString
          (`settings.ssm.prefixes`).
        '';
      };

      pollInterval = lib.mkOption {
        type = lib.types.numbers.positive;
        default = 600;
        description = "Seconds between two reads of the SSM parameters (`settings.ssm.pollIntervalSeconds`).";
      };

      pollJitter = lib.mkOption {
        type = lib.types.numbers.between 0 1;
        default = 1;
        description = ''
          Spread of the polls, so a fleet does not call SSM in step: each wait is uniform in
          interval × [1 − jitter/2, 1 + jitter/2] (`settings.ssm.pollJitter`).
        '';
      };
    };

    quietPeriod = lib.mkOption {
      type = lib.types.numbers.nonnegative;
      default = 2;
      description = ''
        Seconds that must pass with no change to any source before the agent converges once, so
        that a batch of parameter writes becomes one rebuild (`settings.watch.quietPeriodMs`,
        in milliseconds there).
      '';
    };

    rebuild = {
      mode = lib.mkOption {
        type = lib.types.enum [
          "safe"
          "switch"
        ];
        default = "safe";
        description = ''
          `safe`: build, activate with `switch-to-configuration test`, verify health, and only
          then make the generation the boot default. `switch`: `nixos-rebuild switch`, then
          verify (amazon-init's order: a crash before the verdict leaves an unverified
          generation as the boot default) (`settings.rebuild.mode`).
        '';
      };

      timeout = lib.mkOption {
        type = lib.types.numbers.positive;
        default = 3600;
        description = ''
          Seconds a build may take before it is killed and counted as failed
          (`settings.rebuild.buildTimeoutSeconds`).
        '';
      };
    };

    health = {
      probes = lib.mkOption {
        type = lib.types.listOf settingsFormat.type;
        default = [ ];
        example = lib.literalExpression ''
          [
            { name = "web"; http = { url = "http://127.0.0.1:8080/health"; expectStatus = 200; }; }
            { name = "db"; command = { argv = [ "pg_isready" ]; }; }
          ]
        '';
        description = ''
          Checks that must pass after an activation for the generation to count as good, besides
          "no unit failed". Each is `{ name; http = { url; expectStatus?; timeoutMs?; }; }` or
          `{ name; command = { argv; timeoutMs?; }; }` (`settings.health.probes`).
        '';
      };

      graceSeconds = lib.mkOption {
        type = lib.types.numbers.nonnegative;
        default = 60;
        description = ''
          Failing checks are retried until this many seconds after activation; then the
          generation is judged unhealthy and rolled back (`settings.health.graceSeconds`).
        '';
      };
    };

    lifecycle.hookName = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "nixos-converged";
      description = ''
        The Auto Scaling launch lifecycle hook to complete (CONTINUE once a pass converges to
        the desired state, ABANDON when none can within the launch budget or no good generation
        runs). `null` discovers it with
        DescribeLifecycleHooks (`settings.lifecycle.hookName`).
      '';
    };

    http.listen = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = "0.0.0.0:9731";
      example = "127.0.0.1:9731";
      description = ''
        host:port for `/healthz` (for ELB and Auto Scaling health checks), `/readyz`, `/status`
        and `/metrics`; `null` turns the HTTP server off (`settings.http.listen`).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to open the HTTP port (from `settings.http.listen`) in the firewall, for a load
        balancer's health checks.
      '';
    };

    baseConfiguration = lib.mkOption {
      type = lib.types.str;
      default = "/etc/nixos/base.nix";
      description = ''
        The image's own NixOS configuration on the instance, imported by the rendered
        /etc/nixos/configuration.nix when it exists (`settings.local.baseConfiguration`). An image
        built from a configuration should install that configuration here, or converging will
        drop everything the image set.
      '';
    };

    localModulesDir = lib.mkOption {
      type = lib.types.str;
      default = "/etc/nixos-ec2-agent/local.d";
      description = ''
        Directory of drop-in NixOS modules from other tools or people; every `*.nix` file in it
        whose name is letters, digits and `_ . + -` (not starting with `.`, `+` or `-`) and
        that is a regular file (or a link to one) is imported, the others named in the status's
        notes, and a change there triggers a
        convergence (`settings.local.modulesDir`).
      '';
    };

    before = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "my-app.service" ];
      description = ''
        Units that must not start before the first convergence has ended (the agent reports
        READY=1 then): ${convergedTarget} wants them and is ordered before them, so they start
        once it is reached, also when they first appear in a configuration the first convergence
        activates. Other units can do the same themselves with
        `wantedBy = [ "${convergedTarget}" ]; after = [ "${convergedTarget}" ];`.
        Such a unit must not also be wanted by multi-user.target (an ordering cycle: the
        agent runs after multi-user.target); the module asserts that for services.
      '';
    };

    settings = lib.mkOption {
      type = lib.types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = lib.literalExpression ''
        {
          retry.failedBackoffSeconds = 300;
          kernel.policy = "reboot";
          kernel.rebootWindow = { lower = "01:00"; upper = "05:00"; };
        }
      '';
      description = ''
        The agent's JSON configuration, field for field (`nixos-ec2-agent check-config` rejects an
        unknown field or a wrong type, naming its path, while the system is built). Values set
        here win over the typed options above. Written to ${configPath}.
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !cfg.openFirewall || listenPort != null;
            message = "services.nixos-ec2-agent.openFirewall needs a port in services.nixos-ec2-agent.http.listen (host:port).";
          }
          {
            assertion = cyclicBefore == [ ];
            message = ''
              services.nixos-ec2-agent.before lists ${lib.concatStringsSep ", " cyclicBefore}, which
              multi-user.target also wants. multi-user.target is ordered after what it wants, and the
              agent after multi-user.target: that is an ordering cycle. Set their wantedBy to
              [ "${convergedTarget}" ] instead (the target is part of multi-user.target).
            '';
          }
        ]
        ++ lib.optional hasSwitchOption {
          assertion = config.system.switch.enable;
          message = "services.nixos-ec2-agent switches the running system: set system.switch.enable = true.";
        };

        # Reached when the first convergence has ended (the agent's start job completes at
        # READY=1); units that must wait for it order themselves after it (see `before`).
        # DefaultDependencies=no: otherwise multi-user.target, which wants this target, would be
        # ordered after it, and so after the agent, which is ordered after multi-user.target.
        systemd.targets.nixos-ec2-agent-converged = {
          description = "First convergence of nixos-ec2-agent has ended";
          wantedBy = [ "multi-user.target" ];
          after = [ "nixos-ec2-agent.service" ];
          wants = cfg.before;
          before = cfg.before;
          unitConfig.DefaultDependencies = false;
          # switch-to-configuration starts every active target but those marked so
          # (switch-to-configuration-ng, pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs).
          # This one stays active when the agent is restarted, and the restarted agent converges
          # before READY=1: a start job for this target would wait for the agent's own start job
          # (After=), and the switch, which the agent waits for, for that job. Units newly wanted
          # by it are still started: multi-user.target's start job pulls them in.
          unitConfig.X-OnlyManualStart = true;
        };

        services.nixos-ec2-agent.settings = {
          logLevel = lib.mkDefault cfg.logLevel;
          ssm = {
            prefixes = lib.mkDefault cfg.ssm.prefixes;
            pollIntervalSeconds = lib.mkDefault cfg.ssm.pollInterval;
            pollJitter = lib.mkDefault cfg.ssm.pollJitter;
          };
          # Rounded, not floored: 1.001 * 1000 is 1000.999… in floating point.
          watch.quietPeriodMs = lib.mkDefault (builtins.floor (cfg.quietPeriod * 1000 + 0.5));
          rebuild = {
            mode = lib.mkDefault cfg.rebuild.mode;
            buildTimeoutSeconds = lib.mkDefault cfg.rebuild.timeout;
          };
          health = {
            probes = lib.mkDefault cfg.health.probes;
            graceSeconds = lib.mkDefault cfg.health.graceSeconds;
          };
          lifecycle.hookName = lib.mkDefault cfg.lifecycle.hookName;
          http.listen = lib.mkDefault cfg.http.listen;
          local = {
            baseConfiguration = lib.mkDefault cfg.baseConfiguration;
            modulesDir = lib.mkDefault cfg.localModulesDir;
          };
        };

        environment.etc."nixos-ec2-agent/config.json".source = checkedConfigFile;
        environment.systemPackages = [ cfg.package ];

        systemd.tmpfiles.rules = [ "d ${cfg.localModulesDir} 0755 root root -" ];

        networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && listenPort != null) listenPort;

        systemd.services.nixos-ec2-agent = {
          description = "Converge NixOS to the configuration in EC2 user data and SSM";

          # After multi-user.target, as amazon-init (nixos/modules/virtualisation/amazon-init.nix).
          # A target wanted by an active one is started, with what it wants, by every switch; one
          # still waiting is not (switch-to-configuration-ng,
          # pkgs/by-name/sw/switch-to-configuration-ng/src/src/main.rs: only units whose state is
          # "active" or "activating" are considered, and each such target is put in
          # units_to_start). Were the agent ordered before multi-user.target (the default for a
          # unit it wants, systemd.target(5)), multi-user.target would still be waiting for
          # READY=1 during the first convergence, and the services user data adds would never be
          # started: their health probes fail and a good configuration is rolled back.
          #
          # What the first convergence starts: `systemctl start` of every active target
          # (multi-user.target and what it pulled in), which brings up each unit the new
          # configuration adds to them, ${convergedTarget} included, and the changed units it
          # stopped (this unit excepted: restartIfChanged = false). Why it cannot wait on
          # itself: switch-to-configuration blocks only on the jobs it submitted (block_on_jobs),
          # here multi-user.target's; multi-user.target is not ordered after this unit (systemd
          # adds no default After= to a target for a unit already ordered after it, which is what
          # amazon-init relies on), nor after ${convergedTarget} (DefaultDependencies=no below).
          # The units ordered after ${convergedTarget} get start jobs that wait for READY=1, but
          # nothing the switch waits for waits on them. The same holds when the agent is restarted
          # and converges again while it is "activating": ${convergedTarget}, active by then, is
          # not started by the switch (X-OnlyManualStart, above).
          wantedBy = [ "multi-user.target" ];
          wants = [
            "network-online.target"
            convergedTarget
          ];
          after = [
            "network-online.target"
            "multi-user.target"
          ];

          # The agent runs `nixos-rebuild switch` itself: activation must neither restart nor
          # stop the process that is waiting for it (as system.autoUpgrade and amazon-init).
          # A new agent package takes effect at the next start of the agent; a new configuration
          # file, once the switch has ended (the agent reads it again after every switch).
          # No reloadTriggers either: during the first convergence the agent is still
          # activating, and switch-to-configuration would wait on a reload job queued behind it.
          restartIfChanged = false;
          unitConfig.X-StopOnRemoval = false;

          # The system's own nixos-rebuild (it matches the nixpkgs the system came from), then what
          # nixos-rebuild and Nix evaluation call out to (channels from `###` user-data lines,
          # fetchTarball, git inputs).
          path = [
            config.system.build.nixos-rebuild
            config.nix.package
            config.systemd.package
            pkgs.coreutils
            # flock: waiting for an activation that a previous agent left running.
            pkgs.util-linux
            pkgs.gitMinimal
            pkgs.gnutar
            pkgs.gzip
            pkgs.xz
            # A `#!/bin/bash` user-data script runs with this bash, NixOS having no /bin/bash:
            # amazon-init's own ${pkgs.runtimeShell} (nixos/modules/virtualisation/amazon-init.nix),
            # whatever the system profile holds.
            pkgs.bash
            # Last, as in the unit for images without the module (systemd/nixos-ec2-agent.service):
            # what health command probes, postConvergeCommand and `#!` user-data scripts call
            # (`pg_isready`, `curl`, `bash` for `#!/usr/bin/env bash`) is in the system profile,
            # and in the generation the agent has just switched to, not in the tools above.
            "/run/current-system/sw"
          ];

          environment =
            config.nix.envVars
            // config.networking.proxy.envVars
            # Root would otherwise open the store directly and build in this unit's cgroup, under
            # its filters, killed with it; through the daemon builds run in its sandbox.
            // lib.optionalAttrs (config.nix.enable or true) { NIX_REMOTE = "daemon"; }
            // {
              # nix-channel and nixos-rebuild read root's channels from here (amazon-init's HOME).
              HOME = "/root";
              # amazon-init's NIX_PATH, with the system's own entries: the configuration built is
              # always the one the agent rendered.
              NIX_PATH = lib.concatStringsSep ":" ([ "nixos-config=/etc/nixos/configuration.nix" ] ++ config.nix.nixPath);
            };

          serviceConfig = {
            # READY=1 once the first convergence has ended; STATUS= at each step.
            Type = "notify";
            # Only the agent's own process may report: nixos-rebuild and activation scripts run
            # as its children and must not be able to send READY=1 in its name.
            NotifyAccess = "main";
            ExecStart = "${lib.getExe cfg.package} run --config ${configPath}";
            # Not Type=notify-reload: that needs systemd 253 and makes `systemctl reload` wait for
            # the agent's READY=1; a signal returns at once, and the agent reports RELOADING=1
            # and READY=1 around re-reading its configuration.
            ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";

            # The agent sends WATCHDOG=1 at half of WATCHDOG_USEC from its own event loop, also
            # while a build runs, so a wedged loop is restarted.
            WatchdogSec = "120s";
            Restart = "on-failure";
            RestartSec = "30s";

            # A ceiling for a first convergence that fails to report progress: while a long
            # first build runs the agent sends EXTEND_TIMEOUT_USEC, which extends this.
            TimeoutStartSec = "2h";
            # The agent runs <toplevel>/bin/switch-to-configuration as its own child, in this
            # unit's cgroup (agent/apply/rebuild.ts). With `mixed` or `control-group` systemd
            # SIGKILLs what is left in the cgroup once the agent has exited or TimeoutStopSec has
            # passed, which can cut an activation in half. With `process` (as the Cachix deploy
            # agent), stop and restart signal the agent alone: on SIGTERM it lets the pass in hand
            # finish within TimeoutStopSec, and an activation that outlives it still runs to its
            # end; a new agent waits for switch-to-configuration's lock
            # (/run/nixos/switch-to-configuration.lock) before it activates anything itself.
            KillMode = "process";
            TimeoutStopSec = "10min";

            # Secrets (0700 secrets/, 0400 files) and the control socket (root only) live here.
            # 0711, not 0700: status.json must stay readable by other programs that know its
            # name, while nothing in the directory can be listed.
            RuntimeDirectory = "nixos-ec2-agent";
            RuntimeDirectoryMode = "0711";
            # Services read their secrets from here after the agent exits or is restarted:
            # /run is emptied at reboot, not when the agent stops.
            RuntimeDirectoryPreserve = "yes";
            StateDirectory = "nixos-ec2-agent";
            StateDirectoryMode = "0700";

            # Hardening. A root daemon that activates whole systems cannot take most of it:
            #
            # Left out, because each gives the unit its own mount namespace, and mounts made by
            # activation (special file systems, /run/wrappers, /run/keys) or by
            # switch-to-configuration running in this cgroup (legacy nixos-rebuild, the agent's
            # rollbacks) would then exist only inside it:
            #   ProtectSystem, ProtectHome (activation also creates /home/* and writes /root),
            #   PrivateTmp, PrivateDevices, PrivateMounts, ProtectKernelTunables,
            #   ProtectKernelModules, ProtectKernelLogs, ProtectControlGroups, ProtectProc,
            #   ReadOnlyPaths/ReadWritePaths/InaccessiblePaths.
            # Left out for what activation and a switch do:
            #   ProtectHostname (a UTS namespace: the hostname set by activation would stay here),
            #   ProtectClock and DevicePolicy/DeviceAllow (installing the boot loader writes the
            #     boot disk),
            #   CapabilityBoundingSet (mount, chown, setuid wrappers, module loading: all of
            #     root's),
            #   NoNewPrivileges and RestrictSUIDSGID (the legacy activation creates the setuid
            #     wrappers in /run/wrappers, and user activation scripts run su/sudo),
            #   SystemCallFilter (activation mounts, swaps, loads modules, reboots),
            #   RestrictNamespaces (activation snippets are arbitrary code from the configuration
            #     and run here under the legacy switch-to-configuration),
            #   UMask=0077 (inherited by activation, which creates files other services read),
            #   MemoryDenyWriteExecute (V8's JIT needs writable and executable memory),
            #   PrivateNetwork, IPAddressDeny (IMDS, SSM, Auto Scaling, binary caches).
            LockPersonality = true;
            RestrictRealtime = true;
            SystemCallArchitectures = "native";
            # AF_UNIX: systemd, the nix daemon, the control socket; AF_NETLINK: interface
            # listing; AF_INET/6: AWS and binary caches.
            RestrictAddressFamilies = [
              "AF_UNIX"
              "AF_NETLINK"
              "AF_INET"
              "AF_INET6"
            ];
          };
        };
      }

      # amazon-init copies user data over /etc/nixos/configuration.nix and switches at every
      # boot: with both, the last one to run decides the system. The option exists only where
      # amazon-init.nix is imported (amazon-image.nix does); its default is true. mkDefault, so
      # that a configuration that sets it to true meets the assertion below instead of a
      # conflict between two definitions of equal priority.
      (lib.optionalAttrs hasAmazonInit {
        virtualisation.amazon-init.enable = lib.mkDefault false;
        assertions = [
          {
            assertion = !config.virtualisation.amazon-init.enable;
            message = ''
              services.nixos-ec2-agent and virtualisation.amazon-init both render
              /etc/nixos/configuration.nix from EC2 user data and switch to it: whichever runs last
              decides the system, and each undoes the other at every boot. The agent replaces
              amazon-init (it reads the same user data, `###` channel lines included). Remove the
              definition that sets virtualisation.amazon-init.enable = true.
            '';
          }
        ];
      })
    ]
  );

  meta.maintainers = [ ];
}
