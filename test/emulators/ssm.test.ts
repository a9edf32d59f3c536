// The SSM emulator driven by the real SDK v3 SSMClient over HTTP. Expectations come from AWS's
// documentation and service model (see test/emulators/ssm.ts), not from the emulator's code.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  DeleteParameterCommand,
  DeleteParametersCommand,
  DescribeParametersCommand,
  GetParameterCommand,
  GetParameterHistoryCommand,
  GetParametersByPathCommand,
  GetParametersCommand,
  LabelParameterVersionCommand,
  PutParameterCommand,
  SSMClient,
  paginateGetParametersByPath,
  type SSMClientConfig,
} from '@aws-sdk/client-ssm';
import type { Clock } from '../../agent/ports.js';
import { ManualClock } from '../support/clock.js';
import { SsmEmulator, SsmServiceError } from '../../sandbox/emulators/ssm.js';
import { TokenBucket } from '../../sandbox/emulators/token-bucket.js';

const AUTH =
  'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ssm/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0123456789abcdef';

function sdk(emulator: SsmEmulator, extra: SSMClientConfig = {}): SSMClient {
  return new SSMClient({
    endpoint: emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    maxAttempts: 1,
    ...extra,
  });
}

interface SdkError extends Error {
  $fault?: string;
  $metadata: { httpStatusCode?: number; requestId?: string; attempts?: number };
}

async function failure(promise: Promise<unknown>): Promise<SdkError> {
  try {
    await promise;
  } catch (err) {
    return err as SdkError;
  }
  assert.fail('expected the call to fail');
}

