// The SSM source through the SDK's real SSMClient against the SSM emulator over HTTP.
// GetParametersByPath returns at most MaxResults (10) parameters a page with a NextToken while more
// remain; SecureStrings come back decrypted with WithDecryption; throttling is
// ThrottlingException, which the SDK retries; a bad request is a ValidationException (400).
import assert from 'node:assert/strict';
import { GetParametersByPathCommand, SSMClient, type SSMClientConfig } from '@aws-sdk/client-ssm';
import { ConfiguredRetryStrategy } from '@smithy/core/retry';
import { after, afterEach, before, describe, it } from 'node:test';
import { InvalidInputError, TransientError } from '../../agent/errors.js';
import type { Clock } from '../../agent/ports.js';
import { Secret } from '../../agent/secret.js';
import { SsmSource, type Placeholders } from '../../agent/sources/ssm.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';

const PREFIXES = ['/nixos/fleet', '/nixos/asg/{asg}', '/nixos/instance/{instance-id}'];
const PLACES: Placeholders = { 'instance-id': 'i-0123456789abcdef0', region: 'us-east-1', asg: 'web' };

function sdk(emulator: SsmEmulator, extra: SSMClientConfig = {}): SSMClient {
  return new SSMClient({
    endpoint: emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    maxAttempts: 1,
    ...extra,
  });
}

function source(client: SSMClient): SsmSource {
  return SsmSource.fromClient(client, GetParametersByPathCommand);
}

/** 57 parameters: 25 fleet, 20 ASG, 12 instance, and neighbours that must not be read. */
function seed(emulator: SsmEmulator): void {
  for (let i = 0; i < 25; i++) emulator.put({ Name: `/nixos/fleet/options/fleet.o${String(i).padStart(2, '0')}`, Value: String(i), Type: 'String' });
  for (let i = 0; i < 19; i++) emulator.put({ Name: `/nixos/asg/web/modules/m${String(i).padStart(2, '0')}`, Value: '{ }', Type: 'String' });
  emulator.put({ Name: '/nixos/asg/web/secrets/db-password', Value: 'correct horse battery staple', Type: 'SecureString' });
  for (let i = 0; i < 11; i++) emulator.put({ Name: `/nixos/instance/i-0123456789abcdef0/options/i.o${i}`, Value: 'true', Type: 'String' });
  emulator.put({ Name: '/nixos/instance/i-0123456789abcdef0/options/networking.nameservers', Value: '1.1.1.1,8.8.8.8', Type: 'StringList' });
  // Siblings whose names only start like a prefix: not under it.
  emulator.put({ Name: '/nixos/asg/web2/options/x', Value: '1', Type: 'String' });
  emulator.put({ Name: '/nixos/fleetwide', Value: '1', Type: 'String' });
  emulator.put({ Name: '/nixos/instance/i-other/options/x', Value: '1', Type: 'String' });
}

