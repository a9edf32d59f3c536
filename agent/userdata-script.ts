// How a `#!` user-data script is started. The kernel would run its `#!` line's interpreter, but
// NixOS has only /bin/sh and /usr/bin/env at fixed paths, and most user data is written for other
// distributions (`#!/bin/bash`). nixpkgs' amazon-init (nixos/modules/virtualisation/amazon-init.nix)
// ignores the line and runs every `#!` user data with `${pkgs.runtimeShell} $userData`, i.e. bash;
// the agent keeps a script's own interpreter where the machine has it (`#!/usr/bin/env python3`),
// and falls back to bash only for a shell whose scripts bash runs the same way.
import path from 'node:path';
import { InvalidInputError } from './errors.js';

/**
 * Shells whose scripts bash runs as they expect. dash's `echo` interprets backslashes and bash's
 * does not; ksh and zsh have their own syntax: a script for those must not silently get bash.
 */
const BASH_RUNS = new Set(['sh', 'bash']);

/** Linux reads at most this much of a `#!` line (BINPRM_BUF_SIZE). */
const SHEBANG_MAX = 256;

export interface Shebang {
  /** As written: what the kernel would execute. */
  readonly interpreter: string;
  /** The one optional argument, as the kernel passes it: the rest of the line, trimmed. */
  readonly argument?: string;
}

/** The interpreter a `#!` script names, split as Linux splits it (fs/binfmt_script.c). */
export function parseShebang(script: Uint8Array): Shebang | undefined {
  const head = Buffer.from(script.subarray(0, SHEBANG_MAX));
  if (head[0] !== 0x23 || head[1] !== 0x21) return undefined;
  const end = head.indexOf(0x0a);
  const line = head.subarray(2, end < 0 ? head.length : end).toString('utf8').replace(/^[ \t]+|[ \t]+$/g, '');
  if (line === '') return undefined;
  const split = /[ \t]/.exec(line);
  if (!split) return { interpreter: line };
  const argument = line.slice(split.index).replace(/^[ \t]+/, '');
  return { interpreter: line.slice(0, split.index), ...(argument ? { argument } : {}) };
}

export type ScriptLaunch =
  /** The interpreter exists: run as the kernel would have. `command` is its path under the root. */
  | { readonly kind: 'own'; readonly command: string; readonly args: readonly string[] }
  /** A shell the machine does not have at that path: bash from PATH, as amazon-init. */
  | { readonly kind: 'bash'; readonly command: 'bash'; readonly args: readonly string[]; readonly absent: string }
  /** Nothing that could run it as its author meant: the script is not started. */
  | { readonly kind: 'refused'; readonly error: InvalidInputError };

export interface InterpreterLookup {
  /** The real path of a path on the machine (under the agent's root). */
  resolve(systemPath: string): string;
  isExecutable(systemPath: string): Promise<boolean>;
}

/** How to start the script saved at `scriptPath` (a real path): by its own interpreter, by bash, or not at all. */
export async function planScriptLaunch(script: Uint8Array, scriptPath: string, machine: InterpreterLookup): Promise<ScriptLaunch> {
  const shebang = parseShebang(script);
  if (!shebang) return refuse('its #! line names no interpreter', undefined, 'write #!/bin/sh, or #!/usr/bin/env INTERPRETER');
  const { interpreter, argument } = shebang;
  // The kernel would look for `bash\r`, and bash would then stumble on every line.
  if ((argument ?? interpreter).endsWith('\r')) return refuse('its lines end in a carriage return (Windows line endings)', interpreter.replace(/\r$/, ''), 'save it with Unix line endings');
  const args = [...(argument !== undefined ? [argument] : []), scriptPath];
  // A relative interpreter would be looked up in the agent's working directory: never meant.
  if (path.posix.isAbsolute(interpreter) && (await machine.isExecutable(interpreter))) {
    return { kind: 'own', command: machine.resolve(interpreter), args };
  }
  const name = path.posix.basename(interpreter);
  if (BASH_RUNS.has(name)) return { kind: 'bash', command: 'bash', args, absent: interpreter };
  return refuse(`its interpreter ${printable(interpreter)} is not on this machine (NixOS has only /bin/sh and /usr/bin/env at fixed paths)`, interpreter, `start it with #!/usr/bin/env ${printable(name) || 'INTERPRETER'}, which finds ${printable(name) || 'it'} on the agent's PATH`);
}

function refuse(problem: string, interpreter: string | undefined, instead: string): ScriptLaunch {
  return {
    kind: 'refused',
    error: new InvalidInputError(`the #! script was not run: ${problem}; ${instead}`, 'user data', interpreter !== undefined ? { interpreter } : {}),
  };
}

/** A name as it can be shown on one log line: control characters (a CR from an editor) made visible. */
function printable(name: string): string {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f]/.test(name) ? JSON.stringify(name) : name;
}
