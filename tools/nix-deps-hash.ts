// npm run nix-deps-hash -- [LOCKFILE] [--fetcher-version N] [--update]
//
// Prints the npmDepsHash nixpkgs' fetchNpmDeps computes for LOCKFILE (default: this repository's
// package-lock.json), after the same filling of `resolved` that nix/package.nix does in postPatch
// (nix/fill-lockfile.mjs; entries that already have `resolved` keep it). Tarballs come from npm's
// configured registry and are checked against their `integrity`. `--update` also writes the hash to
// nix/npm-deps-hash.txt and the lockfile's sha256 to nix/npm-deps-hash.lockfile-sha256 (so that a
// test can tell, without the network, that the two belong together).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { cachedPackages, checkIntegrity, narHashSri, npmDepsTree, NpmDepsError, type CachedPackage } from './npm-deps.js';

// Compiled to dist/tools/; the script stays in nix/, where the Nix build runs it.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
type FillModule = typeof import('../nix/fill-lockfile.mjs');
const loadFill = (): Promise<FillModule> => import(new URL('../../nix/fill-lockfile.mjs', import.meta.url).href) as Promise<FillModule>;

export const HASH_FILE = resolve(ROOT, 'nix/npm-deps-hash.txt');
export const LOCK_DIGEST_FILE = resolve(ROOT, 'nix/npm-deps-hash.lockfile-sha256');

/** What the fetcher reads: the lockfile with `resolved` filled from npm's built-in default registry. */
export async function fetcherLockfile(text: string, where: string): Promise<string> {
  const fill = await loadFill();
  try {
    return fill.fillLockfile(text, fill.npmDefaultRegistry(), where);
  } catch (err) {
    if (err instanceof fill.LockfileError) throw new NpmDepsError('lockfile', err.message);
    throw err;
  }
}

export interface Download {
  (url: string): Promise<Uint8Array>;
}

/** Fetches a URL's body, retrying network failures a few times (as util.rs does with backoff). */
export function httpDownload(timeoutMs = 60_000): Download {
  return async (url) => {
    let last: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
        if (!res.ok) throw new NpmDepsError('fetch', `${url}: HTTP ${res.status}`);
        return new Uint8Array(await res.arrayBuffer());
      } catch (err) {
        if (err instanceof NpmDepsError) throw err;
        last = err;
        await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
      }
    }
    const cause = (last as { cause?: { code?: string } })?.cause?.code ?? (last as Error)?.message;
    throw new NpmDepsError('fetch', `${url}: ${cause}`);
  };
}

/**
 * Downloads go to npm's configured registry: a lockfile URL on npm's default registry is rewritten
 * to the configured one (a mirror); the cache key keeps the lockfile's URL, as the fetcher's does.
 */
export function viaRegistry(download: Download, defaultRegistry: string, configured: string): Download {
  const to = configured.endsWith('/') ? configured : `${configured}/`;
  return (url) => download(to !== defaultRegistry && url.startsWith(defaultRegistry) ? to + url.slice(defaultRegistry.length) : url);
}

/** The npmDepsHash for the lockfile text the fetcher reads. */
export async function npmDepsHash(fetcherLock: string, download: Download, where = 'package-lock.json', concurrency = 8): Promise<string> {
  const packages = cachedPackages(fetcherLock, where);
  const tarballs = new Map<string, Uint8Array>();
  const queue: CachedPackage[] = [...packages];
  const worker = async (): Promise<void> => {
    for (let p = queue.shift(); p; p = queue.shift()) {
      try {
        const data = await download(p.url);
        checkIntegrity(data, p.integrity, `${p.name} (${p.url})`);
        tarballs.set(p.url, data);
      } catch (err) {
        // The answer is already an error: the other workers stop after their current download.
        queue.length = 0;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, packages.length) }, worker));
  return narHashSri(npmDepsTree(fetcherLock, tarballs, packages));
}

export const sha256Hex = (text: string): string => createHash('sha256').update(text).digest('hex');

/** npm's configured registry (`npm config get registry`), else the fallback. */
export function configuredRegistry(fallback: string): string {
  const run = spawnSync('npm', ['config', 'get', 'registry'], { encoding: 'utf8', timeout: 30_000 });
  const value = run.status === 0 ? run.stdout.trim() : '';
  return /^https?:\/\//.test(value) ? value : fallback;
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

const USAGE = 'usage: nix-deps-hash [LOCKFILE] [--fetcher-version N] [--update]';

async function main(argv: string[]): Promise<void> {
  let file: string | null = null;
  let update = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--fetcher-version') {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v)) throw new NpmDepsError('lockfile', `--fetcher-version needs a number; ${USAGE}`);
      // Version 2 also caches registry metadata (packuments), which the registry serves in a
      // trimmed form to ordinary clients: its output cannot be reproduced or checked here.
      if (v !== '1') throw new NpmDepsError('lockfile', `fetcher version ${v} is not supported: only version 1 (nixpkgs' default) is reproduced`);
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(`${USAGE}\n\nprints the npmDepsHash nixpkgs' fetchNpmDeps computes for LOCKFILE (default: this repository's\npackage-lock.json); --update writes it to nix/npm-deps-hash.txt\n`);
      return;
    } else if (arg === '--update') update = true;
    else if (arg === '--debug') continue;
    else if (arg.startsWith('-') || file !== null) throw new NpmDepsError('lockfile', `unexpected argument ${arg}; ${USAGE}`);
    else file = arg;
  }
  // `npm run` starts scripts in the package root; a relative path means the caller's directory.
  const lockPath = file === null ? resolve(ROOT, 'package-lock.json') : resolve(process.env['INIT_CWD'] ?? process.cwd(), file);
  if (update && lockPath !== resolve(ROOT, 'package-lock.json')) throw new NpmDepsError('lockfile', '--update applies to this repository\'s package-lock.json only');
  let text: string;
  try {
    text = readFileSync(lockPath, 'utf8');
  } catch (err) {
    throw new NpmDepsError('lockfile', `${lockPath}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const fill = await loadFill();
  const defaultRegistry = fill.npmDefaultRegistry();
  const hash = await npmDepsHash(
    await fetcherLockfile(text, lockPath),
    viaRegistry(httpDownload(), defaultRegistry, configuredRegistry(defaultRegistry)),
    lockPath,
  );
  if (update) {
    writeAtomic(HASH_FILE, `${hash}\n`);
    writeAtomic(LOCK_DIGEST_FILE, `${sha256Hex(text)}\n`);
  }
  process.stdout.write(`${hash}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    const debug = process.argv.includes('--debug');
    process.stderr.write(`nix-deps-hash: ${debug && err instanceof Error ? err.stack : (err as Error).message}\n`);
    process.exitCode = err instanceof NpmDepsError && err.kind === 'lockfile' ? 2 : 1;
  });
}
