// After a switch, before it becomes the boot default: does the instance still reach what manages it?
// A generation that breaks the network (a firewall rule, a resolver, a DHCP client or an address
// taken away, a proxy) can pass every unit and probe check and still leave an instance that no
// parameter can reach to fix. deploy-rs rolls back when the deploying host loses the machine after
// activation ("magic rollback"); here the instance asks for itself: IMDS, and SSM when it is a
// source, each over a new connection, since a kept-alive one outlives the change that cut it off.
import type { CheckResult } from './health.js';

/** One endpoint the agent is managed through: `reach` resolves when it answers anything at all. */
export interface Reachable {
  readonly name: string;
  reach(timeoutMs: number): Promise<void>;
}

/** Each endpoint asked at once, each within `timeoutMs`: a check that never throws. */
export async function reachChecks(endpoints: readonly Reachable[], timeoutMs: number): Promise<CheckResult[]> {
  return Promise.all(
    endpoints.map(async ({ name, reach }): Promise<CheckResult> => {
      try {
        await reach(timeoutMs);
        return { name, ok: true, detail: 'reachable over a new connection' };
      } catch (err) {
        return { name, ok: false, detail: `unreachable over a new connection since the switch: ${why(err)}` };
      }
    }),
  );
}

function why(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code;
  return code && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
}
