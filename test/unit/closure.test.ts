// The closure path's pure parts: the `system` source parsed at the edge, its precedence, Nix's
// signature rule and hash encoding, the reading of Nix's failures, the space arithmetic, and
// switch-to-configuration's exit codes.
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { describe, test } from 'node:test';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { checkSignatures, classifyNixError, ClosureRealiser, ClosureRefusedError, narHashBase32 } from '../../agent/apply/closure.js';
import { Rebuilder, switchExit } from '../../agent/apply/rebuild.js';
import { checkSpace, spaceNeeded, type FsProbe } from '../../agent/apply/space.js';
import { ApplyFailedError, InvalidInputError } from '../../agent/errors.js';
import { RootFs } from '../../agent/fs.js';
import { silentLogger } from '../../agent/log.js';
import type { RunRequest, RunResult, Runner } from '../../agent/ports.js';
import { parseSystemClosure, systemFromUserData } from '../../agent/sources/system.js';
import { desired, param, ssm } from '../support/desired.js';

const PATH = '/nix/store/bkgy8w862c7biafa6hv6ikiz1qqp1rba-nixos-system-test';
const KERNEL = '/nix/store/fixcmw6x3fn5vij049k8mwdk9x0s65hi-linux-6.6.0';
const KEY = 'ci-1:FPxFZ1JZyohdbqGffdLqJQSjrRgXHYEP4jLDDMfAXvg=';
const value = (over: Record<string, unknown> = {}) => JSON.stringify({ storePath: PATH, substituter: 's3://fleet-cache?region=eu-west-1', trustedPublicKeys: [KEY], ...over });

describe('the system source', () => {
  test('a valid value parses into the closure', () => {
    const c = parseSystemClosure(value(), 'SSM parameter /nixos/fleet/system (version 3)', { name: '/nixos/fleet/system', version: 3 });
    assert.deepEqual(c, { storePath: PATH, substituter: 's3://fleet-cache?region=eu-west-1', trustedPublicKeys: [KEY], from: { name: '/nixos/fleet/system', version: 3 } });
    for (const substituter of ['https://cache.example.com', 'http://127.0.0.1:8080', 'file:///var/cache/nix']) {
      assert.equal(parseSystemClosure(value({ substituter }), 'p', 'user-data').substituter, substituter);
    }
  });

  const rejections: [string, Record<string, unknown> | string, RegExp][] = [
    ['not JSON', '{storePath', /^P: not JSON/],
    ['a bad store path', { storePath: '/nix/store/short-name' }, /^P: storePath is not a Nix store path/],
    ['a path outside the store', { storePath: '/usr/bin/x' }, /storePath is not a Nix store path/],
    ['an unknown scheme', { substituter: 'ftp://cache' }, /^P: substituter has scheme ftp:/],
    ['plain http to another host', { substituter: 'http://cache.example.com' }, /http:\/\/ is accepted only for a loopback address/],
    ['a trusted store', { substituter: 'https://cache.example.com?trusted=1' }, /must not carry trusted=/],
    ['no keys', { trustedPublicKeys: [] }, /trustedPublicKeys names no key/],
    ['a malformed key', { trustedPublicKeys: ['ci-1:abc'] }, /trustedPublicKeys\.0 is not a Nix public key/],
    ['an unknown field', { extra: 1 }, /Unrecognized key/],
  ];
  for (const [what, input, message] of rejections) {
    test(`rejects ${what}, naming the parameter`, () => {
      const text = typeof input === 'string' ? input : value(input);
      assert.throws(() => parseSystemClosure(text, 'P', 'user-data'), (err: unknown) => err instanceof InvalidInputError && message.test(err.message));
    });
  }

  test('user data as a JSON object with "system" names a closure; Nix user data does not', () => {
    const c = systemFromUserData(`{"system": ${value()}}`);
    assert.equal(c?.storePath, PATH);
    assert.equal(c?.from, 'user-data');
    assert.equal(systemFromUserData('{ services.nginx.enable = true; }'), undefined);
    assert.throws(() => systemFromUserData(`{"system": ${value()}, "other": 1}`), /user data: unknown member "other"/);
    assert.throws(() => systemFromUserData(`{"system": ${value({ storePath: 'x' })}}`), /user data "system": storePath/);
  });

  test('precedence: the last prefix\'s system wins over earlier ones and over user data, and is not rendered as a module', () => {
    const other = '/nix/store/00000000000000000000000000000000-nixos-system-other';
    const fromUserData = desired({ userData: `{"system": ${value({ storePath: other })}}` });
    assert.equal(fromUserData.system?.storePath, other);
    assert.equal(fromUserData.userData.text, undefined, 'JSON user data is not a Nix module');
    const both = desired({
      userData: `{"system": ${value({ storePath: other })}}`,
      ssm: ssm(['/nixos/fleet', [param('/nixos/fleet/system', value({ storePath: other }))]], ['/nixos/instance/i-1', [param('/nixos/instance/i-1/system', value())]]),
    });
    assert.equal(both.system?.storePath, PATH);
    assert.equal(desired({ ssm: ssm(['/nixos/fleet', [param('/nixos/fleet/options/a', '1')]]) }).system, undefined);
    assert.throws(() => desired({ ssm: ssm(['/nixos/fleet', [param('/nixos/fleet/system', '{}')]]) }), /SSM parameter \/nixos\/fleet\/system \(version 1\): storePath/);
  });
});

