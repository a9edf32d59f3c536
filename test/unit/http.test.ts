import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { buildDesired } from '../../agent/desired/desired.js';
import { HttpServer, parseListen } from '../../agent/report/http.js';
import { Secret } from '../../agent/secret.js';
import { interpretUserData } from '../../agent/sources/userdata.js';
import { startingStatus, type Status } from '../../agent/status.js';

const GOOD = '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a';
const NEW = '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b';
const HASH = 'd'.repeat(64);

function status(patch: Partial<Status> = {}): Status {
  return { ...startingStatus(Date.parse('2025-01-01T00:00:00.000Z'), 1), ...patch };
}

const PHASES: Record<string, Status> = {
  starting: status(),
  building: status({ phase: 'building', message: 'building generation 2', desired: { hash: HASH, sources: { userData: 'x', parameters: [] }, notes: [] } }),
  rolledBack: status({
    phase: 'idle',
    condition: 'degraded',
    firstConvergenceDone: true,
    message: 'rolled back to the last good generation: health verification failed',
    running: { storePath: GOOD, generation: 1 },
    lastGood: { storePath: GOOD },
    lastResult: { outcome: 'rolled-back', at: '2025-01-01T00:01:00.000Z', durationMs: 1000, desiredHash: HASH },
  }),
  failedNoGood: status({
    phase: 'idle',
    condition: 'failed',
    firstConvergenceDone: true,
    message: 'failed: activation failed',
    noGoodGeneration: true,
    reasons: ['switch-to-configuration switch exited with 4'],
    running: { storePath: NEW },
    lastGood: { storePath: GOOD },
  }),
  converged: status({
    phase: 'idle',
    condition: 'converged',
    firstConvergenceDone: true,
    message: 'converged to desired dddddddd (generation 2)',
    desired: { hash: HASH, sources: { userData: 'x', parameters: [] }, notes: [] },
    running: { storePath: NEW, desiredHash: HASH, generation: 2 },
    lastGood: { storePath: NEW, desiredHash: HASH },
    lastResult: { outcome: 'converged', at: '2025-01-01T00:01:00.000Z', durationMs: 1000, desiredHash: HASH },
  }),
};

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(url: string, path: string, method = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${url}${path}`, { method, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends raw bytes and returns whatever comes back before the server closes the connection. */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(text));
    let got = '';
    socket.setEncoding('utf8');
    socket.on('data', (c: string) => (got += c));
    socket.on('close', () => resolve(got));
    socket.on('error', reject);
  });
}

describe('parseListen', () => {
  it('takes host:port, [v6]:port, :port and port 0', () => {
    assert.deepEqual(parseListen('0.0.0.0:9731'), { host: '0.0.0.0', port: 9731 });
    assert.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 });
    assert.deepEqual(parseListen(':9731'), { host: '0.0.0.0', port: 9731 });
    assert.deepEqual(parseListen('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
  });
  it('rejects what is not host:port, naming the field', () => {
    for (const bad of ['9731', 'localhost', 'host:99999', '::1:80', 'a:b']) {
      assert.throws(() => parseListen(bad), (err: Error) => err.message.startsWith('http.listen:'), bad);
    }
  });
});

describe('HttpServer', () => {
  let current: Status = PHASES.starting as Status;
  let good = true;
  let metricsCalls = 0;
  const server = new HttpServer({
    listen: '127.0.0.1:0',
    status: () => current,
    hasGoodGeneration: () => good,
    metrics: async () => {
      metricsCalls++;
      return { contentType: 'text/plain; version=0.0.4; charset=utf-8', body: 'nixos_ec2_agent_up 1\n' };
    },
    timeouts: { requestMs: 400, headersMs: 300, keepAliveMs: 300 },
  });
  let url = '';
  let port = 0;

  before(async () => {
    const bound = await server.start();
    url = bound.url;
    port = bound.port;
    assert.notEqual(port, 0, 'port 0 binds a real port, and address shows it');
    assert.deepEqual(server.address, bound);
  });
  after(() => server.stop());

  const expect = async (path: string, code: number) => {
    const answer = await get(url, path);
    assert.equal(answer.status, code, `${path}: ${answer.body}`);
    return answer;
  };

  it('starting, on the image\'s good generation: healthy, not ready', async () => {
    current = PHASES.starting as Status;
    good = true;
    await expect('/healthz', 200);
    const ready = await expect('/readyz', 503);
    assert.match(JSON.parse(ready.body).reason, /first convergence/);
  });

  it('starting with no known good generation: not healthy', async () => {
    current = PHASES.starting as Status;
    good = false;
    await expect('/healthz', 503);
    good = true;
  });

  it('building the first generation: healthy, not ready', async () => {
    current = PHASES.building as Status;
    await expect('/healthz', 200);
    await expect('/readyz', 503);
  });

  it('rolled back to a good generation: healthy, not ready', async () => {
    current = PHASES.rolledBack as Status;
    await expect('/healthz', 200);
    const ready = await expect('/readyz', 503);
    assert.equal(JSON.parse(ready.body).condition, 'degraded');
  });

  it('failed with no good generation: neither healthy nor ready, with the reason', async () => {
    current = PHASES.failedNoGood as Status;
    const health = await expect('/healthz', 503);
    assert.equal(health.headers['content-type'], 'application/json; charset=utf-8');
    const body = JSON.parse(health.body) as { ok: boolean; reason: string };
    assert.equal(body.ok, false);
    assert.match(body.reason, /exited with 4/);
    await expect('/readyz', 503);
  });

  it('converged: healthy and ready; a later poll that has found no change yet stays ready', async () => {
    current = PHASES.converged as Status;
    await expect('/healthz', 200);
    await expect('/readyz', 200);
    current = { ...(PHASES.converged as Status), phase: 'fetching', message: 'reading user data and SSM parameters' };
    await expect('/readyz', 200);
    // The sources changed: building a new desired state is not ready.
    current = { ...(PHASES.converged as Status), phase: 'building', condition: 'converging', desired: { hash: 'e'.repeat(64), sources: { userData: 'x', parameters: [] }, notes: [] } };
    await expect('/readyz', 503);
  });

  it('ignores query strings', async () => {
    current = PHASES.converged as Status;
    await expect('/healthz?from=elb', 200);
  });

  it('HEAD answers the same status and headers with no body', async () => {
    current = PHASES.failedNoGood as Status;
    const head = await get(url, '/healthz', 'HEAD');
    assert.equal(head.status, 503);
    assert.equal(head.body, '');
    assert.ok(Number(head.headers['content-length']) > 0);
    current = PHASES.converged as Status;
    assert.equal((await get(url, '/status', 'HEAD')).status, 200);
  });

  it('other methods: 405 with Allow; unknown paths: 404', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const answer = await get(url, '/healthz', method);
      assert.equal(answer.status, 405, method);
      assert.equal(answer.headers.allow, 'GET, HEAD');
    }
    assert.equal((await get(url, '/status', 'POST')).status, 405);
    assert.equal((await get(url, '/nope')).status, 404);
    assert.equal((await get(url, '/')).status, 404);
    assert.equal((await get(url, '/healthz/x')).status, 404);
  });

  it('malformed requests: 400', async () => {
    const answer = await raw(port, 'THIS IS NOT HTTP\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 400 /);
    const absolute = await raw(port, 'GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(absolute, /^HTTP\/1\.1 400 /);
  });

  it('/metrics: the exposition with the registry\'s content type', async () => {
    const answer = await expect('/metrics', 200);
    assert.equal(answer.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    assert.equal(answer.body, 'nixos_ec2_agent_up 1\n');
    assert.ok(metricsCalls > 0);
  });

  it('a client that connects and sends nothing blocks no one, and is dropped by the timeout', { timeout: 60_000 }, async () => {
    current = PHASES.converged as Status;
    const idle: Socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => idle.once('connect', () => resolve()));
    const closed = new Promise<void>((resolve) => idle.once('close', () => resolve()));
    idle.on('error', () => {});
    // Read what the server sends, else the socket never sees the server's FIN.
    idle.resume();
    const slowHeaders: Socket = connect(port, '127.0.0.1', () => slowHeaders.write('GET /healthz HTTP/1.1\r\nHost: x\r\n'));
    slowHeaders.on('error', () => {});
    slowHeaders.resume();
    const slowClosed = new Promise<void>((resolve) => slowHeaders.once('close', () => resolve()));
    for (let i = 0; i < 5; i++) await expect('/healthz', 200);
    await Promise.all([closed, slowClosed]);
  });

  it('/status serves the Status as JSON, and a SecureString never appears in it', async () => {
    const value = 'sup3r-s3cret-db-password';
    const desired = buildDesired({
      userData: interpretUserData(undefined),
      ssm: {
        prefixes: [
          {
            prefix: '/nixos/fleet',
            parameters: [
              { name: '/nixos/fleet/secrets/db', type: 'SecureString', value: new Secret(value), version: 3, lastModified: 0 },
              { name: '/nixos/fleet/options/services.nginx.enable', type: 'String', value: 'true', version: 1, lastModified: 0 },
            ],
          },
        ],
        skipped: [],
        calls: 1,
      },
      local: { baseConfiguration: undefined, modules: [] },
    });
    assert.equal(desired.secrets[0]?.value.reveal(), value, 'the fixture holds the secret');
    current = {
      ...(PHASES.converged as Status),
      desired: { hash: desired.hash, sources: desired.sources, notes: desired.notes },
      // Even a desired state that slipped into the Status by mistake shows no secret.
      ...({ leaked: desired } as object),
    } as Status;
    const answer = await expect('/status', 200);
    assert.equal(answer.headers['content-type'], 'application/json; charset=utf-8');
    assert.ok(!answer.body.includes(value), 'the secret value is not served');
    const served = JSON.parse(answer.body) as Status & { leaked: { secrets: { value: string }[] } };
    assert.equal(served.desired?.hash, desired.hash);
    assert.deepEqual(served.desired?.sources.parameters.map((p) => p.name).sort(), ['/nixos/fleet/options/services.nginx.enable', '/nixos/fleet/secrets/db']);
    assert.equal(served.leaked.secrets[0]?.value, '[redacted]');
  });

  it('stop() drops open keep-alive connections', async () => {
    const other = new HttpServer({ listen: '127.0.0.1:0', status: () => PHASES.converged as Status });
    const { port: p } = await other.start();
    const socket = connect(p, '127.0.0.1', () => socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'));
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('data', () => resolve()));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await other.stop();
    await closed;
    assert.equal(other.address, undefined);
    await assert.rejects(get(`http://127.0.0.1:${p}`, '/healthz'));
  });
});

