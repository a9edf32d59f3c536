// The running machine as systemctl and nix-channel show it: which units are failed (set by the last
// activation) and which channels are subscribed.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CommandError, type Io, type Layout, isMissing, writeFileAtomic } from './layout.js';
import { CUTS_NETWORK, DEMO_UNIT, writeFailedUnits } from './system.js';

export async function readFailedUnits(layout: Layout): Promise<string[]> {
  try {
    return (await readFile(layout.failedUnits, 'utf8')).split('\n').filter(Boolean);
  } catch (err) {
    if (isMissing(err)) return [];
    throw err;
  }
}

/**
 * Whether the running system lets the instance reach the network: not while it is one built with
 * the `sandbox-cut-network` marker (a firewall, resolver or address change that cut the instance
 * off). Synchronous: the emulators ask it at every new connection (ListenOptions.admit).
 */
export function networkUp(layout: Layout): boolean {
  return !existsSync(join(layout.currentSystem, CUTS_NETWORK));
}

function describe(unit: string): string {
  return unit === DEMO_UNIT ? 'Sandbox demo service' : unit.replace(/\.[a-z]+$/, '');
}

const SYSTEMCTL_USAGE = 'usage: systemctl {list-units [--state=failed] | --failed | is-system-running | is-failed UNIT... | is-active UNIT... | reset-failed [UNIT...]}';

/** `systemctl`, for what health verification asks of it. */
export async function systemctlMain(layout: Layout, args: readonly string[], io: Io): Promise<number> {
  let legend = true;
  let quiet = false;
  const words: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--state') i++;
    else if (a === '--no-legend' || a === '--legend=no' || a === '--legend=false') legend = false;
    else if (a === '--quiet' || a === '-q') quiet = true;
    else if (a === '--type' || a === '-t' || a === '--output' || a === '-o' || a === '--property' || a === '-p') i++;
    else if (a.startsWith('-')) {
      // --plain, --no-pager, --all, --full, --wait: presentation only.
    } else words.push(a);
  }
  const verb = words[0] ?? 'list-units';
  const units = words.slice(1);
  const failed = await readFailedUnits(layout);
  switch (verb) {
    case 'list-units': {
      // Only failed units are modelled (every other unit is taken to be running), so `--failed` and
      // `--state=failed` list the same as a plain list-units.
      if (legend) io.out('UNIT LOAD ACTIVE SUB DESCRIPTION');
      for (const u of failed) io.out(`${u} loaded failed failed ${describe(u)}`);
      if (legend) io.out(`\n${failed.length} loaded units listed.`);
      return 0;
    }
    case 'is-system-running': {
      const state = failed.length > 0 ? 'degraded' : 'running';
      if (!quiet) io.out(state);
      return state === 'running' ? 0 : 1;
    }
    case 'is-failed':
    case 'is-active': {
      if (units.length === 0) throw new CommandError(`Too few arguments.`, 1);
      let anyFailed = false;
      let allActive = true;
      for (const u of units) {
        const isFailed = failed.includes(u) || failed.includes(`${u}.service`);
        anyFailed ||= isFailed;
        allActive &&= !isFailed;
        if (!quiet) io.out(isFailed ? 'failed' : 'active');
      }
      // is-failed succeeds when one unit is failed; is-active only when all are active (else 3).
      if (verb === 'is-failed') return anyFailed ? 0 : 1;
      return allActive ? 0 : 3;
    }
    case 'reset-failed': {
      const keep = units.length === 0 ? [] : failed.filter((u) => !units.includes(u) && !units.includes(u.replace(/\.service$/, '')));
      await writeFailedUnits(layout, keep);
      return 0;
    }
    default:
      throw new CommandError(`Unknown command verb '${verb}'.\n${SYSTEMCTL_USAGE}`, 1);
  }
}

export interface Channel {
  readonly name: string;
  readonly url: string;
}

export async function readChannels(layout: Layout): Promise<{ channels: Channel[]; text: string }> {
  let text = '';
  try {
    text = await readFile(layout.channels, 'utf8');
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
  const channels: Channel[] = [];
  for (const line of text.split('\n')) {
    const [url, name] = line.trim().split(/\s+/);
    if (url && name) channels.push({ url, name });
  }
  return { channels, text };
}

async function writeChannels(layout: Layout, channels: readonly Channel[]): Promise<void> {
  await writeFileAtomic(layout.channels, channels.map((c) => `${c.url} ${c.name}\n`).join(''));
}

export async function updateChannels(layout: Layout, io: Io, only: readonly string[] = []): Promise<number> {
  const { channels, text } = await readChannels(layout);
  if (text.includes('sandbox-fail-channel')) {
    const bad = channels.find((c) => `${c.url} ${c.name}`.includes('sandbox-fail-channel')) ?? channels[0];
    const url = bad ? `${bad.url}/nixexprs.tar.xz` : 'sandbox-fail-channel';
    io.err(`error: unable to download '${url}': HTTP error 404`);
    return 1;
  }
  for (const name of only) {
    if (!channels.some((c) => c.name === name)) throw new CommandError(`error: cannot update unknown channel '${name}'`, 1);
  }
  io.err('unpacking channels...');
  return 0;
}

const CHANNEL_USAGE = 'usage: nix-channel {--add URL [NAME] | --remove NAME | --list | --update [NAME...]}';

/** `nix-channel`: the subscriptions in root's ~/.nix-channels. */
export async function nixChannelMain(layout: Layout, args: readonly string[], io: Io): Promise<number> {
  const [op, ...rest] = args;
  switch (op) {
    case '--list': {
      for (const c of (await readChannels(layout)).channels) io.out(`${c.name} ${c.url}`);
      return 0;
    }
    case '--add': {
      const [url, given] = rest;
      if (url === undefined || rest.length > 2) throw new CommandError(CHANNEL_USAGE, 1);
      // As nix-channel: the name defaults to the URL's last component without -unstable/-stable.
      const name = given ?? (url.replace(/\/+$/, '').split('/').at(-1) ?? '').replace(/-unstable$/, '').replace(/-stable$/, '');
      const { channels } = await readChannels(layout);
      await writeChannels(layout, [...channels.filter((c) => c.name !== name), { url, name }]);
      return 0;
    }
    case '--remove': {
      const [name] = rest;
      if (name === undefined || rest.length !== 1) throw new CommandError(CHANNEL_USAGE, 1);
      const { channels } = await readChannels(layout);
      await writeChannels(layout, channels.filter((c) => c.name !== name));
      return 0;
    }
    case '--update':
      return updateChannels(layout, io, rest);
    default:
      throw new CommandError(CHANNEL_USAGE, 1);
  }
}
