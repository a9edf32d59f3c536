// Plain-value builders for the pure layers: SSM snapshots, user data, local snapshots and the
// desired state built from them.
import { buildDesired, type DesiredState, type LocalSnapshot } from '../../agent/desired/desired.js';
import { Secret } from '../../agent/secret.js';
import type { SsmParameter, SsmSnapshot } from '../../agent/sources/ssm.js';
import { interpretUserData, type UserData } from '../../agent/sources/userdata.js';

export const NO_LOCAL: LocalSnapshot = { baseConfiguration: undefined, modules: [] };

export function param(
  name: string,
  value: string,
  options: { type?: SsmParameter['type']; version?: number; lastModified?: number } = {},
): SsmParameter {
  const type = options.type ?? 'String';
  return {
    name,
    type,
    value: type === 'SecureString' ? new Secret(value) : value,
    version: options.version ?? 1,
    lastModified: options.lastModified ?? Date.UTC(2024, 0, 1),
  };
}

export function ssm(...prefixes: [prefix: string, parameters: SsmParameter[]][]): SsmSnapshot {
  return { prefixes: prefixes.map(([prefix, parameters]) => ({ prefix, parameters })), skipped: [], calls: prefixes.length };
}

export function userData(text: string | undefined): UserData {
  return interpretUserData(text === undefined ? undefined : Buffer.from(text));
}

export function desired(input: { userData?: string; ssm?: SsmSnapshot; local?: LocalSnapshot } = {}): DesiredState {
  return buildDesired({ userData: userData(input.userData), ssm: input.ssm, local: input.local ?? NO_LOCAL });
}
