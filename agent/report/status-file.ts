// run/nixos-ec2-agent/status.json: what `status --json` prints, rewritten atomically at each step
// so other programs can read it at any moment. Writes are queued so an older status never lands
// after a newer one.
import type { RootFs } from '../fs.js';
import type { Status } from '../status.js';

export const STATUS_FILE = '/run/nixos-ec2-agent/status.json';

export class StatusFile {
  private pending: Status | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly fs: RootFs,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  update(status: Status): void {
    const idle = this.pending === undefined;
    this.pending = status;
    if (idle) this.writing = this.writing.then(() => this.flushOnce());
  }

  /** Resolves when the latest status is on disk. */
  async flush(): Promise<void> {
    await this.writing;
    if (this.pending) await this.flushOnce();
  }

  private async flushOnce(): Promise<void> {
    const status = this.pending;
    this.pending = undefined;
    if (!status) return;
    try {
      // Rewritten at every step of a pass, in /run: atomic, but not worth a disk flush each time.
      await this.fs.writeAtomic(STATUS_FILE, `${JSON.stringify(status, null, 2)}\n`, { mode: 0o644, durable: false });
    } catch (err) {
      this.onError(err as Error);
    }
  }
}

export async function readStatusFile(fs: RootFs): Promise<Status | undefined> {
  const text = await fs.readText(STATUS_FILE);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as Status;
  } catch {
    return undefined;
  }
}
