// Writes a RenderPlan under root: parts first, each atomically, then the parser gate, then
// configuration.nix as the single commit point. Secrets go to a root-only tmpfs directory and
// never into a rendered file.
import { chmod } from 'node:fs/promises';
import path from 'node:path';
import type { RootFs } from '../fs.js';
import type { Logger } from '../log.js';
import type { DesiredSecret } from '../desired/desired.js';
import { refusedByParser, type NixParser } from './validate.js';
import { CONFIGURATION_NIX, HEADER, PREVIOUS_CONFIGURATION, RENDER_ROOT, SECRETS_DIR, type RenderPlan } from './render.js';

export class RenderWriter {
  /** The adopted base configuration and its flush, until a prepare has seen the flush succeed. */
  private adopted: { readonly path: string; readonly flush: Promise<void> } | undefined;

  constructor(
    private readonly fs: RootFs,
    /** Undefined only when validation is configured `if-available` and Nix is absent. */
    private readonly parser: Pick<NixParser, 'check'> | undefined,
    private readonly log: Logger,
  ) {}

  /**
   * Writes the parts and checks every file with the Nix parser. Switches nothing.
   * - `launch` is awaited once the files are written and before the parser starts, given the copy
   *   of configuration.nix the parser checks (`<render dir>/configuration.nix`, the same text, which
   *   imports by absolute path); it is not called when nothing is parsed.
   * - `alongside` runs while the parser does (its process start is most of a check's time).
   * Both the parser and `alongside` are waited for, whatever either does.
   */
  async prepare(plan: RenderPlan, hooks: { launch?: (checked: string) => Promise<void>; alongside?: () => Promise<void> } = {}): Promise<void> {
    const { launch, alongside } = hooks;
    await this.fs.mkdirp(plan.dir);
    // configuration.nix is checked as a copy in the render directory, in the same parser call as
    // the parts: one process start, not two, on the boot path. The files are independent, so they
    // are written side by side. They are flushed to disk while the parser and the build run, not
    // before: nothing on disk names them until the commit, which comes after prepare. The copy is
    // never named by anything, and never flushed.
    const candidate = `${plan.dir}/configuration.nix`;
    await Promise.all([
      ...plan.parts.map((part) => this.fs.writeAtomic(part.path, part.text, { durable: false })),
      ...(this.parser ? [this.fs.writeAtomic(candidate, plan.configuration.text, { durable: false })] : []),
    ]);
    const adopted = this.adopted;
    const durable = async () => {
      await Promise.all([
        // The render directory's own entry too: the commit flushes only /etc/nixos.
        this.fs.sync(plan.parts.map((part) => part.path), [path.posix.dirname(plan.dir)]),
        // A base configuration whose flush failed is flushed again.
        adopted?.flush.catch(() => this.fs.sync([adopted.path])),
      ]);
      if (this.adopted === adopted) this.adopted = undefined;
    };
    if (!this.parser) {
      this.log.warn({ event: 'validate.skipped' }, 'nix-instantiate is not available; rendered files were not parsed');
      await settleAll([durable(), alongside?.()]);
      return;
    }
    const sources = new Map<string, string>([[this.fs.resolve(candidate), 'configuration.nix']]);
    const files: string[] = [this.fs.resolve(candidate)];
    for (const f of [...plan.parts, ...plan.imported]) {
      const real = this.fs.resolve(f.path);
      sources.set(real, f.source);
      files.push(real);
    }
    await launch?.(candidate);
    const [errors] = await settleAll([this.parser.check(files), alongside?.(), durable()]);
    const [first, ...more] = errors.map((e) => ({ source: sources.get(e.file) ?? e.file, line: e.line, column: e.column, message: e.message }));
    if (first) throw refusedByParser([first, ...more]);
  }

  /**
   * The image's own configuration.nix becomes its base configuration, imported from then on,
   * instead of being overwritten as amazon-init does. Runs before the sources are read, so the
   * first render already imports it.
   */
  async adoptImageConfiguration(basePath: string): Promise<boolean> {
    const current = await this.fs.readText(CONFIGURATION_NIX);
    if (current === undefined || current.startsWith(HEADER) || (await this.fs.exists(basePath))) return false;
    // Visible at once, flushed while the start goes on; the first prepare waits for the flush.
    await this.fs.writeAtomic(basePath, current, { durable: false });
    const flush = this.fs.sync([basePath]);
    flush.catch(() => undefined);
    this.adopted = { path: basePath, flush };
    this.log.info({ event: 'render.adopted', path: basePath }, `kept the image's configuration.nix as ${basePath}`);
    return true;
  }

  /** The commit point: the old configuration.nix is kept beside the parts, the new one replaces it. */
  async commit(plan: RenderPlan): Promise<void> {
    const current = await this.fs.readText(CONFIGURATION_NIX);
    if (current !== undefined && current !== plan.configuration.text) {
      await this.fs.writeAtomic(PREVIOUS_CONFIGURATION, current);
    }
    await this.fs.writeAtomic(CONFIGURATION_NIX, plan.configuration.text);
  }

  async currentConfiguration(): Promise<string | undefined> {
    return this.fs.readText(CONFIGURATION_NIX);
  }

  /** Puts a known-good configuration.nix back, so a reboot or a manual rebuild cannot bring a bad one. */
  async restore(text: string): Promise<void> {
    await this.fs.writeAtomic(CONFIGURATION_NIX, text);
  }

  async writeSecrets(secrets: readonly DesiredSecret[]): Promise<void> {
    // The parent first: a recursive mkdir gives every directory it creates the same mode, and the
    // agent's run directory (status.json) must stay readable. An existing secrets directory with a
    // wider mode is tightened, as mkdir leaves it as it was.
    await this.fs.mkdirp('/run/nixos-ec2-agent', 0o755);
    await this.fs.mkdirp(SECRETS_DIR, 0o700);
    await chmod(this.fs.resolve(SECRETS_DIR), 0o700);
    // In /run, as status.json: the rename is what matters, a disk flush would guard nothing.
    await Promise.all(secrets.map((s) => this.fs.writeAtomic(`${SECRETS_DIR}/${s.name}`, s.value.reveal(), { mode: 0o400, dirMode: 0o700, durable: false })));
  }

  /** Removes the secret files of parameters that disappeared. */
  async pruneSecrets(keep: readonly string[]): Promise<string[]> {
    const wanted = new Set(keep);
    const removed: string[] = [];
    for (const name of await this.fs.list(SECRETS_DIR)) {
      if (!wanted.has(name)) {
        await this.fs.remove(`${SECRETS_DIR}/${name}`);
        removed.push(name);
      }
    }
    return removed;
  }

  /** Drops render directories nothing refers to any more. */
  async gc(keepDirs: readonly string[]): Promise<void> {
    const keep = new Set(keepDirs.map((d) => d.split('/').at(-1)));
    for (const name of await this.fs.list(RENDER_ROOT)) {
      if (/^[0-9a-f]{12}$/.test(name) && !keep.has(name)) await this.fs.remove(`${RENDER_ROOT}/${name}`);
    }
  }
}

/** Waits for every promise, whatever each does; then the first rejection, if any, is thrown. */
async function settleAll<T extends readonly unknown[]>(promises: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(promises);
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}