describe('SsmSource over the SDK against the SSM emulator', () => {
  let emulator: SsmEmulator;
  let client: SSMClient;

  before(async () => {
    emulator = await SsmEmulator.start({ throughput: null });
    seed(emulator);
    client = sdk(emulator);
  });
  after(async () => {
    client.destroy();
    await emulator.close();
  });
  afterEach(() => {
    emulator.clearFaults();
    emulator.resetCounters();
  });

  it('reads every parameter of every prefix, page by page, filling the placeholders', async () => {
    const snapshot = await source(client).fetch(PREFIXES, PLACES);
    assert.deepEqual(
      snapshot.prefixes.map((p) => [p.prefix, p.parameters.length]),
      [
        ['/nixos/fleet', 25],
        ['/nixos/asg/web', 20],
        ['/nixos/instance/i-0123456789abcdef0', 12],
      ],
    );
    assert.deepEqual(snapshot.skipped, []);
    // ceil(25/10) + ceil(20/10) + ceil(12/10)
    assert.equal(snapshot.calls, 3 + 2 + 2);
    assert.equal(emulator.callCounts()['GetParametersByPath'], 7);
    const inputs = emulator.requests.map((r) => r.input as { Path: string; Recursive: boolean; WithDecryption: boolean; NextToken?: string });
    assert.ok(inputs.every((i) => i.Recursive === true && i.WithDecryption === true));
    assert.equal(inputs.filter((i) => i.NextToken !== undefined).length, 4, 'each page after the first follows a NextToken');

    const all = snapshot.prefixes.flatMap((p) => p.parameters);
    assert.equal(new Set(all.map((p) => p.name)).size, 57);
    assert.ok(all.every((p) => p.version === 1 && typeof p.lastModified === 'number'));
    const list = all.find((p) => p.name.endsWith('networking.nameservers'));
    assert.equal(list?.type, 'StringList');
    assert.equal(list?.value, '1.1.1.1,8.8.8.8');
  });

  it('delivers a SecureString decrypted, as a Secret that never serialises', async () => {
    const snapshot = await source(client).fetch(['/nixos/asg/{asg}'], PLACES);
    const secret = snapshot.prefixes[0]?.parameters.find((p) => p.name === '/nixos/asg/web/secrets/db-password');
    assert.equal(secret?.type, 'SecureString');
    assert.ok(secret?.value instanceof Secret);
    assert.equal(secret.value.reveal(), 'correct horse battery staple');
    const json = JSON.stringify(snapshot);
    assert.ok(!json.includes('correct horse'), json.slice(0, 200));
  });

  it('skips a prefix whose placeholder is unknown, with a note, and reads the others', async () => {
    const snapshot = await source(client).fetch(PREFIXES, { ...PLACES, asg: undefined });
    assert.deepEqual(snapshot.prefixes.map((p) => p.prefix), ['/nixos/fleet', '/nixos/instance/i-0123456789abcdef0']);
    assert.equal(snapshot.skipped.length, 1);
    assert.equal(snapshot.skipped[0]?.prefix, '/nixos/asg/{asg}');
    assert.match(snapshot.skipped[0]?.reason ?? '', /\{asg\}/);
    assert.equal(emulator.callCounts()['GetParametersByPath'], 3 + 2);
    assert.ok(emulator.requests.every((r) => !JSON.stringify(r.input).includes('{asg}')));
  });

  it('reads an empty prefix in one call', async () => {
    const snapshot = await source(client).fetch(['/nixos/nothing/here'], PLACES);
    assert.deepEqual(snapshot.prefixes, [{ prefix: '/nixos/nothing/here', parameters: [] }]);
    assert.equal(snapshot.calls, 1);
  });

  it('maps a ValidationException to InvalidInputError naming the path, without retrying it', async () => {
    const retrying = sdk(emulator, { maxAttempts: 3, retryStrategy: new ConfiguredRetryStrategy(3, () => 1) });
    try {
      emulator.injectFault({ operation: 'GetParametersByPath', code: 'ValidationException', message: 'Parameter path: is invalid' });
      await assert.rejects(source(retrying).fetch(['/nixos/fleet'], PLACES), (err: unknown) => {
        assert.ok(err instanceof InvalidInputError, String(err));
        assert.equal(err.where, 'SSM path /nixos/fleet');
        assert.match(err.message, /ValidationException/);
        return true;
      });
      assert.equal(emulator.callCounts()['GetParametersByPath'], 1);
      // And one the emulator finds itself: more than 15 levels.
      const deep = `/${Array.from({ length: 16 }, (_, i) => `l${i}`).join('/')}`;
      await assert.rejects(source(retrying).fetch([deep], PLACES), InvalidInputError);
    } finally {
      retrying.destroy();
    }
  });

  it('maps a 500 that outlasts the retries to TransientError', async () => {
    const retrying = sdk(emulator, { maxAttempts: 3, retryStrategy: new ConfiguredRetryStrategy(3, () => 1) });
    try {
      emulator.injectFault({ operation: 'GetParametersByPath', code: 'InternalServerError', message: 'boom', times: Infinity });
      await assert.rejects(source(retrying).fetch(['/nixos/fleet'], PLACES), (err: unknown) => {
        assert.ok(err instanceof TransientError, String(err));
        assert.equal(err.kind, 'transient');
        assert.match(err.message, /InternalServerError/);
        return true;
      });
      assert.equal(emulator.callCounts()['GetParametersByPath'], 3, 'the SDK retried the 500');
      emulator.clearFaults();
      // One 500, then success: the SDK's retry hides it.
      emulator.injectFault({ operation: 'GetParametersByPath', code: 'InternalServerError', message: 'boom' });
      assert.equal((await source(retrying).fetch(['/nixos/fleet'], PLACES)).prefixes[0]?.parameters.length, 25);
    } finally {
      retrying.destroy();
    }
  });
});

describe('SsmSource under throttling', () => {
  it('lets the SDK retry ThrottlingException until every page is read', async () => {
    // The emulator's time moves a second on with each throttle it answers, so its token bucket
    // (1 read a second, burst 2) refills exactly once per throttle: deterministic, whatever the
    // machine's speed.
    const start = Date.UTC(2024, 0, 1, 12);
    let emulator: SsmEmulator | undefined;
    const clock: Clock = { now: () => start + (emulator?.throttledCount ?? 0) * 1000, sleep: () => Promise.resolve() };
    emulator = await SsmEmulator.start({ clock, throughput: { readsPerSecond: 1, burst: 2 } });
    seed(emulator);
    emulator.resetCounters();
    const client = sdk(emulator, { maxAttempts: 5, retryStrategy: new ConfiguredRetryStrategy(5, () => 1) });
    try {
      const snapshot = await source(client).fetch(PREFIXES, PLACES);
      assert.equal(snapshot.prefixes.flatMap((p) => p.parameters).length, 57);
      assert.equal(snapshot.calls, 7, 'a retried call counts once: the SDK retries inside it');
      assert.equal(emulator.throttledCount, 5);
      assert.equal(emulator.callCounts()['GetParametersByPath'], 7 + 5);
      assert.ok(emulator.requests.some((r) => r.errorCode === 'ThrottlingException'));
    } finally {
      client.destroy();
      await emulator.close();
    }
  });

  it("is retried by the agent's own client settings (adaptive retry, 5 attempts)", async () => {
    const start = Date.UTC(2024, 0, 1, 12);
    let emulator: SsmEmulator | undefined;
    const clock: Clock = { now: () => start + (emulator?.throttledCount ?? 0) * 1000, sleep: () => Promise.resolve() };
    emulator = await SsmEmulator.start({ clock, throughput: { readsPerSecond: 1, burst: 1 } });
    for (let i = 0; i < 15; i++) emulator.put({ Name: `/nixos/fleet/options/a.o${i}`, Value: '1', Type: 'String' });
    emulator.resetCounters();
    const client = sdk(emulator, { maxAttempts: 5, retryMode: 'adaptive' });
    try {
      const snapshot = await source(client).fetch(['/nixos/fleet'], PLACES);
      assert.equal(snapshot.prefixes[0]?.parameters.length, 15);
      assert.equal(emulator.throttledCount, 1);
    } finally {
      client.destroy();
      await emulator.close();
    }
  });
});
