// What the agent writes stays one JSON object per line whatever the runtime prints: the AWS SDK's
// multi-line Node-version warning (Node < 22) arrives as one structured `warn`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Instance } from '../support/e2e.js';

const nodeMajor = Number(process.versions.node.split('.')[0]);

test('converge --once: every stderr line is a JSON object, the SDK warning among them', { timeout: 120_000 }, async () => {
  const inst = await Instance.launch({ parameters: [{ Name: '/nixos/fleet/options/time.timeZone', Value: '"UTC"', Type: 'String' }] });
  try {
    const result = await inst.run(['converge', '--once', '--json']);
    assert.equal(result.code, 0, result.stderr.slice(-2000));
    const lines = result.stderr.split('\n').filter((l) => l.length > 0);
    assert.ok(lines.length > 0);
    const records = lines.map((line) => {
      try {
        return JSON.parse(line) as { level?: string; event?: string; msg?: string; warning?: string };
      } catch {
        return assert.fail(`not a JSON line: ${line}`);
      }
    });
    assert.ok(records.some((r) => r.event === 'pass.end'), 'the agent logged the pass');
    const warnings = records.filter((r) => r.event === 'runtime.warning');
    if (nodeMajor < 22) {
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.equal(warnings[0]!.level, 'warn');
      assert.match(warnings[0]!.msg ?? '', /NodeVersionSupportWarning: The AWS SDK for JavaScript \(v3\).* will require node >=22/);
    }
  } finally {
    await inst.close();
  }
});
