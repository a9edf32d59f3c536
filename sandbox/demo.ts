// The sandbox's demo configuration: what a newcomer sees converge without writing anything.
import type { PutParameterRequest } from './emulators/ssm.js';

export const DEMO_USER_DATA = `# nixos-ec2-agent sandbox demo: this user data is a NixOS module, as amazon-init reads it.
{ config, pkgs, ... }:
{
  services.nginx.enable = true;
  networking.firewall.allowedTCPPorts = [ 80 ];
}
`;

export function demoParameters(instanceId: string, group: string | undefined): PutParameterRequest[] {
  return [
    { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' },
    {
      Name: '/nixos/fleet/options/services.nginx.virtualHosts',
      Value: JSON.stringify({ 'demo.example': { root: '/var/www/demo', locations: { '/': { index: 'index.html' } } } }),
      Type: 'String',
    },
    {
      Name: '/nixos/fleet/modules/motd',
      Value: '{ ec2Secrets, ... }:\n{\n  users.motd = "Managed by nixos-ec2-agent; the API token lives at ${ec2Secrets.api-token}";\n}\n',
      Type: 'String',
    },
    { Name: '/nixos/fleet/secrets/api-token', Value: 'sandbox-demo-token-0f3c9a', Type: 'SecureString' },
    ...(group ? [{ Name: `/nixos/asg/${group}/options/services.nginx.recommendedGzipSettings`, Value: 'true', Type: 'String' as const }] : []),
    { Name: `/nixos/instance/${instanceId}/options/environment.etc.instance-role.text`, Value: '"web"', Type: 'String' },
  ];
}
