import { Instance } from '../support/e2e.js';
const i = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
for (let k = 0; k < 3; k++) {
  let t = Date.now();
  const r = await i.converge();
  console.log('converge', r.code, Date.now() - t);
  i.put('/nixos/fleet/options/time.timeZone', `"Europe/P${k}"`);
  t = Date.now();
  const rr = await i.run(['render', '--json']);
  console.log('render', rr.code, Date.now() - t);
  t = Date.now();
  const s = await i.run(['status', '--json']);
  console.log('status', s.code, Date.now() - t);
}
const t = Date.now(); const r = await i.converge(); console.log('noop converge', r.code, Date.now() - t);
console.log(i.root);
await i.sandbox.world.close();
