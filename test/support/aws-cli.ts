// The real AWS CLI against an emulator, with nothing from the machine's own AWS configuration.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { AWS_CLI, hasAwsCli } from './e2e.js';

/** A test's skip reason where the Debian AWS CLI v2 is missing, else false. */
export const noAwsCli: string | false = hasAwsCli ? false : `${AWS_CLI} (AWS CLI v2) is not installed`;

export interface AwsCliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * `aws --endpoint-url ENDPOINT --output json SERVICE ARGS…` with test credentials, its config and
 * credential files under `home`, and no instance metadata. The timeout is headroom for a loaded
 * machine (the CLI's Python start alone takes seconds there).
 */
export function awsCli(endpoint: string, home: string, service: string, args: readonly string[]): Promise<AwsCliResult> {
  return new Promise((resolve) => {
    execFile(
      AWS_CLI,
      ['--endpoint-url', endpoint, '--output', 'json', service, ...args],
      {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: home,
          AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
          AWS_SECRET_ACCESS_KEY: 'secret',
          AWS_DEFAULT_REGION: 'eu-west-1',
          AWS_EC2_METADATA_DISABLED: 'true',
          AWS_PAGER: '',
          AWS_CONFIG_FILE: join(home, 'config'),
          AWS_SHARED_CREDENTIALS_FILE: join(home, 'credentials'),
        },
        timeout: 120_000,
      },
      (error, stdout, stderr) => resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr }),
    );
  });
}
