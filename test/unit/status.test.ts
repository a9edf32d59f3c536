// The status as a table: each row a situation in plain values (the durable state and what the
// reconciler recorded) and the fields of the Status it must give.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidInputError } from '../../agent/errors.js';
import { parseStatus } from '../../agent/report/status-file.js';
import { emptyState } from '../../agent/state.js';
import { deriveStatus, startingStatus, statusExitCode, type PassEnd, type Status, type StatusDurable, type StatusFacts } from '../../agent/status.js';

const NOW = 1_700_000_000_000;
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const SYS_A = '/nix/store/aaaa-nixos-system';
const SYS_B = '/nix/store/bbbb-nixos-system';

const durable: StatusDurable = { ...emptyState(NOW), lastGood: { storePath: SYS_A, desiredHash: A, at: NOW }, builds: { [SYS_A]: { desiredHash: A, sources: { userData: 'none', parameters: [] }, at: NOW } } };
const base: StatusFacts = { pid: 7, activity: { kind: 'starting' }, noGoodGeneration: false };
const converged: PassEnd = { outcome: 'converged', at: NOW - 5_000, durationMs: 4_000, desiredHash: A, generation: 3 };
const failedBuild: PassEnd = {
  outcome: 'failed',
  at: NOW - 1_000,
  durationMs: 900,
  desiredHash: B,
  error: { kind: 'apply-failed', message: 'nixos-rebuild build exited with 1', stage: 'build' },
};
const afterConverged: Partial<StatusFacts> = { activity: { kind: 'ended' }, lastPass: converged, running: SYS_A, lastSuccessAt: converged.at };

type Row = [string, Partial<StatusDurable> | undefined, Partial<StatusFacts>, Partial<Status>];

