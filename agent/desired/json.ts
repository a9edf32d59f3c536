// JSON.parse rounds every number to a double, so `1.0` comes back as the integer 1 and
// 9007199254740993 as …992. Option values are read here instead: the same grammar (RFC 8259), with
// numbers kept as their text where a double would alter them, and with the ambiguities JSON.parse
// settles silently (duplicate keys, escaped lone surrogates, a byte order mark) rejected.
import { JsonNumber, MAX_DEPTH, type Json } from '../render/nix.js';

export class JsonSyntaxError extends Error {
  constructor(
    /** What is wrong, without where. */
    readonly reason: string,
    /** 0-based offset into the text, in UTF-16 code units. */
    readonly offset: number,
    /** The keys and indexes leading to the fault (for a duplicate key, the key itself last). */
    readonly path: readonly (string | number)[] = [],
  ) {
    super(`${reason} at offset ${offset}`);
    this.name = 'JsonSyntaxError';
  }

  /** 1-based line and column (in characters) of the fault in `text`, the text that was parsed. */
  lineColumn(text: string): { line: number; column: number } {
    const before = text.slice(0, this.offset);
    const lines = before.split('\n');
    return { line: lines.length, column: [...(lines.at(-1) ?? '')].length + 1 };
  }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const WHITESPACE = /[ \t\n\r]*/y;
/** A run of string characters needing no attention: not `"`, `\`, a control character or a surrogate. */
const PLAIN = /[^"\\\u0000-\u001f\ud800-\udfff]+/y;
const ESCAPES: Readonly<Record<string, string>> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/**
 * Parses one JSON text. Safe integers are `number`s; every other number is a JsonNumber holding its
 * token. Objects are plain objects whose own keys are exactly the JSON's (`__proto__` included).
 * Throws JsonSyntaxError.
 */
export function parseJson(text: string): Json {
  let pos = 0;
  /** Where the value being read sits: the keys and indexes from the top. */
  const path: (string | number)[] = [];

  const fail = (message: string, at = pos): never => {
    throw new JsonSyntaxError(message, at, [...path]);
  };
  const skip = () => {
    WHITESPACE.lastIndex = pos;
    WHITESPACE.exec(text);
    pos = WHITESPACE.lastIndex;
  };
  // An invisible character (a BOM, a no-break space) is named by its code, not printed as itself.
  const describe = (at: number) =>
    at >= text.length ? 'the end of the text' : JSON.stringify(text[at]).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

  function string(): string {
    const start = pos;
    pos++; // the opening quote
    let out = '';
    for (;;) {
      PLAIN.lastIndex = pos;
      if (PLAIN.exec(text)) {
        out += text.slice(pos, PLAIN.lastIndex);
        pos = PLAIN.lastIndex;
      }
      if (pos >= text.length) fail('a string is not closed', start);
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        pos++;
        return out;
      }
      if (c === 0x5c) {
        const e = text[pos + 1];
        if (e === 'u') {
          const unit = hex4(pos + 2);
          pos += 6;
          if (unit >= 0xd800 && unit <= 0xdbff && text.startsWith('\\u', pos)) {
            const low = hex4(pos + 2);
            if (low >= 0xdc00 && low <= 0xdfff) {
              out += String.fromCharCode(unit, low);
              pos += 6;
              continue;
            }
          }
          if (unit >= 0xd800 && unit <= 0xdfff) fail('a \\u escape is a lone UTF-16 surrogate, which is not a Unicode character', pos - 6);
          out += String.fromCharCode(unit);
          continue;
        }
        const plain = e === undefined ? undefined : ESCAPES[e];
        if (plain === undefined) fail(`invalid escape \\${e ?? ''}`);
        out += plain;
        pos += 2;
        continue;
      }
      if (c < 0x20) fail('a control character must be escaped inside a string');
      // A surrogate: whole pairs are a character, a lone one is not Unicode.
      const next = text.charCodeAt(pos + 1);
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        out += text.slice(pos, pos + 2);
        pos += 2;
        continue;
      }
      fail('a string holds a lone UTF-16 surrogate, which is not a Unicode character');
    }
  }

  function hex4(at: number): number {
    const digits = text.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) fail('a \\u escape needs four hex digits', at);
    return Number.parseInt(digits, 16);
  }

  function number(): Json {
    NUMBER.lastIndex = pos;
    const m = NUMBER.exec(text);
    if (!m) return fail(pos >= text.length ? 'the text ends where a value should be' : `unexpected ${describe(pos)}`);
    const token = m[0];
    pos = NUMBER.lastIndex;
    if (!/[.eE]/.test(token)) {
      const v = Number(token);
      if (Number.isSafeInteger(v)) return v === 0 ? 0 : v;
    }
    return new JsonNumber(token);
  }

  function value(depth: number): Json {
    skip();
    const c = text[pos];
    if (c === '{' || c === '[') {
      if (depth >= MAX_DEPTH) fail(`the value nests deeper than ${MAX_DEPTH} levels`);
      return c === '{' ? object(depth + 1) : array(depth + 1);
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(word, pos)) {
        pos += word.length;
        return v;
      }
    }
    return number();
  }

  function array(depth: number): Json[] {
    pos++;
    const out: Json[] = [];
    skip();
    if (text[pos] === ']') {
      pos++;
      return out;
    }
    for (;;) {
      path.push(out.length);
      out.push(value(depth));
      path.pop();
      skip();
      const c = text[pos++];
      if (c === ']') return out;
      if (c !== ',') fail(`expected , or ] but found ${describe(pos - 1)}`, pos - 1);
    }
  }

  function object(depth: number): { [k: string]: Json } {
    pos++;
    const entries = new Map<string, Json>();
    skip();
    if (text[pos] === '}') {
      pos++;
      return {};
    }
    for (;;) {
      skip();
      if (text[pos] !== '"') fail(`expected a quoted key but found ${describe(pos)}`);
      const keyAt = pos;
      const key = string();
      path.push(key);
      if (entries.has(key)) fail(`the key ${JSON.stringify(key)} appears twice in one object`, keyAt);
      skip();
      if (text[pos] !== ':') fail(`expected : but found ${describe(pos)}`);
      pos++;
      entries.set(key, value(depth));
      path.pop();
      skip();
      const c = text[pos++];
      if (c === '}') break;
      if (c !== ',') fail(`expected , or } but found ${describe(pos - 1)}`, pos - 1);
    }
    // fromEntries defines own properties: a key named `__proto__` is a key like any other.
    return Object.fromEntries(entries);
  }

  if (text.charCodeAt(0) === 0xfeff) fail('the text starts with a byte order mark, which JSON does not allow', 0);
  const result = value(0);
  skip();
  if (pos < text.length) fail(`unexpected ${describe(pos)} after the value`);
  return result;
}
