// UTF-8 as the agent reads it from operators: strictly, and when it is not valid, saying where.

/** The byte offset of the first sequence in `bytes` that is not valid UTF-8 (`bytes` must hold one). */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let lo = 0;
  let hi = bytes.length;
  // The longest valid prefix, found by bisection: the decoder has no offset of its own. In
  // stream mode a character cut at the end is not an error, so validity is monotonic.
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, mid), { stream: true });
      lo = mid;
    } catch {
      hi = mid - 1;
    }
  }
  // That prefix may end in the first bytes of the bad sequence (a lead byte whose continuation is
  // missing or wrong); the sequence starts at the last whole-character boundary, at most 3 back.
  for (let end = lo; end > Math.max(0, lo - 4); end--) {
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, end));
      return end;
    } catch {
      // Still inside the cut character.
    }
  }
  return Math.max(0, lo - 4);
}
