// A prebuilt system closure, realised from a binary cache through the Runner: read its closure's
// .narinfo files from the cache (`nix path-info -r`), check that every path is signed by one of the
// keys the desired state names, check the room it needs, then `nix copy` it into the store with
// those keys alone trusted. Nix checks the signatures again as it adds each path; the agent's own
// check comes first so that a refusal names its reason (not signed by the key, or a .narinfo that
// does not match its signature) before a byte of a NAR is fetched. Never `--no-check-sigs`, never
// a substituter marked trusted (sources/system.ts refuses `trusted=`).
import { nixBase32 } from '../nix-base32.js';
import type { KeyObject } from 'node:crypto';
import { access, constants, stat } from 'node:fs/promises';
import path from 'node:path';
import { ApplyFailedError } from '../errors.js';
import type { RootFs } from '../fs.js';
import type { Logger } from '../log.js';
import type { RunResult, Runner } from '../ports.js';
import type { SystemClosure } from '../sources/system.js';
import { checkSpace, spaceNeeded, statfsProbe, type FsProbe, type PathSize } from './space.js';

export type Refusal = 'unsigned' | 'tampered' | 'unreachable' | 'missing' | 'not-nixos' | 'no-space' | 'timed-out' | 'failed';

/** The closure was not realised; nothing was switched. */
export class ClosureRefusedError extends ApplyFailedError {
  constructor(
    message: string,
    readonly refusal: Refusal,
    context: { exitCode?: number | null; timedOut?: boolean; tail?: readonly string[] } = {},
  ) {
    // Stage `build`: in the apply order, realising a closure stands where a build stands.
    super(message, 'build', { ...context, reasons: [`closure refused: ${refusal}`] });
  }
}

export interface ClosureOptions {
  readonly nix: string;
  readonly nixStore: string;
  /** For `nix path-info` and `nix copy` each. */
  readonly timeoutMs: number;
  /** Kept free in the store beyond the closure. */
  readonly reserveBytes: number;
  /** Short of space: `nix-store --gc` (unrooted paths only; generations are roots) then look again. */
  readonly gcWhenShort: boolean;
  readonly env?: Readonly<Record<string, string>>;
}

export interface RealisedClosure {
  /** The system's real path (under a sandbox root, it includes the root). */
  readonly storePath: string;
  /** Paths that were not in the store, now substituted. */
  readonly substituted: number;
  /** Their unpacked size (NarSize), and what crossed the network (FileSize, compressed). */
  readonly narBytes: number;
  readonly downloadBytes: number;
}

interface PathInfo {
  readonly path: string;
  readonly narHash: string;
  readonly narSize: number;
  readonly references: readonly string[];
  readonly signatures?: readonly string[];
  readonly ca?: string;
  readonly downloadSize?: number;
}

export const GC_ROOTS = '/nix/var/nix/gcroots/nixos-ec2-agent';

export class ClosureRealiser {
  constructor(
    private readonly runner: Runner,
    private readonly fs: RootFs,
    private readonly options: ClosureOptions,
    private readonly log: Logger,
    private readonly probe: FsProbe = statfsProbe,
  ) {}

  /** Substitutes the closure into the store, or refuses with the reason. Switches nothing. */
  async realise(closure: SystemClosure, signal?: AbortSignal): Promise<RealisedClosure> {
    const storePath = this.fs.resolve(closure.storePath);
    const log = this.log.child({ stage: 'closure', storePath: closure.storePath, substituter: closure.substituter });
    if ((await this.invalidPaths([closure.storePath], signal)).size === 0) {
      // Already here (the running system, or fetched before): nothing to verify over the network.
      await checkNixos(storePath);
      log.info({ event: 'closure.present' }, `${closure.storePath} is already in the store`);
      return { storePath, substituted: 0, narBytes: 0, downloadBytes: 0 };
    }
    const infos = await this.inspect(closure, signal);
    checkSignatures(infos, closure.trustedPublicKeys);
    const invalid = await this.invalidPaths(infos.map((i) => i.path), signal);
    const missing = infos.filter((i) => invalid.has(i.path));
    await this.ensureSpace(missing, signal);
    log.info({ event: 'closure.copy', paths: missing.length }, `substituting ${missing.length} paths from ${closure.substituter}`);
    await this.nix(closure, ['copy', '--from', closure.substituter, ...this.destination(), closure.storePath], signal);
    await checkNixos(storePath);
    const narBytes = missing.reduce((n, p) => n + p.narSize, 0);
    const downloadBytes = missing.reduce((n, p) => n + (p.downloadSize ?? p.narSize), 0);
    log.info({ event: 'closure.realised', substituted: missing.length, narBytes, downloadBytes }, `realised ${closure.storePath}`);
    return { storePath, substituted: missing.length, narBytes, downloadBytes };
  }

