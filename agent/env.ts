// The environment handed to processes the agent starts. Below report/ and apply/ alike: the runner
// needs it, and nothing here knows about systemd beyond the variable names it must not pass on.

const SERVICE_ONLY = new Set(['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID']);
/**
 * Set by the package's wrapper for the agent's own Node (nix/launch.json): a Node program that
 * activation runs has no business in the agent's compile cache or under its V8 flags.
 */
const LAUNCH_ONLY = new Set(['NODE_COMPILE_CACHE', 'NIXOS_EC2_AGENT_V8_FLAGS']);

/**
 * The environment for processes the agent starts. NOTIFY_SOCKET stays set in our own environment
 * (nothing here unsets it), but a child that inherited it could send READY=1 or STOPPING=1 on our
 * behalf, and WATCHDOG_* / LISTEN_* describe this process, not the child.
 */
export function childEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) continue;
    if (SERVICE_ONLY.has(key) || LAUNCH_ONLY.has(key) || key.startsWith('LISTEN_')) continue;
    out[key] = value;
  }
  return out;
}
