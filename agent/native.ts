// The package's Node-API addons (native/, built by node-gyp into build/Release at the package root).
// This module runs from dist/agent/native.js, or from a chunk of the bundle beside it in dist/agent
// (tools/bundle.mjs): either way the package root is two directories up.

// Read as the module loads: Node sets up import.meta with a module of its own at the first read,
// which after the launch's late V8 flags would be compiled without its code cache (agent/cli.ts).
const RELEASE = new URL('../../build/Release/', import.meta.url);

/**
 * Loads build/Release/NAME.node; throws when it was never built. process.dlopen is what require()
 * does for a .node file, without node:module: the root's lock is taken on the way to the first
 * rebuild, where nothing loads that module (test/integration/boot-path.test.ts).
 */
export function requireAddon(name: 'sd_notify' | 'flock'): Record<string, unknown> {
  const module = { exports: {} as Record<string, unknown> };
  process.dlopen(module, decodeURIComponent(new URL(`${name}.node`, RELEASE).pathname));
  return module.exports;
}
