// Nix's base-32 (libutil's printHash32): its own 32-letter alphabet, 5-bit groups taken from the
// end of the byte string, most significant group first. Store path hashes and the NarHash a
// signature covers are written this way.
const NIX_BASE32 = '0123456789abcdfghijklmnpqrsvwxyz';

export function nixBase32(bytes: Uint8Array): string {
  const len = Math.ceil((bytes.length * 8) / 5);
  let out = '';
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = Math.floor(b / 8);
    const j = b % 8;
    const lo = (bytes[i] ?? 0) >> j;
    const hi = i + 1 < bytes.length ? (bytes[i + 1] ?? 0) << (8 - j) : 0;
    out += NIX_BASE32[(lo | hi) & 0x1f];
  }
  return out;
}