async function raw(emulator: SsmEmulator, target: string, body: unknown, headers: Record<string, string> = { authorization: AUTH }) {
  const response = await fetch(emulator.url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': target, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, requestId: response.headers.get('x-amzn-requestid'), text: await response.text() };
}

describe('SSM emulator over the SDK v3 SSMClient', () => {
  let emulator: SsmEmulator;
  let client: SSMClient;
  before(async () => {
    emulator = await SsmEmulator.start({ throughput: null });
    client = sdk(emulator);
  });
  after(async () => {
    client.destroy();
    await emulator.close();
  });

  it('puts, gets, refuses a second put without Overwrite, and counts versions from 1', async () => {
    const first = await client.send(new PutParameterCommand({ Name: '/app/colour', Value: 'red', Type: 'String' }));
    assert.equal(first.Version, 1);
    assert.equal(first.Tier, 'Standard');

    const again = await failure(client.send(new PutParameterCommand({ Name: '/app/colour', Value: 'blue', Type: 'String' })));
    assert.equal(again.name, 'ParameterAlreadyExists');
    assert.equal(again.$metadata.httpStatusCode, 400);

    const second = await client.send(new PutParameterCommand({ Name: '/app/colour', Value: 'blue', Overwrite: true }));
    assert.equal(second.Version, 2);

    const { Parameter } = await client.send(new GetParameterCommand({ Name: '/app/colour' }));
    assert.equal(Parameter?.Value, 'blue');
    assert.equal(Parameter?.Type, 'String', 'an overwrite without Type keeps the type');
    assert.equal(Parameter?.Version, 2);
    assert.equal(Parameter?.DataType, 'text');
    assert.equal(Parameter?.ARN, 'arn:aws:ssm:us-east-1:123456789012:parameter/app/colour');
    assert.ok(Parameter?.LastModifiedDate instanceof Date);

    const old = await client.send(new GetParameterCommand({ Name: '/app/colour:1' }));
    assert.equal(old.Parameter?.Value, 'red');
    assert.equal(old.Parameter?.Name, '/app/colour');
    assert.equal(old.Parameter?.Selector, ':1');
    const missingVersion = await failure(client.send(new GetParameterCommand({ Name: '/app/colour:9' })));
    assert.equal(missingVersion.name, 'ParameterVersionNotFound');
  });

  it('labels versions, moves a label between versions, and reads name:label and name:version', async () => {
    const name = '/label/app/colour';
    await client.send(new PutParameterCommand({ Name: name, Value: 'red', Type: 'String' }));
    await client.send(new PutParameterCommand({ Name: name, Value: 'blue', Overwrite: true }));
    const labelled = await client.send(new LabelParameterVersionCommand({ Name: name, ParameterVersion: 1, Labels: ['stable', '1bad', 'awsy', 'ok_too'] }));
    assert.equal(labelled.ParameterVersion, 1);
    assert.deepEqual(labelled.InvalidLabels, ['1bad', 'awsy'], 'labels starting with a number or aws come back invalid');
    const stable = await client.send(new GetParameterCommand({ Name: `${name}:stable` }));
    assert.equal(stable.Parameter?.Value, 'red');
    assert.equal(stable.Parameter?.Selector, ':stable');
    // Without ParameterVersion the latest version is labelled; the label moves there.
    const moved = await client.send(new LabelParameterVersionCommand({ Name: name, Labels: ['stable'] }));
    assert.equal(moved.ParameterVersion, 2);
    const both = await client.send(new GetParametersCommand({ Names: [`${name}:stable`, `${name}:1`, `${name}:ok_too`, `${name}:gone`] }));
    assert.deepEqual(both.Parameters?.map((p) => [p.Selector, p.Value]), [[':stable', 'blue'], [':1', 'red'], [':ok_too', 'red']]);
    assert.deepEqual(both.InvalidParameters, [`${name}:gone`]);
    assert.deepEqual(emulator.history(name).map((v) => v.Labels), [['ok_too'], ['stable']]);

    const noVersion = await failure(client.send(new LabelParameterVersionCommand({ Name: name, ParameterVersion: 7, Labels: ['x'] })));
    assert.equal(noVersion.name, 'ParameterVersionNotFound');
    const noParameter = await failure(client.send(new LabelParameterVersionCommand({ Name: '/label/none', Labels: ['x'] })));
    assert.equal(noParameter.name, 'ParameterNotFound');
    emulator.label(name, Array.from({ length: 9 }, (_, i) => `l${i}`), 2);
    const tooMany = await failure(client.send(new LabelParameterVersionCommand({ Name: name, ParameterVersion: 2, Labels: ['eleventh'] })));
    assert.equal(tooMany.name, 'ParameterVersionLabelLimitExceeded');
  });

  it('refuses an overwrite that changes String to SecureString or back (HierarchyTypeMismatchException)', async () => {
    await client.send(new PutParameterCommand({ Name: '/mismatch/plain', Value: 'a', Type: 'String' }));
    const toSecure = await failure(client.send(new PutParameterCommand({ Name: '/mismatch/plain', Value: 'b', Type: 'SecureString', Overwrite: true })));
    assert.equal(toSecure.name, 'HierarchyTypeMismatchException');
    assert.equal(toSecure.$metadata.httpStatusCode, 400);
    await client.send(new PutParameterCommand({ Name: '/mismatch/secret', Value: 'a', Type: 'SecureString' }));
    const toPlain = await failure(client.send(new PutParameterCommand({ Name: '/mismatch/secret', Value: 'b', Type: 'String', Overwrite: true })));
    assert.equal(toPlain.name, 'HierarchyTypeMismatchException');
    // String and StringList are both plain: that change is allowed.
    const list = await client.send(new PutParameterCommand({ Name: '/mismatch/plain', Value: 'a,b', Type: 'StringList', Overwrite: true }));
    assert.equal(list.Version, 2);
    assert.equal(emulator.get('/mismatch/secret')?.Value, 'a', 'nothing changed');
  });

  it('takes alias/aws/ssm and keys created in the emulator as KeyId; any other is InvalidKeyId', async () => {
    const bad = await failure(client.send(new PutParameterCommand({ Name: '/kms/a', Value: 's', Type: 'SecureString', KeyId: 'alias/no-such-key' })));
    assert.equal(bad.name, 'InvalidKeyId');
    assert.equal(emulator.get('/kms/a'), undefined);
    await client.send(new PutParameterCommand({ Name: '/kms/a', Value: 's', Type: 'SecureString', KeyId: 'alias/aws/ssm' }));
    const key = emulator.createKmsKey('app');
    for (const [i, keyId] of [key.KeyId, key.Arn, 'alias/app', 'arn:aws:kms:us-east-1:123456789012:alias/app'].entries()) {
      const put = await client.send(new PutParameterCommand({ Name: `/kms/b${i}`, Value: 's', Type: 'SecureString', KeyId: keyId }));
      assert.equal(put.Version, 1, keyId);
    }
  });

  it('names a top-level parameter in its ARN with a single slash', async () => {
    await client.send(new PutParameterCommand({ Name: 'plain-name', Value: 'x', Type: 'String' }));
    const { Parameter } = await client.send(new GetParameterCommand({ Name: 'plain-name' }));
    assert.equal(Parameter?.ARN, 'arn:aws:ssm:us-east-1:123456789012:parameter/plain-name');
    const byArn = await client.send(new GetParameterCommand({ Name: Parameter!.ARN! }));
    assert.equal(byArn.Parameter?.Value, 'x');
  });

  it('returns a SecureString encrypted unless WithDecryption is true', async () => {
    const secret = 'hunter2-plaintext';
    await client.send(new PutParameterCommand({ Name: '/app/secrets/db', Value: secret, Type: 'SecureString' }));

    const hidden = await client.send(new GetParameterCommand({ Name: '/app/secrets/db' }));
    assert.equal(hidden.Parameter?.Type, 'SecureString');
    assert.notEqual(hidden.Parameter?.Value, secret);
    assert.ok(!hidden.Parameter?.Value?.includes(secret), 'the ciphertext must not carry the plaintext');
    assert.match(hidden.Parameter?.Value ?? '', /^[A-Za-z0-9+/]+=*$/, 'base64, as a KMS blob');

    const shown = await client.send(new GetParameterCommand({ Name: '/app/secrets/db', WithDecryption: true }));
    assert.equal(shown.Parameter?.Value, secret);

    const byPath = await client.send(new GetParametersByPathCommand({ Path: '/app/secrets' }));
    assert.notEqual(byPath.Parameters?.[0]?.Value, secret);
    const byPathDecrypted = await client.send(new GetParametersByPathCommand({ Path: '/app/secrets', WithDecryption: true }));
    assert.equal(byPathDecrypted.Parameters?.[0]?.Value, secret);

    const history = await client.send(new GetParameterHistoryCommand({ Name: '/app/secrets/db' }));
    assert.notEqual(history.Parameters?.[0]?.Value, secret);
    assert.equal(history.Parameters?.[0]?.KeyId, 'alias/aws/ssm', 'the AWS managed key is the default');

    // WithDecryption is "ignored for String and StringList".
    const list = await client.send(new PutParameterCommand({ Name: '/app/hosts', Value: 'a.example,b.example', Type: 'StringList' }));
    assert.equal(list.Version, 1);
    const plain = await client.send(new GetParameterCommand({ Name: '/app/hosts', WithDecryption: true }));
    assert.equal(plain.Parameter?.Type, 'StringList');
    assert.equal(plain.Parameter?.Value, 'a.example,b.example');
  });

  it('lists unknown names of GetParameters in InvalidParameters instead of failing', async () => {
    await client.send(new PutParameterCommand({ Name: '/gp/a', Value: '1', Type: 'String' }));
    const result = await client.send(new GetParametersCommand({ Names: ['/gp/a', '/gp/missing', '/gp/a:7'] }));
    assert.deepEqual(result.Parameters?.map((p) => p.Name), ['/gp/a']);
    assert.deepEqual([...(result.InvalidParameters ?? [])].sort(), ['/gp/a:7', '/gp/missing']);

    const tooMany = await failure(client.send(new GetParametersCommand({ Names: Array.from({ length: 11 }, (_, i) => `/gp/${i}`) })));
    assert.equal(tooMany.name, 'ValidationException');
    assert.match(tooMany.message, /at 'names' failed to satisfy constraint: Member must have length less than or equal to 10/);
  });

  it('reads one level or the whole subtree by path', async () => {
    for (const name of ['/tree/a', '/tree/b', '/tree/sub/c', '/tree/sub/deeper/d', '/treehouse/x']) {
      emulator.put({ Name: name, Value: name, Type: 'String' });
    }
    const oneLevel = await client.send(new GetParametersByPathCommand({ Path: '/tree' }));
    assert.deepEqual(oneLevel.Parameters?.map((p) => p.Name).sort(), ['/tree/a', '/tree/b']);
    const recursive = await client.send(new GetParametersByPathCommand({ Path: '/tree/', Recursive: true }));
    assert.deepEqual(recursive.Parameters?.map((p) => p.Name).sort(), ['/tree/a', '/tree/b', '/tree/sub/c', '/tree/sub/deeper/d']);
    const none = await client.send(new GetParametersByPathCommand({ Path: '/nothing/here', Recursive: true }));
    assert.deepEqual(none.Parameters, []);
    assert.equal(none.NextToken, undefined);

    const badPath = await failure(client.send(new GetParametersByPathCommand({ Path: 'tree' })));
    assert.equal(badPath.name, 'ValidationException');
  });

  it('pages GetParametersByPath with MaxResults, every parameter exactly once', async () => {
    const names = Array.from({ length: 25 }, (_, i) => `/paged/p${String(i).padStart(2, '0')}`);
    for (const name of names) emulator.put({ Name: name, Value: `v-${name}`, Type: 'String' });
    emulator.put({ Name: '/paged/nested/q', Value: 'q', Type: 'String' });

    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const page = await client.send(new GetParametersByPathCommand({ Path: '/paged', MaxResults: 7, NextToken: token }));
      assert.ok((page.Parameters?.length ?? 0) <= 7);
      seen.push(...(page.Parameters ?? []).map((p) => p.Name!));
      token = page.NextToken;
      pages += 1;
    } while (token);
    assert.equal(pages, 4);
    assert.deepEqual([...seen].sort(), names);

    const viaPaginator: string[] = [];
    for await (const page of paginateGetParametersByPath({ client, pageSize: 10 }, { Path: '/paged', Recursive: true })) {
      viaPaginator.push(...(page.Parameters ?? []).map((p) => p.Name!));
    }
    assert.equal(viaPaginator.length, 26);
    assert.equal(new Set(viaPaginator).size, 26);
  });

  it('validates MaxResults 1..10 and refuses NextTokens it did not issue for the request', async () => {
    const eleven = await failure(client.send(new GetParametersByPathCommand({ Path: '/paged', MaxResults: 11 })));
    assert.equal(eleven.name, 'ValidationException');
    assert.equal(eleven.$metadata.httpStatusCode, 400);
    assert.equal(
      eleven.message,
      "1 validation error detected: Value '11' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 10",
    );
    const zero = await failure(client.send(new GetParametersByPathCommand({ Path: '/paged', MaxResults: 0 })));
    assert.equal(zero.name, 'ValidationException');

    const garbage = await failure(client.send(new GetParametersByPathCommand({ Path: '/paged', NextToken: 'not-a-token' })));
    assert.equal(garbage.name, 'InvalidNextToken');
    assert.equal(garbage.$metadata.httpStatusCode, 400);

    const page = await client.send(new GetParametersByPathCommand({ Path: '/paged', MaxResults: 5 }));
    assert.ok(page.NextToken);
    const otherRequest = await failure(client.send(new GetParametersByPathCommand({ Path: '/tree', NextToken: page.NextToken })));
    assert.equal(otherRequest.name, 'InvalidNextToken');
    const tampered = await failure(
      client.send(new GetParametersByPathCommand({ Path: '/paged', NextToken: `x${page.NextToken}` })),
    );
    assert.equal(tampered.name, 'InvalidNextToken');

    const other = await SsmEmulator.start({ throughput: null });
    const otherClient = sdk(other);
    try {
      const foreign = await failure(otherClient.send(new GetParametersByPathCommand({ Path: '/paged', NextToken: page.NextToken })));
      assert.equal(foreign.name, 'InvalidNextToken');
    } finally {
      otherClient.destroy();
      await other.close();
    }
  });

  it('filters GetParametersByPath by Type and refuses filter keys it does not take', async () => {
    emulator.put({ Name: '/mixed/s', Value: 's', Type: 'String' });
    emulator.put({ Name: '/mixed/l', Value: 'a,b', Type: 'StringList' });
    emulator.put({ Name: '/mixed/x', Value: 'x', Type: 'SecureString' });
    const secure = await client.send(
      new GetParametersByPathCommand({ Path: '/mixed', ParameterFilters: [{ Key: 'Type', Values: ['SecureString'] }] }),
    );
    assert.deepEqual(secure.Parameters?.map((p) => p.Name), ['/mixed/x']);
    const byName = await failure(
      client.send(new GetParametersByPathCommand({ Path: '/mixed', ParameterFilters: [{ Key: 'Name', Values: ['/mixed/s'] }] })),
    );
    assert.equal(byName.name, 'InvalidFilterKey');
  });

  it('refuses tag filters on GetParametersByPath, which only DescribeParameters takes', async () => {
    // ParameterStringFilter.Key: "For GetParametersByPath, the following patterns listed for Key
    // aren't valid: tag, DataType, Name, Path, and Tier."
    await client.send(new PutParameterCommand({ Name: '/tagged/p', Value: 'v', Type: 'String', Tags: [{ Key: 'team', Value: 'ops' }] }));
    const byTag = await failure(
      client.send(new GetParametersByPathCommand({ Path: '/tagged', ParameterFilters: [{ Key: 'tag:team', Values: ['ops'] }] })),
    );
    assert.equal(byTag.name, 'InvalidFilterKey');
    assert.equal(byTag.$metadata.httpStatusCode, 400);
    const described = await client.send(new DescribeParametersCommand({ ParameterFilters: [{ Key: 'tag:team', Values: ['ops'] }] }));
    assert.deepEqual(described.Parameters?.map((p) => p.Name), ['/tagged/p']);
  });

  it("enforces AWS's naming rules", async () => {
    const put = (Name: string) => failure(client.send(new PutParameterCommand({ Name, Value: 'v', Type: 'String' })));

    const reserved = await put('/aws/service/thing');
    assert.equal(reserved.name, 'AccessDeniedException');
    assert.match(reserved.message, /reserved parameter name/);
    for (const name of ['awsTest', 'SSM-x', '/Ssm/thing', '/AWSish']) {
      const err = await put(name);
      assert.equal(err.name, 'ValidationException', name);
      assert.match(err.message, /prefixed with/, name);
    }
    for (const name of ['/has space/x', '/dollar$', '/a//b', 'not/rooted']) {
      assert.equal((await put(name)).name, 'ValidationException', name);
    }

    const fifteen = `/${Array.from({ length: 14 }, (_, i) => `l${i + 1}`).join('/')}/name`;
    const ok = await client.send(new PutParameterCommand({ Name: fifteen, Value: 'deep', Type: 'String' }));
    assert.equal(ok.Version, 1);
    const sixteen = `/${Array.from({ length: 15 }, (_, i) => `l${i + 1}`).join('/')}/name`;
    const tooDeep = await put(sixteen);
    assert.equal(tooDeep.name, 'HierarchyLevelLimitExceededException');
    assert.equal(tooDeep.$fault, 'client');

    // "The service removes any spaces specified for the beginning or end of a parameter name."
    await client.send(new PutParameterCommand({ Name: '  /spaced/name ', Value: 'v', Type: 'String' }));
    assert.equal(emulator.get('/spaced/name')?.Value, 'v');

    const noType = await failure(client.send(new PutParameterCommand({ Name: '/untyped', Value: 'v' })));
    assert.equal(noType.name, 'ValidationException');

    // "The maximum length for a parameter name that you specify is 1011 characters. This count of
    // 1011 characters includes the characters in the ARN that precede the name you specify."
    const arnPrefix = 'arn:aws:ssm:us-east-1:123456789012:parameter';
    const longest = `/${'n'.repeat(1011 - arnPrefix.length - 1)}`;
    assert.equal((await client.send(new PutParameterCommand({ Name: longest, Value: 'v', Type: 'String' }))).Version, 1);
    assert.equal((await put(`${longest}n`)).name, 'ValidationException');
    assert.equal((await put(`/${'n'.repeat(1000)}`)).name, 'ValidationException');
  });

  it('limits values to 4 KB on the Standard tier and 8 KB on Advanced', async () => {
    const ok = await client.send(new PutParameterCommand({ Name: '/size/ok', Value: 'x'.repeat(4096), Type: 'String' }));
    assert.equal(ok.Tier, 'Standard');
    const big = await failure(client.send(new PutParameterCommand({ Name: '/size/big', Value: 'x'.repeat(4097), Type: 'String' })));
    assert.equal(big.name, 'ValidationException');
    const advanced = await client.send(
      new PutParameterCommand({ Name: '/size/adv', Value: 'x'.repeat(8192), Type: 'String', Tier: 'Advanced' }),
    );
    assert.equal(advanced.Tier, 'Advanced');
    const tooBig = await failure(
      client.send(new PutParameterCommand({ Name: '/size/huge', Value: 'x'.repeat(8193), Type: 'String', Tier: 'Advanced' })),
    );
    assert.equal(tooBig.name, 'ValidationException');
    const intelligent = await client.send(
      new PutParameterCommand({ Name: '/size/auto', Value: 'x'.repeat(5000), Type: 'String', Tier: 'Intelligent-Tiering' }),
    );
    assert.equal(intelligent.Tier, 'Advanced');
  });

  it('deletes one or several parameters', async () => {
    emulator.put({ Name: '/del/a', Value: '1', Type: 'String' });
    emulator.put({ Name: '/del/b', Value: '2', Type: 'String' });
    emulator.put({ Name: '/del/c', Value: '3', Type: 'String' });
    await client.send(new DeleteParameterCommand({ Name: '/del/a' }));
    const gone = await failure(client.send(new GetParameterCommand({ Name: '/del/a' })));
    assert.equal(gone.name, 'ParameterNotFound');
    assert.equal(gone.message, 'Parameter /del/a not found.');
    const twice = await failure(client.send(new DeleteParameterCommand({ Name: '/del/a' })));
    assert.equal(twice.name, 'ParameterNotFound');

    const many = await client.send(new DeleteParametersCommand({ Names: ['/del/b', '/del/c', '/del/zzz'] }));
    assert.deepEqual(many.DeletedParameters, ['/del/b', '/del/c']);
    assert.deepEqual(many.InvalidParameters, ['/del/zzz']);
    assert.equal(emulator.get('/del/b'), undefined);
  });

  it('describes parameters with filters and pages, MaxResults 1..50', async () => {
    for (let i = 0; i < 12; i++) emulator.put({ Name: `/desc/n${String(i).padStart(2, '0')}`, Value: 'v', Type: i % 3 === 0 ? 'SecureString' : 'String', Description: `number ${i}` });
    emulator.put({ Name: '/desc/deep/z', Value: 'v', Type: 'String' });

    const names: string[] = [];
    let token: string | undefined;
    do {
      const page = await client.send(
        new DescribeParametersCommand({ ParameterFilters: [{ Key: 'Path', Option: 'OneLevel', Values: ['/desc'] }], MaxResults: 5, NextToken: token }),
      );
      assert.ok((page.Parameters?.length ?? 0) <= 5);
      for (const p of page.Parameters ?? []) {
        names.push(p.Name!);
        assert.equal(p.ARN, `arn:aws:ssm:us-east-1:123456789012:parameter${p.Name}`);
        assert.ok(p.LastModifiedDate instanceof Date);
        if (p.Type === 'SecureString') assert.equal(p.KeyId, 'alias/aws/ssm');
      }
      token = page.NextToken;
    } while (token);
    assert.equal(names.length, 12);
    assert.equal(new Set(names).size, 12);

    const recursive = await client.send(
      new DescribeParametersCommand({ ParameterFilters: [{ Key: 'Path', Option: 'Recursive', Values: ['/desc'] }, { Key: 'Type', Values: ['String'] }], MaxResults: 50 }),
    );
    assert.deepEqual(recursive.Parameters?.map((p) => p.Name).sort(), ['/desc/deep/z', '/desc/n01', '/desc/n02', '/desc/n04', '/desc/n05', '/desc/n07', '/desc/n08', '/desc/n10', '/desc/n11']);
    const named = await client.send(
      new DescribeParametersCommand({ ParameterFilters: [{ Key: 'Name', Option: 'BeginsWith', Values: ['/desc/n1'] }] }),
    );
    assert.deepEqual(named.Parameters?.map((p) => p.Name), ['/desc/n10', '/desc/n11']);
    assert.equal(named.Parameters?.[0]?.Description, 'number 10');

    const fiftyOne = await failure(client.send(new DescribeParametersCommand({ MaxResults: 51 })));
    assert.equal(fiftyOne.name, 'ValidationException');
    const label = await failure(client.send(new DescribeParametersCommand({ ParameterFilters: [{ Key: 'Label', Values: ['x'] }] })));
    assert.equal(label.name, 'InvalidFilterKey');
  });

  it('keeps the history of every version, paged', async () => {
    emulator.put({ Name: '/hist/p', Value: 'v1', Type: 'String' });
    emulator.put({ Name: '/hist/p', Value: 'v2', Overwrite: true });
    emulator.put({ Name: '/hist/p', Value: 'v3', Overwrite: true, Description: 'third' });

    const first = await client.send(new GetParameterHistoryCommand({ Name: '/hist/p', MaxResults: 2 }));
    assert.deepEqual(first.Parameters?.map((p) => [p.Version, p.Value]), [[1, 'v1'], [2, 'v2']]);
    assert.ok(first.NextToken);
    const rest = await client.send(new GetParameterHistoryCommand({ Name: '/hist/p', MaxResults: 2, NextToken: first.NextToken }));
    assert.deepEqual(rest.Parameters?.map((p) => [p.Version, p.Value, p.Description]), [[3, 'v3', 'third']]);
    assert.equal(rest.NextToken, undefined);

    const tooMany = await failure(client.send(new GetParameterHistoryCommand({ Name: '/hist/p', MaxResults: 51 })));
    assert.equal(tooMany.name, 'ValidationException');
    const missing = await failure(client.send(new GetParameterHistoryCommand({ Name: '/hist/none' })));
    assert.equal(missing.name, 'ParameterNotFound');
  });

  it('gives the SDK the error name, fault, status and request id it parses', async () => {
    const err = await failure(client.send(new GetParameterCommand({ Name: '/not/there' })));
    assert.equal(err.name, 'ParameterNotFound');
    assert.equal(err.$fault, 'client');
    assert.equal(err.$metadata.httpStatusCode, 400);
    assert.match(err.$metadata.requestId ?? '', /^[0-9a-f-]{36}$/);
    const logged = emulator.requests.find((r) => r.requestId === err.$metadata.requestId);
    assert.equal(logged?.operation, 'GetParameter');
    assert.equal(logged?.status, 400);
    assert.equal(logged?.errorCode, 'ParameterNotFound');
    assert.equal(logged?.accessKeyId, 'AKIDEXAMPLE');

    const ok = await client.send(new GetParameterCommand({ Name: '/app/colour' }));
    assert.match(ok.$metadata.requestId ?? '', /^[0-9a-f-]{36}$/, 'a request id on success too');
  });

  it('speaks awsJson1_1 on the wire', async () => {
    const ok = await raw(emulator, 'AmazonSSM.GetParameter', { Name: '/app/colour' });
    assert.equal(ok.status, 200);
    assert.ok(ok.requestId);
    // Timestamps are epoch seconds as a JSON number with fractional milliseconds.
    assert.match(ok.text, /"LastModifiedDate":\d{10}(\.\d{1,3})?[,}]/);

    const missing = await raw(emulator, 'AmazonSSM.GetParameter', { Name: '/nope' });
    assert.equal(missing.status, 400);
    assert.ok(missing.requestId);
    const body = JSON.parse(missing.text) as Record<string, string>;
    assert.equal(body['__type'], 'ParameterNotFound');
    assert.equal(body['message'], 'Parameter /nope not found.');

    const unknown = await raw(emulator, 'AmazonSSM.FlyToTheMoon', {});
    assert.equal(unknown.status, 400);
    assert.equal((JSON.parse(unknown.text) as Record<string, string>)['__type'], 'UnknownOperationException');

    const unsigned = await raw(emulator, 'AmazonSSM.GetParameter', { Name: '/app/colour' }, {});
    assert.equal(unsigned.status, 400);
    assert.equal((JSON.parse(unsigned.text) as Record<string, string>)['__type'], 'MissingAuthenticationTokenException');

    const wrongService = await raw(emulator, 'AmazonSSM.GetParameter', { Name: '/app/colour' }, { authorization: AUTH.replace('/ssm/', '/s3/') });
    assert.equal((JSON.parse(wrongService.text) as Record<string, string>)['__type'], 'InvalidSignatureException');

    const notJson = await raw(emulator, 'AmazonSSM.GetParameter', '{nope');
    assert.equal(notJson.status, 400);
    assert.equal((JSON.parse(notJson.text) as Record<string, string>)['__type'], 'SerializationException');
  });
});