describe('HttpServer: a connection that never finishes its request', () => {
  // The inactivity timeout is far off, so only the connection's own deadline can end these.
  const server = new HttpServer({ listen: '127.0.0.1:0', status: () => PHASES.converged as Status, timeouts: { requestMs: 120_000, headersMs: 300, keepAliveMs: 300 } });
  let port = 0;
  before(async () => {
    port = (await server.start()).port;
  });
  after(() => server.stop());

  /** A client that sends `first`, then one more byte of a header every 50 ms until the server answers or closes. */
  const drip = (first: string) =>
    new Promise<string>((resolve) => {
      let answer = '';
      const socket: Socket = connect(port, '127.0.0.1', () => socket.write(first));
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
      const timer = setInterval(() => socket.writable && socket.write('x'), 50);
      socket.once('close', () => {
        clearInterval(timer);
        resolve(answer);
      });
    });

  it('is answered 408 and closed though it keeps sending, on a new connection', { timeout: 60_000 }, async () => {
    assert.match(await drip('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: '), /^HTTP\/1\.1 408 Request Timeout\r\n/);
  });

  it('and on a kept-alive one after its first answer', { timeout: 60_000 }, async () => {
    const answer = await drip('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(answer, /\r\n\r\n.*HTTP\/1\.1 408 Request Timeout\r\n/s);
  });
});