  /**
   * Keeps the current and the last good system from the garbage collector, whatever becomes of
   * the profile's generations: symlinks in the store's gcroots directory naming the store path.
   */
  async pinRoots(systems: { readonly current?: string; readonly lastGood?: string }): Promise<void> {
    for (const [name, real] of [['current-system', systems.current], ['last-good-system', systems.lastGood]] as const) {
      if (real === undefined) continue;
      await this.fs.symlinkAtomic(this.storePathOf(real), `${GC_ROOTS}/${name}`);
    }
  }

  /** The store path as Nix names it, from the real path (the same unless under a sandbox root). */
  private storePathOf(real: string): string {
    const rel = path.relative(this.fs.root, real);
    return rel.startsWith('nix/store/') ? `/${rel}` : real;
  }

  /** Every path of the closure, as the cache's .narinfo files describe it. */
  private async inspect(closure: SystemClosure, signal?: AbortSignal): Promise<PathInfo[]> {
    const result = await this.nix(closure, ['path-info', '--json', '--recursive', '--store', closure.substituter, closure.storePath], signal);
    let infos: PathInfo[];
    try {
      infos = pathInfos(JSON.parse(result.stdout)).filter((i) => typeof i.path === 'string' && typeof i.narSize === 'number');
    } catch {
      throw new ClosureRefusedError(`nix path-info printed no closure for ${closure.storePath}`, 'failed', { tail: result.tail.slice(-5) });
    }
    if (!infos.some((i) => i.path === closure.storePath)) {
      throw new ClosureRefusedError(`${closure.substituter} does not have ${closure.storePath}`, 'missing');
    }
    return infos;
  }

  /**
   * The paths among `paths` that are not valid in the store. A directory under /nix/store is not
   * enough: Nix unpacks a substituted NAR before it has checked its hash, and a NAR refused as
   * tampered leaves its tree there, unregistered, until the next collection.
   */
  private async invalidPaths(paths: readonly string[], signal?: AbortSignal): Promise<Set<string>> {
    const result = await this.runner.run({
      command: this.options.nixStore,
      args: [...this.storeArgs(), '--check-validity', '--print-invalid', ...paths],
      timeoutMs: this.options.timeoutMs,
      ...(signal ? { signal } : {}),
      ...(this.options.env ? { env: this.options.env } : {}),
    });
    // Cancelled (a newer desired state, the instance leaving, a stop): the signal's reason is the one
    // value that says so to the reconciler, as the Rebuilder throws it; anything else is a failure.
    if (result.aborted && signal?.aborted) throw signal.reason;
    if (result.aborted) throw new ApplyFailedError('nix-store --check-validity cancelled by a newer desired state', 'build', { exitCode: result.code, reasons: ['cancelled'] });
    if (result.code !== 0 || result.timedOut) {
      const tail = result.stderr.split('\n').filter(Boolean).slice(-10);
      throw new ClosureRefusedError(`nix-store --check-validity failed: ${tail.at(-1) ?? `exit ${result.code ?? result.signal}`}`, result.timedOut ? 'timed-out' : 'failed', { exitCode: result.code, timedOut: result.timedOut, tail });
    }
    return new Set(result.stdout.split('\n').filter(Boolean));
  }

  private storeArgs(): string[] {
    return this.fs.root === '/' ? [] : ['--store', this.fs.root];
  }

