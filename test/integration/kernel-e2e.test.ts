// A new generation that changes the kernel: a switch cannot apply it, so the agent says a reboot
// is required (policy `report`), and stops saying so once the instance has booted into it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Instance, markerModule } from '../support/e2e.js';

describe('kernel changes', () => {
  test('report: status says a reboot is required until the instance boots the new kernel', async () => {
    const i = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
    try {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.rebootRequired, false, 'the same kernel as the image: no reboot');

      i.put('/nixos/fleet/modules/kernel', markerModule('sandbox-kernel-6.12.1'));
      const changed = await i.converge();
      assert.equal(changed.code, 0, changed.stderr);
      assert.equal(changed.status.condition, 'converged');
      assert.equal(changed.status.rebootRequired, true, 'the new kernel applies only at the next boot');
      const { status } = await i.status();
      assert.equal(status.rebootRequired, true, 'status --json says so too');

      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      const sameKernel = await i.converge();
      assert.equal(sameKernel.code, 0, sameKernel.stderr);
      assert.equal(sameKernel.status.rebootRequired, true, 'still booted on the old kernel');

      await i.reboot();
      const afterBoot = await i.converge();
      assert.equal(afterBoot.code, 0, afterBoot.stderr);
      assert.equal(afterBoot.status.rebootRequired, false, 'booted into the new kernel: nothing to reboot for');
    } finally {
      await i.close();
    }
  });
});
