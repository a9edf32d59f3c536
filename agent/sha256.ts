// SHA-256 for the agent's digests (desired state, user data, local files, rollout cohorts), in
// JavaScript (@noble/hashes) rather than node:crypto: a pass hashes kilobytes, and node:crypto is
// some sixteen of Node's own modules, compiled at every start under the wrapper's V8 flags, which
// leave Node's built-ins without their code cache (`npm run bench -- boot`).
import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex, utf8ToBytes } from '@noble/hashes/utils.js';

export interface Sha256 {
  /** Strings are hashed as UTF-8, as node:crypto's update() takes them. */
  update(data: string | Uint8Array): Sha256;
  digest(): Uint8Array;
  hex(): string;
}

export function sha256Hash(): Sha256 {
  const h = sha256.create();
  const hash: Sha256 = {
    update(data) {
      h.update(typeof data === 'string' ? utf8ToBytes(data) : data);
      return hash;
    },
    digest: () => h.digest(),
    hex: () => bytesToHex(h.digest()),
  };
  return hash;
}

export function sha256Hex(data: string | Uint8Array): string {
  return sha256Hash().update(data).hex();
}
