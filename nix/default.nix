# Entry point without flakes: `nix-build nix -A package`, `nix-build nix -A tests.agent`, and
# `imports = [ (import ./nix { }).module ];` (or ./nix/module.nix directly) in a configuration.
{
  pkgs ? import <nixpkgs> { },
}:
rec {
  package = pkgs.callPackage ./package.nix { };
  module = ./module.nix;
  tests.agent = import ./tests/agent.nix { inherit pkgs package; };
}