describe('SSM emulator throttling', () => {
  it('empties the account-wide bucket, answers ThrottlingException, and refills as the clock advances', async () => {
    const clock = new ManualClock(Date.UTC(2024, 0, 1, 12, 0, 0, 123));
    const emulator = await SsmEmulator.start({ clock, throughput: { readsPerSecond: 5, burst: 5 } });
    const client = sdk(emulator);
    try {
      emulator.put({ Name: '/t/a', Value: 'a', Type: 'String' });
      const get = () => client.send(new GetParameterCommand({ Name: '/t/a' }));
      for (let i = 0; i < 3; i++) await get();
      await client.send(new GetParametersCommand({ Names: ['/t/a'] }));
      await client.send(new GetParametersByPathCommand({ Path: '/t' }));

      const throttled = await failure(get());
      assert.equal(throttled.name, 'ThrottlingException');
      assert.equal(throttled.message, 'Rate exceeded');
      assert.equal(throttled.$metadata.httpStatusCode, 400);
      assert.equal(emulator.throttledCount, 1);

      // Writes are not in the read bucket.
      emulator.put({ Name: '/t/b', Value: 'b', Type: 'String' });
      await client.send(new PutParameterCommand({ Name: '/t/c', Value: 'c', Type: 'String' }));

      clock.advance(200); // one token at 5/s
      await get();
      assert.equal((await failure(get())).name, 'ThrottlingException');

      clock.advance(10_000); // refills to the burst, no further
      for (let i = 0; i < 5; i++) await get();
      assert.equal((await failure(get())).name, 'ThrottlingException');

      assert.equal(emulator.throttledCount, 3);
      assert.deepEqual(emulator.callCounts(), { GetParameter: 12, GetParameters: 1, GetParametersByPath: 1, PutParameter: 1 });
    } finally {
      client.destroy();
      await emulator.close();
    }
  });

  it("lets the SDK's standard retry succeed once the bucket refills", async () => {
    // Time moves on by a second as soon as the first throttle is answered, i.e. while the SDK
    // backs off: deterministic whatever the SDK's backoff delay is.
    const start = Date.UTC(2024, 0, 1, 12, 0, 0, 123);
    let emulator: SsmEmulator | undefined;
    const clock: Clock = {
      now: () => start + (emulator && emulator.throttledCount > 0 ? 1000 : 0),
      sleep: () => Promise.resolve(),
    };
    emulator = await SsmEmulator.start({ clock, throughput: { readsPerSecond: 1, burst: 1 } });
    const client = sdk(emulator, { maxAttempts: 3 });
    try {
      emulator.put({ Name: '/r/a', Value: 'a', Type: 'String' });
      await client.send(new GetParameterCommand({ Name: '/r/a' }));
      const result = await client.send(new GetParameterCommand({ Name: '/r/a' }));
      assert.equal(result.Parameter?.Value, 'a');
      assert.equal(result.$metadata.attempts, 2);
      assert.equal(emulator.throttledCount, 1);
      assert.equal(emulator.requests.at(-2)?.errorCode, 'ThrottlingException');
    } finally {
      client.destroy();
      await emulator.close();
    }
  });

  it('refills its token bucket at the configured rate, capped at the burst', () => {
    const clock = new ManualClock(0);
    const bucket = new TokenBucket({ ratePerSecond: 4, burst: 2, clock });
    assert.equal(bucket.tryTake(), true);
    assert.equal(bucket.tryTake(), true);
    assert.equal(bucket.tryTake(), false);
    assert.equal(bucket.msUntilAvailable(), 250);
    clock.advance(249);
    assert.equal(bucket.tryTake(), false, 'a refused take costs nothing, and 249 ms is not a whole token');
    clock.advance(1);
    assert.equal(bucket.tryTake(), true);
    clock.advance(60_000);
    assert.equal(bucket.available(), 2);
    assert.equal(new TokenBucket({ ratePerSecond: Infinity, clock }).tryTake(1e9), true);
  });

  it('does not throttle when throughput is switched off', async () => {
    const emulator = await SsmEmulator.start({ throughput: { readsPerSecond: Infinity } });
    const client = sdk(emulator);
    try {
      emulator.put({ Name: '/u/a', Value: 'a', Type: 'String' });
      await Promise.all(Array.from({ length: 60 }, () => client.send(new GetParameterCommand({ Name: '/u/a' }))));
      assert.equal(emulator.throttledCount, 0);
      assert.equal(emulator.callCounts()['GetParameter'], 60);
    } finally {
      client.destroy();
      await emulator.close();
    }
  });
});

