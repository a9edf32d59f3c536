import { withDaemon } from '../support/daemon.js';
import { markerModule } from '../support/e2e.js';
await withDaemon({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }], config: { lifecycle: { enabled: true, heartbeatSeconds: 1 } }, beforeStart: async (i) => i.world.autoscaling.injectFault({ action: 'CompleteLifecycleAction', code: 'InternalFailure', times: 2 }) }, async (d, i) => {
  i.put('/nixos/fleet/modules/bad', markerModule('sandbox-fail-build'));
  await d.pass();
  for (const e of d.log.events.slice(0)) if (!['step.output'].includes(String(e.event))) console.log(JSON.stringify(e).slice(0, 400));
  console.log(JSON.stringify(await d.status()).slice(0, 1500));
});
