// Room for a closure before a byte of it is downloaded: the store must hold every missing path
// unpacked (NarSize is the unpacked size), and a /boot on its own file system the new kernel and
// initrd. Short of either, the closure is refused with the figures, and nothing is fetched.
import { stat, statfs } from 'node:fs/promises';
import path from 'node:path';

export interface PathSize {
  readonly path: string;
  readonly narSize: number;
}

/** Free bytes (for an unprivileged writer) and the device of the file system holding `dir`. */
export interface FsProbe {
  free(dir: string): Promise<{ readonly bytes: number; readonly device: number }>;
}

/** statfs(2), on `dir` or, while it does not exist yet, the nearest ancestor that does. */
export const statfsProbe: FsProbe = {
  async free(dir) {
    for (let d = path.resolve(dir); ; d = path.dirname(d)) {
      try {
        const [fs, st] = await Promise.all([statfs(d), stat(d)]);
        return { bytes: fs.bavail * fs.bsize, device: st.dev };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || d === path.dirname(d)) throw err;
      }
    }
  },
};

export interface SpaceNeed {
  /** Unpacked bytes of the paths not in the store yet. */
  readonly storeBytes: number;
  /** Bytes of the kernel and initrd among them, which the boot loader copies to /boot. */
  readonly bootBytes: number;
}

// nixpkgs names them so: the kernel's output `linux-6.6.30` (its modules are `-modules`), and
// the initrd `initrd-linux-6.6.30` (nixos/modules/system/boot/stage-1.nix, makeInitrd's name).
const KERNEL = /^[0-9a-df-np-sv-z]{32}-linux-\d[^/]*$/;
const INITRD = /^[0-9a-df-np-sv-z]{32}-initrd-[^/]*$/;

/** What downloading `missing` takes: all of it in the store, its kernel and initrd in /boot too. */
export function spaceNeeded(missing: readonly PathSize[]): SpaceNeed {
  let storeBytes = 0;
  let bootBytes = 0;
  for (const p of missing) {
    storeBytes += p.narSize;
    const base = path.basename(p.path);
    if ((KERNEL.test(base) && !base.endsWith('-modules') && !base.endsWith('-dev')) || INITRD.test(base)) bootBytes += p.narSize;
  }
  return { storeBytes, bootBytes };
}

export interface SpaceVerdict {
  readonly ok: boolean;
  /** One line with the figures, for the refusal and the log. */
  readonly summary: string;
  readonly storeFree: number;
  readonly bootFree?: number;
}

/**
 * Compares the need with the free space of the store and of /boot (real directories). When /boot
 * is on the store's file system, both needs come out of the same free space. `reserveBytes` is
 * kept free in the store beyond the closure (Nix's database, the next build, logs).
 */
export async function checkSpace(probe: FsProbe, dirs: { store: string; boot: string }, need: SpaceNeed, reserveBytes: number): Promise<SpaceVerdict> {
  const store = await probe.free(dirs.store);
  const boot = await probe.free(dirs.boot);
  const shared = store.device === boot.device;
  const storeNeed = need.storeBytes + reserveBytes + (shared ? need.bootBytes : 0);
  const problems: string[] = [];
  if (storeNeed > store.bytes) {
    problems.push(`the store needs ${mib(storeNeed)} (${mib(need.storeBytes)} to download${shared && need.bootBytes ? `, ${mib(need.bootBytes)} of kernel and initrd for /boot` : ''}, ${mib(reserveBytes)} kept free) and has ${mib(store.bytes)} free`);
  }
  if (!shared && need.bootBytes > boot.bytes) {
    problems.push(`/boot needs ${mib(need.bootBytes)} for the new kernel and initrd and has ${mib(boot.bytes)} free`);
  }
  const summary = problems.length
    ? `not enough space: ${problems.join('; ')}`
    : `${mib(need.storeBytes)} to download, ${mib(store.bytes)} free in the store${shared ? '' : `, ${mib(boot.bytes)} in /boot`}`;
  return { ok: problems.length === 0, summary, storeFree: store.bytes, ...(shared ? {} : { bootFree: boot.bytes }) };
}

function mib(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(1)} MiB` : `${bytes} bytes`;
}
