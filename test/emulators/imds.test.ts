// The IMDS emulator against AWS's documented IMDSv2 behaviour (EC2 User Guide: "How Instance
// Metadata Service Version 2 works", "Retrieve instance metadata", "Instance metadata categories"),
// and against the real SDK clients and curl, which must accept what it serves.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { gzipSync, gunzipSync } from 'node:zlib';
import { MetadataService } from '@aws-sdk/ec2-metadata-service';
import { ImdsEmulator, ImdsEmulatorConfigError, defaultInstance, isMetadataTagKey } from '../../sandbox/emulators/imds.js';
import { ManualClock } from '../support/clock.js';
import { InstanceFile, World } from '../../sandbox/world.js';

interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
}

/** A raw request, so paths such as `//latest/…` reach the server exactly as written. */
function request(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  options: { timeoutMs?: number } = {},
): Promise<Reply> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    if (options.timeoutMs !== undefined) {
      req.setTimeout(options.timeoutMs, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })));
    }
    req.on('error', reject);
    req.end();
  });
}

async function token(emulator: ImdsEmulator, ttl = '21600'): Promise<string> {
  const r = await request(emulator.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': ttl });
  assert.equal(r.status, 200, `token PUT answered ${r.status}`);
  return r.text;
}

async function get(emulator: ImdsEmulator, path: string, tok?: string): Promise<Reply> {
  return request(emulator.url, 'GET', path, { 'X-aws-ec2-metadata-token': tok ?? (await token(emulator)) });
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('IMDS emulator: session tokens', () => {
  let imds: ImdsEmulator;
  before(async () => {
    imds = await ImdsEmulator.start();
  });
  after(() => imds.close());

  test('PUT /latest/api/token returns a text/plain token and echoes the TTL', async () => {
    const r = await request(imds.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': '21600' });
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain/);
    assert.equal(r.headers['x-aws-ec2-metadata-token-ttl-seconds'], '21600');
    assert.ok(r.text.length >= 32 && !/\s/.test(r.text), `token ${JSON.stringify(r.text)}`);
    const again = await token(imds);
    assert.notEqual(again, r.text, 'every PUT opens a new session');
  });

  test('the TTL bounds 1 and 21600 seconds are accepted', async () => {
    for (const ttl of ['1', '21600']) {
      const r = await request(imds.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': ttl });
      assert.equal(r.status, 200, `ttl ${ttl}`);
    }
  });

  test('a missing or invalid TTL is 400 - Missing or Invalid Parameters', async () => {
    const missing = await request(imds.url, 'PUT', '/latest/api/token');
    assert.equal(missing.status, 400);
    assert.match(missing.text, /<title>400 - Bad Request<\/title>/);
    for (const ttl of ['0', '-5', '21601', 'abc', '1.5', '']) {
      const r = await request(imds.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': ttl });
      assert.equal(r.status, 400, `ttl ${JSON.stringify(ttl)}`);
    }
  });

  test('a token PUT carrying X-Forwarded-For is refused with 403', async () => {
    const r = await request(imds.url, 'PUT', '/latest/api/token', {
      'X-aws-ec2-metadata-token-ttl-seconds': '60',
      'X-Forwarded-For': '203.0.113.7',
    });
    assert.equal(r.status, 403);
  });

  test('a PUT to a versioned token path is 403', async () => {
    for (const version of ['2021-03-23', '1.0']) {
      const r = await request(imds.url, 'PUT', `/${version}/api/token`, { 'X-aws-ec2-metadata-token-ttl-seconds': '60' });
      assert.equal(r.status, 403, version);
    }
  });

  test('the token path takes only PUT', async () => {
    const r = await request(imds.url, 'GET', '/latest/api/token', { 'X-aws-ec2-metadata-token': await token(imds) });
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'PUT');
  });

  test('a read with no token, or an unknown one, is 401 (tokens required)', async () => {
    const none = await request(imds.url, 'GET', '/latest/meta-data/instance-id');
    assert.equal(none.status, 401);
    assert.match(none.text, /401 - Unauthorized/);
    const wrong = await request(imds.url, 'GET', '/latest/meta-data/instance-id', { 'X-aws-ec2-metadata-token': 'AQAEAnotarealtoken==' });
    assert.equal(wrong.status, 401);
    const ok = await get(imds, '/latest/meta-data/instance-id');
    assert.equal(ok.status, 200);
    assert.equal(ok.text, 'i-0123456789abcdef0');
  });

  test('the token check comes before the path lookup', async () => {
    const r = await request(imds.url, 'GET', '/latest/meta-data/no-such-item');
    assert.equal(r.status, 401);
  });

  test('a token is valid any number of times within its TTL', async () => {
    const tok = await token(imds);
    for (let i = 0; i < 3; i++) assert.equal((await get(imds, '/latest/meta-data/instance-type', tok)).status, 200);
  });
});

describe('IMDS emulator: token expiry by the injected clock', () => {
  test('a token expires when its age reaches the TTL', async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const imds = await ImdsEmulator.start({ clock });
    try {
      const tok = await token(imds, '10');
      clock.advance(9_999);
      assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 200);
      clock.advance(1);
      assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 401);
      assert.equal(imds.activeTokens, 0);
      clock.advance(60_000);
      const fresh = await token(imds, '10');
      assert.equal((await get(imds, '/latest/meta-data/instance-id', fresh)).status, 200);
    } finally {
      await imds.close();
    }
  });

  test('expireTokens() ends every session early', async () => {
    const imds = await ImdsEmulator.start();
    try {
      const a = await token(imds);
      const b = await token(imds);
      imds.expireTokens();
      assert.equal((await get(imds, '/latest/meta-data/instance-id', a)).status, 401);
      assert.equal((await get(imds, '/latest/meta-data/instance-id', b)).status, 401);
    } finally {
      await imds.close();
    }
  });

  test('tokens belong to one emulator (one instance) only', async () => {
    const one = await ImdsEmulator.start();
    const two = await ImdsEmulator.start({ instance: defaultInstance({ instanceId: 'i-0fedcba9876543210' }) });
    try {
      const tok = await token(one);
      assert.equal((await get(two, '/latest/meta-data/instance-id', tok)).status, 401);
      assert.equal((await get(two, '/latest/meta-data/instance-id')).text, 'i-0fedcba9876543210');
      assert.equal((await get(one, '/latest/meta-data/instance-id', tok)).text, 'i-0123456789abcdef0');
    } finally {
      await Promise.all([one.close(), two.close()]);
    }
  });
});

