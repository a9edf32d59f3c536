# A NixOS VM test: node `aws` serves the emulated IMDS, SSM and Auto Scaling; node `machine` runs
# the agent through the NixOS module, converges to its user data and SSM parameters with the real
# nixos-rebuild, then converges again when a parameter changes. Needs Nix and KVM:
#   nix-build nix -A tests.agent        (or: nix build .#checks.x86_64-linux.vm)
#
# What this test relies on from the CLI beyond the documented commands:
#   - `emulate --host ADDR --imds-port N --ssm-port N --autoscaling-port N` listens on ADDR at
#     those fixed ports (the default is 127.0.0.1 and free ports), and serves until SIGTERM;
#   - `status --wait` blocks until the first convergence has ended; exit 0 means converged;
#   - `check-config FILE` (run by the module while the system builds) exits 0 on a valid file.
#
# The agent builds and switches inside the VM with no binary cache, so `machine` carries its own
# build closure (as nixpkgs' nixos-rebuild tests do), and /etc/nixos/base.nix (the configuration
# the agent imports besides what it renders) reproduces the node's own configuration: the test
# framework's modules, the fixed address of eth1, and ./shared.nix.
#
# Pure evaluation (`nix flake check`): the node gets the package as a derivation and imports
# ./shared.nix from the source tree; only base.nix, which the VM evaluates itself (impurely, as
# nixos-rebuild does), names the package by its store path.
{
  pkgs ? import <nixpkgs> { },
  package ? pkgs.callPackage ../package.nix { },
}:

