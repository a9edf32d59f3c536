// The closed set of failures the agent expects. Clients map wire and process failures to these at
// the edge; anything else is a bug, and is left to crash so systemd restarts the agent.

export type ErrorKind = 'transient' | 'invalid-input' | 'apply-failed' | 'imds-disabled';

export abstract class AgentError extends Error {
  abstract readonly kind: ErrorKind;
  /** Plain, JSON-serialisable context for logs and status. Never holds a secret. */
  readonly context: Readonly<Record<string, unknown>>;

  constructor(message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.context = context;
  }

  toJSON(): Record<string, unknown> {
    return { kind: this.kind, message: this.message, ...this.context };
  }
}

/** The remote or the machine is failing now; retrying later may succeed. */
export class TransientError extends AgentError {
  readonly kind = 'transient' as const;
  constructor(
    message: string,
    readonly source: string,
    context: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, { source, ...context }, options);
  }
}

/** Input that can never work as it is; names where it came from. Nothing is switched. */
export class InvalidInputError extends AgentError {
  readonly kind = 'invalid-input' as const;
  constructor(
    message: string,
    /** Where the bad input is: a parameter name and version, a file, a config field path. */
    readonly where: string,
    context: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(`${where}: ${message}`, { where, ...context }, options);
  }
}

export type ApplyStage = 'channels' | 'build' | 'activate' | 'verify' | 'commit' | 'rollback';

/** A rebuild step failed; the instance is rolled back to, or left on, a good generation. */
export class ApplyFailedError extends AgentError {
  readonly kind = 'apply-failed' as const;
  constructor(
    message: string,
    readonly stage: ApplyStage,
    context: { exitCode?: number | null; timedOut?: boolean; tail?: readonly string[]; reasons?: readonly string[] } = {},
    options?: { cause?: unknown },
  ) {
    super(message, { stage, ...context }, options);
  }
}

/** IMDS answered 403: the endpoint is disabled for this instance. Retrying cannot help. */
export class ImdsDisabledError extends AgentError {
  readonly kind = 'imds-disabled' as const;
}

export function isAgentError(err: unknown): err is AgentError {
  return err instanceof AgentError;
}
