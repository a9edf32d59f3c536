// An SSM endpoint that accepts connections and never answers: the pass fails after the request
// timeout with a transient error, instead of waiting for good.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createAgent, SSM_REQUEST_TIMEOUT_MS } from '../../agent/agent.js';
import { parseConfig } from '../../agent/config.js';
import { silentLogger } from '../../agent/log.js';
import { realClock } from '../../agent/ports.js';
import { World } from '../../sandbox/world.js';

test('an SSM request that never answers times out', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nea-ssm-timeout-'));
  const held: net.Socket[] = [];
  const silent = net.createServer((socket) => held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const world = await World.start({ instance: { autoScaling: null } });
  try {
    const port = (silent.address() as net.AddressInfo).port;
    const agent = await createAgent(parseConfig({ root: dir, ssm: { maxAttempts: 1, revisionTag: null, revisionParameter: null }, rebuild: { validate: 'if-available' } }), silentLogger(), {
      clock: realClock(),
      env: { ...world.env(), AWS_ENDPOINT_URL_SSM: `http://127.0.0.1:${port}` },
      credentials: async () => async () => ({ accessKeyId: 'AKIDTIMEOUT', secretAccessKey: 'timeout-secret' }),
    });
    const started = Date.now();
    await assert.rejects(agent.sources.read(), (err: Error & { kind?: string }) => err.kind === 'transient');
    assert.ok(held.length >= 1, 'the request reached the silent endpoint');
    // Far below "never", and not before the timeout: the wait was the request timeout's.
    assert.ok(Date.now() - started >= SSM_REQUEST_TIMEOUT_MS * 0.9, `gave up after ${Date.now() - started} ms`);
  } finally {
    for (const s of held) s.destroy();
    silent.close();
    await world.close();
    await rm(dir, { recursive: true, force: true });
  }
});