describe('IMDS emulator: endpoint modes and methods', () => {
  test('httpEndpoint disabled answers 403 to everything, token PUT included', async () => {
    const imds = await ImdsEmulator.start({ httpEndpoint: 'disabled' });
    try {
      const put = await request(imds.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': '60' });
      assert.equal(put.status, 403);
      assert.match(put.text, /403 - Forbidden/);
      assert.equal((await request(imds.url, 'GET', '/latest/meta-data/instance-id')).status, 403);
      assert.equal((await request(imds.url, 'GET', '/latest/user-data')).status, 403);
      imds.setHttpEndpoint('enabled');
      assert.equal((await get(imds, '/latest/meta-data/instance-id')).status, 200);
      const tok = await token(imds);
      imds.setHttpEndpoint('disabled');
      assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 403);
    } finally {
      await imds.close();
    }
  });

  test('httpTokens optional also answers token-less reads, but never a bad token', async () => {
    const imds = await ImdsEmulator.start({ httpTokens: 'optional' });
    try {
      assert.equal((await request(imds.url, 'GET', '/latest/meta-data/instance-id')).status, 200);
      assert.equal((await request(imds.url, 'GET', '/latest/meta-data/instance-id', { 'X-aws-ec2-metadata-token': 'bogus' })).status, 401);
    } finally {
      await imds.close();
    }
  });

  test('methods other than GET and HEAD on metadata are 405 with Allow', async () => {
    const imds = await ImdsEmulator.start();
    try {
      const tok = await token(imds);
      for (const method of ['PUT', 'POST', 'DELETE', 'PATCH']) {
        const r = await request(imds.url, method, '/latest/meta-data/instance-id', { 'X-aws-ec2-metadata-token': tok });
        assert.equal(r.status, 405, method);
        assert.deepEqual(String(r.headers.allow).split(/,\s*/).sort(), ['GET', 'HEAD']);
      }
      const head = await request(imds.url, 'HEAD', '/latest/meta-data/instance-id', { 'X-aws-ec2-metadata-token': tok });
      assert.equal(head.status, 200);
      assert.equal(head.body.length, 0);
      assert.equal(head.headers['content-length'], String('i-0123456789abcdef0'.length));
    } finally {
      await imds.close();
    }
  });
});