const rows: Row[] = [
  ['before the durable state is loaded', undefined, {}, { phase: 'starting', condition: 'converging', message: 'starting', firstConvergenceDone: false, reasons: [], rebootRequired: false, noGoodGeneration: false }],
  ['started: last good known, nothing finished', {}, {}, { phase: 'starting', condition: 'converging', lastGood: { storePath: SYS_A, desiredHash: A }, firstConvergenceDone: false }],
  ['nothing ended yet: starting', {}, { activity: { kind: 'ended' } }, { phase: 'starting', message: 'starting', firstConvergenceDone: false }],
  ['first fetch: still converging (nothing converged yet)', {}, { activity: { kind: 'pass', step: { step: 'fetching' } } }, { phase: 'fetching', condition: 'converging', message: 'reading user data and SSM parameters' }],
  ['a poll after a convergence keeps the condition', {}, { ...afterConverged, activity: { kind: 'pass', step: { step: 'fetching' } } }, { phase: 'fetching', condition: 'converged', message: 'reading user data and SSM parameters', firstConvergenceDone: true }],
  ['the user-data script keeps the condition too', {}, { ...afterConverged, activity: { kind: 'pass', step: { step: 'user-data-script' } } }, { phase: 'fetching', condition: 'converged', message: 'running the user-data script' }],
  ['a poll after a failure keeps it failed', {}, { activity: { kind: 'pass', step: { step: 'fetching' } }, lastPass: failedBuild, noGoodGeneration: true }, { phase: 'fetching', condition: 'failed' }],
  ['rendering: converging', {}, { ...afterConverged, activity: { kind: 'pass', step: { step: 'rendering', desiredHash: B } } }, { phase: 'rendering', condition: 'converging', message: 'rendering desired bbbbbbbbbbbb' }],
  ['updating channels', {}, { activity: { kind: 'pass', step: { step: 'updating-channels', desiredHash: B } } }, { phase: 'building', message: 'updating channels for desired bbbbbbbbbbbb' }],
  ['building the next generation', {}, { activity: { kind: 'pass', step: { step: 'building', desiredHash: B, generation: 4 } } }, { phase: 'building', condition: 'converging', message: 'building generation 4 (desired bbbbbbbbbbbb)' }],
  ['substituting a closure', {}, { activity: { kind: 'pass', step: { step: 'substituting', storePath: SYS_B, substituter: 'https://cache.example' } } }, { phase: 'building', message: `substituting ${SYS_B} from https://cache.example` }],
  ['nixos-rebuild switch', {}, { activity: { kind: 'pass', step: { step: 'switching', desiredHash: B } } }, { phase: 'activating', message: 'nixos-rebuild switch for desired bbbbbbbbbbbb' }],
  ['activating', {}, { activity: { kind: 'pass', step: { step: 'activating', desiredHash: B, storePath: SYS_B } } }, { phase: 'activating', message: `activating ${SYS_B} (test, desired bbbbbbbbbbbb)` }],
  ['verifying', {}, { activity: { kind: 'pass', step: { step: 'verifying', storePath: SYS_B } } }, { phase: 'verifying', message: `verifying ${SYS_B}` }],
  ['committing', {}, { activity: { kind: 'pass', step: { step: 'committing', storePath: SYS_B } } }, { phase: 'committing', message: `making ${SYS_B} the boot default` }],
  ['rolling back', {}, { activity: { kind: 'pass', step: { step: 'rolling-back', storePath: SYS_A, reason: 'health verification failed' } } }, { phase: 'rolling-back', condition: 'converging', message: `rolling back to ${SYS_A}: health verification failed` }],
  ['verifying the rolled-back generation', {}, { activity: { kind: 'pass', step: { step: 'verifying-rollback', storePath: SYS_A } } }, { phase: 'verifying', message: `verifying rolled-back ${SYS_A}` }],
  [
    'converged',
    {},
    afterConverged,
    {
      phase: 'idle',
      condition: 'converged',
      message: 'converged to desired aaaaaaaaaaaa (generation 3)',
      firstConvergenceDone: true,
      running: { storePath: SYS_A, desiredHash: A, generation: 3 },
      lastResult: { outcome: 'converged', at: new Date(converged.at).toISOString(), durationMs: 4_000, desiredHash: A },
      lastSuccessAt: new Date(converged.at).toISOString(),
      reasons: [],
    },
  ],
  ['unchanged', {}, { ...afterConverged, lastPass: { ...converged, outcome: 'unchanged' } }, { phase: 'idle', condition: 'converged', message: 'converged to desired aaaaaaaaaaaa; nothing changed' }],
  [
    'failed, still on the last good generation: degraded',
    {},
    { ...afterConverged, lastPass: { ...failedBuild, errorReasons: ['unit x failed'] } },
    { phase: 'idle', condition: 'degraded', message: 'failed: nixos-rebuild build exited with 1', reasons: ['nixos-rebuild build exited with 1', 'unit x failed'], lastSuccessAt: new Date(converged.at).toISOString() },
  ],
  ['failed with no good generation running', {}, { activity: { kind: 'ended' }, lastPass: failedBuild, noGoodGeneration: true }, { condition: 'failed', noGoodGeneration: true }],
  ['rolled back', {}, { ...afterConverged, lastPass: { ...failedBuild, outcome: 'rolled-back', error: { kind: 'apply-failed', message: 'health verification failed: x' } } }, { condition: 'degraded', message: 'rolled back to the last good generation: health verification failed: x' }],
  ['invalid input', {}, { ...afterConverged, lastPass: { ...failedBuild, outcome: 'invalid-input', error: { kind: 'invalid-input', message: 'bad option' } } }, { condition: 'degraded', message: 'desired state rejected, nothing switched: bad option' }],
  ['held after a failure', {}, { ...afterConverged, lastPass: { ...failedBuild, outcome: 'held' } }, { phase: 'held', condition: 'degraded', message: 'desired bbbbbbbbbbbb failed before; waiting for a change or the retry time' }],
  [
    "held on the operator's rollback",
    { held: { since: NOW, desiredHash: B } },
    { ...afterConverged, lastPass: { outcome: 'held', at: NOW, durationMs: 1, desiredHash: B } },
    { phase: 'held', message: "held on the operator's rollback until the sources change", held: { since: new Date(NOW).toISOString(), desiredHash: B } },
  ],
  ['cancelled by a newer desired state', {}, { ...afterConverged, lastPass: { outcome: 'cancelled', at: NOW, durationMs: 1, desiredHash: B } }, { phase: 'idle', message: 'build cancelled by a newer desired state' }],
  ['cancelled: the instance is leaving', {}, { ...afterConverged, leaving: 'termination', lastPass: { outcome: 'cancelled', at: NOW, durationMs: 1, desiredHash: B } }, { phase: 'stopping', message: 'build cancelled: the instance is leaving (termination)' }],
  [
    'a pass that ends after the instance began leaving',
    {},
    { ...afterConverged, leaving: 'Terminated', lastPass: { ...converged, outcome: 'unchanged' } },
    { phase: 'stopping', message: 'the instance is leaving (Terminated); no new rebuild starts (the last pass: converged to desired aaaaaaaaaaaa; nothing changed)' },
  ],
  ['a pass ended while suspended', { suspended: { since: NOW } }, { ...afterConverged, lastPass: { outcome: 'suspended', at: NOW, durationMs: 0 } }, { phase: 'suspended', message: 'suspended: convergence paused', suspended: { since: new Date(NOW).toISOString() } }],
  ['the first pass reports a corrupt state file', {}, { ...afterConverged, lastPass: { ...converged, startProblem: 'state.json was unreadable' } }, { reasons: ['state.json was unreadable'] }],
  ['an error wins over the start problem', {}, { ...afterConverged, lastPass: { ...failedBuild, startProblem: 'state.json was unreadable' } }, { reasons: ['nixos-rebuild build exited with 1'] }],
  ['suspended by the operator', { suspended: { since: NOW } }, { ...afterConverged, activity: { kind: 'suspended' } }, { phase: 'suspended', condition: 'converged', message: 'suspended: convergence paused' }],
  ['resumed', {}, { ...afterConverged, activity: { kind: 'resumed' } }, { phase: 'idle', condition: 'converged', message: 'resumed' }],
  ['the instance is leaving', {}, { ...afterConverged, leaving: 'spot interruption', activity: { kind: 'leaving', reason: 'spot interruption' } }, { phase: 'stopping', condition: 'converged', message: 'the instance is leaving (spot interruption); no new rebuild starts' }],
  ['the instance stays', {}, { ...afterConverged, activity: { kind: 'staying' } }, { phase: 'idle', message: 'the instance is staying; convergence resumes' }],
  ['the instance stays, suspended', { suspended: { since: NOW } }, { ...afterConverged, activity: { kind: 'staying' } }, { phase: 'suspended', message: 'the instance is staying; convergence resumes' }],
  ['a reboot is required', { rebootRequired: { since: NOW, storePath: SYS_B } }, afterConverged, { rebootRequired: true }],
  ['the running system was not built by the agent', {}, { ...afterConverged, running: SYS_B }, { running: { storePath: SYS_B, generation: 3 } }],
  ['instance and desired state known', {}, { instanceId: 'i-0123', desired: { hash: A, sources: { userData: 'none', parameters: [] }, notes: [], runs: 'configuration' } }, { instanceId: 'i-0123', desired: { hash: A, sources: { userData: 'none', parameters: [] }, notes: [], runs: 'configuration' } }],
];

