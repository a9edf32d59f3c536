// How the agent's SSM client meets a busy account: the revision look is one attempt, and a fetch of
// the whole tree (its pages, and the revision read it begins with) waits a busy answer out on the
// agent's clock, one attempt at a time, in a window that follows how busy the account has been.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GetParametersCommand, SSMClient } from '@aws-sdk/client-ssm';
import { HttpResponse, type HttpRequest } from '@smithy/core/protocols';
import { ConfiguredRetryStrategy } from '@smithy/core/retry';
import { BUSY_BASE_MS, MIN_PATIENCE_MS, Patience, ssmParts } from '../../agent/aws/ssm-sdk.js';
import type { Clock } from '../../agent/ports.js';

const PLACES = { 'instance-id': 'i-0123456789abcdef0', region: 'eu-west-1', asg: undefined };

/** SSM's wire answers in order: 'throttle', 'fail' (500), or a page of parameters; then pages of one. */
function wire(script: ('throttle' | 'fail' | 'ok')[]) {
  const requests: string[] = [];
  const handler = {
    metadata: { handlerProtocol: 'http/1.1' },
    updateHttpClientConfig: () => undefined,
    httpHandlerConfigs: () => ({}),
    destroy: () => undefined,
    async handle(request: HttpRequest) {
      requests.push(String(request.headers['x-amz-target']));
      const next = script.shift() ?? 'ok';
      const json = (statusCode: number, type: string | undefined, body: object) =>
        new HttpResponse({ statusCode, headers: { 'content-type': 'application/x-amz-json-1.1', ...(type ? { 'x-amzn-errortype': type } : {}) }, body: Buffer.from(JSON.stringify(body)) });
      if (next === 'throttle') return { response: json(400, 'ThrottlingException', { __type: 'ThrottlingException', message: 'Rate exceeded' }) };
      if (next === 'fail') return { response: json(500, 'InternalServerError', { __type: 'InternalServerError', message: 'oops' }) };
      return { response: json(200, undefined, { Parameters: [{ Name: '/nixos/fleet/options/a', Type: 'String', Value: '"x"', Version: 1 }] }) };
    },
  };
  const client = new SSMClient({
    region: 'eu-west-1',
    endpoint: 'http://ssm.test',
    credentials: { accessKeyId: 'AKIATESTTESTTESTTEST', secretAccessKey: 'test-secret' },
    maxAttempts: 10,
    // The SDK's own retries without real waits, so that what it would send shows at once.
    retryStrategy: new ConfiguredRetryStrategy(10, () => 0),
    requestHandler: handler as unknown as NonNullable<ConstructorParameters<typeof SSMClient>[0]>['requestHandler'],
  });
  return { client, requests };
}

/** A clock whose sleeps end at once and are recorded. */
function recordingClock() {
  let now = 0;
  const sleeps: number[] = [];
  const clock: Clock = {
    now: () => now,
    sleep: async (ms, signal) => {
      signal?.throwIfAborted();
      sleeps.push(ms);
      now += ms;
    },
  };
  return { clock, sleeps };
}

describe('the agent on a busy SSM account', () => {
  it('sends the revision look once: a throttled answer costs one request, not the client’s maxAttempts', async () => {
    const { client, requests } = wire(Array(20).fill('throttle'));
    const { clock, sleeps } = recordingClock();
    const parts = ssmParts(client, { clock, random: () => 0.5, maxWaitMs: 900_000 });
    await assert.rejects(parts.getParameters!({ Names: ['/nixos/fleet/revision'] }), { name: 'ThrottlingException' });
    assert.equal(requests.length, 1);
    assert.deepEqual(sleeps, []);
    // The same client, the SDK's way: every attempt it has.
    await assert.rejects(client.send(new GetParametersCommand({ Names: ['/nixos/fleet/revision'] })), { name: 'ThrottlingException' });
    assert.equal(requests.length, 1 + 10);
  });

  it('waits a throttled page out on its clock, one request per try, and reads the tree', async () => {
    const { client, requests } = wire(['throttle', 'throttle', 'fail', 'throttle', 'ok']);
    const { clock, sleeps } = recordingClock();
    const parts = ssmParts(client, { clock, random: () => 1, maxWaitMs: 900_000 });
    const snapshot = await parts.source.fetch(['/nixos/fleet'], PLACES);
    assert.equal(snapshot.prefixes[0]?.parameters.length, 1);
    assert.equal(requests.length, 5, 'four refusals and the answer: no SDK retry in between');
    // At the top of each window (random 1): a window 2^¼ wider with each busy answer.
    assert.deepEqual(sleeps.map(Math.round), [1, 2, 3, 4].map((k) => Math.round(1 + BUSY_BASE_MS * 2 ** (k / 4))));
  });

  it('waits out the revision read a whole fetch begins with, and not a look', async () => {
    const { client, requests } = wire(['throttle', 'throttle', 'ok', 'throttle']);
    const { clock, sleeps } = recordingClock();
    const parts = ssmParts(client, { clock, random: () => 0.5, maxWaitMs: 900_000 });
    const answer = await parts.getParameters!({ Names: ['/nixos/fleet/revision'] }, { patient: true });
    assert.equal(answer.Parameters?.length, 1);
    assert.equal(requests.length, 3);
    assert.equal(sleeps.length, 2);
    await assert.rejects(parts.getParameters!({ Names: ['/nixos/fleet/revision'] }, { patient: false }), { name: 'ThrottlingException' });
    assert.equal(requests.length, 4);
  });
});