describe('IMDS emulator: paths and items', () => {
  let imds: ImdsEmulator;
  let tok: string;
  before(async () => {
    imds = await ImdsEmulator.start();
    tok = await token(imds);
  });
  after(() => imds.close());

  test('items are text/plain values of the instance', async () => {
    const expected: Record<string, string> = {
      '/latest/meta-data/instance-id': 'i-0123456789abcdef0',
      '/latest/meta-data/ami-id': 'ami-0abcdef1234567890',
      '/latest/meta-data/instance-type': 't3.micro',
      '/latest/meta-data/local-ipv4': '10.0.1.23',
      '/latest/meta-data/hostname': 'ip-10-0-1-23.ec2.internal',
      '/latest/meta-data/placement/region': 'us-east-1',
      '/latest/meta-data/placement/availability-zone': 'us-east-1a',
    };
    for (const [path, value] of Object.entries(expected)) {
      const r = await get(imds, path, tok);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), /^text\/plain/, path);
      assert.equal(r.text, value, path);
    }
  });

  test('duplicate slashes are collapsed, as MetadataService sends them', async () => {
    const r = await get(imds, '//latest/meta-data/instance-id', tok);
    assert.equal(r.status, 200);
    assert.equal(r.text, 'i-0123456789abcdef0');
    assert.equal((await get(imds, '/latest//meta-data///placement//region', tok)).text, 'us-east-1');
    const logged = imds.requests.find((x) => x.rawPath === '//latest/meta-data/instance-id');
    assert.equal(logged?.path, '/latest/meta-data/instance-id');
    assert.equal(logged?.status, 200);
    assert.equal(logged?.tokenPresented, true);
  });

  test('versioned prefixes are served', async () => {
    assert.equal((await get(imds, '/2021-07-15/meta-data/instance-id', tok)).text, 'i-0123456789abcdef0');
    assert.equal((await get(imds, '/1.0/meta-data/instance-id', tok)).text, 'i-0123456789abcdef0');
    assert.equal((await get(imds, '/not-a-version/meta-data/instance-id', tok)).status, 404);
  });

  test('missing paths are 404 with an XHTML body', async () => {
    for (const path of ['/latest/meta-data/no-such-item', '/latest/meta-data/placement/nope', '/latest/meta-data/instance-id/extra', '/latest/nope']) {
      const r = await get(imds, path, tok);
      assert.equal(r.status, 404, path);
      assert.match(r.text, /<title>404 - Not Found<\/title>/, path);
    }
  });

  test('directory listings are LF-separated names, sub-directories with a trailing slash', async () => {
    const top = (await get(imds, '/latest/meta-data/', tok)).text.split('\n');
    for (const name of ['ami-id', 'hostname', 'instance-id', 'instance-type', 'local-ipv4', 'placement/', 'iam/']) {
      assert.ok(top.includes(name), `${name} in ${JSON.stringify(top)}`);
    }
    assert.ok(!top.includes('autoscaling/') && !top.includes('spot/') && !top.includes('tags/'), 'absent categories are not listed');
    assert.ok(top.every((l) => l.length > 0), 'no blank lines');
    assert.equal((await get(imds, '/latest/meta-data/placement/', tok)).text, 'availability-zone\nregion');
    assert.equal((await get(imds, '/latest/meta-data/placement', tok)).text, 'availability-zone\nregion');
    assert.deepEqual((await get(imds, '/latest/', tok)).text.split('\n'), ['dynamic', 'meta-data']);
    assert.ok((await get(imds, '/', tok)).text.split('\n').includes('latest'));
  });

  test('the primary network interface and block device mapping every VPC instance has, listed with the rest', async () => {
    const top = (await get(imds, '/latest/meta-data/', tok)).text.split('\n');
    for (const name of ['mac', 'network/', 'block-device-mapping/']) assert.ok(top.includes(name), `${name} in ${JSON.stringify(top)}`);
    const mac = (await get(imds, '/latest/meta-data/mac', tok)).text;
    assert.match(mac, /^0e(:[0-9a-f]{2}){5}$/);
    assert.equal((await get(imds, '/latest/meta-data/network/', tok)).text, 'interfaces/');
    assert.equal((await get(imds, '/latest/meta-data/network/interfaces/macs/', tok)).text, `${mac}/`);
    const base = `/latest/meta-data/network/interfaces/macs/${mac}/`;
    assert.deepEqual((await get(imds, base, tok)).text.split('\n'), [
      'device-number', 'interface-id', 'local-hostname', 'local-ipv4s', 'mac', 'owner-id', 'security-group-ids', 'security-groups', 'subnet-id', 'vpc-id',
    ]);
    const leaf = async (name: string) => (await get(imds, `${base}${name}`, tok)).text;
    assert.equal(await leaf('device-number'), '0');
    assert.equal(await leaf('mac'), mac);
    assert.equal(await leaf('local-ipv4s'), '10.0.1.23');
    assert.equal(await leaf('owner-id'), '123456789012');
    assert.match(await leaf('interface-id'), /^eni-[0-9a-f]{17}$/);
    assert.match(await leaf('subnet-id'), /^subnet-[0-9a-f]{17}$/);
    assert.match(await leaf('vpc-id'), /^vpc-[0-9a-f]{17}$/);
    assert.match(await leaf('security-group-ids'), /^sg-[0-9a-f]{17}$/);
    assert.equal((await get(imds, '/latest/meta-data/block-device-mapping/', tok)).text, 'ami\nroot');
    assert.equal((await get(imds, '/latest/meta-data/block-device-mapping/root', tok)).text, '/dev/xvda');

    // Derived from the instance, so stable across restarts; another instance gets its own interface.
    const again = await ImdsEmulator.start();
    const other = await ImdsEmulator.start({ instance: defaultInstance({ instanceId: 'i-0fedcba9876543210' }) });
    try {
      assert.equal((await get(again, '/latest/meta-data/mac', await token(again))).text, mac);
      const otherTok = await token(other);
      const otherMac = (await get(other, '/latest/meta-data/mac', otherTok)).text;
      assert.notEqual(otherMac, mac);
      const otherBase = `/latest/meta-data/network/interfaces/macs/${otherMac}/`;
      assert.notEqual((await get(other, `${otherBase}interface-id`, otherTok)).text, await leaf('interface-id'));
      assert.equal((await get(other, `${otherBase}vpc-id`, otherTok)).text, await leaf('vpc-id'), 'one account and Region, one VPC');
    } finally {
      await again.close();
      await other.close();
    }
  });

  test('instance tags: listing and values, only keys EC2 can expose', async () => {
    imds.setTagsInMetadata(true);
    imds.setTag('Environment', 'staging');
    imds.setTag('has space', 'x');
    imds.setTag('a/b', 'x');
    try {
      for (const path of ['/latest/meta-data/tags/instance', '/latest/meta-data/tags/instance/']) {
        const keys = (await get(imds, path, tok)).text.split('\n');
        assert.deepEqual(keys.sort(), ['Environment', 'Name', 'aws:autoscaling:groupName'].sort(), path);
      }
      assert.equal((await get(imds, '/latest/meta-data/tags/instance/aws:autoscaling:groupName', tok)).text, 'demo-asg');
      assert.equal((await get(imds, '/latest/meta-data/tags/instance/Environment', tok)).text, 'staging');
      assert.equal((await get(imds, '/latest/meta-data/tags/instance/has%20space', tok)).status, 404);
      assert.equal((await get(imds, '/latest/meta-data/tags/instance/Missing', tok)).status, 404);
      assert.equal(isMetadataTagKey('_index'), false);
      assert.equal(isMetadataTagKey('..'), false);
      assert.equal(isMetadataTagKey('team@corp,x=y+z'), true);
    } finally {
      for (const k of ['Environment', 'has space', 'a/b']) imds.setTag(k, undefined);
      imds.setTagsInMetadata(false);
    }
  });

  test("tags are not in metadata unless allowed (EC2's default)", async () => {
    assert.equal(defaultInstance().tagsInMetadata, false);
    assert.equal((await get(imds, '/latest/meta-data/tags/instance', tok)).status, 404);
    assert.equal((await get(imds, '/latest/meta-data/tags/instance/Name', tok)).status, 404);
    assert.equal((await get(imds, '/latest/meta-data/tags/instance/aws:autoscaling:groupName', tok)).status, 404);
    assert.ok(!(await get(imds, '/latest/meta-data/', tok)).text.split('\n').includes('tags/'));
  });

  test('user data: 404 when none, raw bytes as application/octet-stream when set', async () => {
    imds.setUserData(undefined);
    const none = await get(imds, '/latest/user-data', tok);
    assert.equal(none.status, 404);
    assert.match(none.text, /404 - Not Found/);

    const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const gz = gzipSync(Buffer.concat([Buffer.from('{ services.nginx.enable = true; }\n'), every]));
    imds.setUserData(gz);
    try {
      const r = await get(imds, '/latest/user-data', tok);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'application/octet-stream');
      assert.ok(r.body.equals(gz), 'gzip bytes arrive intact');
      assert.ok(gunzipSync(r.body).subarray(-256).equals(every));
      assert.ok((await get(imds, '//latest/user-data', tok)).body.equals(gz));
      assert.ok((await get(imds, '/latest/', tok)).text.split('\n').includes('user-data'));
      imds.setUserData('#!/bin/sh\necho hi\n');
      assert.equal((await get(imds, '/latest/user-data', tok)).text, '#!/bin/sh\necho hi\n');
    } finally {
      imds.setUserData(undefined);
    }
  });

  test('user data over 16 KB is refused, as EC2 refuses it at launch', () => {
    assert.throws(() => imds.setUserData(Buffer.alloc(16 * 1024 + 1)), ImdsEmulatorConfigError);
    imds.setUserData(Buffer.alloc(16 * 1024));
    imds.setUserData(undefined);
  });

  test('autoscaling/target-lifecycle-state appears only after a transition', async () => {
    assert.equal((await get(imds, '/latest/meta-data/autoscaling/target-lifecycle-state', tok)).status, 404);
    imds.setTargetLifecycleState('InService');
    try {
      assert.equal((await get(imds, '/latest/meta-data/autoscaling/target-lifecycle-state', tok)).text, 'InService');
      assert.ok((await get(imds, '/latest/meta-data/', tok)).text.split('\n').includes('autoscaling/'));
      // Current states such as Pending:Wait are never in IMDS; only the target state is.
      assert.throws(() => imds.setTargetLifecycleState('Pending:Wait' as never), ImdsEmulatorConfigError);
      imds.setTargetLifecycleState('Terminated');
      assert.equal((await get(imds, '/latest/meta-data/autoscaling/target-lifecycle-state', tok)).text, 'Terminated');
    } finally {
      imds.setTargetLifecycleState(undefined);
    }
  });

  test('instance-life-cycle is on-demand, and an on-demand instance is never sent a spot notice', async () => {
    assert.equal((await get(imds, '/latest/meta-data/instance-life-cycle', tok)).text, 'on-demand');
    assert.equal((await get(imds, '/latest/meta-data/spot/instance-action', tok)).status, 404);
    assert.throws(() => imds.setSpotInstanceAction({ action: 'terminate', time: '2017-09-18T08:22:00Z' }), /spotInstanceAction: an on-demand instance/);
    await assert.rejects(ImdsEmulator.start({ instance: defaultInstance({ instanceLifeCycle: 'reserved' as never }) }), /instanceLifeCycle: "reserved" is not on-demand or spot/);
  });

  test('a spot instance: spot/instance-action is 404 until an interruption is pending, then JSON', async () => {
    const spot = await ImdsEmulator.start({ instance: defaultInstance({ instanceLifeCycle: 'spot' }) });
    try {
      const t = await token(spot);
      assert.equal((await get(spot, '/latest/meta-data/instance-life-cycle', t)).text, 'spot');
      assert.equal((await get(spot, '/latest/meta-data/spot/instance-action', t)).status, 404);
      spot.setSpotInstanceAction({ action: 'terminate', time: '2017-09-18T08:22:00Z' });
      const r = await get(spot, '/latest/meta-data/spot/instance-action', t);
      assert.equal(r.status, 200);
      assert.deepEqual(JSON.parse(r.text), { action: 'terminate', time: '2017-09-18T08:22:00Z' });
      assert.equal((await get(spot, '/latest/meta-data/spot/termination-time', t)).text, '2017-09-18T08:22:00Z');
    } finally {
      await spot.close();
    }
  });

  test('events/recommendations/rebalance appears once emitted', async () => {
    assert.equal((await get(imds, '/latest/meta-data/events/recommendations/rebalance', tok)).status, 404);
    imds.setRebalanceNoticeTime('2020-11-05T08:22:00Z');
    try {
      const r = await get(imds, '/latest/meta-data/events/recommendations/rebalance', tok);
      assert.deepEqual(JSON.parse(r.text), { noticeTime: '2020-11-05T08:22:00Z' });
    } finally {
      imds.setRebalanceNoticeTime(undefined);
    }
  });

  test('the instance identity document has the documented keys', async () => {
    const r = await get(imds, '/latest/dynamic/instance-identity/document', tok);
    assert.equal(r.status, 200);
    const doc = JSON.parse(r.text) as Record<string, unknown>;
    const keys = ['accountId', 'architecture', 'availabilityZone', 'billingProducts', 'devpayProductCodes', 'marketplaceProductCodes', 'imageId', 'instanceId', 'instanceType', 'kernelId', 'pendingTime', 'privateIp', 'ramdiskId', 'region', 'version'];
    assert.deepEqual(Object.keys(doc).sort(), keys.sort());
    assert.equal(doc.instanceId, 'i-0123456789abcdef0');
    assert.equal(doc.region, 'us-east-1');
    assert.equal(doc.accountId, '123456789012');
    assert.equal(doc.version, '2017-09-30');
    assert.match(String(doc.pendingTime), /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    assert.equal((await get(imds, '/latest/dynamic/instance-identity/', tok)).text, 'document');
  });
});