let
  inherit (pkgs) lib;

  # The framework numbers nodes in name order on vlan 1: aws is .1, machine is .2. Addresses, not
  # names: /etc/hosts entries for other nodes come from the framework, not from base.nix.
  awsAddress = "192.168.1.1";
  machineAddress = "192.168.1.2";
  ports = {
    imds = 1338;
    ssm = 4583;
    autoscaling = 4584;
    health = 9731;
  };

  credentials = {
    AWS_REGION = "us-east-1";
    AWS_DEFAULT_REGION = "us-east-1";
    AWS_ACCESS_KEY_ID = "test";
    AWS_SECRET_ACCESS_KEY = "test";
  };

  userData = pkgs.writeText "user-data.nix" ''
    { ... }: { environment.etc."ec2-agent-user-data".text = "from user data"; }
  '';

  marker = "/nixos/fleet/options/environment.etc.ec2-agent-test.text";
  parameters = pkgs.writeText "parameters.json" (
    builtins.toJSON [
      {
        Name = marker;
        Value = builtins.toJSON "v1";
        Type = "String";
      }
    ]
  );

  # The nix/ directory's module alone: the agent's own package comes prebuilt.
  nixDir = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../module.nix
      ./shared.nix
    ];
  };

  sharedArgs = {
    inherit machineAddress;
    nixpkgsPath = pkgs.path;
    environment = credentials // {
      AWS_EC2_METADATA_SERVICE_ENDPOINT = "http://${awsAddress}:${toString ports.imds}";
      AWS_ENDPOINT_URL_SSM = "http://${awsAddress}:${toString ports.ssm}";
      AWS_ENDPOINT_URL_AUTO_SCALING = "http://${awsAddress}:${toString ports.autoscaling}";
    };
  };

  # The VM's own copy: the module from the store, the package by its store path (the VM has it
  # and cannot build it; builtins.storePath is fine in the VM's impure evaluation).
  baseNix = pkgs.writeText "base.nix" ''
    {
      imports = [
        <nixpkgs/nixos/modules/virtualisation/qemu-vm.nix>
        <nixpkgs/nixos/modules/testing/test-instrumentation.nix>
        (import ${nixDir}/tests/shared.nix (builtins.fromJSON ${lib.strings.escapeNixString (builtins.toJSON sharedArgs)} // {
          module = ${nixDir}/module.nix;
          package = builtins.storePath "${package}";
        }))
      ];
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "nixos-ec2-agent";

  nodes.aws = {
    networking.firewall.allowedTCPPorts = [
      ports.imds
      ports.ssm
      ports.autoscaling
    ];
    environment.systemPackages = [
      pkgs.awscli2
      pkgs.curl
    ];
    systemd.services.aws-emulators = {
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      serviceConfig.ExecStart = lib.concatStringsSep " " [
        (lib.getExe package)
        "emulate"
        "--host 0.0.0.0"
        "--imds-port ${toString ports.imds}"
        "--ssm-port ${toString ports.ssm}"
        "--autoscaling-port ${toString ports.autoscaling}"
        "--user-data ${userData}"
        "--parameters ${parameters}"
      ];
    };
  };

  nodes.machine =
    { lib, ... }:
    {
      imports = [
        (import ./shared.nix (sharedArgs // {
          module = ../module.nix;
          inherit package;
        }))
      ];
      environment.systemPackages = [ pkgs.curl ];
      # Nothing to build from in the VM but what it carries.
      system.includeBuildDependencies = true;
      virtualisation.additionalPaths = [
        baseNix
        pkgs.path
      ];
      # Started by the test once base.nix is in place: converging without it would drop the
      # framework's own configuration. The converged target too: it is reached through the agent.
      systemd.services.nixos-ec2-agent.wantedBy = lib.mkForce [ ];
      systemd.targets.nixos-ec2-agent-converged.wantedBy = lib.mkForce [ ];
    };

  testScript = ''
    aws_cli = (
        "env ${lib.concatStringsSep " " (lib.mapAttrsToList (n: v: "${n}=${v}") credentials)} "
        "aws --endpoint-url http://127.0.0.1:${toString ports.ssm} ssm"
    )

    start_all()
    aws.wait_for_unit("aws-emulators.service")
    for port in (${toString ports.imds}, ${toString ports.ssm}, ${toString ports.autoscaling}):
        aws.wait_for_open_port(port)

    machine.wait_for_unit("multi-user.target")
    machine.succeed("mkdir -p /etc/nixos")
    machine.copy_from_host("${baseNix}", "/etc/nixos/base.nix")

    with subtest("the first convergence renders user data and SSM, and builds and switches"):
        machine.succeed("systemctl start --no-block nixos-ec2-agent.service")
        # active means READY=1: the first convergence has ended
        machine.wait_for_unit("nixos-ec2-agent.service", timeout=1800)
        machine.wait_for_unit("nixos-ec2-agent-converged.target")
        machine.succeed("nixos-ec2-agent status --wait")
        machine.succeed("test -s /etc/nixos/configuration.nix")
        machine.succeed("grep -q base.nix /etc/nixos/configuration.nix")
        machine.succeed("grep -qx 'from user data' /etc/ec2-agent-user-data")
        machine.succeed("grep -qx v1 /etc/ec2-agent-test")

    with subtest("the agent runs after multi-user.target and is stopped alone"):
        machine.succeed("systemctl show -p After --value nixos-ec2-agent.service | grep -qw multi-user.target")
        machine.succeed("test \"$(systemctl show -p KillMode --value nixos-ec2-agent.service)\" = process")

    with subtest("health is served locally and, with openFirewall, to the load balancer"):
        machine.succeed("test \"$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${toString ports.health}/healthz)\" = 200")
        aws.wait_until_succeeds("curl -sf http://${machineAddress}:${toString ports.health}/healthz", timeout=60)

    with subtest("a parameter written with PutParameter converges"):
        aws.succeed(aws_cli + " put-parameter --name ${marker} --type String --overwrite --value '\"v2\"'")
        machine.wait_until_succeeds("grep -qx v2 /etc/ec2-agent-test", timeout=1800)
        machine.wait_until_succeeds("nixos-ec2-agent status", timeout=300)
        machine.succeed("systemctl is-active nixos-ec2-agent.service")
  '';
}
