// Real binary caches for tests, made with the real Nix: a small NixOS-shaped system (a real store
// path, built by nix-build, with the stand-in's switch-to-configuration and a nixos-version, and a
// "kernel" it references), signed with a key made by nix-store --generate-binary-cache-key, copied
// into a file:// cache with nix copy, and served over HTTP on 127.0.0.1 by a tiny static server
// that can pretend a .narinfo is not there yet.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { nixString } from '../../agent/render/nix.js';
import { CLI_PATH } from '../../sandbox/standin/system.js';

const NIX_FLAGS = ['--extra-experimental-features', 'nix-command'];

/** Why the real-Nix tests cannot run here, or undefined when they can. */
export function nixStoreMissing(): string | undefined {
  for (const tool of ['nix', 'nix-build', 'nix-store']) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0) return `${tool} is not installed (apt-get install nix-bin)`;
  }
  // Building and signing write the host's store: only root can, without a daemon.
  if (process.getuid?.() !== 0) return 'the real-Nix tests build into /nix/store and need root (or a Nix daemon)';
  return undefined;
}

export async function nixRun(command: string, args: readonly string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${command} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

/**
 * The switch-to-configuration of a substituted system: it finds its own system (and from it the
 * sandbox root) from where it is run, so one closure serves any sandbox root, and hands over to
 * the stand-in, which activates it as it activates the systems it builds.
 */
function switchScript(): string {
  return [
    '#!/bin/sh',
    'sys=$(cd "$(dirname "$0")/.." && pwd)',
    'root=${sys%/nix/store/*}',
    `exec ${JSON.stringify(process.execPath)} ${JSON.stringify(CLI_PATH)} --root "$root" switch-to-configuration --system "$sys" "$@"`,
    '',
  ].join('\n');
}

export interface SystemOptions {
  /** Makes the paths unique to one test (the host's store is shared). */
  readonly nonce?: string;
  /** Leave out nixos-version: a store path that is not a NixOS system. */
  readonly notNixos?: boolean;
  /** A unit that fails once the system is activated (the stand-in reads `failed-units`). */
  readonly failedUnit?: string;
  /** Bytes of random filler in the kernel (incompressible, as a kernel nearly is), to give the closure a size. */
  readonly kernelBytes?: number;
}

/** nix-build of a small system that references a kernel: a real, input-addressed closure of two paths. */
export async function buildSystem(dir: string, options: SystemOptions = {}): Promise<string> {
  const nonce = options.nonce ?? randomBytes(8).toString('hex');
  const file = path.join(dir, `system-${nonce}.nix`);
  const kernelBytes = options.kernelBytes ?? 4096;
  await writeFile(
    file,
    `
let
  sh = "/bin/sh";
  kernel = derivation {
    name = "linux-6.6.0";
    system = builtins.currentSystem;
    builder = sh;
    args = [ "-c" "/bin/mkdir -p $out && /usr/bin/head -c ${kernelBytes} /dev/urandom > $out/bzImage && echo ${nonce} >> $out/bzImage" ];
  };
in derivation {
  name = "nixos-system-closure-24.11.test";
  system = builtins.currentSystem;
  builder = sh;
  inherit kernel;
  switchScript = ${nixString(switchScript())};
  args = [ "-c" ''
    /bin/mkdir -p $out/bin
    printf '%s' "$switchScript" > $out/bin/switch-to-configuration
    /bin/chmod +x $out/bin/switch-to-configuration
    ${options.notNixos ? '' : 'echo 24.11.test > $out/nixos-version'}
    /bin/ln -s $kernel/bzImage $out/kernel
    echo ${nonce} > $out/initrd
    : > $out/kernel-modules
    ${options.failedUnit ? `echo ${options.failedUnit} > $out/failed-units` : ''}
  '' ];
}
`,
  );
  const out = await nixRun('nix-build', [file, '--no-out-link', '--option', 'sandbox', 'false', '--option', 'build-users-group', '']);
  return out.trim();
}

export interface Key {
  readonly name: string;
  readonly secretFile: string;
  /** `name:base64`, as trusted-public-keys takes it. */
  readonly publicKey: string;
}

export async function generateKey(dir: string, name: string): Promise<Key> {
  const secretFile = path.join(dir, `${name}.sk`);
  const publicFile = path.join(dir, `${name}.pk`);
  await nixRun('nix-store', ['--generate-binary-cache-key', name, secretFile, publicFile]);
  return { name, secretFile, publicKey: (await readFile(publicFile, 'utf8')).trim() };
}

/**
 * Signs the closure of `storePath` with `key` and writes it into a file:// binary cache at
 * `cacheDir`. `compression: 'none'` keeps the NARs as they are (`nar/<hash>.nar`), so a test can
 * change a byte of a file inside one and leave a well-formed NAR.
 */
export async function publish(storePath: string, key: Key, cacheDir: string, options: { compression?: 'xz' | 'none' } = {}): Promise<void> {
  await nixRun('nix', [...NIX_FLAGS, 'store', 'sign', '--recursive', '--key-file', key.secretFile, storePath]);
  const query = options.compression ? `?compression=${options.compression}` : '';
  await nixRun('nix', [...NIX_FLAGS, 'copy', '--to', `file://${cacheDir}${query}`, storePath]);
}

/** The NAR file a cache's .narinfo points at (its `URL:` field), for `storePath`. */
export async function narFile(cacheDir: string, storePath: string): Promise<string> {
  const narinfo = await readFile(path.join(cacheDir, `${hashPart(storePath)}.narinfo`), 'utf8');
  const url = /^URL: (.+)$/m.exec(narinfo)?.[1];
  if (!url) throw new Error(`no URL in the .narinfo of ${storePath}`);
  return path.join(cacheDir, url);
}

export function hashPart(storePath: string): string {
  return path.basename(storePath).slice(0, 32);
}

export interface CacheServer {
  readonly url: string;
  /** Answer 404 for this store path's .narinfo until `reveal`. */
  hide(storePath: string): void;
  reveal(storePath: string): void;
  /** Bytes of NAR files served so far. */
  readonly narBytesServed: number;
  readonly requests: readonly string[];
  close(): Promise<void>;
}

/** A static HTTP server over a file:// binary cache, on 127.0.0.1. */
export async function serveCache(dir: string): Promise<CacheServer> {
  const hidden = new Set<string>();
  const requests: string[] = [];
  let narBytes = 0;
  const server: Server = createServer((req, res) => {
    const url = decodeURIComponent((req.url ?? '/').split('?')[0] ?? '/');
    requests.push(`${req.method} ${url}`);
    const rel = path.normalize(url).replace(/^(\.\.[/\\])+/, '');
    const file = path.join(dir, rel);
    if (!file.startsWith(dir + path.sep) || hidden.has(path.basename(url, '.narinfo'))) {
      res.writeHead(404).end();
      return;
    }
    stat(file).then(
      (st) => {
        if (!st.isFile()) {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { 'content-length': st.size, 'content-type': url.endsWith('.narinfo') ? 'text/x-nix-narinfo' : 'application/octet-stream' });
        if (req.method === 'HEAD') {
          res.end();
          return;
        }
        if (url.startsWith('/nar/')) narBytes += st.size;
        createReadStream(file).pipe(res);
      },
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hide: (p) => hidden.add(hashPart(p)),
    reveal: (p) => hidden.delete(hashPart(p)),
    get narBytesServed() {
      return narBytes;
    },
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A loopback port with nothing listening: an unreachable cache. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The `system` parameter's value for a closure. */
export function systemValue(storePath: string, substituter: string, keys: readonly Key[] | readonly string[]): string {
  return JSON.stringify({ storePath, substituter, trustedPublicKeys: keys.map((k) => (typeof k === 'string' ? k : k.publicKey)) });
}