describe('IMDS emulator: instance profile credentials', () => {
  test('security-credentials lists the role and serves AWS-HMAC credentials hours ahead of the clock', async () => {
    const clock = new ManualClock();
    const imds = await ImdsEmulator.start({ clock });
    try {
      const tok = await token(imds);
      assert.equal((await get(imds, '/latest/meta-data/iam/security-credentials/', tok)).text, 'nixos-ec2-agent-demo');
      const r = await get(imds, '/latest/meta-data/iam/security-credentials/nixos-ec2-agent-demo', tok);
      assert.equal(r.status, 200);
      const creds = JSON.parse(r.text) as Record<string, string>;
      assert.deepEqual(Object.keys(creds).sort(), ['AccessKeyId', 'Code', 'Expiration', 'LastUpdated', 'SecretAccessKey', 'Token', 'Type']);
      assert.equal(creds.Code, 'Success');
      assert.equal(creds.Type, 'AWS-HMAC');
      assert.match(creds.AccessKeyId ?? '', /^ASIA[A-Z2-7]{16}$/);
      assert.ok(Date.parse(creds.Expiration ?? '') >= clock.now() + 60 * 60 * 1000, `Expiration ${creds.Expiration}`);
      // Rotated before they run out, as IMDS does.
      clock.advance(6 * 60 * 60 * 1000);
      const tok2 = await token(imds);
      const later = JSON.parse((await get(imds, '/latest/meta-data/iam/security-credentials/nixos-ec2-agent-demo', tok2)).text) as Record<string, string>;
      assert.notEqual(later.AccessKeyId, creds.AccessKeyId);
      assert.ok(Date.parse(later.Expiration ?? '') > clock.now());

      const info = JSON.parse((await get(imds, '/latest/meta-data/iam/info', tok2)).text) as Record<string, string>;
      assert.equal(info.Code, 'Success');
      assert.equal(info.InstanceProfileArn, 'arn:aws:iam::123456789012:instance-profile/nixos-ec2-agent-demo');
      assert.equal((await get(imds, '/latest/meta-data/iam/security-credentials/other-role', tok2)).status, 404);
    } finally {
      await imds.close();
    }
  });

  test('an instance without a profile has no iam category', async () => {
    const imds = await ImdsEmulator.start({ instance: defaultInstance({ iamRole: undefined }) });
    try {
      const tok = await token(imds);
      assert.equal((await get(imds, '/latest/meta-data/iam/security-credentials/', tok)).status, 404);
      assert.equal((await get(imds, '/latest/meta-data/iam/info', tok)).status, 404);
      assert.ok(!(await get(imds, '/latest/meta-data/', tok)).text.split('\n').includes('iam/'));
    } finally {
      await imds.close();
    }
  });
});

