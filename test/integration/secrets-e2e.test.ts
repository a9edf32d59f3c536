// SecureString parameters end up in run/nixos-ec2-agent/secrets/NAME (0400 in a 0700 directory) and
// nowhere else: not in any rendered file, the state, the status, the log, any command's output, or
// the (stand-in's) Nix store. Removing the parameter removes the file.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { Instance } from '../support/e2e.js';

/** Every file under `dir` (symlinks read as their target text) whose bytes contain any needle. */
async function filesContaining(dir: string, needles: readonly Buffer[]): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const full = path.join(d, entry.name);
      if (needles.some((n) => Buffer.from(entry.name).includes(n))) found.push(full);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isSymbolicLink()) {
        const target = Buffer.from(await readlink(full));
        if (needles.some((n) => target.includes(n))) found.push(full);
      } else if (entry.isFile()) {
        const bytes = await readFile(full);
        if (needles.some((n) => bytes.includes(n))) found.push(full);
      }
    }
  };
  await walk(dir);
  return found;
}

test('secrets reach only run/nixos-ec2-agent/secrets/, and go when their parameter goes', async () => {
  const fleetSecret = `fleet-${randomBytes(24).toString('hex')}`;
  const instanceSecret = `inst-${randomBytes(24).toString('hex')}`;
  const i = await Instance.launch({
    parameters: [
      { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' },
      { Name: '/nixos/fleet/secrets/x', Value: fleetSecret, Type: 'SecureString' },
      // A module that uses the secret: by its path, the only thing Nix may see.
      { Name: '/nixos/fleet/modules/uses-x', Value: '{ ec2Secrets, ... }:\n{\n  environment.etc."x-path".text = "${ec2Secrets.x}";\n}\n', Type: 'String' },
    ],
  });
  try {
    i.put(`/nixos/instance/${i.instanceId}/secrets/y`, instanceSecret, 'SecureString');
    const outputs: string[] = [];
    const converged = await i.converge();
    assert.equal(converged.code, 0, converged.stderr);
    outputs.push(converged.stdout, converged.stderr);
    for (const args of [['status', '--json'], ['render', '--json'], ['render'], ['generations', '--json'], ['generations'], ['status']]) {
      const r = await i.run(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      outputs.push(r.stdout, r.stderr);
    }
    // A second pass (unchanged) and a reboot's pass write the state and status again.
    await i.reboot();
    const again = await i.converge();
    assert.equal(again.code, 0, again.stderr);
    outputs.push(again.stdout, again.stderr);

    const secretsDir = i.file('run/nixos-ec2-agent/secrets');
    assert.equal(await readFile(path.join(secretsDir, 'x'), 'utf8'), fleetSecret);
    assert.equal(await readFile(path.join(secretsDir, 'y'), 'utf8'), instanceSecret);
    assert.equal((await lstat(path.join(secretsDir, 'x'))).mode & 0o777, 0o400);
    assert.equal((await lstat(path.join(secretsDir, 'y'))).mode & 0o777, 0o400);
    assert.equal((await lstat(secretsDir)).mode & 0o777, 0o700);

    for (const secret of [fleetSecret, instanceSecret]) {
      const needles = [Buffer.from(secret), Buffer.from(Buffer.from(secret).toString('base64').slice(0, 40))];
      // The whole root, the secrets directory included, so the search is known to find it there.
      const where = (await filesContaining(i.root, needles)).map((f) => path.relative(i.root, f));
      const expected = secret === fleetSecret ? 'run/nixos-ec2-agent/secrets/x' : 'run/nixos-ec2-agent/secrets/y';
      assert.deepEqual(where, [expected], `the secret's bytes are only in ${expected}`);
      const log = await readFile(i.sandbox.layout.log);
      assert.ok(!needles.some((n) => log.includes(n)), 'the agent log never holds the secret');
      for (const out of outputs) assert.ok(!needles.some((n) => Buffer.from(out).includes(n)), `printed output holds the secret:\n${out.slice(0, 500)}`);
    }
    // The module sees the path, and the store holds the path, never the value.
    assert.ok((await filesContaining(i.file('nix/store'), [Buffer.from('/run/nixos-ec2-agent/secrets/x')])).length > 0, 'the store refers to the secret by its path');

    i.world.ssm.delete('/nixos/fleet/secrets/x');
    i.world.ssm.put({ Name: '/nixos/fleet/modules/uses-x', Value: '{ ... }:\n{ }\n', Type: 'String', Overwrite: true });
    const removed = await i.converge();
    assert.equal(removed.code, 0, removed.stderr);
    const left = await readdir(secretsDir);
    assert.deepEqual(left, ['y'], 'the deleted parameter\'s secret file is gone');
  } finally {
    await i.close();
  }
});
