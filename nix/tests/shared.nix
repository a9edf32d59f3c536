# The part of the test node's configuration that /etc/nixos/base.nix repeats inside the VM, so that
# the systems the agent builds there keep the agent, its endpoints and the network. A plain file
# (no generated Nix is imported at evaluation: no import-from-derivation), called by agent.nix for
# the node with the package as a derivation, and by base.nix in the VM with its store path.
{
  module,
  package,
  machineAddress,
  nixpkgsPath,
  environment,
}:
{ lib, ... }:
{
  imports = [ module ];

  networking.hostName = "machine";
  networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
    {
      address = machineAddress;
      prefixLength = 24;
    }
  ];

  system.switch.enable = true;
  boot.loader.grub.enable = false;
  documentation.enable = false;
  nix.nixPath = [ "nixpkgs=${nixpkgsPath}" ];
  nix.settings = {
    substituters = lib.mkForce [ ];
    hashed-mirrors = null;
    connect-timeout = 1;
  };
  virtualisation.memorySize = 3072;
  virtualisation.cores = 2;
  virtualisation.diskSize = 4096;

  services.nixos-ec2-agent = {
    enable = true;
    inherit package;
    openFirewall = true;
    ssm.pollInterval = 2;
    ssm.pollJitter = 0;
    quietPeriod = 1;
    health.graceSeconds = 10;
  };

  systemd.services.nixos-ec2-agent.environment = environment;
}
