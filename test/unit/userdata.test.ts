// User data classified as nixpkgs' amazon-init does (nixos/modules/virtualisation/amazon-init.nix):
// `#!` runs as a script; otherwise, if anything but spaces is left after dropping lines that start
// with `#` or `SSH_HOST_`, it is a Nix expression and `###` lines name channels; else it is ignored.
// EC2 caps raw user data at 16 KiB, and gzip'd user data is unpacked first (as cloud-init does).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { InvalidInputError } from '../../agent/errors.js';
import { UNPACKED_USER_DATA_LIMIT, USER_DATA_LIMIT, interpretUserData, parseChannels } from '../../agent/sources/userdata.js';

function rejects(fn: () => unknown, pattern: RegExp): InvalidInputError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InvalidInputError, `expected InvalidInputError, got ${String(err)}`);
    assert.equal(err.kind, 'invalid-input');
    assert.match(err.message, pattern);
    assert.equal(err.where, 'user data');
    return err;
  }
  assert.fail(`expected an InvalidInputError matching ${pattern}`);
}

describe('interpretUserData', () => {
  it('has none when the instance has no user data, or an empty one', () => {
    assert.equal(interpretUserData(undefined).kind, 'none');
    assert.equal(interpretUserData(Buffer.alloc(0)).kind, 'none');
    assert.equal(interpretUserData(undefined).digest, interpretUserData(Buffer.alloc(0)).digest);
  });

  it('reads a Nix expression, keeping its text exactly', () => {
    const text = '# a NixOS configuration\n{ config, pkgs, ... }:\n{\n  services.nginx.enable = true;\n}\n';
    const ud = interpretUserData(Buffer.from(text));
    assert.equal(ud.kind, 'nix');
    assert.ok(ud.kind === 'nix');
    assert.equal(ud.text, text);
    assert.deepEqual(ud.channels, []);
    assert.match(ud.digest, /^[0-9a-f]{64}$/);
  });

  it('ignores user data made only of # comments and SSH_HOST_ lines (NixOps keys)', () => {
    const text = [
      '# just a comment',
      '#cloud-config is not for us',
      'SSH_HOST_ED25519_KEY_PUB:ssh-ed25519 AAAAC3Nz… root@host',
      'SSH_HOST_ED25519_KEY:-----BEGIN OPENSSH PRIVATE KEY-----',
      '',
    ].join('\n');
    const ud = interpretUserData(Buffer.from(text));
    assert.equal(ud.kind, 'ignored');
    assert.ok(ud.kind === 'ignored');
    assert.match(ud.reason, /comment|SSH_HOST_/);
  });

  it('ignores user data of whitespace only (amazon-init: "does not appear to be a Nix expression")', () => {
    assert.equal(interpretUserData(Buffer.from('  \n\t\n   \r\n')).kind, 'ignored');
  });

  it('takes one meaningful line among comments as a Nix expression', () => {
    const ud = interpretUserData(Buffer.from('# header\nSSH_HOST_X:y\n{ }\n'));
    assert.equal(ud.kind, 'nix');
  });

  it('reads ### lines as channels (### <url> <name>), as amazon-init writes /root/.nix-channels', () => {
    const text = '### https://nixos.org/channels/nixos-24.05 nixos\n###   https://example.com/unstable   unstable  \n{ ... }: { }\n';
    const ud = interpretUserData(Buffer.from(text));
    assert.ok(ud.kind === 'nix');
    assert.deepEqual(ud.channels, [
      { url: 'https://nixos.org/channels/nixos-24.05', name: 'nixos' },
      { url: 'https://example.com/unstable', name: 'unstable' },
    ]);
  });

  it('rejects a malformed channel line, naming its line number', () => {
    rejects(() => interpretUserData(Buffer.from('{ }\n\n### https://nixos.org/channels/nixos-24.05\n')), /line 3\b.*### <url> <name>/);
    rejects(() => interpretUserData(Buffer.from('# c\n### https://a/b nixos extra\n{ }\n')), /line 2\b/);
    rejects(() => interpretUserData(Buffer.from('{ }\n### nixos-24.05 nixos\n')), /line 2\b.*not a URL/);
    rejects(() => interpretUserData(Buffer.from('### https://a/b "bad name"\n{ }\n')), /line 1\b/);
    // A bare ### is a comment, not a channel.
    assert.deepEqual(parseChannels('###\n{ }\n'), []);
  });

  it('takes #### lines as comments, as nix-channel reads the line amazon-init writes for them', () => {
    // amazon-init strips `###` and writes the rest to /root/.nix-channels; nix-channel skips a line
    // that then starts with `#`, so a `####` banner in user data names no channel and breaks nothing.
    const text = '#### Web servers ####\n####\n### # was: https://example.com/old old\n### https://nixos.org/channels/nixos-24.05 nixos\n{ ... }: { }\n';
    const ud = interpretUserData(Buffer.from(text));
    assert.ok(ud.kind === 'nix');
    assert.deepEqual(ud.channels, [{ url: 'https://nixos.org/channels/nixos-24.05', name: 'nixos' }]);
  });

  it('unpacks gzip\'d user data before classifying it', () => {
    const text = '{ ... }:\n{\n  networking.hostName = "web-1";\n}\n';
    const plain = interpretUserData(Buffer.from(text));
    const packed = interpretUserData(gzipSync(Buffer.from(text)));
    assert.ok(packed.kind === 'nix');
    assert.equal(packed.text, text);
    assert.equal(packed.digest, plain.digest, 'the digest is of what the user data says, not how it was packed');
    assert.equal(interpretUserData(gzipSync(Buffer.from('# only a comment\n'))).kind, 'ignored');
  });

  it("runs a #! script, plain or gzip'd, byte for byte", () => {
    const script = Buffer.from('#!/bin/sh\necho hello\n\xff\n', 'latin1');
    const plain = interpretUserData(script);
    assert.ok(plain.kind === 'script');
    assert.deepEqual(plain.script, script);
    const packed = interpretUserData(gzipSync(script));
    assert.ok(packed.kind === 'script');
    assert.deepEqual(packed.script, script);
  });

  it('accepts user data of exactly 16 KiB, raw or unpacked', () => {
    const text = `{ }\n# ${'x'.repeat(USER_DATA_LIMIT - 7)}\n`;
    assert.equal(Buffer.byteLength(text), USER_DATA_LIMIT);
    assert.equal(interpretUserData(Buffer.from(text)).kind, 'nix');
    assert.equal(interpretUserData(gzipSync(Buffer.from(text))).kind, 'nix');
  });

  it('rejects raw user data over 16 KiB', () => {
    rejects(() => interpretUserData(Buffer.alloc(USER_DATA_LIMIT + 1, 0x20)), /16384/);
  });

  it("unpacks gzip'd user data past EC2's 16 KiB, which is what packing it is for", () => {
    // A configuration of ~150 KiB, as an image builder might pack it into the 16 KiB EC2 allows.
    const hosts = Array.from({ length: 2_500 }, (_, i) => `  networking.hosts."10.0.${i >> 8}.${i & 255}" = [ "host-${i}.internal" ];`).join('\n');
    const text = `{ ... }:\n{\n${hosts}\n}\n`;
    const packed = gzipSync(Buffer.from(text), { level: 9 });
    assert.ok(Buffer.byteLength(text) > 4 * USER_DATA_LIMIT && packed.length <= USER_DATA_LIMIT, `${Buffer.byteLength(text)} bytes packed to ${packed.length}`);
    const read = interpretUserData(packed);
    assert.ok(read.kind === 'nix');
    assert.equal(read.text, text);
  });

  it('bounds a gzip bomb: unpacking past 1 MiB is a clear error', () => {
    const bomb = gzipSync(Buffer.alloc(8 * 1024 * 1024, 0x61));
    assert.ok(bomb.length < USER_DATA_LIMIT, 'the packed bomb itself fits in user data');
    rejects(() => interpretUserData(bomb), new RegExp(`unpacks to over ${UNPACKED_USER_DATA_LIMIT} bytes`));
    rejects(() => interpretUserData(gzipSync(Buffer.alloc(UNPACKED_USER_DATA_LIMIT + 1, 0x61))), /unpacks to over/);
    assert.equal(interpretUserData(gzipSync(Buffer.from(`{ }\n# ${'a'.repeat(UNPACKED_USER_DATA_LIMIT - 7)}\n`))).kind, 'nix', 'exactly 1 MiB unpacks');
  });

  it('rejects gzip data that does not unpack', () => {
    const broken = gzipSync(Buffer.from('{ }\n')).subarray(0, 12);
    rejects(() => interpretUserData(broken), /gzip/);
  });

  it('rejects user data that is not UTF-8, naming the offset of the first bad byte', () => {
    rejects(() => interpretUserData(Buffer.from([0x7b, 0x20, 0x7d, 0xff, 0x0a])), /not valid UTF-8.*byte 3\b/);
    // A lead byte followed by a non-continuation byte: the bad sequence starts at the lead byte.
    rejects(() => interpretUserData(Buffer.from([0x7b, 0x7d, 0xe2, 0x28, 0xa1])), /byte 2\b/);
    // A character cut off at the end.
    rejects(() => interpretUserData(Buffer.from([0x7b, 0x7d, 0x0a, 0xe2, 0x82])), /byte 3\b/);
    // Valid multi-byte characters before the bad byte count by bytes, not characters.
    rejects(() => interpretUserData(Buffer.concat([Buffer.from('{ "é€" }'), Buffer.from([0xc0, 0x80])])), /byte 11\b/);
  });

  it('rejects a UTF-8 byte order mark rather than dropping it (Nix cannot parse one)', () => {
    assert.throws(
      () => interpretUserData(Buffer.from('\ufeff{ services.nginx.enable = true; }\n')),
      (err: unknown) => err instanceof InvalidInputError && err.where === 'user data' && /byte order mark/.test(err.message),
    );
    // One further in is a character of the text, kept.
    const ud = interpretUserData(Buffer.from('{ x = "\ufeff"; }\n'));
    assert.equal(ud.kind === 'nix' && ud.text, '{ x = "\ufeff"; }\n');
  });

  it('rejects a NUL byte (a Nix file cannot hold one)', () => {
    rejects(() => interpretUserData(Buffer.from('{ }\n\0\n')), /NUL/);
  });

  it('gives the same digest for the same bytes and a different one for different bytes', () => {
    const a = interpretUserData(Buffer.from('{ }\n'));
    assert.equal(a.digest, interpretUserData(Buffer.from('{ }\n')).digest);
    assert.notEqual(a.digest, interpretUserData(Buffer.from('{  }\n')).digest);
  });
});
