// The IMDSv2 client against the IMDS emulator over real HTTP. AWS's documented behaviour: a PUT to
// /latest/api/token issues a session token that every read carries; a read with an expired or
// unknown token gets 401; IMDS turned off answers 403; an absent item 404. The agent caches one
// token, refreshes it on 401, fails at once on 403 and never falls back to IMDSv1.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { ImdsClient } from '../../agent/aws/imds.js';
import { ImdsDisabledError, InvalidInputError, TransientError } from '../../agent/errors.js';
import { systemClock } from '../../agent/ports.js';
import { defaultInstance, ImdsEmulator } from '../../sandbox/emulators/imds.js';

describe('ImdsClient against the IMDS emulator', () => {
  let emulator: ImdsEmulator;

  before(async () => {
    emulator = await ImdsEmulator.start({ instance: defaultInstance({ instanceId: 'i-0aaaabbbbccccdddd', region: 'eu-west-1' }) });
  });
  after(async () => {
    await emulator.close();
  });
  beforeEach(() => {
    emulator.clearFaults();
    emulator.setHttpEndpoint('enabled');
    emulator.setUserData(undefined);
  });

  /** A fresh client, found the way the SDK finds IMDS: AWS_EC2_METADATA_SERVICE_ENDPOINT. */
  function client(options: { retries?: number; timeoutMs?: number } = {}): ImdsClient {
    return new ImdsClient({
      clock: systemClock,
      env: { AWS_EC2_METADATA_SERVICE_ENDPOINT: `${emulator.url}/` },
      backoffBaseMs: 1,
      retries: options.retries ?? 3,
      timeoutMs: options.timeoutMs ?? 2_000,
    });
  }

  function requestsSince(start: number) {
    return emulator.requests.slice(start);
  }

  function assertNoImdsV1(start: number): void {
    for (const r of requestsSince(start)) {
      if (r.method === 'PUT') continue;
      assert.equal(r.tokenPresented, true, `${r.method} ${r.rawPath} was sent without a token (IMDSv1)`);
    }
  }

  it('reuses one token across many reads', async () => {
    const start = emulator.requests.length;
    const imds = client();
    assert.equal(imds.endpoint, emulator.url);
    const ids = await Promise.all(Array.from({ length: 10 }, () => imds.get('latest/meta-data/instance-id')));
    for (let i = 0; i < 10; i++) assert.equal(await imds.get('latest/meta-data/instance-type'), 't3.micro');
    assert.deepEqual(new Set(ids), new Set(['i-0aaaabbbbccccdddd']));
    const log = requestsSince(start);
    assert.equal(log.filter((r) => r.method === 'PUT').length, 1, 'a token per read');
    assert.equal(log.filter((r) => r.method === 'GET').length, 20);
    assert.ok(log.every((r) => r.status === 200));
    assertNoImdsV1(start);
  });

  it('fetches a new token after a 401 and reads again', async () => {
    const imds = client();
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    const start = emulator.requests.length;
    emulator.expireTokens();
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    assert.deepEqual(
      requestsSince(start).map((r) => `${r.method} ${r.status}`),
      ['GET 401', 'PUT 200', 'GET 200'],
    );
    assertNoImdsV1(start);
  });

  it('fails at once with ImdsDisabledError when the token PUT gets 403 (IMDS turned off), with no retries', async () => {
    emulator.setHttpEndpoint('disabled');
    const start = emulator.requests.length;
    const imds = client({ retries: 5 });
    await assert.rejects(imds.get('latest/meta-data/instance-id'), (err: unknown) => {
      assert.ok(err instanceof ImdsDisabledError, String(err));
      assert.equal(err.kind, 'imds-disabled');
      assert.match(err.message, /403/);
      return true;
    });
    assert.deepEqual(requestsSince(start).map((r) => `${r.method} ${r.status}`), ['PUT 403']);
    await assert.rejects(imds.getBytes('latest/user-data'), ImdsDisabledError);
    assert.equal(requestsSince(start).filter((r) => r.method === 'GET').length, 0, 'fell back to IMDSv1');
  });

  it('fails at once when a read gets 403', async () => {
    const imds = client({ retries: 5 });
    await imds.get('latest/meta-data/instance-id');
    const start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/meta-data/instance-id', method: 'GET', status: 403 });
    await assert.rejects(imds.get('latest/meta-data/instance-id'), ImdsDisabledError);
    assert.equal(requestsSince(start).length, 1);
  });

  it('retries 5xx, then gives up with a TransientError once the budget is spent', async () => {
    const imds = client({ retries: 3 });
    await imds.get('latest/meta-data/instance-id');
    let start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/meta-data/instance-id', status: 503, times: 2 });
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    assert.deepEqual(requestsSince(start).map((r) => r.status), [503, 503, 200]);

    start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/meta-data/instance-id', status: 500, times: Infinity });
    await assert.rejects(imds.get('latest/meta-data/instance-id'), (err: unknown) => {
      assert.ok(err instanceof TransientError, String(err));
      assert.match(err.message, /4 attempts/);
      return true;
    });
    assert.deepEqual(requestsSince(start).map((r) => r.status), [500, 500, 500, 500]);
    assertNoImdsV1(start);
  });

  it('retries a token PUT that fails with 5xx', async () => {
    const start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/api/token', method: 'PUT', status: 500 });
    assert.equal(await client().get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    assert.deepEqual(requestsSince(start).map((r) => `${r.method} ${r.status}`), ['PUT 500', 'PUT 200', 'GET 200']);
  });

  it('retries a dropped connection and an answer slower than the timeout', async () => {
    // Headroom for the answers that must arrive in time on a loaded machine; the slow one is
    // five times later than the timeout, which load can only make later still.
    const imds = client({ timeoutMs: 2_000 });
    await imds.get('latest/meta-data/instance-id');
    let start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/meta-data/instance-id', drop: true });
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    assert.equal(requestsSince(start).length, 2);
    assert.equal(requestsSince(start)[0]?.fault?.drop, true);

    start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/meta-data/instance-id', delayMs: 10_000 });
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0aaaabbbbccccdddd');
    assert.equal(requestsSince(start).length, 2);

    start = emulator.requests.length;
    emulator.injectFault({ path: '/latest/user-data', drop: true });
    emulator.setUserData('{ }\n');
    assert.equal((await imds.getBytes('latest/user-data'))?.toString(), '{ }\n');
    assert.equal(requestsSince(start).length, 2);
  });

  it('refuses an https:// endpoint, which IMDS never has, naming the setting', () => {
    assert.throws(
      () => new ImdsClient({ clock: systemClock, env: { AWS_EC2_METADATA_SERVICE_ENDPOINT: 'https://169.254.169.254' } }),
      (err: unknown) => err instanceof InvalidInputError && /must be http:\/\//.test(err.message) && err.where === 'AWS_EC2_METADATA_SERVICE_ENDPOINT',
    );
  });

  it('answers undefined for an item that is not set (404), without retrying', async () => {
    const imds = client();
    await imds.get('latest/meta-data/instance-id');
    const start = emulator.requests.length;
    assert.equal(await imds.get('latest/meta-data/tags/instance/no-such-tag'), undefined);
    assert.equal(await imds.getBytes('latest/user-data'), undefined);
    assert.deepEqual(requestsSince(start).map((r) => r.status), [404, 404]);
  });

  it('reads binary and gzip user data byte for byte', async () => {
    const imds = client();
    const binary = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0a, 0xc3, 0x28, 0x1f, 0x8b]);
    emulator.setUserData(binary);
    assert.deepEqual(await imds.getBytes('latest/user-data'), binary);
    const gz = gzipSync(Buffer.from('{ ... }: { networking.hostName = "é"; }\n'));
    emulator.setUserData(gz);
    assert.deepEqual(await imds.getBytes('latest/user-data'), gz);
  });

  it('parses the instance identity document', async () => {
    const start = emulator.requests.length;
    const identity = await client().identity();
    assert.deepEqual(identity, {
      instanceId: 'i-0aaaabbbbccccdddd',
      region: 'eu-west-1',
      availabilityZone: 'eu-west-1a',
      instanceType: 't3.micro',
      amiId: 'ami-0abcdef1234567890',
      accountId: '123456789012',
    });
    assertNoImdsV1(start);
  });

  it('never sends a request without a token, over everything above', () => {
    assertNoImdsV1(0);
  });
});

