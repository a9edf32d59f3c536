// A SecureString value. It serialises, prints and inspects as a placeholder, so a secret cannot
// reach a log line, status output or an error message by accident: only `reveal()` yields it, and
// only the secrets writer calls that.
import { inspect } from 'node:util';

const REDACTED = '[redacted]';

export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}
