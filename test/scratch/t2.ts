import { Instance } from '../support/e2e.js';
const i = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
const t = Date.now();
const rr = await i.run(['render', '--json']);
console.log('render', rr.code, Date.now() - t);
console.log(rr.stderr.slice(0, 3000));
for (const r of i.world.imds.requests) console.log('imds', r.method, r.path, r.status, (r as any).at ?? '');
console.log(JSON.stringify(i.world.ssm.requests?.slice?.(0,3) ?? []).slice(0,500));
await i.close();
