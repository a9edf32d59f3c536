// What nixpkgs' fetchNpmDeps (fetcher version 1) puts in its output, and the hash of that output,
// computed without Nix. Each step follows nixpkgs' prefetch-npm-deps
// (pkgs/build-support/node/prefetch-npm-deps/src/):
//   - parse/lock.rs `packages`: lockfile v2/v3 entries other than the root whose `resolved` parses
//     as a URL, sorted by URL, the strongest integrity first, one per URL;
//   - parse/mod.rs `Package::from_lock`: `file:` URLs are skipped, git URLs become tarballs of
//     the hosted repository (not supported here: such a lockfile is refused);
//   - cacache.rs `Cache::put`: the tarball at `content-v2/<algo>/<hex digest, split 2/2/rest>`, and
//     an index entry `<sha1 hex of the json>\t<json>` (no newline after the first entry) at
//     `index-v5/<sha256 hex of the key, split 2/2/rest>`, the json's fields in the order of the Key
//     struct: key, integrity, time (0), size, metadata { url, options { compress: true } };
//   - main.rs: the key is `make-fetch-happen:request-cache:<url>`; the lockfile the fetcher read is
//     copied to `package-lock.json`, byte for byte;
//   - util.rs `make_sri_hash`: sha256 of the directory's NAR serialisation, in SRI form (what Nix
//     checks for the fixed-output derivation, `outputHashMode = "recursive"`).
import { createHash } from 'node:crypto';

/** A failure with a kind, as the rest of the code base reports them. */
export class NpmDepsError extends Error {
  constructor(
    readonly kind: 'lockfile' | 'fetch' | 'integrity',
    message: string,
  ) {
    super(message);
  }
}

/** One tarball the fetcher caches. */
export interface CachedPackage {
  readonly name: string;
  readonly url: string;
  /** The strongest hash of the entry's `integrity` (sha512 over sha1), as the lockfile writes it. */
  readonly integrity: string;
}

// parse/lock.rs: "Hash algorithms, in ascending preference."
const ALGOS = ['sha1', 'sha512'] as const;

function bestHash(integrity: string, where: string): string {
  let best: string | null = null;
  for (const hash of integrity.split(/[\t\n\f\r ]+/).filter(Boolean)) {
    const algo = hash.slice(0, hash.indexOf('-'));
    const rank = ALGOS.indexOf(algo as (typeof ALGOS)[number]);
    if (hash.indexOf('-') < 0 || rank < 0) throw new NpmDepsError('lockfile', `${where}: unknown hash ${JSON.stringify(hash)} in integrity`);
    if (best === null || rank > ALGOS.indexOf(best.slice(0, best.indexOf('-')) as (typeof ALGOS)[number])) best = hash;
  }
  if (best === null) throw new NpmDepsError('lockfile', `${where}: empty integrity`);
  return best;
}

// The `url` crate parses what the WHATWG URL parser parses (both implement the URL Standard), and
// `Url`'s Display is the standard serialisation: `href`.
function parseUrl(s: string): URL | null {
  try {
    return new URL(s);
  } catch {
    return null;
  }
}

/** The packages fetchNpmDeps caches for this lockfile text, in its order (by URL). */
export function cachedPackages(lockText: string, where = 'package-lock.json'): CachedPackage[] {
  let lock: { lockfileVersion?: unknown; packages?: Record<string, { name?: unknown; resolved?: unknown; integrity?: unknown }> };
  try {
    lock = JSON.parse(lockText);
  } catch (err) {
    throw new NpmDepsError('lockfile', `${where}: not JSON: ${(err as Error).message}`);
  }
  if (lock.lockfileVersion !== 2 && lock.lockfileVersion !== 3) {
    throw new NpmDepsError('lockfile', `${where}: lockfileVersion ${JSON.stringify(lock.lockfileVersion)} is not supported (2 or 3)`);
  }
  const found: Array<CachedPackage & { rank: number }> = [];
  for (const [key, entry] of Object.entries(lock.packages ?? {})) {
    if (key === '' || typeof entry?.resolved !== 'string') continue;
    const url = parseUrl(entry.resolved);
    if (!url || url.protocol === 'file:') continue;
    if (['git:', 'git+ssh:', 'git+https:', 'ssh:'].includes(url.protocol)) {
      throw new NpmDepsError('lockfile', `${where}: "${key}" is a git dependency (${entry.resolved}); only registry tarballs are supported`);
    }
    if (typeof entry.integrity !== 'string') {
      throw new NpmDepsError('lockfile', `${where}: "${key}" has a resolved URL but no integrity`);
    }
    const integrity = bestHash(entry.integrity, `${where}: "${key}"`);
    found.push({
      name: typeof entry.name === 'string' ? entry.name : key,
      url: url.href,
      integrity,
      rank: ALGOS.indexOf(integrity.slice(0, integrity.indexOf('-')) as (typeof ALGOS)[number]),
    });
  }
  // lock.rs: sort by URL, strongest integrity first, then keep the first of each URL.
  found.sort((a, b) => (a.url < b.url ? -1 : a.url > b.url ? 1 : b.rank - a.rank));
  const out: CachedPackage[] = [];
  for (const p of found) {
    if (out.at(-1)?.url !== p.url) out.push({ name: p.name, url: p.url, integrity: p.integrity });
  }
  if (out.length === 0) {
    // parse/mod.rs refuses the same way (unless forceEmptyCache).
    throw new NpmDepsError('lockfile', `${where}: no cacheable dependencies (no entry has a resolved URL and an integrity)`);
  }
  return out;
}