describe('IMDS emulator: fault injection', () => {
  let imds: ImdsEmulator;
  before(async () => {
    imds = await ImdsEmulator.start();
  });
  afterEach(() => imds.clearFaults());
  after(() => imds.close());

  test('a status fault answers that status the given number of times, then the real answer', async () => {
    const tok = await token(imds);
    const fault = imds.injectFault({ path: '/latest/meta-data/instance-id', status: 503, times: 2 });
    assert.equal((await get(imds, '//latest/meta-data/instance-id', tok)).status, 503);
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 503);
    assert.equal(fault.remaining, 0);
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 200);
    assert.equal(imds.faults.length, 0);
  });

  test('faults match by path and method only', async () => {
    const tok = await token(imds);
    imds.injectFault({ path: /user-data/, status: 500 });
    imds.injectFault({ method: 'PUT', status: 500 });
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 200);
    const put = await request(imds.url, 'PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': '60' });
    assert.equal(put.status, 500);
    assert.equal((await get(imds, '/latest/user-data', tok)).status, 500);
    assert.equal((await get(imds, '/latest/user-data', tok)).status, 404);
  });

  test('a dropped connection gets no answer', async () => {
    const tok = await token(imds);
    imds.injectFault({ path: '/latest/meta-data/instance-id', drop: true });
    await assert.rejects(get(imds, '/latest/meta-data/instance-id', tok), (err: NodeJS.ErrnoException) => {
      assert.ok(err.code === 'ECONNRESET' || /socket hang up/.test(err.message), String(err));
      return true;
    });
    const logged = imds.requests.at(-1);
    assert.equal(logged?.status, 0);
    assert.equal(logged?.fault?.drop, true);
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 200);
  });

  test('a delayed answer outlasts a client timeout shorter than the delay', async () => {
    const tok = await token(imds);
    imds.injectFault({ path: '/latest/meta-data/instance-id', delayMs: 2_000 });
    await assert.rejects(
      request(imds.url, 'GET', '/latest/meta-data/instance-id', { 'X-aws-ec2-metadata-token': tok }, { timeoutMs: 50 }),
      (err: NodeJS.ErrnoException) => err.code === 'CLIENT_TIMEOUT',
    );
    imds.injectFault({ path: '/latest/meta-data/instance-id', delayMs: 20 });
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).text, 'i-0123456789abcdef0');
  });

  test('an early-expiry fault invalidates tokens issued before it', async () => {
    const tok = await token(imds);
    imds.injectFault({ path: '/latest/user-data', expireTokens: true });
    assert.equal((await get(imds, '/latest/user-data', tok)).status, 401);
    assert.equal((await get(imds, '/latest/meta-data/instance-id', tok)).status, 401);
    assert.equal((await get(imds, '/latest/meta-data/instance-id')).status, 200);
  });

  test('bad fault definitions are refused', () => {
    assert.throws(() => imds.injectFault({ status: 42 }), ImdsEmulatorConfigError);
    assert.throws(() => imds.injectFault({ times: 0 }), ImdsEmulatorConfigError);
  });
});

