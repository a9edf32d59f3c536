// The `system` source: a prebuilt NixOS system closure, named with Nix's own words (a store path,
// the substituter to fetch it from, the public keys that must have signed it). Parsed here, at the
// edge, so everything past this point holds a checked closure or nothing.
import { z } from 'zod/v3';
import { InvalidInputError } from '../errors.js';

export interface SystemClosure {
  /** `/nix/store/<hash>-<name>`, as Nix prints it (never under a sandbox root). */
  readonly storePath: string;
  /** `s3://…`, `https://…`, `file:///…`, or `http://` to a loopback address (a local cache, tests). */
  readonly substituter: string;
  /** `name:base64` ed25519 keys, as in nix.conf's `trusted-public-keys`. */
  readonly trustedPublicKeys: readonly string[];
  /** Where it was declared: an SSM parameter name and version, or user data. */
  readonly from: { readonly name: string; readonly version: number } | 'user-data';
}

// Nix's store path syntax: a 32-character nix-base32 hash, then a name of these characters
// (nix/src/libstore/path.cc, checkName).
const STORE_PATH = /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}$/;
const KEY = /^([A-Za-z0-9][A-Za-z0-9._-]*):([A-Za-z0-9+/]{43}=)$/;

function substituterProblem(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'is not a URL';
  }
  // `trusted=1` on a store URL makes Nix skip signature checks for it: never accepted.
  if (parsed.searchParams.has('trusted')) return 'must not carry trusted= (it turns off signature checks)';
  switch (parsed.protocol) {
    case 's3:':
    case 'https:':
      return parsed.hostname ? undefined : 'names no bucket or host';
    case 'file:':
      return parsed.pathname.length > 1 ? undefined : 'names no directory';
    case 'http:':
      // Plain HTTP is tolerable only to this machine: the signatures still decide, but a cache that
      // anyone on the path can answer for is not a cache an instance should depend on.
      return ['127.0.0.1', 'localhost', '[::1]'].includes(parsed.hostname) ? undefined : 'http:// is accepted only for a loopback address; use https:// or s3://';
    default:
      return `has scheme ${parsed.protocol} (accepted: s3://, https://, file://)`;
  }
}

const schema = z
  .object({
    storePath: z.string().regex(STORE_PATH, 'is not a Nix store path (/nix/store/<32-character hash>-<name>)'),
    substituter: z.string().superRefine((url, ctx) => {
      const problem = substituterProblem(url);
      if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
    }),
    trustedPublicKeys: z
      .array(z.string().regex(KEY, 'is not a Nix public key (name:base64 of 32 bytes, as nix-store --generate-binary-cache-key writes it)'))
      .min(1, 'names no key: a closure is accepted only when signed by one of these'),
  })
  .strict();

/** Parses the JSON text of a `system` parameter; `where` names it in the one-line rejection. */
export function parseSystemClosure(text: string, where: string, from: SystemClosure['from']): SystemClosure {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InvalidInputError(`not JSON (${(err as Error).message}); expected {"storePath", "substituter", "trustedPublicKeys"}`, where);
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.path.length ? issue.path.join('.') : '(the value)';
    throw new InvalidInputError(`${field} ${issue.message}`, where);
  }
  return { ...result.data, from };
}

/**
 * User data that is a JSON object with a `system` member names a closure the same way. A JSON
 * object is never a Nix expression (`"a": 1` is not Nix syntax), so the two cannot be mistaken.
 */
export function systemFromUserData(text: string): SystemClosure | undefined {
  const trimmed = text.trim();
  if (!trimmed.startsWith('{') || !trimmed.includes('"system"')) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(trimmed);
  } catch {
    return undefined;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json) || !('system' in json)) return undefined;
  const extra = Object.keys(json).filter((k) => k !== 'system');
  if (extra.length) throw new InvalidInputError(`unknown member ${JSON.stringify(extra[0])} beside "system"`, 'user data');
  return parseSystemClosure(JSON.stringify((json as { system: unknown }).system), 'user data "system"', 'user-data');
}