  private async ensureSpace(missing: readonly PathSize[], signal?: AbortSignal): Promise<void> {
    const dirs = { store: this.fs.resolve('/nix/store'), boot: this.fs.resolve('/boot') };
    const need = spaceNeeded(missing);
    let verdict = await checkSpace(this.probe, dirs, need, this.options.reserveBytes);
    let collected = '';
    if (!verdict.ok && this.options.gcWhenShort) {
      this.log.warn({ event: 'closure.gc', reason: verdict.summary }, `collecting garbage first: ${verdict.summary}`);
      const gc = await this.runner.run({ command: this.options.nixStore, args: [...this.storeArgs(), '--gc'], timeoutMs: this.options.timeoutMs, ...(signal ? { signal } : {}), ...(this.options.env ? { env: this.options.env } : {}) });
      if (gc.aborted && signal?.aborted) throw signal.reason;
      if (gc.aborted) throw new ApplyFailedError('nix-store --gc cancelled by a newer desired state', 'build', { exitCode: gc.code, reasons: ['cancelled'] });
      // A failed collection may still have freed something: the space is looked at again either way.
      const ended = gc.timedOut ? 'timed out' : gc.code === 0 ? undefined : gc.code === null ? `was killed by ${gc.signal}` : `exited with ${gc.code}`;
      if (ended) this.log.warn({ event: 'closure.gc-failed', exitCode: gc.code, timedOut: gc.timedOut, tail: gc.tail.slice(-5) }, `nix-store --gc ${ended}`);
      collected = ended ? ` (after nix-store --gc, which ${ended})` : ' (after collecting garbage)';
      verdict = await checkSpace(this.probe, dirs, need, this.options.reserveBytes);
    }
    this.log.info({ event: 'closure.space', ok: verdict.ok, storeBytes: need.storeBytes, bootBytes: need.bootBytes }, verdict.summary);
    if (!verdict.ok) throw new ClosureRefusedError(`${verdict.summary}${collected}`, 'no-space');
  }

  private destination(): string[] {
    return this.fs.root === '/' ? [] : ['--to', this.fs.root];
  }

  private async nix(closure: SystemClosure, args: readonly string[], signal?: AbortSignal): Promise<RunResult> {
    const full = [
      '--extra-experimental-features', 'nix-command',
      // Only these keys; a cache that just received the path must not be remembered as missing.
      '--option', 'trusted-public-keys', closure.trustedPublicKeys.join(' '),
      '--option', 'require-sigs', 'true',
      '--option', 'narinfo-cache-negative-ttl', '0',
      '--option', 'connect-timeout', '10',
      '--option', 'download-attempts', '3',
      ...args,
    ];
    const log = this.log.child({ stage: 'closure', command: 'nix' });
    log.info({ event: 'step.start', args: full }, `nix ${args[0]}`);
    const result = await this.runner.run({
      command: this.options.nix,
      args: full,
      timeoutMs: this.options.timeoutMs,
      ...(signal ? { signal } : {}),
      ...(this.options.env ? { env: this.options.env } : {}),
      onLine: (stream, line) => {
        if (stream === 'stderr') log.info({ event: 'step.output', stream }, line);
      },
    });
    log.info({ event: 'step.end', exitCode: result.code, timedOut: result.timedOut, durationMs: result.durationMs }, 'step ended');
    if (result.code === 0 && !result.timedOut && !result.aborted) return result;
    const tail = result.stderr.split('\n').filter(Boolean).slice(-10);
    if (result.aborted && signal?.aborted) throw signal.reason;
    if (result.aborted) {
      throw new ApplyFailedError(`nix ${args[0]} cancelled by a newer desired state`, 'build', { exitCode: result.code, tail, reasons: ['cancelled'] });
    }
    if (result.timedOut) {
      throw new ClosureRefusedError(`nix ${args[0]} of ${closure.storePath} timed out after ${Math.round(this.options.timeoutMs / 1000)} s`, 'timed-out', { timedOut: true, tail });
    }
    const { refusal, why } = classifyNixError(result.stderr, closure);
    throw new ClosureRefusedError(why, refusal, { exitCode: result.code, tail });
  }
}

/** Nix's own words for each way a substitution fails (nix/src/libstore: local-store.cc, filetransfer.cc). */
export function classifyNixError(stderr: string, closure: SystemClosure): { refusal: Refusal; why: string } {
  const last = stderr.split('\n').filter((l) => l.startsWith('error:')).pop()?.replace(/^error:\s*/, '') ?? stderr.trim().split('\n').pop() ?? '';
  if (/lacks a valid signature/.test(stderr)) return { refusal: 'unsigned', why: `not signed by a trusted key (${closure.trustedPublicKeys.map(keyName).join(', ')}): ${last}` };
  if (/hash mismatch|NAR hash|is corrupt/i.test(stderr)) return { refusal: 'tampered', why: `the cache's content does not match its .narinfo: ${last}` };
  if (/does not exist in binary cache|is not valid|don't know how to build|does not have|not found/i.test(last)) {
    return { refusal: 'missing', why: `${closure.substituter} does not have ${closure.storePath}: ${last}` };
  }
  if (/unable to download|Couldn't connect|Could not resolve|Connection refused|Timeout was reached|timed out|Failed to connect|AWS error/i.test(stderr)) {
    return { refusal: 'unreachable', why: `the binary cache ${closure.substituter} is unreachable: ${last}` };
  }
  return { refusal: 'failed', why: `nix failed: ${last}` };
}

