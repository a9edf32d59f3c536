// Fills the `resolved` URL of every registry package in an npm lockfile (v2/v3) that lacks one, the
// way npm itself writes it against its built-in default registry: `resolved` right after `version`,
// the rest of the file byte for byte as it was.
//
// Why: nixpkgs' fetcher keeps only lockfile entries whose `resolved` parses as a URL
// (pkgs/build-support/node/prefetch-npm-deps/src/parse/lock.rs, the `2 | 3` arm) and caches each
// under that URL (src/main.rs: `make-fetch-happen:request-cache:<url>`), which is also what
// `npm ci --offline` looks up. This repository's lockfile carries no `resolved` (the registry's host
// is not written into it), so nix/package.nix runs this script in postPatch; fetchNpmDeps inherits
// postPatch, so the fetcher and the build read the same bytes, and the bytes are part of
// npmDepsHash (main.rs writes the lockfile it read into its output).
//
// Plain JavaScript with no dependency: it runs as `${nodejs}/bin/node fill-lockfile.mjs FILE` in the
// Nix build before any npm install, and `tools/nix-deps-hash` imports it to compute the same bytes.
//
// Usage: node fill-lockfile.mjs [LOCKFILE]   (default ./package-lock.json, rewritten in place)
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

/** Bad input, reported as one line and exit 2 by the command line. */
export class LockfileError extends Error {
  constructor(message) {
    super(message);
    this.kind = 'lockfile';
  }
}

/**
 * npm's built-in default registry, read from the npm that ships with this node
 * (`<prefix>/bin/node` beside `<prefix>/lib/node_modules/npm`): the value npm writes into
 * `resolved` when no configuration overrides it. Deliberately not the user's configured registry:
 * the filled file must be the same on every machine.
 */
export function npmDefaultRegistry(nodeExecPath = process.execPath) {
  const definitions = join(dirname(nodeExecPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', '@npmcli', 'config', 'lib', 'definitions', 'index.js');
  let registry;
  try {
    registry = createRequire(import.meta.url)(definitions).definitions.registry.default;
  } catch (err) {
    throw new LockfileError(`cannot read npm's default registry from ${definitions}: ${err.message}`);
  }
  if (typeof registry !== 'string' || !/^https?:\/\//.test(registry)) {
    throw new LockfileError(`npm's default registry in ${definitions} is not a URL: ${String(registry)}`);
  }
  return registry.endsWith('/') ? registry : `${registry}/`;
}

// npm writes the JSON with the indent and line ending it found (npm's read-package-json-fast /
// json-parse-even-better-errors keep them); two spaces and \n for a new file.
function layoutOf(text) {
  const indent = /^\{\r?\n([ \t]+)"/.exec(text)?.[1] ?? '  ';
  const newline = /\r\n/.test(text) ? '\r\n' : '\n';
  return { indent, newline };
}

function serialize(value, { indent, newline }) {
  const json = JSON.stringify(value, null, indent);
  return (newline === '\n' ? json : json.replace(/\n/g, newline)) + newline;
}

/** The package name an entry installs: its own `name` (aliases), else the path after the last node_modules/. */
function packageName(key, entry) {
  if (typeof entry.name === 'string') return entry.name;
  const at = key.lastIndexOf('node_modules/');
  return at < 0 ? null : key.slice(at + 'node_modules/'.length);
}

/** The tarball URL npm resolves `name@version` to on `registry` (npm-registry-fetch's layout). */
export function tarballUrl(registry, name, version) {
  const base = name.startsWith('@') ? name.slice(name.indexOf('/') + 1) : name;
  return `${registry}${name}/-/${base}-${version}.tgz`;
}

// A registry package: npm records `resolved` for exactly these. Links, the root, bundled packages
// (they come inside their parent's tarball) and non-registry specs (a URL or path as version) have
// no tarball of their own on the registry.
function needsResolved(key, entry) {
  return (
    key !== '' &&
    entry !== null &&
    typeof entry === 'object' &&
    entry.resolved === undefined &&
    entry.link !== true &&
    entry.inBundle !== true &&
    typeof entry.version === 'string' &&
    /^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?$/.test(entry.version) &&
    typeof entry.integrity === 'string'
  );
}

/**
 * The lockfile text with `resolved` filled in; the same text when nothing was missing.
 * Throws LockfileError for a file it cannot rewrite faithfully.
 */
export function fillLockfile(text, registry, where = 'package-lock.json') {
  let lock;
  try {
    lock = JSON.parse(text);
  } catch (err) {
    throw new LockfileError(`${where}: not JSON: ${err.message}`);
  }
  if (lock === null || typeof lock !== 'object' || Array.isArray(lock)) throw new LockfileError(`${where}: not a JSON object`);
  if (lock.lockfileVersion !== 2 && lock.lockfileVersion !== 3) {
    throw new LockfileError(`${where}: lockfileVersion ${JSON.stringify(lock.lockfileVersion)} is not supported (2 or 3)`);
  }
  if (lock.packages === null || typeof lock.packages !== 'object') throw new LockfileError(`${where}: has no "packages" object`);

  const layout = layoutOf(text);
  const missing = Object.entries(lock.packages).filter(([key, entry]) => needsResolved(key, entry));
  if (missing.length === 0) return text;
  // Rewriting through JSON.stringify keeps every other byte only if the file is in npm's own layout.
  if (serialize(lock, layout) !== text) {
    throw new LockfileError(`${where}: not in the layout npm writes (JSON.stringify with its indent); rewrite it with npm first`);
  }

  for (const [key, entry] of missing) {
    const name = packageName(key, entry);
    if (!name) throw new LockfileError(`${where}: cannot tell the package name of "${key}"`);
    const filled = {};
    for (const [field, value] of Object.entries(entry)) {
      filled[field] = value;
      if (field === 'version') filled.resolved = tarballUrl(registry, name, entry.version);
    }
    lock.packages[key] = filled;
  }
  return serialize(lock, layout);
}

function main(argv) {
  const file = argv[0] ?? 'package-lock.json';
  if (argv.length > 1) throw new LockfileError('usage: fill-lockfile.mjs [LOCKFILE]');
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new LockfileError(`${file}: cannot read: ${err.code ?? err.message}`);
  }
  const filled = fillLockfile(text, npmDefaultRegistry(), file);
  if (filled === text) return;
  // Written beside and renamed: an interrupted run leaves the original, never half a file.
  const tmp = `${file}.fill-${process.pid}`;
  writeFileSync(tmp, filled);
  renameSync(tmp, file);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    main(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`fill-lockfile: ${err.message}\n`);
    process.exitCode = err instanceof LockfileError ? 2 : 1;
  }
}