describe('IMDS emulator: real clients', () => {
  let imds: ImdsEmulator;
  before(async () => {
    imds = await ImdsEmulator.start();
  });
  after(() => imds.close());

  test('the SDK MetadataService (IMDSv1 disabled) reads the instance id', async () => {
    const before = imds.requests.length;
    const ms = new MetadataService({ endpoint: imds.url, ec2MetadataV1Disabled: true, httpOptions: { timeout: 5_000 } });
    assert.equal(await ms.request('/latest/meta-data/instance-id', {}), 'i-0123456789abcdef0');
    const sent = imds.requests.slice(before);
    assert.ok(sent.some((r) => r.method === 'PUT' && r.path === '/latest/api/token' && r.status === 200));
    assert.ok(sent.some((r) => r.method === 'GET' && r.path === '/latest/meta-data/instance-id' && r.tokenPresented && r.status === 200));
  });

  test('the SDK MetadataService fails against a disabled endpoint', async () => {
    imds.setHttpEndpoint('disabled');
    try {
      const ms = new MetadataService({ endpoint: imds.url, ec2MetadataV1Disabled: true, retries: 0, httpOptions: { timeout: 5_000 } });
      await assert.rejects(ms.request('/latest/meta-data/instance-id', {}));
    } finally {
      imds.setHttpEndpoint('enabled');
    }
  });

  test('the SDK instance-metadata credential provider accepts the role credentials', async (t) => {
    let fromInstanceMetadata: ((init?: { timeout?: number; maxRetries?: number; ec2MetadataV1Disabled?: boolean }) => () => Promise<{ accessKeyId: string; secretAccessKey: string; sessionToken?: string; expiration?: Date }>) | undefined;
    try {
      // A transitive dependency of the SDK clients, imported by name only if it resolves.
      const specifier = '@smithy/credential-provider-imds';
      ({ fromInstanceMetadata } = (await import(specifier)) as { fromInstanceMetadata: typeof fromInstanceMetadata });
    } catch {
      t.skip('@smithy/credential-provider-imds is not resolvable from here');
      return;
    }
    const saved = process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
    process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = imds.url;
    try {
      const creds = await fromInstanceMetadata!({ timeout: 5_000, maxRetries: 0, ec2MetadataV1Disabled: true })();
      const tok = await token(imds);
      const served = JSON.parse((await get(imds, '/latest/meta-data/iam/security-credentials/nixos-ec2-agent-demo', tok)).text) as Record<string, string>;
      assert.equal(creds.accessKeyId, served.AccessKeyId);
      assert.equal(creds.secretAccessKey, served.SecretAccessKey);
      assert.equal(creds.sessionToken, served.Token);
      assert.equal(creds.expiration?.toISOString().replace('.000Z', 'Z'), served.Expiration);
      assert.ok(imds.requests.some((r) => r.path === '/latest/meta-data/iam/security-credentials/' && r.status === 200));
    } finally {
      if (saved === undefined) delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
      else process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = saved;
    }
  });

  const curl = '/usr/bin/curl';
  test('the documented curl flow: TOKEN=$(curl -X PUT …), then a read with the token', { skip: existsSync(curl) ? false : `${curl} not installed` }, async () => {
    const script = [
      `TOKEN=$(${curl} -sS -X PUT "$IMDS/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")`,
      `${curl} -sS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/instance-id"`,
      'echo',
      `${curl} -sS -o /dev/null -w '%{http_code}' "$IMDS/latest/meta-data/instance-id"`,
    ].join('\n');
    const r = await run('/bin/sh', ['-c', script], { ...process.env, IMDS: imds.url });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'i-0123456789abcdef0\n401');
  });
});

