// Structured logs: pino JSON on stdout, which journald keeps. Secrets never get here by
// construction (a Secret serialises as a placeholder); the redact paths are a second fence for
// values that arrive from outside as plain fields.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(options: { level?: string; destination?: NodeJS.WritableStream; name?: string } = {}): Logger {
  return pino(
    {
      name: options.name ?? 'nixos-ec2-agent',
      level: options.level ?? 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ['*.SecretAccessKey', '*.secretAccessKey', '*.sessionToken', '*.Token', 'headers["x-aws-ec2-metadata-token"]', '*.Value'],
        censor: '[redacted]',
      },
    },
    (options.destination ?? process.stdout) as pino.DestinationStream,
  );
}

/** A logger that drops everything: for commands whose output is meant for a person. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
