// Types of fill-lockfile.mjs, for the TypeScript that imports it (tools/nix-deps-hash).
export declare class LockfileError extends Error {
  readonly kind: 'lockfile';
}
export declare function npmDefaultRegistry(nodeExecPath?: string): string;
export declare function tarballUrl(registry: string, name: string, version: string): string;
export declare function fillLockfile(text: string, registry: string, where?: string): string;
