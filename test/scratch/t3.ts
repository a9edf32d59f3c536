import { Instance } from '../support/e2e.js';
const i = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
console.log(i.world.imds.url, i.world.ssm.url, i.world.autoscaling.url);
const rr = await i.run(['render', '--json'], { NODE_OPTIONS: '--require /tmp/proof-handles.cjs' });
console.log(rr.stderr.split('\n').filter(l => l.startsWith('[') || l.startsWith('  ')).join('\n'));
await i.close();
