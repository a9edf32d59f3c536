// User data, interpreted as nixpkgs' amazon-init does, with its known faults fixed: gzip is
// unpacked (bounded), a `#!` script runs once per instance id rather than at every boot
// (nixpkgs#41826), and bad bytes are an error that names the source rather than a broken
// configuration.nix.
import { sha256Hex } from '../sha256.js';
import { InvalidInputError } from '../errors.js';
import { firstInvalidUtf8 } from '../utf8.js';

/** EC2's limit on user data, before base64. */
export const USER_DATA_LIMIT = 16 * 1024;
/**
 * The most gzip'd user data unpacks to. Packing is how user data holds more than EC2's 16 KiB
 * (as with cloud-init), and Nix text packs four to eight times: 1 MiB leaves room for any real
 * configuration, and stops a gzip bomb (16 KiB of it unpacks to 16 MiB and more) long before it
 * costs an instance its memory.
 */
export const UNPACKED_USER_DATA_LIMIT = 1024 * 1024;

export interface Channel {
  readonly url: string;
  readonly name: string;
}

export type UserData =
  | { readonly kind: 'none'; readonly digest: string }
  | { readonly kind: 'nix'; readonly digest: string; readonly text: string; readonly channels: readonly Channel[] }
  | { readonly kind: 'script'; readonly digest: string; readonly script: Buffer }
  | { readonly kind: 'ignored'; readonly digest: string; readonly reason: string };

const WHERE = 'user data';

export function digestOf(bytes: Uint8Array): string {
  return sha256Hex(bytes);
}

/** Classifies raw user data bytes (undefined: the instance has none). */
export function interpretUserData(raw: Buffer | undefined): UserData {
  if (raw === undefined || raw.length === 0) return { kind: 'none', digest: digestOf(Buffer.alloc(0)) };
  if (raw.length > USER_DATA_LIMIT) {
    throw new InvalidInputError(`${raw.length} bytes, over EC2's ${USER_DATA_LIMIT}-byte limit`, WHERE);
  }
  const bytes = isGzip(raw) ? gunzipBounded(raw) : raw;
  const digest = digestOf(bytes);
  if (bytes[0] === 0x23 && bytes[1] === 0x21) return { kind: 'script', digest, script: bytes };

  // A byte order mark is neither dropped (it is part of what the operator sent, and its digest) nor
  // kept (Nix's lexer has no rule for it, so the file would fail to parse at its first byte).
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
    throw new InvalidInputError('starts with a UTF-8 byte order mark (EF BB BF), which Nix does not accept; save it without one', WHERE);
  }
  let text: string;
  try {
    // ignoreBOM: the decoder would otherwise drop a BOM silently (none is left at the start, but one
    // further in stays a character).
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new InvalidInputError(`not valid UTF-8 (the sequence at byte ${firstInvalidUtf8(bytes)}, counting from 0)`, WHERE);
  }
  if (text.includes('\0')) throw new InvalidInputError('contains a NUL byte', WHERE);

  // amazon-init's test: any non-space character left after dropping `#` comments and the
  // NixOps SSH_HOST_ lines means a Nix expression.
  const meaningful = text
    .split('\n')
    .filter((line) => !line.startsWith('#') && !line.startsWith('SSH_HOST_'))
    .join('\n');
  if (!/\S/.test(meaningful)) {
    return { kind: 'ignored', digest, reason: 'no Nix expression in user data (only comments or SSH_HOST_ lines)' };
  }
  return { kind: 'nix', digest, text, channels: parseChannels(text) };
}

/** `### <url> <name>` lines, as amazon-init writes them to /root/.nix-channels. */
export function parseChannels(text: string): Channel[] {
  const channels: Channel[] = [];
  text.split('\n').forEach((line, index) => {
    if (!line.startsWith('###')) return;
    const after = line.slice(3).trim();
    // amazon-init writes what follows `###` to /root/.nix-channels, and nix-channel skips a line
    // starting with `#` there: a `####` banner is a comment, not a malformed channel.
    if (after.startsWith('#')) return;
    const fields = after.split(/\s+/).filter(Boolean);
    if (fields.length === 0) return;
    const [url, name, ...rest] = fields;
    if (url === undefined || name === undefined || rest.length > 0) {
      throw new InvalidInputError(`line ${index + 1}: a channel line is "### <url> <name>"`, WHERE);
    }
    if (!/^[a-z][a-z0-9+.-]*:\/\/\S+$/i.test(url)) {
      throw new InvalidInputError(`line ${index + 1}: channel URL ${JSON.stringify(url)} is not a URL`, WHERE);
    }
    if (!/^[A-Za-z0-9_.+-]+$/.test(name)) {
      throw new InvalidInputError(`line ${index + 1}: channel name ${JSON.stringify(name)} is not a plain name`, WHERE);
    }
    channels.push({ url, name });
  });
  return channels;
}

function isGzip(bytes: Buffer): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

function gunzipBounded(bytes: Buffer): Buffer {
  try {
    // zlib is loaded only for gzip'd user data: at boot, with plain user data, its compilation is
    // time an instance waits on for nothing (`npm run bench -- boot`).
    const { gunzipSync } = process.getBuiltinModule('node:zlib');
    // One byte over the limit is enough to know it is too big; a gzip bomb stops there.
    return gunzipSync(bytes, { maxOutputLength: UNPACKED_USER_DATA_LIMIT });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ERR_BUFFER_TOO_LARGE' || /maxOutputLength|buffer/i.test(String((err as Error).message))) {
      throw new InvalidInputError(`unpacks to over ${UNPACKED_USER_DATA_LIMIT} bytes, the most gzip'd user data may hold`, WHERE);
    }
    throw new InvalidInputError(`gzip data does not unpack: ${(err as Error).message}`, WHERE);
  }
}
