// Where the HTTP server listens: every address by default (the load balancer must reach /healthz on
// the instance's private address), said in the log at start so an operator knows who may reach
// /status; a loopback address when configured.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import { createLogger } from '../../agent/log.js';
import { HttpServer } from '../../agent/report/http.js';
import { startingStatus } from '../../agent/status.js';

async function listeningLine(listen: string): Promise<{ allAddresses: boolean; msg: string; url: string }> {
  const out = new PassThrough();
  const lines: string[] = [];
  out.on('data', (chunk: Buffer) => lines.push(...chunk.toString('utf8').split('\n').filter(Boolean)));
  const server = new HttpServer({ listen, status: () => startingStatus(0, 1), log: createLogger({ destination: out }) });
  await server.start();
  await server.stop();
  // pino writes synchronously to the stream it is given.
  const line = lines.map((l) => JSON.parse(l) as { event?: string; allAddresses: boolean; msg: string; url: string }).find((l) => l.event === 'http.listening');
  assert.ok(line, lines.join('\n'));
  return line;
}

describe('HttpServer: where it listens', () => {
  it('listens on every address by default, for the load balancer', () => {
    assert.equal(parseConfig({}).http.listen, '0.0.0.0:9731');
  });

  it('says in the log when it listens on every address', async () => {
    const line = await listeningLine('0.0.0.0:0');
    assert.equal(line.allAddresses, true);
    assert.match(line.msg, /every address, port \d+/);
  });

  it('names the address when it listens on one', async () => {
    const line = await listeningLine('127.0.0.1:0');
    assert.equal(line.allAddresses, false);
    assert.match(line.msg, /http:\/\/127\.0\.0\.1:\d+/);
  });
});