describe('Nix signatures', () => {
  test('narHashBase32 turns an SRI hash into the nix-base32 form Nix signs over', () => {
    // Both forms of the same NarHash, as `nix path-info --json` and the .narinfo print them.
    assert.equal(narHashBase32('sha256-F6OcXbG3VG0JuUXmg2LqJLt6B6Q1ZOXoWGrg21Yzp9k='), 'sha256:1nd76dbdpq3ab3lfar1mlh3pmfr4x9i87rj5p44nsm5pn5frr8qp');
    assert.equal(narHashBase32('sha256:1nd76dbdpq3ab3lfar1mlh3pmfr4x9i87rj5p44nsm5pn5frr8qp'), 'sha256:1nd76dbdpq3ab3lfar1mlh3pmfr4x9i87rj5p44nsm5pn5frr8qp');
  });

  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url');
  const trusted = `ci-1:${raw.toString('base64')}`;
  const info = { path: PATH, narHash: 'sha256-F6OcXbG3VG0JuUXmg2LqJLt6B6Q1ZOXoWGrg21Yzp9k=', narSize: 960, references: [KERNEL] };
  const fingerprint = `1;${PATH};sha256:1nd76dbdpq3ab3lfar1mlh3pmfr4x9i87rj5p44nsm5pn5frr8qp;960;${KERNEL}`;
  const sig = `ci-1:${sign(null, Buffer.from(fingerprint), privateKey).toString('base64')}`;

  test('a signature by the trusted key over the fingerprint passes', () => {
    checkSignatures([{ ...info, signatures: [sig] }], [trusted]);
  });

  test('a signature under another name only is "unsigned"; a bad one under the name is "tampered"', () => {
    assert.throws(() => checkSignatures([{ ...info, signatures: [sig.replace('ci-1', 'ci-2')] }], [trusted]), (e: unknown) => e instanceof ClosureRefusedError && e.refusal === 'unsigned' && /signed by ci-2/.test(e.message));
    assert.throws(() => checkSignatures([{ ...info }], [trusted]), (e: unknown) => e instanceof ClosureRefusedError && /carries no signature/.test(e.message));
    assert.throws(() => checkSignatures([{ ...info, narSize: 961, signatures: [sig] }], [trusted]), (e: unknown) => e instanceof ClosureRefusedError && e.refusal === 'tampered');
    assert.throws(() => checkSignatures([{ ...info, references: [], signatures: [sig] }], [trusted]), (e: unknown) => e instanceof ClosureRefusedError && e.refusal === 'tampered');
  });

  test('a content-addressed path proves itself and needs no signature', () => {
    checkSignatures([{ ...info, ca: 'fixed:r:sha256:1nd76dbdpq3ab3lfar1mlh3pmfr4x9i87rj5p44nsm5pn5frr8qp' }], [trusted]);
  });

  test("Nix's failures are read into reasons", () => {
    const c = parseSystemClosure(value(), 'p', 'user-data');
    assert.equal(classifyNixError(`error: cannot add path '${PATH}' because it lacks a valid signature`, c).refusal, 'unsigned');
    assert.equal(classifyNixError(`error: path '${PATH}' is not valid`, c).refusal, 'missing');
    assert.equal(classifyNixError("warning: error: unable to download 'http://127.0.0.1:1/nix-cache-info': Couldn't connect to server (7); retrying\nerror: unable to download 'http://127.0.0.1:1/nix-cache-info': Couldn't connect to server (7)", c).refusal, 'unreachable');
    assert.equal(classifyNixError('error: hash mismatch importing path', c).refusal, 'tampered');
    assert.equal(classifyNixError('error: something else', c).refusal, 'failed');
  });
});