/**
 * `nix path-info --json`'s two shapes: Nix before 2.19 prints a list of objects that each carry
 * `path`; 2.19 and later (the Nix of NixOS since 23.11) print an object keyed by store path whose
 * values lack `path`, null for a path the store does not have (nix src/nix/path-info.cc,
 * pathInfoToJSON).
 */
function pathInfos(json: unknown): PathInfo[] {
  if (Array.isArray(json)) return json as PathInfo[];
  if (json === null || typeof json !== 'object') throw new TypeError('not a list or an object');
  return Object.entries(json as Record<string, Omit<PathInfo, 'path'> | null>).flatMap(([p, info]) => (info && typeof info === 'object' ? [{ ...info, path: p }] : []));
}

function keyName(key: string): string {
  return key.slice(0, key.indexOf(':'));
}

/**
 * Nix's rule (nix/src/libstore/path-info.cc, ValidPathInfo::fingerprint and checkSignatures): each
 * input-addressed path needs a signature, by a trusted key, over
 * `1;<path>;<narHash as sha256:nix-base32>;<narSize>;<references, comma-separated>`. A
 * content-addressed path proves itself by its name and needs none. No signature under a trusted
 * key's name: not signed by the key; one that does not verify: the .narinfo was altered.
 */
export function checkSignatures(infos: readonly PathInfo[], trustedPublicKeys: readonly string[]): void {
  // node:crypto only when a closure is checked, off the boot path of an instance that builds (sha256.ts).
  const { createPublicKey, verify } = process.getBuiltinModule('node:crypto');
  const keys = new Map<string, KeyObject>();
  for (const k of trustedPublicKeys) {
    const raw = Buffer.from(k.slice(k.indexOf(':') + 1), 'base64');
    keys.set(keyName(k), createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' }));
  }
  for (const info of infos) {
    if (info.ca) continue;
    const fingerprint = `1;${info.path};${narHashBase32(info.narHash)};${info.narSize};${[...info.references].sort().join(',')}`;
    const byTrusted = (info.signatures ?? []).filter((s) => keys.has(keyName(s)));
    if (byTrusted.length === 0) {
      const signers = (info.signatures ?? []).map(keyName);
      throw new ClosureRefusedError(
        `${info.path} is not signed by a trusted key (${[...keys.keys()].join(', ')}); ${signers.length ? `it is signed by ${signers.join(', ')}` : 'it carries no signature'}`,
        'unsigned',
      );
    }
    const valid = byTrusted.some((s) => {
      const sig = Buffer.from(s.slice(s.indexOf(':') + 1), 'base64');
      return sig.length === 64 && verify(null, Buffer.from(fingerprint), keys.get(keyName(s))!, sig);
    });
    if (!valid) {
      throw new ClosureRefusedError(`the .narinfo of ${info.path} does not match its signature by ${byTrusted.map(keyName).join(', ')} (altered after signing)`, 'tampered');
    }
  }
}

/** `sha256-<base64>` (SRI, newer Nix) or `sha256:<nix-base32>` → the `sha256:<nix-base32>` signed over. */
export function narHashBase32(hash: string): string {
  if (hash.startsWith('sha256:')) return hash;
  if (!hash.startsWith('sha256-')) throw new ClosureRefusedError(`unsupported NarHash ${hash}`, 'tampered');
  return `sha256:${nixBase32(Buffer.from(hash.slice('sha256-'.length), 'base64'))}`;
}

/** A NixOS system has its own switch-to-configuration and a nixos-version (nixos/modules/system/activation/top-level.nix). */
async function checkNixos(storePath: string): Promise<void> {
  const missing: string[] = [];
  try {
    await access(path.join(storePath, 'bin/switch-to-configuration'), constants.X_OK);
  } catch {
    missing.push('no executable bin/switch-to-configuration');
  }
  if (!(await exists(path.join(storePath, 'nixos-version')))) missing.push('no nixos-version');
  if (missing.length) throw new ClosureRefusedError(`${storePath} is not a NixOS system (${missing.join(', ')})`, 'not-nixos');
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
