// A SecureString value. It serialises, prints and inspects as a placeholder, so a secret cannot
// reach a log line, status output or an error message by accident: only `reveal()` yields it, and
// only the secrets writer calls that.
const REDACTED = '[redacted]';

/**
 * util.inspect.custom, which Node defines as this registry symbol (docs, util.inspect.custom): an
 * ES module import of node:util would read all of its exports, lazy getters included, at every start.
 */
const INSPECT = Symbol.for('nodejs.util.inspect.custom');

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

  [INSPECT](): string {
    return REDACTED;
  }
}