describe('space before download', () => {
  const missing = [
    { path: PATH, narSize: 1_000 },
    { path: KERNEL, narSize: 50_000_000 },
    { path: '/nix/store/fixcmw6x3fn5vij049k8mwdk9x0s65hi-linux-6.6.0-modules', narSize: 200_000_000 },
    { path: '/nix/store/fixcmw6x3fn5vij049k8mwdk9x0s65hi-initrd-linux-6.6.0', narSize: 20_000_000 },
  ];
  const probe = (store: number, boot: number, shared: boolean): FsProbe => ({
    free: async (dir) => (dir.endsWith('/boot') ? { bytes: boot, device: shared ? 1 : 2 } : { bytes: store, device: 1 }),
  });

  test('the store needs every missing path; /boot the kernel and the initrd', () => {
    assert.deepEqual(spaceNeeded(missing), { storeBytes: 270_001_000, bootBytes: 70_000_000 });
  });

  test('enough room passes; short of it the figures are given', async () => {
    const dirs = { store: '/r/nix/store', boot: '/r/boot' };
    const need = spaceNeeded(missing);
    assert.equal((await checkSpace(probe(1e10, 1e9, false), dirs, need, 0)).ok, true);
    const store = await checkSpace(probe(100_000_000, 1e9, false), dirs, need, 0);
    assert.equal(store.ok, false);
    assert.match(store.summary, /the store needs 257\.5 MiB \(257\.5 MiB to download, 0 bytes kept free\) and has 95\.4 MiB free/);
    const boot = await checkSpace(probe(1e10, 10_000_000, false), dirs, need, 0);
    assert.match(boot.summary, /\/boot needs 66\.8 MiB for the new kernel and initrd and has 9\.5 MiB free/);
    // /boot on the store's file system: both come out of the same free space.
    const shared = await checkSpace(probe(300_000_000, 300_000_000, true), dirs, need, 0);
    assert.equal(shared.ok, false, '257.5 + 66.8 MiB do not fit in 286 MiB');
    assert.equal((await checkSpace(probe(1e10, 1e10, false), dirs, need, 2e10)).ok, false, 'the reserve counts');
  });
});

describe("switch-to-configuration's exit codes", () => {
  test('read as nixpkgs documents them', () => {
    assert.equal(switchExit(0), undefined);
    assert.equal(switchExit(100), undefined, 'a reboot is required: not a failure');
    assert.match(switchExit(4) ?? '', /some units failed/);
    assert.match(switchExit(2) ?? '', /activation script failed/);
    assert.match(switchExit(1) ?? '', /usage, lock held/);
    assert.equal(switchExit(3), 'exited with 3');
  });

  class ExitRunner implements Runner {
    constructor(
      private readonly code: number,
      private readonly stderr: readonly string[] = [],
    ) {}
    async run(request: RunRequest): Promise<RunResult> {
      // Only switch-to-configuration answers with the code under test; the lock wait before it is free.
      const code = request.command === 'flock' ? 0 : this.code;
      if (request.command !== 'flock') for (const line of this.stderr) request.onLine?.('stderr', line);
      return { code, signal: null, timedOut: false, aborted: false, stdout: '', stderr: '', tail: [request.command], durationMs: 1 };
    }
  }
  const rebuilder = (code: number, stderr: readonly string[] = []) =>
    new Rebuilder(new ExitRunner(code, stderr), new RootFs('/tmp'), { nixosRebuild: 'x', nixEnv: 'x', nixChannel: 'x', extraArgs: [], buildTimeoutMs: 1000, activateTimeoutMs: 1000 }, silentLogger());

  test('4 is a failure of the activation (the caller rolls back); 100 activates and asks for a reboot', async () => {
    await assert.rejects(rebuilder(4).activate(PATH, 'test'), (e: unknown) => e instanceof ApplyFailedError && e.stage === 'activate' && /exited with 4 \(some units failed\)/.test(e.message));
    await assert.rejects(rebuilder(2).activate(PATH, 'test'), /activation script failed/);
    assert.deepEqual(await rebuilder(100).activate(PATH, 'test'), { rebootRequired: true });
    assert.deepEqual(await rebuilder(0).activate(PATH, 'boot'), { rebootRequired: false });
  });

  test('4 names the units its warning line listed', async () => {
    const stderr = ['activating the configuration...', 'warning: the following units failed: nginx.service, acme-web.service', '× nginx.service - Nginx'];
    await assert.rejects(rebuilder(4, stderr).activate(PATH, 'switch'), (e: unknown) => {
      assert.ok(e instanceof ApplyFailedError);
      assert.equal(e.stage, 'activate');
      assert.match(e.message, /exited with 4 \(units failed: nginx\.service, acme-web\.service\)$/);
      return true;
    });
    assert.match(switchExit(4, ['a.service']) ?? '', /units failed: a\.service/);
  });
});

