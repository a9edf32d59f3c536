{
  description = "nixos-ec2-agent: converge NixOS EC2 instances to the configuration in user data and SSM Parameter Store";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      forAllSystems =
        f:
        nixpkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: {
        nixos-ec2-agent = final.callPackage ./nix/package.nix { };
      };

      # Its package defaults to pkgs.nixos-ec2-agent (the overlay), else builds ./nix/package.nix.
      nixosModules.default = ./nix/module.nix;

      checks = forAllSystems (pkgs: {
        vm = import ./nix/tests/agent.nix {
          inherit pkgs;
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
      });
    };
}