// The emulator does not expose its connections, so a bare server counts them: the termination
// checks read IMDS every few seconds, and each read must not cost a new TCP connection.
describe('ImdsClient connections', () => {
  it('sends sequential reads over one kept-alive connection', async () => {
    let connections = 0;
    const server = createServer((req, res) => {
      res.end(req.method === 'PUT' ? 'token-1' : 'i-0123');
    });
    server.on('connection', () => connections++);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const imds = new ImdsClient({ clock: systemClock, env: { AWS_EC2_METADATA_SERVICE_ENDPOINT: `http://127.0.0.1:${(server.address() as AddressInfo).port}` } });
      for (let i = 0; i < 5; i++) assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123');
      assert.equal(connections, 1, 'a connection per read');
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  // The timeout bounds the whole answer, its body too, and a lost connection mid-body fails the read
  // (to be retried) rather than leaving it waiting for an end that never comes.
  for (const how of ['stalls', 'is cut'] as const) {
    it(`retries an answer whose body ${how} after its headers`, async () => {
      let gets = 0;
      const server = createServer((req, res) => {
        if (req.method === 'PUT') return res.end('token-1');
        gets++;
        if (gets > 1) return res.end('i-0123');
        res.writeHead(200, { 'content-length': '6' });
        res.write('i-0');
        if (how === 'is cut') res.socket?.destroy();
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const imds = new ImdsClient({
          clock: systemClock,
          env: { AWS_EC2_METADATA_SERVICE_ENDPOINT: `http://127.0.0.1:${(server.address() as AddressInfo).port}` },
          backoffBaseMs: 1,
          timeoutMs: 1_000,
        });
        assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123');
        assert.equal(gets, 2);
      } finally {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  }
});
