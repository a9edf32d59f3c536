// The durable files across versions of the agent (agent/state.ts, readVersioned), and the store's
// read-only look at state.json for commands that run beside a daemon.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { z } from 'zod/v3';
import { RootFs } from '../../agent/fs.js';
import { FORMAT, readVersioned, STATE_DIR, STATE_FILE, StateStore } from '../../agent/state.js';

const Named = z.object({ version: z.literal(FORMAT), name: z.string() });

describe('readVersioned', () => {
  it('reads its own format, and carries fields it does not know', () => {
    assert.deepEqual(readVersioned({ version: 1, name: 'a' }, Named), { value: { version: 1, name: 'a' }, carried: {} });
    assert.deepEqual(readVersioned({ version: 1, name: 'a', later: [1] }, Named), { value: { version: 1, name: 'a' }, carried: { later: [1] } });
  });

  it('reads a newer format that older readers may read, as its own format, dropping minReaderVersion', () => {
    assert.deepEqual(readVersioned({ version: 5, minReaderVersion: 1, name: 'a', later: { x: 1 } }, Named), { value: { version: 1, name: 'a' }, carried: { later: { x: 1 } } });
  });

  it('refuses a newer format meant for newer readers as newer, and a malformed one as not newer', () => {
    const cases: [unknown, boolean, RegExp][] = [
      [{ version: 2, name: 'a' }, true, /newer agent in format 2, which agents of format 2 and later read; this agent reads format 1/],
      [{ version: 3, minReaderVersion: 2, name: 'a' }, true, /format 3, which agents of format 2 and later read/],
      [{ name: 'a' }, false, /^version: expected a format number, got undefined$/],
      [{ version: '1', name: 'a' }, false, /^version: expected a format number, got "1"$/],
      [{ version: 0, name: 'a' }, false, /^version:/],
      [{ version: 1.5, name: 'a' }, false, /^version:/],
      [{ version: 2, minReaderVersion: 3, name: 'a' }, false, /^minReaderVersion: expected a format number from 1 to 2, got 3$/],
      [{ version: 2, minReaderVersion: 0, name: 'a' }, false, /^minReaderVersion:/],
      [{ version: 2, minReaderVersion: 1 }, false, /^name: Required$/],
      [[], false, /^\(top level\): expected an object$/],
      [null, false, /^\(top level\)/],
    ];
    for (const [json, newer, message] of cases) {
      const read = readVersioned(json, Named);
      assert.ok('problem' in read, JSON.stringify(json));
      assert.equal(read.newer, newer, JSON.stringify(json));
      assert.match(read.problem, message);
    }
  });
});

describe('StateStore', () => {
  let dir: string;
  let fs: RootFs;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-state-'));
    fs = new RootFs(dir);
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const aside = async () => (await readdir(fs.resolve(STATE_DIR))).filter((n) => n !== 'state.json');

  it('peek reads what load reads, and never sets a file aside', async () => {
    const store = new StateStore(fs, () => 7);
    for (const text of ['{"version": 1, "journal": ', '{"version": 9}']) {
      await fs.writeAtomic(STATE_FILE, text);
      const peeked = await store.peek();
      assert.match(peeked.problem ?? '', /state\.json (is not JSON|was written by a newer agent in format 9)/);
      assert.equal(peeked.state.journal.phase, 'idle', 'an empty state in its place');
      assert.equal(await fs.readText(STATE_FILE), text, 'the file is where it was, as it was');
      assert.deepEqual(await aside(), []);
    }
    await fs.writeAtomic(STATE_FILE, JSON.stringify({ version: 2, minReaderVersion: 1, journal: { phase: 'building', since: 1 }, failed: {}, builds: {}, extra: true }));
    const peeked = await store.peek();
    assert.equal(peeked.problem, undefined);
    assert.equal(peeked.state.journal.phase, 'building');
  });

  it('a load that sets a file aside carries nothing of it into the next save', async () => {
    const store = new StateStore(fs, () => 7);
    await fs.writeAtomic(STATE_FILE, JSON.stringify({ version: 2, minReaderVersion: 1, journal: { phase: 'idle', since: 1 }, failed: {}, builds: {}, extra: 1 }));
    const first = await store.load();
    await store.save(first.state);
    assert.equal(JSON.parse((await fs.readText(STATE_FILE)) as string).extra, 1);
    await fs.writeAtomic(STATE_FILE, '{"version": 3}');
    const second = await store.load();
    assert.match(second.problem ?? '', /set aside as \S+state\.json\.newer-7/);
    await store.save(second.state);
    assert.equal('extra' in JSON.parse((await fs.readText(STATE_FILE)) as string), false);
    assert.deepEqual(await aside(), ['state.json.newer-7']);
  });
});
