// Credentials for the SSM and Auto Scaling clients: the SDK's default chain (environment, profile,
// then the instance role from IMDS), with IMDS given more patience than the chain's own defaults
// (one 1 s attempt). At boot, or on a busy instance, IMDS can take longer than that, and a
// missed credential fetch would fail the whole pass.
import type { AwsCredentialIdentityProvider } from '@smithy/types';

export const IMDS_CREDENTIALS_TIMEOUT_MS = 3_000;
export const IMDS_CREDENTIALS_RETRIES = 3;

/**
 * One provider per agent, shared by its clients, so the role's credentials are fetched once.
 *
 * A failed fetch is tried once more at once: the SDK takes one IMDS token per fetch and keeps it
 * through all of that fetch's retries (@smithy/credential-provider-imds, getInstanceMetadataProvider),
 * so a token that expires between its PUT and the reads fails every retry with 401, and only the
 * next fetch asks for a new one. That would fail the pass for nothing.
 */
export async function defaultCredentials(): Promise<AwsCredentialIdentityProvider> {
  const { defaultProvider } = await import('@aws-sdk/credential-provider-node');
  const provider = defaultProvider({ timeout: IMDS_CREDENTIALS_TIMEOUT_MS, maxRetries: IMDS_CREDENTIALS_RETRIES });
  return (properties) => provider(properties).catch(() => provider(properties));
}
