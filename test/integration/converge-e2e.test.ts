// The agent CLI, as its own process, converging a sandboxed instance: first convergence, nothing
// changed, an SSM push, gzip'd user data, the once-per-instance user-data script (by its own
// interpreter, by bash when it names a shell NixOS lacks, or refused), invalid user
// data (rejected before anything is written over the last good configuration) and IMDS failures.
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { hasNix, withInstance } from '../support/e2e.js';

const FLEET_TZ = { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' as const };
const FLEET_MODULE = { Name: '/nixos/fleet/modules/motd', Value: '{ ... }:\n{\n  users.motd = "hello";\n}\n', Type: 'String' as const };
const NIX_USER_DATA = '# a NixOS module, as amazon-init reads it\n{ config, pkgs, ... }:\n{\n  services.nginx.enable = true;\n}\n';


describe('converge --once end to end', { concurrency: true }, () => {
  test('first convergence, nothing changed, an SSM push, and a reboot', async () => {
    await withInstance({ userData: NIX_USER_DATA, parameters: [FLEET_TZ, FLEET_MODULE] }, async (i) => {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.condition, 'converged');
      assert.equal(first.status.lastResult?.outcome, 'converged');

      // configuration.nix imports the image's base configuration and every rendered part.
      const configuration = await i.configuration();
      const imports = [...configuration.matchAll(/^\s*(\/[^\s#]+)/gm)].map((m) => m[1] as string);
      assert.ok(imports.includes(i.file('etc/nixos/base.nix')), configuration);
      assert.ok(imports.some((p) => /user-data\.nix$/.test(p)), configuration);
      assert.ok(imports.some((p) => /options\.nix$/.test(p)), configuration);
      assert.ok(imports.some((p) => /modules\/motd\.nix$/.test(p)), configuration);
      for (const p of imports) {
        assert.ok(p.startsWith(i.file('etc/nixos/')), `${p} is not under the instance's root`);
        const text = await readFile(p, 'utf8');
        assert.ok(text.length > 0, `${p} is empty`);
      }
      assert.match(await readFile(imports.find((p) => p.endsWith('user-data.nix')) ?? '', 'utf8'), /services\.nginx\.enable = true/);

      const gens = await i.generations();
      assert.deepEqual(gens.map((g) => g.number), [1, 2]);
      const g2 = gens[1]!;
      assert.ok(g2.current && g2.running, JSON.stringify(g2));
      assert.equal(g2.booted, false, 'generation 1 stays the booted one until a reboot');
      assert.equal(g2.lastGood, true);
      assert.equal(g2.desiredHash, first.status.desired?.hash);
      assert.deepEqual(
        g2.sources?.parameters.map((p) => `${p.name}@${p.version}`).sort(),
        ['/nixos/fleet/modules/motd@1', '/nixos/fleet/options/time.timeZone@1'],
      );
      assert.equal(await i.running(), g2.storePath);

      // Nothing changed: no new generation, no rebuild at all.
      const stepsBefore = await i.steps();
      const configBefore = await i.configuration();
      const second = await i.converge();
      assert.equal(second.code, 0, second.stderr);
      assert.equal(second.status.lastResult?.outcome, 'unchanged');
      assert.equal(await i.steps(), stepsBefore, 'an unchanged pass starts no nixos-rebuild or switch-to-configuration');
      assert.deepEqual(await i.generationLinks(), ['system-1-link', 'system-2-link']);
      assert.equal(await i.configuration(), configBefore);

      // An operator's push: a new generation, built from the new parameter version.
      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      const third = await i.converge();
      assert.equal(third.code, 0, third.stderr);
      assert.equal(third.status.lastResult?.outcome, 'converged');
      assert.notEqual(third.status.desired?.hash, first.status.desired?.hash);
      const after = await i.generations();
      assert.deepEqual(after.map((g) => g.number), [1, 2, 3]);
      assert.ok(after[2]!.current && after[2]!.running);
      assert.ok(after[2]!.sources?.parameters.some((p) => p.name === '/nixos/fleet/options/time.timeZone' && p.version === 2));
      assert.match(await i.configuration(), new RegExp(third.status.desired!.hash.slice(0, 12)));

      // A reboot: generation 3 is now the booted one, and nothing needs doing.
      await i.reboot();
      const rebooted = await i.generations();
      assert.ok(rebooted[2]!.booted && rebooted[2]!.running && rebooted[2]!.current, JSON.stringify(rebooted[2]));
      const steps = await i.steps();
      const fourth = await i.converge();
      assert.equal(fourth.code, 0, fourth.stderr);
      assert.equal(fourth.status.lastResult?.outcome, 'unchanged');
      assert.equal(await i.steps(), steps);
    });
  });

  test("gzip'd user data is unpacked before it is read", async () => {
    await withInstance({ userData: gzipSync(Buffer.from(NIX_USER_DATA)) }, async (i) => {
      const result = await i.converge();
      assert.equal(result.code, 0, result.stderr);
      const configuration = await i.configuration();
      const part = /^\s*(\/\S+\/ec2-agent\/\S+\/user-data\.nix)/m.exec(configuration)?.[1];
      assert.ok(part?.startsWith(i.file('etc/nixos/')), configuration);
      assert.match(await readFile(part ?? '', 'utf8'), /services\.nginx\.enable = true/);
    });
  });

  test('a #! user-data script runs once per instance id, its output logged', async () => {
    const runs = `${process.pid}-${Date.now()}`;
    // Outside the sandbox's root, so the count survives every reboot and instance id.
    const marker = path.join(tmpdir(), `nea-e2e-script-runs-${runs}`);
    // Its own interpreter, the root's /bin/sh (the sandbox's, as NixOS's, links it): the program
    // that runs it says which.
    const script = `#!/bin/sh\necho "user-data-script-output-${runs}"\ntr '\\0' ' ' < /proc/$$/cmdline >> '${marker}'; echo >> '${marker}'\n`;
    await withInstance({ userData: script, parameters: [FLEET_TZ] }, async (i) => {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal((await readFile(marker, 'utf8')).trim().split('\n').length, 1);
      assert.equal((await readFile(marker, 'utf8')).split(' ')[0], i.file('bin/sh'));
      assert.ok(!(await i.logEvents()).some((e) => e.event === 'userdata.script.interpreter'), 'no interpreter was put in its place');
      assert.ok(
        (await i.logEvents()).some((e) => e.event === 'userdata.script.output' && String(e.msg).includes(`user-data-script-output-${runs}`)),
        'the script output is in the agent log',
      );

      // A reboot of the same instance: not run again (amazon-init would, nixpkgs#41826).
      await i.reboot();
      const second = await i.converge();
      assert.equal(second.code, 0, second.stderr);
      assert.equal((await readFile(marker, 'utf8')).trim().split('\n').length, 1);

      // The same disk under another instance id (an AMI made from it, a new launch): run again.
      await i.reboot({ instance: { instanceId: 'i-0123456789abcdef0' } });
      const third = await i.converge();
      assert.equal(third.code, 0, third.stderr);
      assert.equal((await readFile(marker, 'utf8')).trim().split('\n').length, 2);
    }).finally(() => rm(marker, { force: true }));
  });

  test('a #!/bin/bash user-data script runs with bash from PATH, as amazon-init runs it, NixOS having no /bin/bash', async () => {
    const marker = path.join(tmpdir(), `nea-e2e-bash-${process.pid}-${Date.now()}`);
    // `-e` from the #! line is kept: a failing command would stop the script before `ran`.
    const script = `#!/bin/bash -e\nnames=(ran with bash)\necho "\${names[*]} $BASH_VERSION" > '${marker}'\n`;
    await withInstance({ userData: script }, async (i) => {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.lastResult?.outcome, 'converged');
      assert.match(await readFile(marker, 'utf8'), /^ran with bash \d/);
      const events = await i.logEvents();
      const said = events.filter((e) => e.event === 'userdata.script.interpreter');
      assert.equal(said.length, 1, 'said once');
      assert.match(String(said[0]?.msg), /\/bin\/bash is not on this machine; running it with bash from PATH/);
      assert.equal(events.find((e) => e.event === 'userdata.script.end')?.exitCode, 0);
      assert.deepEqual(first.status.desired?.notes, []);
      assert.equal((await i.durableState()).userDataScript?.exitCode, 0);
    }).finally(() => rm(marker, { force: true }));
  });

  test('a user-data script whose interpreter the machine lacks is not run: one line names it, in the log and the status', async () => {
    const marker = path.join(tmpdir(), `nea-e2e-absent-${process.pid}-${Date.now()}`);
    await withInstance({ userData: `#!/opt/absent/bin/ruby\nFile.write('${marker}', 'ruby')\n` }, async (i) => {
      const first = await i.converge();
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.status.lastResult?.outcome, 'converged');
      const line = /^user data: the #! script was not run: its interpreter \/opt\/absent\/bin\/ruby is not on this machine .*; start it with #!\/usr\/bin\/env ruby\b/;
      assert.equal(first.status.desired?.notes.filter((n) => line.test(n)).length, 1, JSON.stringify(first.status.desired?.notes));
      const ends = (await i.logEvents()).filter((e) => e.event === 'userdata.script.end');
      assert.equal(ends.length, 1);
      assert.equal(ends[0]?.level, 'error');
      assert.match(String(ends[0]?.msg), line);
      assert.equal((await i.durableState()).userDataScript?.exitCode, null);
      await assert.rejects(readFile(marker), { code: 'ENOENT' });

      // Not tried again with the same user data, but still in the status, and logged only once.
      const second = await i.converge();
      assert.equal(second.code, 0, second.stderr);
      assert.equal(second.status.desired?.notes.filter((n) => line.test(n)).length, 1);
      assert.equal((await i.logEvents()).filter((e) => e.event === 'userdata.script.end').length, 1);

      // Fixed user data on the same instance runs: the refused script did nothing to repeat. Through
      // /usr/bin/env, which finds sh on PATH: the program that runs it is `sh`, not bash.
      i.world.imds.setUserData(`#!/usr/bin/env sh\ntr '\\0' ' ' < /proc/$$/cmdline > '${marker}'\n`);
      const third = await i.converge();
      assert.equal(third.code, 0, third.stderr);
      assert.equal((await readFile(marker, 'utf8')).split(' ')[0], 'sh');
      assert.deepEqual(third.status.desired?.notes, []);
      assert.equal((await i.durableState()).userDataScript?.exitCode, 0);
      assert.ok(!(await i.logEvents()).some((e) => e.event === 'userdata.script.interpreter'));
    }).finally(() => rm(marker, { force: true }));
  });

  describe('invalid user data: exit 2, nothing written or switched, the error names the source', { concurrency: true }, () => {
    // `buildBegins`: a text that reaches the parser has its build started beside it, and stopped.
    const cases: { name: string; data: Buffer; expect: RegExp; buildBegins?: true; skip?: string }[] = [
      { name: 'not UTF-8', data: Buffer.from([0x7b, 0x20, 0xff, 0xfe, 0x7d, 0x0a]), expect: /user data: not valid UTF-8\b.*\bbyte 2\b/ },
      { name: 'too big once unpacked', data: gzipSync(Buffer.from(`{ ... }: { }\n${'# padding\n'.repeat(110_000)}`)), expect: /user data: unpacks to over 1048576 bytes/ },
      {
        name: 'a Nix expression that does not parse',
        data: Buffer.from('{ config, ... }:\n{\n  services.nginx.enable = true\n  networking.hostName = "x";\n}\n'),
        // `true networking.hostName` is an application; the `=` after it is the error.
        expect: /user data: does not parse as Nix: line 4, column 23/,
        buildBegins: true,
        ...(hasNix ? {} : { skip: 'nix-instantiate is not installed: the parser gate is skipped' }),
      },
    ];
    for (const c of cases) {
      test(c.name, c.skip ? { skip: c.skip } : {}, async () => {
        await withInstance({ userData: NIX_USER_DATA, parameters: [FLEET_TZ] }, async (i) => {
          const good = await i.converge();
          assert.equal(good.code, 0, good.stderr);
          const configuration = await i.read('etc/nixos/configuration.nix');
          const running = await i.running();
          const links = await i.generationLinks();
          const steps = await i.steps();
          const builds = await i.steps('build');

          i.world.imds.setUserData(c.data);
          const bad = await i.converge();
          assert.equal(bad.code, 2, `${bad.stdout}\n${bad.stderr}`);
          assert.equal(bad.status.lastResult?.outcome, 'invalid-input');
          assert.match(bad.status.lastResult?.error?.message ?? '', c.expect);
          assert.equal(bad.status.lastResult?.error?.where, 'user data');
          assert.ok(bad.status.reasons.some((r) => c.expect.test(r)), JSON.stringify(bad.status.reasons));
          assert.equal(await i.read('etc/nixos/configuration.nix'), configuration, 'configuration.nix is byte-identical');
          assert.equal(await i.running(), running);
          assert.deepEqual(await i.generationLinks(), links);
          const buildsBegun = (await i.steps('build')) - builds;
          assert.equal((await i.steps()) - steps, buildsBegun, 'no step but a build was started');
          assert.equal(buildsBegun, c.buildBegins ? 1 : 0);
        });
      });
    }
  });

  test('IMDS disabled: exit 1 at once, with the reason', async () => {
    await withInstance({ parameters: [FLEET_TZ] }, async (i) => {
      i.world.imds.setHttpEndpoint('disabled');
      const result = await i.converge();
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.status.lastResult?.error?.kind, 'imds-disabled');
      assert.ok(result.status.reasons.some((r) => /disabled/i.test(r)), JSON.stringify(result.status.reasons));
      // At once: one token request, no retries.
      const puts = i.world.imds.requests.filter((r) => r.method === 'PUT');
      assert.equal(puts.length, 1, `token requests: ${puts.length}`);
      assert.deepEqual(await i.generationLinks(), ['system-1-link']);
    });
  });

  test('IMDS answering 500 past the retry budget: exit 1, nothing changed', async () => {
    await withInstance({ userData: NIX_USER_DATA, parameters: [FLEET_TZ] }, async (i) => {
      const good = await i.converge();
      assert.equal(good.code, 0, good.stderr);
      const configuration = await i.configuration();
      const running = await i.running();
      i.world.ssm.put({ ...FLEET_TZ, Value: '"Asia/Tokyo"', Overwrite: true });
      i.world.imds.injectFault({ status: 500, times: Infinity });
      const result = await i.converge();
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.status.lastResult?.error?.kind, 'transient');
      assert.equal(await i.configuration(), configuration);
      assert.equal(await i.running(), running);
      assert.deepEqual(await i.generationLinks(), ['system-1-link', 'system-2-link']);
      // The configured budget: the first attempt and 2 retries of the token request.
      const failed = i.world.imds.requests.filter((r) => r.status === 500);
      assert.ok(failed.length >= 3, `500 answers: ${failed.length}`);
    });
  });
});
