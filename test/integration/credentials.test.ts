// The SSM and Auto Scaling clients' credentials (agent/aws/credentials.ts): the SDK's default chain,
// down to the instance role read from the IMDS emulator over real HTTP.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { defaultCredentials } from '../../agent/aws/credentials.js';
import { defaultInstance, ImdsEmulator } from '../../sandbox/emulators/imds.js';

describe('defaultCredentials against the IMDS emulator', () => {
  let emulator: ImdsEmulator;
  const saved = { ...process.env };

  before(async () => {
    emulator = await ImdsEmulator.start({ instance: defaultInstance({ instanceId: 'i-0aaaabbbbccccdddd', region: 'eu-west-1' }) });
    // Nothing but the instance role: no keys, profiles or web identity from this machine.
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = emulator.url;
    process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/credentials';
    process.env.AWS_CONFIG_FILE = '/nonexistent/config';
  });
  after(async () => {
    process.env = saved;
    await emulator.close();
  });

  it("reads the instance role's credentials", async () => {
    const creds = await (await defaultCredentials())();
    assert.match(creds.accessKeyId, /^ASIA/);
    assert.ok(creds.sessionToken);
  });

  // The SDK fetches one IMDS token per credential fetch and reuses it through all of that fetch's
  // retries (credential-provider-imds: getInstanceMetadataProvider): a token that expires between
  // its fetch and its use fails every retry. The next call fetches a new one.
  it('a token that expired as the role was read: every retry of that fetch gets 401, and the fetch after it, with a new token, succeeds', async () => {
    emulator.clearFaults();
    emulator.injectFault({ path: '/latest/meta-data/iam/security-credentials/', expireTokens: true, times: 1 });
    const from = emulator.requests.length;
    const creds = await (await defaultCredentials())();
    assert.match(creds.accessKeyId, /^ASIA/);
    const seen = emulator.requests.slice(from).map((r) => `${r.method} ${r.path} ${r.status}`);
    assert.ok(seen.filter((r) => r.endsWith(' 401')).length >= 2, `the SDK's own retries kept the expired token: ${seen.join(', ')}`);
    assert.equal(seen.filter((r) => r.startsWith('PUT /latest/api/token')).length, 2, seen.join(', '));
  });
});