describe('ManualClock', () => {
  test('sleeps wake only when time is advanced past their deadline, in order', async () => {
    const clock = new ManualClock(1_000);
    const woke: string[] = [];
    void clock.sleep(100).then(() => woke.push('a'));
    void clock.sleep(50).then(() => woke.push('b'));
    await clock.whenSleeping(2);
    clock.advance(49);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(woke, []);
    clock.advance(51);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(woke, ['b', 'a']);
    assert.equal(clock.now(), 1_100);
  });

  test('advanceAsync fires a chain of sleeps inside the window', async () => {
    const clock = new ManualClock(0);
    const ticks: number[] = [];
    const loop = (async () => {
      for (let i = 0; i < 3; i++) {
        await clock.sleep(10);
        ticks.push(clock.now());
      }
    })();
    await clock.advanceAsync(30);
    await loop;
    assert.deepEqual(ticks, [10, 20, 30]);
  });

  test('an aborted sleep rejects with the reason and is forgotten', async () => {
    const clock = new ManualClock(0);
    const ac = new AbortController();
    const p = clock.sleep(1_000, ac.signal);
    ac.abort(new Error('stop'));
    await assert.rejects(p, /stop/);
    assert.equal(clock.pendingSleeps, 0);
    assert.throws(() => clock.advance(-1), RangeError);
  });
});

