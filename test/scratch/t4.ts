import { Instance } from '../support/e2e.js';
const i = await Instance.launch({ parameters: [] });
console.log(i.world.imds.url, i.world.ssm.url, i.world.autoscaling.url);
await i.close();
