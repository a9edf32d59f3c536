// Finds the path literals in Nix source, the way Nix's lexer sees them: not inside strings or
// comments, including those inside `${…}` interpolations. It is what lets the stand-in collect
// every file a configuration imports without evaluating it.

const PATH_CHAR = '[a-zA-Z0-9._\\-+]';
/** Nix's PATH token: `{PATH_CHAR}*(\/{PATH_CHAR}+)+\/?`. */
const PATH_RE = new RegExp(`${PATH_CHAR}*(?:/${PATH_CHAR}+)+/?`, 'y');
/** `~/…` and `<…>` paths name nothing under the configuration's directory. */
const HPATH_RE = new RegExp(`~(?:/${PATH_CHAR}+)+/?`, 'y');
const SPATH_RE = new RegExp(`<${PATH_CHAR}+(?:/${PATH_CHAR}+)*>`, 'y');
const URI_RE = /[a-zA-Z][a-zA-Z0-9+\-.]*:[a-zA-Z0-9%/?:@&=+$,\-_.!~*']+/y;
const WORD_RE = /[a-zA-Z0-9_'\-.+]+/y;

export interface PathLiteral {
  readonly text: string;
  /** True for `./dir/${x}`-style paths, whose static prefix is all that is known. */
  readonly interpolated: boolean;
}

function stickyMatch(re: RegExp, text: string, at: number): string | null {
  re.lastIndex = at;
  const m = re.exec(text);
  return m ? m[0] : null;
}

export function pathLiterals(text: string): PathLiteral[] {
  const found: PathLiteral[] = [];
  let i = 0;

  // Each scanner returns the index just past what it consumed.
  const scanCode = (closeOnBrace: boolean): number => {
    let depth = 0;
    while (i < text.length) {
      const c = text[i] as string;
      const n = text[i + 1];
      if (c === '#') {
        const eol = text.indexOf('\n', i);
        i = eol === -1 ? text.length : eol + 1;
      } else if (c === '/' && n === '*') {
        const end = text.indexOf('*/', i + 2);
        i = end === -1 ? text.length : end + 2;
      } else if (c === '"') {
        i++;
        scanString();
      } else if (c === "'" && n === "'") {
        i += 2;
        scanIndentedString();
      } else if (c === '{' || (c === '$' && n === '{')) {
        depth++;
        i += c === '$' ? 2 : 1;
      } else if (c === '}') {
        i++;
        if (depth === 0 && closeOnBrace) return i;
        depth = Math.max(0, depth - 1);
      } else if (c === '/' && n === '/') {
        // `//` is the update operator, never the start of a path (flex prefers the earlier rule).
        i += 2;
      } else if (/[a-zA-Z0-9_.\-+/~<]/.test(c)) {
        const uri = /[a-zA-Z]/.test(c) ? stickyMatch(URI_RE, text, i) : null;
        const skipped = uri ?? stickyMatch(HPATH_RE, text, i) ?? (c === '<' ? stickyMatch(SPATH_RE, text, i) : null);
        if (skipped) {
          i += skipped.length;
          continue;
        }
        const path = stickyMatch(PATH_RE, text, i);
        if (path) {
          i += path.length;
          found.push({ text: path, interpolated: text.startsWith('${', i) });
          continue;
        }
        const word = stickyMatch(WORD_RE, text, i);
        i += word ? word.length : 1;
      } else {
        i++;
      }
    }
    return i;
  };

  const scanString = (): void => {
    while (i < text.length) {
      const c = text[i];
      if (c === '\\') i += 2;
      else if (c === '"') {
        i++;
        return;
      } else if (c === '$' && text[i + 1] === '{') {
        i += 2;
        scanCode(true);
      } else i++;
    }
  };

  const scanIndentedString = (): void => {
    while (i < text.length) {
      if (text.startsWith("'''", i) || text.startsWith("''$", i)) i += 3;
      else if (text.startsWith("''\\", i)) i += 4;
      else if (text.startsWith("''", i)) {
        i += 2;
        return;
      } else if (text.startsWith('${', i)) {
        i += 2;
        scanCode(true);
      } else i++;
    }
  };

  scanCode(false);
  return found;
}

/** The markers that make the stand-in fail on purpose, found anywhere in a file's text. */
export interface Markers {
  readonly failBuild: boolean;
  readonly failSwitch: boolean;
  /** `sandbox-unit-fails-in-switch`: a unit fails while switch-to-configuration starts it (exit 4). */
  readonly failUnit: boolean;
  /** `sandbox-fail-unit`: a unit starts, then fails once switch-to-configuration has returned (exit 0). */
  readonly unitFailsLater: boolean;
  readonly hang: boolean;
  /** `sandbox-cut-network`: while the system runs, the instance reaches no endpoint (machine.ts). */
  readonly cutNetwork: boolean;
  /** From `sandbox-kernel-<version>`; the last one wins. */
  readonly kernel: string | null;
}

export function findMarkers(texts: readonly string[]): Markers {
  const all = texts.join('\n');
  let kernel: string | null = null;
  for (const m of all.matchAll(/sandbox-kernel-(\d+(?:\.[0-9A-Za-z]+)*(?:-[0-9A-Za-z]+)?)/g)) kernel = m[1] ?? null;
  return {
    failBuild: all.includes('sandbox-fail-build'),
    failSwitch: all.includes('sandbox-fail-switch'),
    failUnit: all.includes('sandbox-unit-fails-in-switch'),
    unitFailsLater: all.includes('sandbox-fail-unit'),
    hang: all.includes('sandbox-hang'),
    cutNetwork: all.includes('sandbox-cut-network'),
    kernel,
  };
}