describe("the sandbox world's IMDS follows its Auto Scaling group", () => {
  // "When an instance prepares to transition to one of the preceding steady states, Amazon EC2 Auto
  // Scaling updates the value of the instance metadata item autoscaling/target-lifecycle-state."
  // (EC2 Auto Scaling user guide, "Retrieve the target lifecycle state through instance metadata")
  /** `body` over a started world, with what its IMDS says the target lifecycle state is. */
  async function withWorld(options: Parameters<typeof World.start>[0], body: (world: World, id: string, target: () => Promise<string>) => Promise<void>): Promise<void> {
    const world = await World.start(options);
    try {
      const target = async () => (await get(world.imds, '/latest/meta-data/autoscaling/target-lifecycle-state')).text;
      await body(world, world.instance.instanceId, target);
    } finally {
      await world.close();
    }
  }

  test("an instance file's instanceLifeCycle makes a spot instance, which a notice may reach", async () => {
    const spec = InstanceFile.parse({ instanceLifeCycle: 'spot' });
    assert.throws(() => InstanceFile.parse({ instanceLifeCycle: 'reserved' }), /instanceLifeCycle/);
    await withWorld({ ssmThroughput: null, instance: spec }, async (world) => {
      assert.equal((await get(world.imds, '/latest/meta-data/instance-life-cycle')).text, 'spot');
      world.imds.setSpotInstanceAction({ action: 'stop', time: '2017-09-18T08:22:00Z' });
      assert.equal((await get(world.imds, '/latest/meta-data/spot/instance-action')).status, 200);
    });
  });

  test('a launch held by its hook reads InService, and a termination Terminated', async () => {
    await withWorld({ ssmThroughput: null }, async (world, id, target) => {
      assert.equal(world.autoscaling.instance(id)?.lifecycleState, 'Pending:Wait');
      assert.equal(await target(), 'InService');
      world.autoscaling.terminateInstance(id);
      assert.equal(await target(), 'Terminated');
    });
  });

  test('a warm pool\'s instance reads the pool\'s state, and Warmed:Terminated when it is terminated from the pool', async () => {
    await withWorld({ ssmThroughput: null, instance: { autoScaling: { group: 'warm-asg', warmPool: 'Stopped' } } }, async (world, id, target) => {
      assert.equal(world.autoscaling.instance(id)?.lifecycleState, 'Warmed:Pending:Wait');
      assert.equal(await target(), 'Warmed:Stopped');
      world.autoscaling.terminateInstance(id);
      assert.equal(world.autoscaling.instance(id)?.lifecycleState, 'Warmed:Terminated');
      assert.equal(await target(), 'Warmed:Terminated');
    });
  });

  test('an instance of the group itself that a scale-in returns to the warm pool (reuse policy) reads the pool\'s state, and InService once a scale-out takes it back', async () => {
    await withWorld({ ssmThroughput: null, instance: { autoScaling: { group: 'reuse-asg', hook: null } } }, async (world, id, target) => {
      assert.equal(world.autoscaling.instance(id)?.lifecycleState, 'InService');
      world.autoscaling.putWarmPool('reuse-asg', { poolState: 'Hibernated', reuseOnScaleIn: true });
      world.autoscaling.terminateInstance(id);
      assert.equal(world.autoscaling.instance(id)?.lifecycleState, 'Warmed:Hibernated');
      assert.equal(await target(), 'Warmed:Hibernated');
      world.autoscaling.leaveWarmPool(id);
      assert.equal(await target(), 'InService');
    });
  });
});
