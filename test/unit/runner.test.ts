import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProcessRunner } from '../../agent/runner.js';

describe('ProcessRunner stdin', () => {
  it('starts the program at once and gives it its input when the promise resolves', async () => {
    const runner = new ProcessRunner(process.env);
    let give: (text: string) => void = () => undefined;
    const stdin = new Promise<string>((resolve) => (give = resolve));
    const result = runner.run({
      command: 'sh',
      args: ['-c', 'echo started >&2; cat'],
      timeoutMs: 60_000,
      stdin,
      // The program is running (it wrote its line) while its input does not exist yet.
      onLine: (stream, line) => stream === 'stderr' && line === 'started' && give('given later\n'),
    });
    const { code, stdout } = await result;
    assert.equal(code, 0);
    assert.equal(stdout, 'given later\n');
  });

  it('ends stdin empty when the promise is rejected', async () => {
    const result = await new ProcessRunner(process.env).run({ command: 'cat', args: [], timeoutMs: 60_000, stdin: Promise.reject(new Error('no input')) });
    assert.equal(result.code, 0);
    assert.equal(result.stdout, '');
  });

  it('survives a program that closes its stdin before its input is given', async () => {
    const abort = new AbortController();
    let give: (text: string) => void = () => undefined;
    const stdin = new Promise<string>((resolve) => (give = resolve));
    let written: Promise<void> | undefined;
    const result = await new ProcessRunner(process.env, 100).run({
      command: 'sh',
      args: ['-c', 'exec 0<&-; echo closed >&2; exec sleep 60'],
      timeoutMs: 60_000,
      signal: abort.signal,
      stdin,
      onLine: (stream, line) => {
        if (stream !== 'stderr' || line !== 'closed') return;
        // No reader is left: the write fails (EPIPE), which must not throw in the agent.
        give('x'.repeat(1024 * 1024));
        written = new Promise((r) => setImmediate(r)).then(() => abort.abort());
      },
    });
    await written;
    assert.equal(result.aborted, true);
  });
});
