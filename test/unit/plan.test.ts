// The planner as a table: each row a situation in plain values and the step it must give. Every
// transition of a pass, a recovery and a failure is a row.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../agent/config.js';
import {
  passSituation,
  planFailure,
  planPass,
  planRecovery,
  retryAt,
  type FailureSituation,
  type FailureStep,
  type PassSituation,
  type PassStep,
  type RecoverySituation,
  type RecoveryStep,
} from '../../agent/plan.js';
import { emptyState } from '../../agent/state.js';

const NOW = 1_700_000_000_000;
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const SYS_A = '/nix/store/aaaa-nixos-system';
const SYS_B = '/nix/store/bbbb-nixos-system';

const base: PassSituation = { suspended: false, heldOn: undefined, recorded: undefined, running: SYS_A, failed: undefined, desiredHash: A, closure: false, mode: 'safe', now: NOW };
const failedA = { stage: 'build', reason: 'nixos-rebuild build exited with 1', retryAt: NOW + 30_000 };

const passRows: [string, Partial<PassSituation>, PassStep][] = [
  ['suspended, before reading the sources', { suspended: true, desiredHash: undefined }, { kind: 'suspended' }],
  ['suspended wins over everything', { suspended: true, heldOn: A, failed: failedA }, { kind: 'suspended' }],
  ['not suspended, sources not read yet', { desiredHash: undefined }, { kind: 'fetch' }],
  ['first pass: nothing recorded', {}, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['a prebuilt closure is substituted, not built', { closure: true }, { kind: 'apply', releaseHold: false, realise: 'substitute' }],
  ['a prebuilt closure takes the safe order even with rebuild.mode = switch', { closure: true, mode: 'switch' }, { kind: 'apply', releaseHold: false, realise: 'substitute' }],
  ['rebuild.mode = switch: nixos-rebuild switch, verified afterwards', { mode: 'switch' }, { kind: 'apply', releaseHold: false, realise: 'switch' }],
  ['a closure already running is unchanged like any desired state', { closure: true, recorded: { desiredHash: A, storePath: SYS_A } }, { kind: 'unchanged', releaseHold: false }],
  ['running what was recorded for this desired state', { recorded: { desiredHash: A, storePath: SYS_A } }, { kind: 'unchanged', releaseHold: false }],
  ['recorded, but another system runs (reboot into an older default)', { recorded: { desiredHash: A, storePath: SYS_A }, running: SYS_B }, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['recorded, but nothing runs', { recorded: { desiredHash: A, storePath: SYS_A }, running: undefined }, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['a new desired state', { recorded: { desiredHash: B, storePath: SYS_B }, running: SYS_B }, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['held on this desired state by the operator', { heldOn: A }, { kind: 'hold-rollback' }],
  ['held on this desired state, even when it failed before', { heldOn: A, failed: failedA }, { kind: 'hold-rollback' }],
  ['held on another desired state: the hold ends', { heldOn: B }, { kind: 'apply', releaseHold: true, realise: 'build' }],
  ['held on another, already running the desired one', { heldOn: B, recorded: { desiredHash: A, storePath: SYS_A } }, { kind: 'unchanged', releaseHold: true }],
  ['failed before, retry time not reached', { failed: failedA }, { kind: 'hold-failed', ...failedA, releaseHold: false }],
  ['failed before, held on another: the hold ends, the failure holds', { failed: failedA, heldOn: B }, { kind: 'hold-failed', ...failedA, releaseHold: true }],
  ['failed before, retry time reached exactly', { failed: failedA, now: failedA.retryAt }, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['failed before, retry time passed', { failed: failedA, now: failedA.retryAt + 1 }, { kind: 'apply', releaseHold: false, realise: 'build' }],
  ['failed before but running it (recorded): unchanged', { failed: failedA, recorded: { desiredHash: A, storePath: SYS_A } }, { kind: 'unchanged', releaseHold: false }],
];

const recoveryRows: [string, RecoverySituation, RecoveryStep][] = [
  ['idle', { phase: 'idle', desiredHash: undefined, storePath: undefined, running: SYS_A }, { kind: 'none' }],
  ['killed after rendering', { phase: 'rendered', desiredHash: A, storePath: undefined, running: SYS_A }, { kind: 'restore' }],
  ['killed while building', { phase: 'building', desiredHash: A, storePath: undefined, running: SYS_A }, { kind: 'restore' }],
  ['killed while activating, before the switch', { phase: 'activating', desiredHash: A, storePath: SYS_B, running: SYS_A }, { kind: 'rollback', failedHash: A }],
  ['killed while activating, after the switch', { phase: 'activating', desiredHash: A, storePath: SYS_B, running: SYS_B }, { kind: 'finish', desiredHash: A, storePath: SYS_B }],
  ['killed while verifying', { phase: 'verifying', desiredHash: A, storePath: SYS_B, running: SYS_B }, { kind: 'finish', desiredHash: A, storePath: SYS_B }],
  ['killed while verifying, another system runs', { phase: 'verifying', desiredHash: A, storePath: SYS_B, running: SYS_A }, { kind: 'rollback', failedHash: A }],
  ['killed while verifying, nothing runs', { phase: 'verifying', desiredHash: A, storePath: SYS_B, running: undefined }, { kind: 'rollback', failedHash: A }],
  ['activating without a store path', { phase: 'activating', desiredHash: A, storePath: undefined, running: SYS_A }, { kind: 'reset' }],
  ['verifying without a desired hash', { phase: 'verifying', desiredHash: undefined, storePath: SYS_B, running: SYS_B }, { kind: 'reset' }],
  ['killed while committing', { phase: 'committing', desiredHash: A, storePath: SYS_B, running: SYS_B }, { kind: 'finish', desiredHash: A, storePath: SYS_B }],
  ['committing, then booted into the last good system', { phase: 'committing', desiredHash: A, storePath: SYS_B, running: SYS_A }, { kind: 'back-to-last-good' }],
  ['committing without a store path', { phase: 'committing', desiredHash: A, storePath: undefined, running: SYS_A }, { kind: 'reset' }],
  ['killed while rolling back', { phase: 'rolling-back', desiredHash: undefined, storePath: SYS_A, running: SYS_B }, { kind: 'rollback', failedHash: undefined }],
];

const failureRows: [string, FailureSituation, FailureStep][] = [
  ['the build failed', { phase: 'building', stage: 'build', cancelled: false }, { rollback: false, remember: true, outcome: 'failed' }],
  ['the build was cancelled', { phase: 'building', stage: 'build', cancelled: true }, { rollback: false, remember: false, outcome: 'cancelled' }],
  ['updating channels failed', { phase: 'rendered', stage: 'channels', cancelled: false }, { rollback: false, remember: true, outcome: 'failed' }],
  ['updating channels was cancelled', { phase: 'rendered', stage: 'channels', cancelled: true }, { rollback: false, remember: false, outcome: 'cancelled' }],
  ['activation failed', { phase: 'activating', stage: 'activate', cancelled: false }, { rollback: true, remember: true, outcome: 'rolled-back' }],
  ['the legacy switch failed', { phase: 'activating', stage: 'activate', cancelled: false }, { rollback: true, remember: true, outcome: 'rolled-back' }],
  ['verification failed', { phase: 'verifying', stage: 'verify', cancelled: false }, { rollback: true, remember: true, outcome: 'rolled-back' }],
  ['making it the boot default failed', { phase: 'committing', stage: 'commit', cancelled: false }, { rollback: true, remember: true, outcome: 'rolled-back' }],
  ['a build-stage error while the journal says activating', { phase: 'activating', stage: 'build', cancelled: false }, { rollback: false, remember: true, outcome: 'failed' }],
];

describe('planPass', () => {
  for (const [name, situation, step] of passRows) {
    it(name, () => assert.deepEqual(planPass({ ...base, ...situation }), step));
  }

  it('reads its situation from the durable state', () => {
    const state = emptyState(NOW);
    state.running = { desiredHash: A, storePath: SYS_A, at: NOW };
    state.held = { desiredHash: B, since: NOW };
    state.failed[A] = { at: NOW, attempts: 1, ...failedA };
    state.failed[B] = { at: NOW, attempts: 3, stage: 'verify', reason: 'unhealthy', retryAt: NOW + 1 };
    assert.deepEqual(passSituation(state, A, SYS_A, NOW), { suspended: false, heldOn: B, recorded: { desiredHash: A, storePath: SYS_A }, running: SYS_A, failed: failedA, desiredHash: A, closure: false, mode: 'safe', now: NOW });
    assert.equal(passSituation(state, undefined, undefined, NOW).failed, undefined);
    state.suspended = { since: NOW };
    assert.equal(passSituation(state, undefined, undefined, NOW).suspended, true);
  });
});

describe('planRecovery', () => {
  for (const [name, situation, step] of recoveryRows) {
    it(name, () => assert.deepEqual(planRecovery(situation), step));
  }
});

describe('planFailure', () => {
  for (const [name, situation, step] of failureRows) {
    it(name, () => assert.deepEqual(planFailure(situation), step));
  }
});

describe('retryAt', () => {
  const retry = parseConfig({ retry: { failedBackoffSeconds: 30, maxBackoffSeconds: 600 } }).retry;
  const rows: [number, number][] = [
    [1, 30_000],
    [2, 60_000],
    [3, 120_000],
    [5, 480_000],
    [6, 600_000],
    [40, 600_000],
  ];
  for (const [attempts, waitMs] of rows) {
    it(`after ${attempts} failure(s): ${waitMs / 1000} s`, () => assert.equal(retryAt(NOW, attempts, retry), NOW + waitMs));
  }
});

it('every step is a plain value that prints', () => {
  for (const [, situation] of passRows) {
    const step = planPass({ ...base, ...situation });
    assert.deepEqual(JSON.parse(JSON.stringify(step)), step);
  }
});
