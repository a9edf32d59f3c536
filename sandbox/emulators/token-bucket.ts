// An account-wide request throttle, as AWS applies to API calls: a bucket of `burst` tokens that
// refills at `ratePerSecond`, each call taking one. Time comes from an injected Clock, so a test
// empties the bucket, advances its clock and sees the refill without sleeping.
import type { Clock } from '../../agent/ports.js';
import { systemClock } from '../../agent/ports.js';

export interface TokenBucketOptions {
  /** Tokens added per second. `Infinity` makes a bucket that never refuses. */
  readonly ratePerSecond: number;
  /** Capacity, and what the bucket starts with. Defaults to one second's worth (at least 1). */
  readonly burst?: number;
  readonly clock?: Clock;
}

export class TokenBucket {
  readonly ratePerSecond: number;
  readonly burst: number;
  private readonly clock: Clock;
  private tokens: number;
  private refilledAt: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.ratePerSecond > 0)) {
      throw new RangeError(`ratePerSecond must be > 0, got ${options.ratePerSecond}`);
    }
    const burst = options.burst ?? Math.max(1, options.ratePerSecond);
    if (!(burst >= 1)) throw new RangeError(`burst must be >= 1, got ${burst}`);
    this.ratePerSecond = options.ratePerSecond;
    this.burst = burst;
    this.clock = options.clock ?? systemClock;
    this.tokens = burst;
    this.refilledAt = this.clock.now();
  }

  /** Whether this bucket can ever refuse. */
  get unlimited(): boolean {
    return this.ratePerSecond === Infinity || this.burst === Infinity;
  }

  /** Takes `count` tokens if they are there; a refused call takes nothing, as with AWS. */
  tryTake(count = 1): boolean {
    if (this.unlimited) return true;
    this.refill();
    if (this.tokens + 1e-9 < count) return false;
    this.tokens = Math.max(0, this.tokens - count);
    return true;
  }

  /** Whole tokens available now. */
  available(): number {
    if (this.unlimited) return Infinity;
    this.refill();
    return Math.floor(this.tokens + 1e-9);
  }

  /** How long until `count` tokens are there (0 when they already are). */
  msUntilAvailable(count = 1): number {
    if (this.unlimited) return 0;
    this.refill();
    const missing = count - this.tokens;
    return missing <= 1e-9 ? 0 : Math.ceil((missing / this.ratePerSecond) * 1000);
  }

  private refill(): void {
    const now = this.clock.now();
    // A clock that steps backwards (a fake reset by a test) must not mint or destroy tokens.
    if (now > this.refilledAt) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.ratePerSecond);
    }
    this.refilledAt = now;
  }
}
