// The SSM emulator through the real AWS CLI (botocore's awsJson1_1 client): how an operator pushes
// configuration to a fleet, and reads it back.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { awsCli, noAwsCli } from '../support/aws-cli.js';
import { SsmEmulator } from '../../sandbox/emulators/ssm.js';

const skip = noAwsCli;

describe('SSM emulator through the AWS CLI', { skip }, () => {
  let emulator: SsmEmulator;
  let home: string;

  before(async () => {
    emulator = await SsmEmulator.start({ region: 'eu-west-1', throughput: null });
    home = await mkdtemp(join(tmpdir(), 'ssm-cli-'));
  });
  after(async () => {
    await emulator?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  const aws = (...args: string[]) => awsCli(emulator.url, home, 'ssm', args);

  it('put-parameter creates, refuses to replace without --overwrite, then versions', async () => {
    const created = await aws('put-parameter', '--name', '/nixos/fleet/options/time.timeZone', '--value', '"UTC"', '--type', 'String');
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual(JSON.parse(created.stdout), { Version: 1, Tier: 'Standard' });

    // A service error: the CLI exits 254 and prints botocore's ClientError line.
    const again = await aws('put-parameter', '--name', '/nixos/fleet/options/time.timeZone', '--value', '"CET"', '--type', 'String');
    assert.equal(again.code, 254);
    assert.match(again.stderr, /An error occurred \(ParameterAlreadyExists\) when calling the PutParameter operation: The parameter already exists/);

    const replaced = await aws('put-parameter', '--name', '/nixos/fleet/options/time.timeZone', '--value', '"CET"', '--overwrite');
    assert.equal(replaced.code, 0, replaced.stderr);
    assert.equal((JSON.parse(replaced.stdout) as { Version: number }).Version, 2);
    assert.equal(emulator.get('/nixos/fleet/options/time.timeZone')?.Value, '"CET"');
    assert.equal(emulator.requests.at(-1)?.accessKeyId, 'AKIDEXAMPLE');
  });

  it('get-parameters-by-path --recursive follows NextToken across pages', async () => {
    const names = Array.from({ length: 23 }, (_, i) => `/nixos/asg/web/modules/m${String(i).padStart(2, '0')}`);
    for (const name of names) emulator.put({ Name: name, Value: `{ }: { }`, Type: 'String' });
    emulator.put({ Name: '/nixos/asg/web/options/deep/x', Value: '1', Type: 'String' });
    const before = emulator.callCounts()['GetParametersByPath'] ?? 0;

    // --page-size keeps the CLI's auto-paging (--max-results would turn it off).
    const r = await aws('get-parameters-by-path', '--path', '/nixos/asg/web', '--recursive', '--page-size', '5');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { Parameters: { Name: string; Version: number; ARN: string; LastModifiedDate: string }[] };
    const seen = out.Parameters.map((p) => p.Name);
    assert.equal(seen.length, 24);
    assert.equal(new Set(seen).size, 24);
    assert.ok(seen.includes('/nixos/asg/web/options/deep/x'));
    assert.equal(out.Parameters[0]?.ARN, `arn:aws:ssm:eu-west-1:123456789012:parameter${out.Parameters[0]?.Name}`);
    // botocore turned the epoch-seconds number into a timestamp.
    assert.ok(!Number.isNaN(Date.parse(out.Parameters[0]?.LastModifiedDate ?? '')));

    const calls = (emulator.callCounts()['GetParametersByPath'] ?? 0) - before;
    assert.equal(calls, 5, 'ceil(24 / 5) pages');
    const inputs = emulator.requests.filter((r) => r.operation === 'GetParametersByPath').slice(-calls);
    assert.ok(inputs.every((r) => (r.input as { MaxResults?: number }).MaxResults === 5));
    assert.ok(inputs.slice(1).every((r) => typeof (r.input as { NextToken?: string }).NextToken === 'string'));

    const oneLevel = await aws('get-parameters-by-path', '--path', '/nixos/asg/web/options');
    assert.equal(oneLevel.code, 0, oneLevel.stderr);
    assert.deepEqual((JSON.parse(oneLevel.stdout) as { Parameters: unknown[] }).Parameters, []);
  });

  it('get-parameter shows a SecureString only --with-decryption', async () => {
    const put = await aws('put-parameter', '--name', '/nixos/fleet/secrets/token', '--value', 's3cr3t-value', '--type', 'SecureString');
    assert.equal(put.code, 0, put.stderr);

    const hidden = await aws('get-parameter', '--name', '/nixos/fleet/secrets/token');
    assert.equal(hidden.code, 0, hidden.stderr);
    const hiddenValue = (JSON.parse(hidden.stdout) as { Parameter: { Value: string } }).Parameter.Value;
    assert.notEqual(hiddenValue, 's3cr3t-value');
    assert.ok(!hiddenValue.includes('s3cr3t'));

    const shown = await aws('get-parameter', '--name', '/nixos/fleet/secrets/token', '--with-decryption', '--query', 'Parameter.Value', '--output', 'text');
    assert.equal(shown.code, 0, shown.stderr);
    assert.equal(shown.stdout.trim(), 's3cr3t-value');
  });

  it('reports service errors the way the CLI prints them, with exit code 254', async () => {
    const [missing, tooMany, reserved] = await Promise.all([
      aws('get-parameter', '--name', '/nixos/none'),
      // botocore checks only the lower bound of MaxResults; the service refuses 11.
      aws('get-parameters-by-path', '--path', '/nixos', '--max-results', '11'),
      aws('put-parameter', '--name', '/aws/reserved/x', '--value', 'v', '--type', 'String'),
    ]);
    assert.equal(missing.code, 254);
    assert.match(missing.stderr, /An error occurred \(ParameterNotFound\) when calling the GetParameter operation: Parameter \/nixos\/none not found\./);
    assert.equal(tooMany.code, 254);
    assert.match(tooMany.stderr, /\(ValidationException\) when calling the GetParametersByPath operation: 1 validation error detected: Value '11' at 'maxResults'/);
    assert.equal(reserved.code, 254);
    assert.match(reserved.stderr, /\(AccessDeniedException\) when calling the PutParameter operation/);
  });

  it('label-parameter-version and name:label / name:version selectors', async () => {
    const name = '/cli/label/colour';
    assert.equal((await aws('put-parameter', '--name', name, '--value', 'red', '--type', 'String')).code, 0);
    assert.equal((await aws('put-parameter', '--name', name, '--value', 'blue', '--overwrite')).code, 0);
    const labelled = await aws('label-parameter-version', '--name', name, '--parameter-version', '1', '--labels', 'stable', 'ssm-bad');
    assert.equal(labelled.code, 0, labelled.stderr);
    assert.deepEqual(JSON.parse(labelled.stdout), { InvalidLabels: ['ssm-bad'], ParameterVersion: 1 });
    const byLabel = await aws('get-parameter', '--name', `${name}:stable`);
    assert.equal(byLabel.code, 0, byLabel.stderr);
    assert.equal((JSON.parse(byLabel.stdout) as { Parameter: { Value: string; Selector: string } }).Parameter.Value, 'red');
    const both = await aws('get-parameters', '--names', `${name}:2`, `${name}:stable`, `${name}:nope`);
    assert.equal(both.code, 0, both.stderr);
    const parsed = JSON.parse(both.stdout) as { Parameters: { Value: string; Selector: string }[]; InvalidParameters: string[] };
    assert.deepEqual(parsed.Parameters.map((p) => [p.Selector, p.Value]), [[':2', 'blue'], [':stable', 'red']]);
    assert.deepEqual(parsed.InvalidParameters, [`${name}:nope`]);
    const missing = await aws('label-parameter-version', '--name', name, '--parameter-version', '5', '--labels', 'x');
    assert.equal(missing.code, 254);
    assert.match(missing.stderr, /\(ParameterVersionNotFound\) when calling the LabelParameterVersion operation/);
  });

  it('overwriting a String as SecureString is HierarchyTypeMismatchException; an unknown KeyId is InvalidKeyId', async () => {
    const name = '/cli/mismatch/value';
    assert.equal((await aws('put-parameter', '--name', name, '--value', 'plain', '--type', 'String')).code, 0);
    const mismatch = await aws('put-parameter', '--name', name, '--value', 'secret', '--type', 'SecureString', '--overwrite');
    assert.equal(mismatch.code, 254);
    assert.match(mismatch.stderr, /An error occurred \(HierarchyTypeMismatchException\) when calling the PutParameter operation: Parameter Store doesn't support changing a parameter type/);
    const badKey = await aws('put-parameter', '--name', '/cli/kms/a', '--value', 's', '--type', 'SecureString', '--key-id', 'alias/nobody');
    assert.equal(badKey.code, 254);
    assert.match(badKey.stderr, /An error occurred \(InvalidKeyId\) when calling the PutParameter operation/);
    const aliasKey = await aws('put-parameter', '--name', '/cli/kms/a', '--value', 's', '--type', 'SecureString', '--key-id', 'alias/aws/ssm');
    assert.equal(aliasKey.code, 0, aliasKey.stderr);
    const created = emulator.createKmsKey();
    const ownKey = await aws('put-parameter', '--name', '/cli/kms/b', '--value', 's', '--type', 'SecureString', '--key-id', created.KeyId);
    assert.equal(ownKey.code, 0, ownKey.stderr);
  });
  it('get-parameters-by-path with a Label filter reads each parameter\'s labelled version, not its latest', async () => {
    const a = '/cli/bylabel/a';
    const b = '/cli/bylabel/b';
    const c = '/cli/bylabel/c';
    emulator.put({ Name: a, Value: 'a1', Type: 'String' });
    emulator.put({ Name: a, Value: 'a2', Type: 'String', Overwrite: true });
    emulator.put({ Name: a, Value: 'a3', Type: 'String', Overwrite: true });
    emulator.put({ Name: b, Value: 'b1', Type: 'String' });
    emulator.put({ Name: c, Value: 'c1', Type: 'String' });
    emulator.label(a, ['release'], 2);
    emulator.label(b, ['release'], 1);
    const r = await aws('get-parameters-by-path', '--path', '/cli/bylabel', '--parameter-filters', 'Key=Label,Values=release');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { Parameters: { Name: string; Value: string; Version: number }[] };
    assert.deepEqual(out.Parameters.map((p) => [p.Name, p.Value, p.Version]), [[a, 'a2', 2], [b, 'b1', 1]]);
  });

  it('label-parameter-version refuses a parameter ARN as Name: only the name itself is accepted', async () => {
    const name = '/cli/label/arn';
    assert.equal((await aws('put-parameter', '--name', name, '--value', 'v', '--type', 'String')).code, 0);
    const arn = `arn:aws:ssm:eu-west-1:123456789012:parameter${name}`;
    const r = await aws('label-parameter-version', '--name', arn, '--labels', 'stable');
    assert.equal(r.code, 254);
    assert.match(r.stderr, /\(ParameterNotFound\) when calling the LabelParameterVersion operation/);
    assert.deepEqual(emulator.history(name).map((v) => v.Labels), [[]]);
  });
});
