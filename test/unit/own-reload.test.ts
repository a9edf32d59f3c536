// When a switch rewrites the agent's own configuration and the daemon takes it: the third reload
// back and forth between the same two configurations within the memory is refused (flipsBack).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FLIP_MEMORY_MS, flipsBack, type OwnReload } from '../../agent/loop.js';

const at = (from: string, to: string, when: number): OwnReload => ({ from, to, at: when });

describe('flipsBack', () => {
  it('refuses going A→B once more after A→B and B→A were taken', () => {
    assert.equal(flipsBack([at('A', 'B', 0), at('B', 'A', 10)], 'A', 'B', 20), true);
  });

  it('lets through a change and its revert, a first reload, and a reload to a third configuration', () => {
    assert.equal(flipsBack([], 'A', 'B', 0), false);
    assert.equal(flipsBack([at('A', 'B', 0)], 'B', 'A', 10), false, 'an operator changing a setting back');
    assert.equal(flipsBack([at('A', 'B', 0), at('B', 'A', 10)], 'A', 'C', 20), false);
    assert.equal(flipsBack([at('A', 'C', 0), at('C', 'A', 10)], 'A', 'B', 20), false);
    assert.equal(flipsBack([at('A', 'B', 0), at('B', 'C', 10)], 'C', 'B', 20), false);
  });

  it('forgets flips older than the memory: an operator changing settings back and forth over hours', () => {
    assert.equal(flipsBack([at('A', 'B', 0), at('B', 'A', 10)], 'A', 'B', FLIP_MEMORY_MS), true);
    assert.equal(flipsBack([at('A', 'B', 0), at('B', 'A', 10)], 'A', 'B', FLIP_MEMORY_MS + 1), false);
  });
});