describe('deriveStatus', () => {
  for (const [name, durablePatch, factsPatch, expected] of rows) {
    it(name, () => {
      const status = deriveStatus(durablePatch === undefined ? undefined : { ...durable, ...durablePatch }, { ...base, ...factsPatch }, NOW);
      assert.equal(status.updatedAt, new Date(NOW).toISOString());
      assert.equal(status.pid, 7);
      for (const [key, value] of Object.entries(expected)) assert.deepEqual(status[key as keyof Status], value, key);
    });
  }

  it('every status it derives is read back whole by `status` (parseStatus)', () => {
    const rollout = { prefix: '/nixos/fleet', candidate: 'c1', state: 'halted' as const, reason: 'alarm', haltedBy: 'alarm' as const, takes: 'stable' as const, cohort: 0.5, canary: false, percent: 10, step: 1, steps: 4, failures: 0, threshold: 2, startAt: new Date(NOW).toISOString() };
    const everything: Row = ['every field', { held: { since: NOW, desiredHash: B } }, { ...afterConverged, lastPass: { ...failedBuild, errorReasons: ['unit x failed'] }, instanceId: 'i-1', desired: { hash: A, sources: { userData: 'none', parameters: [{ name: '/p', version: 2 }] }, notes: ['n'], runs: 'closure', closure: { storePath: SYS_B, substituter: 'https://cache' } }, rollout: [rollout] }, {}];
    for (const [name, durablePatch, factsPatch] of [...rows, everything]) {
      const status = deriveStatus(durablePatch === undefined ? undefined : { ...durable, ...durablePatch }, { ...base, ...factsPatch }, NOW);
      const written = JSON.parse(JSON.stringify(status)) as unknown;
      assert.deepEqual(parseStatus(written, 'status.json'), written, name);
    }
  });

  it('a status of a newer format, or of another shape, is refused naming where it came from', () => {
    const status = JSON.parse(JSON.stringify(deriveStatus(durable, { ...base, ...afterConverged }, NOW))) as Record<string, unknown>;
    const refused = (json: unknown, message: RegExp) => assert.throws(() => parseStatus(json, '/x/status.json'), (err: unknown) => err instanceof InvalidInputError && message.test(err.message));
    refused({ version: 99, condition: 'weird' }, /^\/x\/status\.json: was written by a newer agent in format 99, .*this agent reads format 1$/);
    refused([], /^\/x\/status\.json: not a status: \(top level\): expected an object$/);
    refused({ ...status, reasons: 'none' }, /^\/x\/status\.json: not a status: reasons: Expected array/);
    refused({ ...status, condition: 'weird' }, /^\/x\/status\.json: not a status: condition: /);
    // A newer format that says this one may read it: its own fields are kept.
    assert.deepEqual(parseStatus({ ...status, version: 2, minReaderVersion: 1, extra: true }, 'status.json'), { ...status, extra: true });
  });

  it('leaves out what is not known rather than writing undefined', () => {
    const status = deriveStatus(emptyState(NOW), base, NOW);
    for (const key of ['instanceId', 'desired', 'running', 'lastGood', 'lastResult', 'suspended', 'held', 'lastSuccessAt', 'rollout']) assert.ok(!(key in status), key);
    assert.deepEqual(JSON.parse(JSON.stringify(status)), status);
  });

  it('an empty rollout list is no rollout', () => {
    assert.ok(!('rollout' in deriveStatus(undefined, { ...base, rollout: [] }, NOW)));
  });

  it('the starting status is the derivation of an agent that did nothing', () => {
    assert.deepEqual(startingStatus(NOW, 7), deriveStatus(undefined, base, NOW));
  });

  it('exit codes follow the condition', () => {
    assert.equal(statusExitCode(deriveStatus(durable, { ...base, ...afterConverged }, NOW)), 0);
    assert.equal(statusExitCode(deriveStatus(durable, { ...base, activity: { kind: 'ended' }, lastPass: failedBuild, noGoodGeneration: true }, NOW)), 1);
    assert.equal(statusExitCode(deriveStatus(durable, { ...base, ...afterConverged, lastPass: failedBuild }, NOW)), 2);
    // A poll changes nothing: the exit code a converged agent gave stays 0 while it reads its sources.
    assert.equal(statusExitCode(deriveStatus(durable, { ...base, ...afterConverged, activity: { kind: 'pass', step: { step: 'fetching' } } }, NOW)), 0);
  });
});
