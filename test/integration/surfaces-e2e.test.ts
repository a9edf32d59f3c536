// What an end-to-end run leaves where others can see it: no secret value and no role credential in
// any file under the root (but the secret's own file), the agent's log, what its commands printed,
// status.json, or its HTTP answers; file modes as documented; and an HTTP server that survives a
// thousand malformed, oversized and slow requests, on loopback only, without any of them changing
// the agent's state.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { LiveDaemon, withDaemon } from '../support/daemon.js';
import { waitFor, type Instance } from '../support/e2e.js';

const SECRET_VALUE = `surface-secret-${randomBytes(12).toString('hex')}`;
const USER_DATA = '{ ... }:\n{\n  networking.hostName = "surfaces";\n}\n';

/** The instance role's credentials, as IMDS hands them out. */
async function roleCredentials(i: Instance): Promise<string[]> {
  const base = i.world.imds.url;
  const token = await (await fetch(`${base}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } })).text();
  const h = { 'x-aws-ec2-metadata-token': token };
  const role = (await (await fetch(`${base}/latest/meta-data/iam/security-credentials/`, { headers: h })).text()).trim();
  const creds = (await (await fetch(`${base}/latest/meta-data/iam/security-credentials/${role}`, { headers: h })).json()) as Record<string, string>;
  return [creds.SecretAccessKey!, creds.Token!, creds.AccessKeyId!];
}

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(dir, { recursive: true })).map(String)) {
    const full = path.join(dir, name);
    if ((await lstat(full)).isFile()) out.push(full);
  }
  return out;
}

function httpUrl(d: LiveDaemon): string {
  const ev = d.log.of('http.listening').at(-1);
  assert.ok(ev, 'the HTTP server is listening');
  return String(ev.url);
}

test('no secret or role credential on any surface; file modes as documented', async () => {
  await withDaemon(
    {
      userData: USER_DATA,
      parameters: [
        { Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' },
        { Name: '/nixos/fleet/secrets/db-password', Value: SECRET_VALUE, Type: 'SecureString' },
        { Name: '/nixos/fleet/modules/app', Value: '{ ec2Secrets, ... }:\n{\n  environment.etc."app-password-file".text = ec2Secrets.db-password;\n}\n', Type: 'String' },
      ],
      beforeStart: async (i) => i.setConfig(['postConvergeCommand'], { argv: ['sh', '-c', 'env > "$0"', path.join(i.dir, 'post-converge-env')] }),
    },
    async (d, i) => {
      const needles = [SECRET_VALUE, ...(await roleCredentials(i))];
      const url = httpUrl(d);
      const printed: string[] = [];
      for (const p of ['/healthz', '/readyz', '/status', '/metrics', '/nope', '/status?x=1']) printed.push(await (await fetch(`${url}${p}`)).text());
      for (const args of [['status', '--json'], ['status'], ['generations', '--json'], ['render'], ['render', '--json']]) {
        const r = await i.run(args);
        printed.push(r.stdout, r.stderr);
      }
      // A pass that does something runs postConvergeCommand: its environment is scanned too.
      i.put('/nixos/fleet/options/time.timeZone', '"Europe/Paris"');
      assert.equal((await d.pass()).outcome, 'converged');
      const { forced } = await d.stop();
      assert.equal(forced, false);
      printed.push((await d.run.done).stdout, (await d.run.done).stderr);

      const secretFile = i.file('run/nixos-ec2-agent/secrets/db-password');
      assert.equal(await readFile(secretFile, 'utf8'), SECRET_VALUE, 'the secret is where Nix finds its path');
      const leaks: string[] = [];
      const childEnv = path.join(i.dir, 'post-converge-env');
      assert.match(await readFile(childEnv, 'utf8'), /NIXOS_EC2_AGENT_OUTCOME=converged/, 'postConvergeCommand ran');
      for (const f of [...(await files(i.root)), i.sandbox.layout.log, childEnv]) {
        if (f === secretFile) continue;
        const text = await readFile(f, 'latin1');
        for (const n of needles) if (text.includes(n)) leaks.push(`${path.relative(i.root, f)} holds ${n === SECRET_VALUE ? 'the secret' : 'a role credential'}`);
      }
      printed.forEach((text, k) => needles.forEach((n) => text.includes(n) && leaks.push(`printed output ${k} holds ${n === SECRET_VALUE ? 'the secret' : 'a role credential'}`)));
      assert.deepEqual(leaks, []);

      const mode = async (rel: string) => (await stat(i.file(rel))).mode & 0o777;
      assert.equal(await mode('run/nixos-ec2-agent/secrets/db-password'), 0o400, 'a secret is 0400');
      assert.equal(await mode('run/nixos-ec2-agent/secrets'), 0o700, 'the secrets directory is 0700');
      assert.equal((await mode('var/lib/nixos-ec2-agent')) & 0o007, 0, 'the state directory is not world-readable');
      // The agent's own files (build/ holds the `result` link into the store, readable by design).
      const own = (await readdir(i.file('var/lib/nixos-ec2-agent'), { withFileTypes: true })).filter((e) => e.isFile());
      assert.ok(own.some((e) => e.name === 'state.json'));
      for (const e of own) assert.equal((await stat(i.file(`var/lib/nixos-ec2-agent/${e.name}`))).mode & 0o004, 0, `${e.name} is not world-readable`);
      assert.equal((await mode('run/nixos-ec2-agent/status.json')) & 0o022, 0, 'status.json is writable by root only');
    },
  );
});

/** Opens a raw connection, writes `data`, and resolves when the server answers or closes. */
function rawRequest(port: number, data: string | Buffer, holdMs = 0): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    socket.on('data', (c) => (answer += c.toString('latin1')));
    socket.on('error', () => resolve(answer));
    socket.on('close', () => resolve(answer));
    socket.on('connect', () => {
      socket.write(data);
      // A slow client: the rest never comes; the server must drop it, not wait forever.
      if (holdMs === 0) socket.end();
    });
    // Bounded from our side too: a slow request is abandoned after holdMs.
    if (holdMs > 0) setTimeout(() => socket.destroy(), holdMs).unref();
  });
}

test('1,000 malformed, oversized and slow requests: the server survives, on loopback only, and no state changes', async () => {
  await withDaemon({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] }, async (d, i) => {
    const url = new URL(httpUrl(d));
    assert.equal(url.hostname, '127.0.0.1', 'listens on loopback');
    const port = Number(url.port);
    const stateBefore = await readFile(i.file('var/lib/nixos-ec2-agent/state.json'), 'utf8');
    const runningBefore = await i.running();
    const configBefore = await i.configuration();
    const big = 'A'.repeat(256 * 1024);
    const shapes: (() => Promise<string>)[] = [
      () => rawRequest(port, 'GARBAGE\r\n\r\n'),
      () => rawRequest(port, '\x00\x01\x02\xff\xfe\r\n\r\n'),
      () => rawRequest(port, `GET /${big} HTTP/1.1\r\nHost: x\r\n\r\n`),
      () => rawRequest(port, `GET /status HTTP/1.1\r\nHost: x\r\nX-Big: ${big}\r\n\r\n`),
      () => rawRequest(port, 'POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello'),
      () => rawRequest(port, 'DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n'),
      () => rawRequest(port, 'GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n'),
      () => rawRequest(port, 'GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'),
      () => rawRequest(port, 'GET /metrics HTTP/9.9\r\n\r\n'),
      () => rawRequest(port, 'GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n'),
    ];
    let n = 0;
    const total = 1000;
    const slowEvery = 20;
    while (n < total) {
      const batch: Promise<string>[] = [];
      for (let k = 0; k < 50 && n < total; k++, n++) {
        batch.push(n % slowEvery === 0 ? rawRequest(port, 'GET /status HTTP/1.1\r\nHost: x\r\n', 300) : shapes[n % shapes.length]!());
      }
      await Promise.all(batch);
      assert.ok(d.alive, `the daemon is alive after ${n} requests`);
    }
    // Still serving, and nothing changed.
    await waitFor('the server to answer', async () => ((await fetch(`${url.origin}/healthz`)).status === 200 ? true : undefined), 30_000, 50);
    assert.equal((await fetch(`${url.origin}/status`)).status, 200);
    assert.equal(await readFile(i.file('var/lib/nixos-ec2-agent/state.json'), 'utf8'), stateBefore, 'state.json is unchanged');
    assert.equal(await i.running(), runningBefore);
    assert.equal(await i.configuration(), configBefore);
    assert.equal(d.passes().length, 1, 'no request started a pass');
  });
});
