// Reading unit files as systemd does, for the tests of systemd/ and of the units nix/module.nix
// makes NixOS write.

/** The `key=value` settings of a section, in order, as systemd reads them (comments skipped). */
export function unitSection(text: string, name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = header[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (current !== name || eq < 0) continue;
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

/** A list setting's words (After=a b, After=c → a, b, c). */
export function unitWords(text: string, section: string, key: string): string[] {
  return (unitSection(text, section).get(key) ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);
}

/**
 * An ordering cycle among the given units and the targets that want them, or null. `wantedBy`
 * maps a unit to the targets that want it (NixOS's wantedBy, or the unit's [Install] WantedBy=).
 * Ordering as systemd derives it: After=/Before= as written, plus systemd.target(5)'s default
 * dependency of a target on what it wants, which systemd adds only when neither side sets
 * DefaultDependencies=no and the wanted unit is not already ordered after the target
 * (unit_add_default_target_dependency in systemd's src/core/unit.c).
 */
export function orderingCycle(units: Record<string, string>, wantedBy: Record<string, readonly string[]>): string[] | null {
  const after = new Map<string, Set<string>>();
  const edge = (later: string, earlier: string): void => {
    if (!after.has(later)) after.set(later, new Set());
    after.get(later)!.add(earlier);
  };
  const noDefaults = (name: string): boolean => units[name] !== undefined && /^(no|false|0|off)$/.test(unitWords(units[name]!, 'Unit', 'DefaultDependencies')[0] ?? '');
  for (const [name, text] of Object.entries(units)) {
    for (const a of unitWords(text, 'Unit', 'After')) edge(name, a);
    for (const b of unitWords(text, 'Unit', 'Before')) edge(b, name);
  }
  for (const [name, targets] of Object.entries(wantedBy)) {
    for (const target of targets) {
      const orderedAfterTarget = after.get(name)?.has(target) ?? false;
      if (target.endsWith('.target') && !noDefaults(name) && !noDefaults(target) && !orderedAfterTarget) edge(target, name);
    }
  }
  const state = new Map<string, 'open' | 'done'>();
  const visit = (node: string, path: string[]): string[] | null => {
    if (state.get(node) === 'open') return [...path.slice(path.indexOf(node)), node];
    if (state.get(node) === 'done') return null;
    state.set(node, 'open');
    for (const next of after.get(node) ?? []) {
      const found = visit(next, [...path, node]);
      if (found) return found;
    }
    state.set(node, 'done');
    return null;
  };
  for (const node of after.keys()) {
    const found = visit(node, []);
    if (found) return found;
  }
  return null;
}