describe('SSM emulator faults and state', () => {
  it('injects errors, delays and dropped connections, matched by operation and count', async () => {
    const clock = new ManualClock(Date.UTC(2024, 0, 1, 12, 0, 0, 123));
    const emulator = await SsmEmulator.start({ clock, throughput: null });
    const client = sdk(emulator);
    const retrying = sdk(emulator, { maxAttempts: 3 });
    try {
      emulator.put({ Name: '/f/a', Value: 'a', Type: 'String' });

      emulator.injectFault({ operation: 'GetParametersByPath', code: 'InternalServerError', message: 'boom' });
      const server = await failure(client.send(new GetParametersByPathCommand({ Path: '/f' })));
      assert.equal(server.name, 'InternalServerError');
      assert.equal(server.$fault, 'server');
      assert.equal(server.$metadata.httpStatusCode, 500);
      // Used up, and other operations were never affected.
      assert.equal((await client.send(new GetParametersByPathCommand({ Path: '/f' }))).Parameters?.length, 1);

      emulator.injectFault({ operation: 'GetParameter', drop: true });
      const dropped = await failure(client.send(new GetParameterCommand({ Name: '/f/a' })));
      assert.equal(dropped.$metadata.httpStatusCode, undefined);
      emulator.injectFault({ operation: 'GetParameter', drop: true });
      const recovered = await retrying.send(new GetParameterCommand({ Name: '/f/a' }));
      assert.equal(recovered.Parameter?.Value, 'a');
      assert.equal(recovered.$metadata.attempts, 2);

      emulator.injectFault({ operation: 'GetParameter', delayMs: 30_000 });
      let settled = false;
      const slow = client.send(new GetParameterCommand({ Name: '/f/a' })).finally(() => (settled = true));
      await clock.whenSleeping(1);
      assert.equal(settled, false);
      clock.advance(30_000);
      assert.equal((await slow).Parameter?.Value, 'a');

      // A call that never answers is the client's timeout to catch.
      emulator.injectFault({ operation: 'GetParameter', delayMs: Infinity });
      const impatient = sdk(emulator, { requestHandler: { requestTimeout: 100, throwOnRequestTimeout: true } });
      try {
        const hung = await failure(impatient.send(new GetParameterCommand({ Name: '/f/a' })));
        assert.equal(hung.name, 'TimeoutError');
      } finally {
        impatient.destroy();
      }
      assert.deepEqual(
        emulator.requests.filter((r) => r.operation === 'GetParameter').map((r) => r.status),
        [0, 0, 200, 200, 0],
      );
    } finally {
      client.destroy();
      retrying.destroy();
      await emulator.close();
    }
  });

  it('keeps state per instance, and round-trips it through a snapshot', async () => {
    const clock = new ManualClock(Date.UTC(2024, 0, 1, 12, 0, 0, 123));
    const a = await SsmEmulator.start({ clock, throughput: null, region: 'eu-west-1', accountId: '111122223333' });
    const b = await SsmEmulator.start({ throughput: null });
    try {
      a.createKmsKey('custom');
      a.load([
        { Name: '/s/one', Value: '1', Type: 'String' },
        { Name: '/s/secret', Value: 'shh', Type: 'SecureString', KeyId: 'alias/custom' },
        { Name: '/s/one', Value: '2', Overwrite: true },
      ]);
      assert.equal(b.get('/s/one'), undefined);
      assert.equal(a.get('/s/one')?.Version, 2);
      assert.equal(a.get('/s/one')?.ARN, 'arn:aws:ssm:eu-west-1:111122223333:parameter/s/one');

      const snapshot = JSON.parse(JSON.stringify(a.snapshot()));
      b.restore(snapshot);
      assert.deepEqual(b.history('/s/one').map((p) => [p.Version, p.Value]), [[1, '1'], [2, '2']]);
      assert.equal(b.get('/s/secret')?.KeyId, 'alias/custom');
      // The key a restored SecureString names exists in the restored account too.
      assert.equal(b.put({ Name: '/s/secret2', Value: 'x', Type: 'SecureString', KeyId: 'alias/custom' }).Version, 1);
      assert.equal(b.get('/s/one')?.LastModifiedDate.getTime(), clock.now());

      const client = sdk(b);
      try {
        const hidden = await client.send(new GetParameterCommand({ Name: '/s/secret' }));
        assert.notEqual(hidden.Parameter?.Value, 'shh');
      } finally {
        client.destroy();
      }

      assert.throws(
        () => a.load([{ Name: '/s/new', Value: 'v', Type: 'String' }, { Name: '/s/one', Value: '3', Type: 'String' }]),
        (err: unknown) => err instanceof SsmServiceError && err.code === 'ParameterAlreadyExists' && /parameters\[1\]/.test(err.message),
      );
      assert.throws(() => a.put({ Name: '/aws/x/y', Value: 'v', Type: 'String' }), (err: unknown) => err instanceof SsmServiceError && err.code === 'AccessDeniedException');
      assert.throws(() => a.delete('/s/none'), (err: unknown) => err instanceof SsmServiceError && err.code === 'ParameterNotFound');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses a signature scoped to another region', async () => {
    const emulator = await SsmEmulator.start({ region: 'eu-west-1', throughput: null });
    const client = sdk(emulator); // signs for us-east-1
    try {
      const err = await failure(client.send(new GetParameterCommand({ Name: '/x' })));
      assert.equal(err.name, 'InvalidSignatureException');
      assert.equal(err.$metadata.httpStatusCode, 400);
    } finally {
      client.destroy();
      await emulator.close();
    }
  });
});