describe('Patience', () => {
  const busy = () => Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException', $metadata: { httpStatusCode: 400 } });

  it('gives up on an account that refuses everything about as soon as the SDK did, and throws what SSM said', async () => {
    const { clock, sleeps } = recordingClock();
    const patience = new Patience({ clock, random: () => 1, maxWaitMs: 900_000 });
    let calls = 0;
    await assert.rejects(patience.call(async () => {
      calls++;
      throw busy();
    }), { name: 'ThrottlingException' });
    assert.equal(sleeps.reduce((a, b) => a + b, 0), MIN_PATIENCE_MS, 'the last wait is cut to what is left');
    assert.equal(calls, sleeps.length + 1);
  });

  it('waits longer the busier its account has been, up to maxWaitMs', async () => {
    const { clock, sleeps } = recordingClock();
    const patience = new Patience({ clock, random: () => 1, maxWaitMs: 900_000 });
    const waits: number[] = [];
    for (let k = 0; k < 6; k++) {
      sleeps.length = 0;
      await assert.rejects(patience.call(async () => {
        throw busy();
      }));
      waits.push(Math.round(sleeps.reduce((a, b) => a + b, 0)));
    }
    assert.equal(waits[0], MIN_PATIENCE_MS);
    for (let k = 1; k < waits.length; k++) assert.ok(waits[k]! > waits[k - 1]! || waits[k] === 900_000, `longer each time: ${waits.join(', ')}`);
    assert.equal(waits.at(-1), 900_000, `at most maxWaitMs: ${waits.join(', ')}`);
  });

  it('throws any other error at once, without waiting', async () => {
    const { clock, sleeps } = recordingClock();
    const patience = new Patience({ clock, random: () => 1, maxWaitMs: 900_000 });
    await assert.rejects(patience.call(async () => {
      throw Object.assign(new Error('no'), { name: 'AccessDeniedException', $metadata: { httpStatusCode: 400 } });
    }), { name: 'AccessDeniedException' });
    assert.deepEqual(sleeps, []);
  });

  it('keeps its level from call to call: an answer narrows the window by half what a refusal widened', async () => {
    const { clock, sleeps } = recordingClock();
    const patience = new Patience({ clock, random: () => 1, maxWaitMs: 900_000 });
    const refusing = (n: number) => {
      let left = n;
      return async () => {
        if (left-- > 0) throw busy();
        return 'ok';
      };
    };
    await patience.call(refusing(8));
    // Level 2 after eight refusals; 1.5 after the answer; the next refusal makes it 1.75.
    await patience.call(refusing(1));
    assert.equal(Math.round(sleeps.at(-1)!), Math.round(1 + BUSY_BASE_MS * 2 ** 1.75));
  });

  it('stops waiting when its signal is aborted', async () => {
    const { clock } = recordingClock();
    const patience = new Patience({ clock, random: () => 1, maxWaitMs: 900_000 });
    const abort = new AbortController();
    let calls = 0;
    await assert.rejects(patience.call(async () => {
      if (++calls === 3) abort.abort(new Error('stopping'));
      throw busy();
    }, abort.signal), /stopping/);
    assert.equal(calls, 3);
  });
});
