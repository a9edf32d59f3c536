// An HTTP health probe, end to end, with the agent launched as the Nix package launches it
// (test/support/launch.ts: node's flags and environment from nix/launch.json). When the wrapper ran
// node with --lite-mode, V8 had no WebAssembly, so a probe made with fetch (whose HTTP parser is
// WebAssembly) failed on every pass and every switch was rolled back; a probe must answer the way
// the service does.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { withInstance } from '../support/e2e.js';

describe('HTTP health probe, as shipped', () => {
  let server: Server;
  let port = 0;
  before(async () => {
    server = createServer((req, res) => {
      res.writeHead(req.url === '/healthz' ? 200 : 503);
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  test('a service that answers 200: converged', async () => {
    await withInstance({ userData: '{ ... }: { services.nginx.enable = true; }\n' }, async (i) => {
      await i.setConfig(['health', 'probes'], [{ name: 'web', http: { url: `http://127.0.0.1:${port}/healthz`, timeoutMs: 10_000 } }]);
      const { code, status, stderr } = await i.converge();
      assert.equal(code, 0, stderr.slice(-3000));
      assert.equal(status.lastResult?.outcome, 'converged', JSON.stringify(status.lastResult));
    });
  });

  test('a service that answers 503: rolled back, naming the probe and the status', async () => {
    await withInstance({ userData: '{ ... }: { services.nginx.enable = true; }\n' }, async (i) => {
      await i.setConfig(['health', 'probes'], [{ name: 'web', http: { url: `http://127.0.0.1:${port}/down`, timeoutMs: 10_000 } }]);
      const { status } = await i.converge();
      assert.equal(status.lastResult?.outcome, 'rolled-back', JSON.stringify(status.lastResult));
      assert.match(JSON.stringify(status.lastResult), /web: HTTP 503/);
    });
  });
});
