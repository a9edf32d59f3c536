// The SSM edge of a simulated instance: the real SDK client (serializers, SigV4 signing, the
// adaptive retry strategy, error parsing) against the real SSM emulator's request handler, called
// in-process rather than over a loopback socket (ten thousand clients × an hour of calls would
// spend the run in the kernel), with the SDK's own waits moved onto the simulated clock.
import { SSMClient } from '@aws-sdk/client-ssm';
import { AdaptiveRetryStrategy, DefaultRateLimiter, StandardRetryStrategy } from '@smithy/core/retry';
import { HttpResponse, type HttpRequest } from '@smithy/core/protocols';
import type { RetryErrorInfo, RetryStrategyV2, StandardRetryToken } from '@smithy/types';
import type http from 'node:http';
import type { Clock } from '../../../agent/ports.js';
import type { SsmParts } from '../../../agent/sources/revision.js';
import { ssmParts } from '../../../agent/aws/ssm-sdk.js';
import type { SsmEmulator } from '../../../sandbox/emulators/ssm.js';

/** What one instance's SSM client sent: every attempt, as the account's throttle sees it. */
export interface SsmCallCounter {
  calls: number;
  throttled: number;
}

type Handle = (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>;

/** What the emulator's wire handler reads of a request: its line, its headers, its body's events. */
function wireRequest(method: string, url: string, headers: Record<string, string>, body: Buffer): http.IncomingMessage {
  const req = {
    method,
    url,
    headers,
    // As a socket delivers it: the body, then its end, after the handler has listened.
    on(event: string, listener: (chunk?: Buffer) => void) {
      if (event === 'data') queueMicrotask(() => listener(body));
      else if (event === 'end') queueMicrotask(() => listener());
      return req;
    },
    destroy() {},
  };
  return req as unknown as http.IncomingMessage;
}

/**
 * An SDK request handler that hands each request to the emulator's own HTTP handler, as its
 * server would, and turns the answer into the SDK's HttpResponse (its body as bytes, which the
 * SDK's deserializers take as they take a stream's). Nothing in the fleet reads the emulator's
 * request log, which would otherwise hold every call of the run.
 */
export function inProcessHandler(emulator: SsmEmulator, counter: SsmCallCounter) {
  // The emulator's wire handler is what its HTTP server calls; it is reached here without a socket.
  const handle = (emulator as unknown as { handle: Handle }).handle.bind(emulator);
  return {
    metadata: { handlerProtocol: 'http/1.1' },
    updateHttpClientConfig: () => undefined,
    httpHandlerConfigs: () => ({}),
    destroy: () => undefined,
    async handle(request: HttpRequest): Promise<{ response: HttpResponse }> {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(request.headers)) headers[k.toLowerCase()] = v;
      const raw: unknown = request.body;
      const body = raw instanceof Uint8Array ? Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength) : Buffer.from(typeof raw === 'string' ? raw : '');
      let status = 0;
      let answerHeaders: Record<string, string> = {};
      let text = '';
      const res = {
        writeHead(code: number, h: Record<string, string | number>) {
          status = code;
          answerHeaders = Object.fromEntries(Object.entries(h).map(([k, v]) => [k, String(v)]));
        },
        end(chunk?: string) {
          text = chunk ?? '';
        },
        destroy() {},
        socket: undefined,
      } as unknown as http.ServerResponse;
      await handle(wireRequest(request.method, request.path, headers, body), res);
      emulator.requests.length = 0;
      counter.calls++;
      if (answerHeaders['x-amzn-errortype'] === 'ThrottlingException') counter.throttled++;
      return { response: new HttpResponse({ statusCode: status, headers: answerHeaders, body: Buffer.from(text) }) };
    },
  };
}

interface LimiterInternals {
  enabled: boolean;
  availableTokens: number;
  fillRate: number;
  lastThrottleTime: number;
  lastTxRateBucket: number;
  refillTokenBucket(): void;
  getCurrentTimeInSeconds(): number;
  acquireTokenBucket(amount: number): Promise<void>;
}