/** Checks data against an SRI hash (sha1 or sha512). */
export function checkIntegrity(data: Uint8Array, integrity: string, what: string): void {
  const dash = integrity.indexOf('-');
  const actual = createHash(integrity.slice(0, dash)).update(data).digest('base64');
  if (actual !== integrity.slice(dash + 1)) {
    throw new NpmDepsError('integrity', `${what}: the download does not match its integrity ${integrity}`);
  }
}

/** A directory as nested maps; files are their bytes (all non-executable, as fs::write makes them). */
export interface Tree {
  [name: string]: Tree | Uint8Array;
}

function splitHex(hex: string): string[] {
  return [hex.slice(0, 2), hex.slice(2, 4), hex.slice(4)];
}

function put(tree: Tree, path: readonly string[], data: Uint8Array): void {
  let dir = tree;
  for (const part of path.slice(0, -1)) {
    const next = dir[part];
    if (next instanceof Uint8Array) throw new Error(`cache layout: ${part} is a file`);
    dir = next ?? (dir[part] = {});
  }
  dir[path.at(-1)!] = data;
}

/** The fetcher's output for this lockfile text, given each package's tarball. */
export function npmDepsTree(lockText: string, tarballs: ReadonlyMap<string, Uint8Array>, packages: readonly CachedPackage[]): Tree {
  const cacache: Tree = { 'content-v2': {}, 'index-v5': {} };
  for (const p of packages) {
    const data = tarballs.get(p.url);
    if (!data) throw new Error(`no tarball for ${p.url}`);
    const dash = p.integrity.indexOf('-');
    const algo = p.integrity.slice(0, dash);
    const hex = Buffer.from(p.integrity.slice(dash + 1), 'base64').toString('hex');
    put(cacache, ['content-v2', algo, ...splitHex(hex)], data);

    const key = `make-fetch-happen:request-cache:${p.url}`;
    // serde_json escapes as JSON.stringify does for these strings (quotes, backslashes, controls).
    const json = JSON.stringify({
      key,
      integrity: p.integrity,
      time: 0,
      size: data.length,
      metadata: { url: p.url, options: { compress: true } },
    });
    const entry = `${createHash('sha1').update(json).digest('hex')}\t${json}`;
    put(cacache, ['index-v5', ...splitHex(createHash('sha256').update(key).digest('hex'))], Buffer.from(entry));
  }
  return { _cacache: cacache, 'package-lock.json': Buffer.from(lockText) };
}

// --- NAR (Nix ARchive) serialisation, as nix-store --dump writes it ---
function narString(out: (b: Uint8Array) => void, s: string | Uint8Array): void {
  const bytes = typeof s === 'string' ? Buffer.from(s) : s;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(bytes.length));
  out(len);
  out(bytes);
  const pad = (8 - (bytes.length % 8)) % 8;
  if (pad) out(Buffer.alloc(pad));
}

function narNode(out: (b: Uint8Array) => void, node: Tree | Uint8Array): void {
  narString(out, '(');
  narString(out, 'type');
  if (node instanceof Uint8Array) {
    narString(out, 'regular');
    narString(out, 'contents');
    narString(out, node);
  } else {
    narString(out, 'directory');
    // Entries in byte order of their names.
    const names = Object.keys(node).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const name of names) {
      narString(out, 'entry');
      narString(out, '(');
      narString(out, 'name');
      narString(out, name);
      narString(out, 'node');
      narNode(out, node[name]!);
      narString(out, ')');
    }
  }
  narString(out, ')');
}

/** `sha256-<base64>` of the tree's NAR serialisation: the fixed-output hash Nix checks. */
export function narHashSri(tree: Tree): string {
  const hash = createHash('sha256');
  const out = (b: Uint8Array): void => {
    hash.update(b);
  };
  narString(out, 'nix-archive-1');
  narNode(out, tree);
  return `sha256-${hash.digest('base64')}`;
}
