// The gate every rendered file passes before anything is switched: the real Nix parser, run through
// the Runner. Parsing never evaluates, so hostile text is safe to hand to it.
import { resolve } from 'node:path';
import { InvalidInputError, TransientError } from '../errors.js';
import type { RunResult, Runner } from '../ports.js';

export interface NixSyntaxError {
  /** The file as the caller named it, or the label given to checkText. */
  readonly file: string;
  /** 1-based; 0 when Nix named no position (e.g. the file could not be read). */
  readonly line: number;
  readonly column: number;
  /** Nix's first `error:` line, without the prefix. */
  readonly message: string;
}

/** A rendered file the parser refused, named by what it was rendered from. */
export interface RefusedFile {
  readonly source: string;
  readonly line: number;
  readonly column: number;
  readonly message: string;
}

/**
 * The parser's verdict on rendered files as the error a pass and `render` report alike: the first
 * refusal in the message, every one in its context.
 */
export function refusedByParser(refused: readonly [RefusedFile, ...RefusedFile[]]): InvalidInputError {
  const [first] = refused;
  return new InvalidInputError(`does not parse as Nix: line ${first.line}, column ${first.column}: ${first.message}`, first.source, { errors: refused });
}

/** The parser program cannot be started; callers decide whether that is fatal. */
export class NixUnavailableError extends Error {
  constructor(
    readonly command: string,
    readonly detail: string,
  ) {
    super(`${command} cannot be run: ${detail}`);
    this.name = 'NixUnavailableError';
  }
}

export interface NixParserOptions {
  /** Default `nix-instantiate`. */
  readonly command?: string;
  /** Per call to the parser; default 30 s. */
  readonly timeoutMs?: number;
}

/**
 * Without a daemon socket it may open, a non-root Nix fails before parsing; `dummy://` needs no store
 * at all and changes nothing for root (checked on Nix 2.8), so it is always passed.
 */
const STORE_ARGS = ['--store', 'dummy://'] as const;
/** Keeps each command line far below the kernel's argument limits. */
const MAX_ARGS_CHARS = 64 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;

// Nix prints no colour when stderr is not a terminal, but a wrapper may force it.
const ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;
/** The location line under the message: `       at /path/file.nix:2:7:`. */
const LOCATION = /^\s*at (.+):(\d+):(\d+):\s*$/m;

interface ParsedFailure {
  readonly path?: string;
  readonly line: number;
  readonly column: number;
  readonly message: string;
}

function parseFailure(stderr: string): ParsedFailure {
  const text = stderr.replace(ANSI, '');
  const errorLine = text.split('\n').find((l) => l.startsWith('error:'));
  const message = errorLine?.slice('error:'.length).trim() || text.trim().split('\n').at(-1)?.trim() || 'parse failed';
  const at = LOCATION.exec(text);
  if (!at) return { line: 0, column: 0, message };
  return { path: at[1], line: Number(at[2]), column: Number(at[3]), message };
}

export class NixParser {
  private readonly command: string;
  private readonly timeoutMs: number;

  constructor(
    private readonly runner: Runner,
    options: NixParserOptions = {},
  ) {
    this.command = options.command ?? 'nix-instantiate';
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * Parses `files` with the real Nix parser; [] when all parse, else one error per bad file.
   *
   * One `nix-instantiate --parse` takes many files but stops at the first that fails, so the files
   * go in as few calls as possible, each resuming after the file that failed the one before.
   */
  async check(files: readonly string[]): Promise<NixSyntaxError[]> {
    const errors: NixSyntaxError[] = [];
    let start = 0;
    while (start < files.length) {
      const batch = takeBatch(files, start);
      const absolute = batch.map((f) => resolve(f));
      const result = await this.parse(absolute);
      if (result.code === 0) {
        start += batch.length;
        continue;
      }
      const failure = parseFailure(result.stderr);
      // Nix names a file by the path it read: the one given, unless the name was a symlink or a
      // directory it resolved. When it names none of ours, the batch is checked one file at a time.
      const index = failure.path === undefined ? -1 : absolute.indexOf(failure.path);
      if (index >= 0) {
        errors.push({ file: batch[index] as string, line: failure.line, column: failure.column, message: failure.message });
        start += index + 1;
        continue;
      }
      for (const [i, file] of batch.entries()) {
        const single = await this.parse([absolute[i] as string]);
        if (single.code === 0) continue;
        const f = parseFailure(single.stderr);
        errors.push({ file, line: f.line, column: f.column, message: f.message });
      }
      start += batch.length;
    }
    return errors;
  }

  /** Parses `text` (given on stdin, so nothing is written); `label` names it in the error. */
  async checkText(text: string, label: string): Promise<NixSyntaxError | undefined> {
    const result = await this.run(['--parse', ...STORE_ARGS, '-'], text);
    if (result.code === 0) return undefined;
    const failure = parseFailure(result.stderr);
    return { file: label, line: failure.line, column: failure.column, message: failure.message };
  }

  /** Whether the parser program is installed and runs. */
  async available(): Promise<boolean> {
    const result = await this.runner.run({ command: this.command, args: ['--version'], timeoutMs: this.timeoutMs });
    return result.code === 0;
  }

  private parse(absolute: readonly string[]): Promise<RunResult> {
    // `--` keeps a file name from ever being read as a flag.
    return this.run(['--parse', ...STORE_ARGS, '--', ...absolute]);
  }

  private async run(args: readonly string[], stdin?: string): Promise<RunResult> {
    const result = await this.runner.run({
      command: this.command,
      args,
      timeoutMs: this.timeoutMs,
      ...(stdin === undefined ? {} : { stdin }),
    });
    if (result.timedOut) {
      throw new TransientError(`${this.command} --parse did not finish within ${this.timeoutMs} ms`, 'nix-parser', {
        tail: result.tail,
      });
    }
    // 126/127: the shell's and ProcessRunner's codes for a program that could not be started; Nix
    // itself exits 1 on a parse error. Anything else without an `error:` line is not a verdict on the
    // text either.
    const saidError = /^error:/m.test(result.stderr.replace(ANSI, ''));
    if (result.code === 126 || result.code === 127) {
      if (!saidError) throw new NixUnavailableError(this.command, result.stderr.trim() || `exit code ${result.code}`);
    } else if (result.code !== 0 && !saidError) {
      throw new TransientError(
        `${this.command} --parse ended without a verdict (exit ${result.code}, signal ${result.signal})`,
        'nix-parser',
        { tail: result.tail },
      );
    }
    return result;
  }
}

function takeBatch(files: readonly string[], start: number): readonly string[] {
  let size = 0;
  let end = start;
  while (end < files.length && (end === start || size + (files[end] as string).length < MAX_ARGS_CHARS)) {
    size += (files[end] as string).length + 1;
    end++;
  }
  return files.slice(start, end);
}
