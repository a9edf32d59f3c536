// A Secret prints as a placeholder however it is turned into text; only reveal() yields the value.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { format, inspect } from 'node:util';
import { Secret } from '../../agent/secret.js';

describe('Secret', () => {
  it('inspects, formats, serialises and stringifies as [redacted]', () => {
    const secret = new Secret('hunter2');
    assert.equal(inspect(secret), '[redacted]');
    assert.equal(inspect({ password: secret }), "{ password: [redacted] }");
    assert.equal(format('%o %O %s', secret, secret, secret), '[redacted] [redacted] [redacted]');
    assert.equal(JSON.stringify({ password: secret }), '{"password":"[redacted]"}');
    assert.equal(`${secret}`, '[redacted]');
    assert.equal(secret.reveal(), 'hunter2');
  });
});
