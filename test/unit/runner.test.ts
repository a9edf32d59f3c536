import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProcessRunner } from '../../agent/runner.js';

describe('ProcessRunner stdin', () => {
  it('gives the program its input', async () => {
    const result = await new ProcessRunner(process.env).run({ command: 'cat', args: [], timeoutMs: 60_000, stdin: 'given\n' });
    assert.equal(result.code, 0);
    assert.equal(result.stdout, 'given\n');
  });

  it('survives a program that closes its stdin before reading it all', async () => {
    // Far more than a pipe holds, so the write is still pending when the reader goes: it fails with
    // EPIPE, which must not throw in the agent.
    const abort = new AbortController();
    const result = await new ProcessRunner(process.env, 100).run({
      command: 'sh',
      args: ['-c', 'exec 0<&-; echo closed >&2; exec sleep 60'],
      timeoutMs: 60_000,
      signal: abort.signal,
      stdin: 'x'.repeat(4 * 1024 * 1024),
      onLine: (stream, line) => {
        if (stream === 'stderr' && line === 'closed') setImmediate(() => abort.abort());
      },
    });
    assert.equal(result.aborted, true);
  });
});

describe('ProcessRunner environment', () => {
  it("keeps the agent's own launch settings (its compile cache, its V8 flags) from the programs it starts", async () => {
    const runner = new ProcessRunner({ ...process.env, NODE_COMPILE_CACHE: '/var/cache/nixos-ec2-agent/compile-cache', NIXOS_EC2_AGENT_V8_FLAGS: '--no-opt', KEPT: 'yes' });
    const result = await runner.run({ command: 'sh', args: ['-c', 'echo "${NODE_COMPILE_CACHE-unset} ${NIXOS_EC2_AGENT_V8_FLAGS-unset} ${KEPT-unset}"'], timeoutMs: 60_000 });
    assert.equal(result.stdout, 'unset unset yes\n');
  });
});
