// After a switch the agent asks whether the instance still reaches IMDS and SSM (agent/verify/reach.ts),
// each over a new connection: the emulators here let a connection through or drop it as a network
// cut would (ListenOptions.admit), while connections already open stay up, as a firewall lets an
// established one on. The agent's own clients keep theirs alive, so only a new one tells.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { managedThrough, readablePath } from '../../agent/agent.js';
import { ImdsClient } from '../../agent/aws/imds.js';
import { ssmAnswers, SSMClient } from '../../agent/aws/ssm-sdk.js';
import { parseConfig } from '../../agent/config.js';
import { systemClock } from '../../agent/ports.js';
import { reachChecks } from '../../agent/verify/reach.js';
import { defaultInstance, ImdsEmulator } from '../../sandbox/emulators/imds.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';

describe('reach: IMDS and SSM over a new connection', () => {
  let up = true;
  let imdsEmulator: ImdsEmulator;
  let ssmEmulator: SsmEmulator;
  before(async () => {
    imdsEmulator = await ImdsEmulator.start({ instance: defaultInstance({ region: 'us-east-1' }), admit: () => up });
    ssmEmulator = await SsmEmulator.start({ region: 'us-east-1', admit: () => up });
    ssmEmulator.put({ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' });
  });
  after(async () => {
    await Promise.all([imdsEmulator.close(), ssmEmulator.close()]);
  });

  function agentParts() {
    const env = { AWS_EC2_METADATA_SERVICE_ENDPOINT: imdsEmulator.url, AWS_ENDPOINT_URL_SSM: ssmEmulator.url, AWS_REGION: 'us-east-1' };
    const imds = new ImdsClient({ clock: systemClock, env, retries: 0, timeoutMs: 2_000 });
    const credentials = async () => async () => ({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' });
    const config = parseConfig({ ssm: { prefixes: ['/nixos/fleet', '/nixos/asg/{asg}'] } });
    return { imds, endpoints: managedThrough(config, {}, { imds, env, credentials }) };
  }

  it('finds both reachable while the network is up, and neither once it is cut, though kept-alive reads still pass', async () => {
    up = true;
    const { imds, endpoints } = agentParts();
    assert.deepEqual(endpoints.map((e) => e.name), ['IMDS', 'SSM']);
    // A read of the agent's own keeps its connection open, as every poll's does.
    assert.equal(await imds.get('latest/meta-data/instance-id'), imdsEmulator.instance.instanceId);
    const ssm = new SSMClient({ endpoint: ssmEmulator.url, region: 'us-east-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } });
    const { GetParametersByPathCommand } = await import('../../agent/aws/ssm-sdk.js');
    const read = () => ssm.send(new GetParametersByPathCommand({ Path: '/nixos/fleet', Recursive: true }));
    assert.equal((await read()).Parameters?.length, 1);
    const checks = await reachChecks(endpoints, 2_000);
    assert.deepEqual(checks.map((c) => [c.name, c.ok]), [['IMDS', true], ['SSM', true]], JSON.stringify(checks));

    up = false;
    try {
      assert.equal(await imds.get('latest/meta-data/instance-id'), imdsEmulator.instance.instanceId, 'the kept-alive IMDS connection still answers');
      assert.equal((await read()).Parameters?.length, 1, 'the kept-alive SSM connection still answers');
      const cut = await reachChecks(endpoints, 2_000);
      assert.deepEqual(cut.map((c) => [c.name, c.ok]), [['IMDS', false], ['SSM', false]], JSON.stringify(cut));
      for (const c of cut) assert.match(c.detail, /^unreachable over a new connection since the switch: /);
    } finally {
      up = true;
      ssm.destroy();
    }
  });

  it('takes an error SSM sent back as an answer: the network reached it', async () => {
    up = true;
    const client = new SSMClient({ endpoint: ssmEmulator.url, region: 'us-east-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } });
    try {
      // "/a b" is no valid path: SSM answers 400 ValidationException.
      await ssmAnswers(client, '/a b', 2_000);
    } finally {
      client.destroy();
    }
  });

  it('fails within its timeout where nothing listens', async () => {
    const client = new SSMClient({ endpoint: 'http://127.0.0.1:9', region: 'us-east-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }, maxAttempts: 1 });
    try {
      await assert.rejects(ssmAnswers(client, '/nixos/fleet', 2_000), (err: Error) => !('$metadata' in err && (err as { $metadata: { httpStatusCode?: number } }).$metadata.httpStatusCode));
    } finally {
      client.destroy();
    }
  });

  it('asks none with health.checkReachable off, and no SSM with SSM off', () => {
    const env = { AWS_EC2_METADATA_SERVICE_ENDPOINT: imdsEmulator.url };
    const imds = new ImdsClient({ clock: systemClock, env });
    const credentials = async () => async () => ({ accessKeyId: 'x', secretAccessKey: 'y' });
    assert.deepEqual(managedThrough(parseConfig({ health: { checkReachable: false } }), {}, { imds, env, credentials }), []);
    assert.deepEqual(managedThrough(parseConfig({ ssm: { enabled: false } }), {}, { imds, env, credentials }).map((e) => e.name), ['IMDS']);
  });

  it('reads a prefix only up to its first placeholder', () => {
    assert.equal(readablePath('/nixos/fleet'), '/nixos/fleet');
    assert.equal(readablePath('/nixos/asg/{asg}'), '/nixos/asg');
    assert.equal(readablePath('/nixos/instance/{instance-id}/x'), '/nixos/instance');
    assert.equal(readablePath('/{asg}/nixos'), '/');
  });
});
