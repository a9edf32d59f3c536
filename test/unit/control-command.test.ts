// suspend, resume and rollback change the state only through the daemon, or with no daemon at all:
// a daemon that is there but cannot be reached, or a caller who may not use its socket, gets exit
// 2 and the state is left alone (the daemon would overwrite it).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { control, unreachable } from '../../agent/commands.js';
import { parseConfig } from '../../agent/config.js';
import { RootFs } from '../../agent/fs.js';
import { ControlClient } from '../../agent/report/control.js';
import { STATE_FILE } from '../../agent/state.js';

describe('control commands', () => {
  let dir: string;
  let server: net.Server;
  let socket: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nea-control-'));
    socket = path.join(dir, 'ctl.sock');
    // A daemon that takes the connection and hangs up without an answer.
    server = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });

  after(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('tells the three ways a socket can fail apart', () => {
    assert.equal(unreachable(Object.assign(new Error('connect ENOENT'), { code: 'ENOENT' })), 'no-daemon');
    assert.equal(unreachable(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })), 'no-daemon');
    assert.equal(unreachable(Object.assign(new Error('connect EACCES'), { code: 'EACCES' })), 'needs-root');
    assert.equal(unreachable(new Error('no answer from ctl.sock')), 'unreachable');
  });

  for (const op of ['suspend', 'resume', 'rollback'] as const) {
    it(`${op}: a daemon that cannot be reached means exit 2 and no state written`, async () => {
      const root = path.join(dir, `root-${op}`);
      const code = await control(parseConfig({ root }), op, true, new ControlClient(socket));
      assert.equal(code, 2);
      assert.equal(await new RootFs(root).exists(STATE_FILE), false);
    });

    it(`${op}: a socket this user may not open means exit 2 (needs root)`, async () => {
      const root = path.join(dir, `root-eacces-${op}`);
      const refused = { request: async () => Promise.reject(Object.assign(new Error(`connect EACCES ${socket}`), { code: 'EACCES' })) };
      assert.equal(await control(parseConfig({ root }), op, true, refused), 2);
      assert.equal(await new RootFs(root).exists(STATE_FILE), false);
    });
  }
});