interface Backoff {
  computeNextBackoffDelay(attempt: number): number;
  setDelayBase(delay: number): void;
}

/** The SDK's cap on one retry's wait (MAXIMUM_RETRY_DELAY in @smithy/core's retry). */
const SDK_MAX_RETRY_DELAY_MS = 20_000;

/**
 * The SDK's adaptive retry strategy (its client-side rate limiter, its retry decisions and its
 * jittered backoff), unchanged but for where it waits and where its jitter comes from: the
 * limiter's clock and sleeps, and each retry's backoff, are the simulated clock's, and the jitter
 * is drawn from `random` (the run's seeded generator) instead of Math.random, so a run is the same
 * from one seed. The strategy is handed a backoff that waits 0 ms for real; the delay it computes
 * is then slept on the simulated clock.
 */
export function simulatedAdaptiveRetry(clock: Clock, maxAttempts: number, random: () => number): RetryStrategyV2 {
  const limiter = new DefaultRateLimiter();
  const l = limiter as unknown as LimiterInternals;
  l.getCurrentTimeInSeconds = () => clock.now() / 1000;
  l.lastThrottleTime = clock.now() / 1000;
  l.lastTxRateBucket = Math.floor(clock.now() / 1000);
  // As DefaultRateLimiter.acquireTokenBucket, sleeping on the simulated clock.
  l.acquireTokenBucket = async (amount: number) => {
    if (!l.enabled) return;
    l.refillTokenBucket();
    while (amount > l.availableTokens) {
      await clock.sleep(((amount - l.availableTokens) / l.fillRate) * 1000);
      l.refillTokenBucket();
    }
    l.availableTokens -= amount;
  };
  // As the SDK's DefaultRetryBackoffStrategy (full jitter over a window that doubles from its
  // delay base: 50 ms, 1 s after a throttle), its random draw the run's.
  let delayBase = (new StandardRetryStrategy(maxAttempts) as unknown as { retryBackoffStrategy: { x: number } }).retryBackoffStrategy.x;
  const owed: number[] = [];
  const backoff: Backoff = {
    computeNextBackoffDelay: (attempt) => {
      owed.push(Math.floor(random() * Math.min(delayBase * 2 ** attempt, SDK_MAX_RETRY_DELAY_MS)));
      return 0;
    },
    setDelayBase: (delay) => {
      delayBase = delay;
    },
  };
  const inner = new AdaptiveRetryStrategy(maxAttempts, { rateLimiter: limiter, backoff } as unknown as ConstructorParameters<typeof AdaptiveRetryStrategy>[1]);
  return {
    acquireInitialRetryToken: (scope: string) => inner.acquireInitialRetryToken(scope),
    refreshRetryTokenForRetry: async (token: StandardRetryToken, info: RetryErrorInfo) => {
      const next = await inner.refreshRetryTokenForRetry(token, info);
      await clock.sleep(owed.shift() ?? 0);
      return next;
    },
    recordSuccess: (token: StandardRetryToken) => inner.recordSuccess(token),
  };
}

/** One instance's SSM parts, as createAgent's SDK path builds them, on the in-process wire. */
export function simulatedSsm(options: { emulator: SsmEmulator; clock: Clock; region: string; maxAttempts: number; maxWaitMs: number; counter: SsmCallCounter; random: () => number }): SsmParts {
  const client = new SSMClient({
    region: options.region,
    endpoint: 'http://ssm.simulated',
    credentials: { accessKeyId: 'AKIAFLEETSIMULATION0', secretAccessKey: 'fleet-simulation-secret-access-key' },
    maxAttempts: options.maxAttempts,
    retryStrategy: simulatedAdaptiveRetry(options.clock, options.maxAttempts, options.random),
    requestHandler: inProcessHandler(options.emulator, options.counter) as unknown as NonNullable<ConstructorParameters<typeof SSMClient>[0]>['requestHandler'],
  });
  return ssmParts(client, { clock: options.clock, random: options.random, maxWaitMs: options.maxWaitMs });
}
