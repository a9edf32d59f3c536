// The SSM Parameter Store source: every parameter under an ordered list of path prefixes, with
// placeholders filled from IMDS. Full paging (each page retried on throttling and 5xx by whatever
// `getByPath` is: agent/aws/ssm-sdk.ts), SecureStrings decrypted into `Secret`s the moment they arrive.
import type { SSMClient } from '@aws-sdk/client-ssm';
import { InvalidInputError, TransientError } from '../errors.js';
import { Secret } from '../secret.js';

export interface Placeholders {
  readonly 'instance-id': string;
  readonly region: string;
  /** Undefined when the instance is not in an Auto Scaling group (or tags are not in IMDS). */
  readonly asg: string | undefined;
}

export interface SsmParameter {
  readonly name: string;
  readonly type: 'String' | 'StringList' | 'SecureString';
  /** Plain text for String and StringList; a Secret for SecureString. */
  readonly value: string | Secret;
  readonly version: number;
  readonly lastModified: number | undefined;
}

export interface PrefixSnapshot {
  readonly prefix: string;
  readonly parameters: readonly SsmParameter[];
}

export interface SsmSnapshot {
  /** In precedence order: later prefixes win. Prefixes whose placeholders are unknown are skipped. */
  readonly prefixes: readonly PrefixSnapshot[];
  readonly skipped: readonly { prefix: string; reason: string }[];
  readonly calls: number;
}

/** The one SSM operation the source needs: the narrowest capability, easy to hand in. */
export type GetParametersByPath = (input: {
  Path: string;
  Recursive: boolean;
  WithDecryption: boolean;
  MaxResults: number;
  NextToken?: string;
}, signal?: AbortSignal) => Promise<{
  Parameters?: { Name?: string; Type?: string; Value?: string; Version?: number; LastModifiedDate?: Date }[];
  NextToken?: string;
}>;

/**
 * What a parameter path may hold between its slashes (SSM's naming rules). An Auto Scaling group's
 * name may hold far more (spaces, colons, any letter): such a group can have no parameters of its
 * own, and a path with it in would fail every read with a ValidationException.
 */
const PATH_SEGMENT = /^[a-zA-Z0-9_.-]+$/;

export function fillPrefix(template: string, values: Placeholders): { path?: string; missing?: string; unusable?: string } {
  let missing: string | undefined;
  let unusable: string | undefined;
  const path = template.replace(/\{([a-z-]+)\}/g, (whole, key: string) => {
    const value = (values as unknown as Record<string, string | undefined>)[key];
    if (value === undefined) {
      missing ??= key;
      return whole;
    }
    if (!PATH_SEGMENT.test(value)) {
      unusable ??= `{${key}} is ${JSON.stringify(value)}, which an SSM parameter path cannot hold (only a-z, A-Z, 0-9, _ . -)`;
      return whole;
    }
    return value;
  });
  if (missing !== undefined) return { missing };
  if (unusable !== undefined) return { unusable };
  return { path: path.replace(/\/+$/, '') };
}

export class SsmSource {
  constructor(private readonly getByPath: GetParametersByPath) {}

  static fromClient(client: SSMClient, command: typeof import('@aws-sdk/client-ssm').GetParametersByPathCommand): SsmSource {
    return new SsmSource((input) => client.send(new command(input)));
  }

  async fetch(prefixes: readonly string[], values: Placeholders, signal?: AbortSignal): Promise<SsmSnapshot> {
    const resolved: PrefixSnapshot[] = [];
    const skipped: { prefix: string; reason: string }[] = [];
    let calls = 0;
    for (const template of prefixes) {
      const filled = fillPrefix(template, values);
      if (filled.path === undefined) {
        skipped.push({ prefix: template, reason: filled.unusable ?? `{${filled.missing}} is not known for this instance` });
        continue;
      }
      const parameters: SsmParameter[] = [];
      let nextToken: string | undefined;
      do {
        signal?.throwIfAborted();
        calls++;
        let page;
        try {
          page = await this.getByPath({
            Path: filled.path,
            Recursive: true,
            WithDecryption: true,
            MaxResults: 10,
            ...(nextToken ? { NextToken: nextToken } : {}),
          }, signal);
        } catch (err) {
          throw mapSsmError(err, filled.path);
        }
        for (const p of page.Parameters ?? []) parameters.push(toParameter(p, filled.path));
        // A page may be empty and still carry a token ("best effort"): follow it regardless.
        nextToken = page.NextToken;
      } while (nextToken);
      parameters.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      resolved.push({ prefix: filled.path, parameters });
    }
    return { prefixes: resolved, skipped, calls };
  }
}

function toParameter(p: { Name?: string; Type?: string; Value?: string; Version?: number; LastModifiedDate?: Date }, path: string): SsmParameter {
  if (!p.Name || p.Value === undefined || p.Version === undefined) {
    throw new TransientError(`SSM returned an incomplete parameter under ${path}`, 'ssm');
  }
  const type = p.Type === 'SecureString' || p.Type === 'StringList' ? p.Type : 'String';
  return {
    name: p.Name,
    type,
    value: type === 'SecureString' ? new Secret(p.Value) : p.Value,
    version: p.Version,
    lastModified: p.LastModifiedDate?.getTime(),
  };
}

/** Wire failures become the agent's error kinds: throttling and 5xx are transient, the rest input. */
export function mapSsmError(err: unknown, path: string): Error {
  const e = err as { name?: string; message?: string; $fault?: string; $metadata?: { httpStatusCode?: number; requestId?: string } };
  const code = e.name ?? 'Unknown';
  const status = e.$metadata?.httpStatusCode;
  const context = { path, code, status, requestId: e.$metadata?.requestId };
  if (err instanceof Error && (e.$fault === 'client' && !/Throttl|TooManyRequests|RequestLimitExceeded/.test(code))) {
    if (code === 'AccessDeniedException' || code === 'UnrecognizedClientException' || code === 'ExpiredTokenException') {
      return new TransientError(`SSM refused GetParametersByPath ${path}: ${code}: ${e.message}`, 'ssm', context);
    }
    return new InvalidInputError(`${code}: ${e.message}`, `SSM path ${path}`, context);
  }
  return new TransientError(`SSM GetParametersByPath ${path} failed: ${code}: ${e.message ?? String(err)}`, 'ssm', context, { cause: err });
}