describe('reading the closure from nix path-info --json', () => {
  // Nix 2.8 prints a list of objects that each carry `path`; Nix 2.19 and later (the Nix of every
  // NixOS release since 23.11) print one object keyed by store path, each value without `path`
  // (nix src/nix/path-info.cc, pathInfoToJSON; UnkeyedValidPathInfo::toJSON).
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const trusted = `ci-1:${Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url').toString('base64')}`;
  const narHash = 'sha256-F6OcXbG3VG0JuUXmg2LqJLt6B6Q1ZOXoWGrg21Yzp9k=';
  const signed = (p: string, refs: readonly string[]) =>
    `ci-1:${sign(null, Buffer.from(`1;${p};${narHashBase32(narHash)};960;${[...refs].sort().join(',')}`), privateKey).toString('base64')}`;
  const infos = [
    { path: PATH, references: [KERNEL, PATH] },
    { path: KERNEL, references: [] as string[] },
  ].map((i) => ({ ...i, narHash, narSize: 960, signatures: [signed(i.path, i.references)] }));
  const keyed = JSON.stringify(
    Object.fromEntries(infos.map(({ path: p, ...rest }) => [p, { ...rest, ca: null, deriver: null, registrationTime: null, ultimate: false, url: 'nar/x.nar.xz', downloadSize: 480 }])),
  );
  const listed = JSON.stringify(infos);

  async function realise(pathInfoJson: string): Promise<{ copied: boolean; substituted: number }> {
    const root = await mkdtemp(path.join(tmpdir(), 'nea-path-info-'));
    try {
      const system = path.join(root, PATH);
      await mkdir(path.join(system, 'bin'), { recursive: true });
      await writeFile(path.join(system, 'bin/switch-to-configuration'), '#!/bin/sh\n', { mode: 0o755 });
      await writeFile(path.join(system, 'nixos-version'), '24.11');
      let copied = false;
      const runner: Runner = {
        run: async (request: RunRequest): Promise<RunResult> => {
          const args = request.args;
          let stdout = '';
          if (request.command === 'nix-store') stdout = args.filter((a) => a.startsWith('/nix/store/')).join('\n');
          else if (args.includes('path-info')) stdout = pathInfoJson;
          else if (args.includes('copy')) copied = true;
          return { code: 0, signal: null, timedOut: false, aborted: false, stdout, stderr: '', tail: [], durationMs: 1 };
        },
      };
      const probe: FsProbe = { free: async () => ({ bytes: 1e12, device: 1 }) };
      const realiser = new ClosureRealiser(runner, new RootFs(root), { nix: 'nix', nixStore: 'nix-store', timeoutMs: 1000, reserveBytes: 0, gcWhenShort: false }, silentLogger(), probe);
      const realised = await realiser.realise(parseSystemClosure(value({ trustedPublicKeys: [trusted] }), 'p', 'user-data'));
      return { copied, substituted: realised.substituted };
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }

  test("Nix 2.8's list and the newer object keyed by path read the same closure", async () => {
    assert.deepEqual(await realise(listed), { copied: true, substituted: 2 });
    assert.deepEqual(await realise(keyed), { copied: true, substituted: 2 });
  });

  test('an object keyed by path is still checked against the trusted key', async () => {
    const forged = JSON.parse(keyed) as Record<string, { signatures: string[] }>;
    forged[KERNEL]!.signatures = [];
    await assert.rejects(realise(JSON.stringify(forged)), (e: unknown) => e instanceof ClosureRefusedError && e.refusal === 'unsigned' && e.message.includes(KERNEL));
  });
});
