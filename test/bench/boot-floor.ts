// The least a Node program can do to be the agent's boot path, for `npm run bench -- boot` to print
// beside the agent: what Node and its built-ins under the wrapper's flags cost before anything of
// the agent's own runs. It reads user data over IMDSv2, writes it as configuration.nix, and launches
// the rebuild with the real Nix parser (when given one) beside it, as the agent does (the build
// switches nothing; only activation waits for the parser): no configuration, no logging, no state,
// no recovery, no fsync.
//
//   node [flags] boot-floor.js IMDS_URL FILE REBUILD [NIX_INSTANTIATE]
//
// Built-ins only, each taken from the runtime (node:http as the agent's bundle takes it: an ES
// module import of it loads undici on Node 22).
const http = process.getBuiltinModule('node:http');
const { spawn } = process.getBuiltinModule('node:child_process');
const { writeFile } = process.getBuiltinModule('node:fs/promises');

const [endpoint, file, rebuild, nixInstantiate] = process.argv.slice(2) as [string, string, string, string | undefined];

function send(method: string, path: string, headers: Record<string, string>): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${endpoint}/${path}`, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`${path}: HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

function exited(command: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', (code) => resolve(code ?? 1));
  });
}

const token = (await send('PUT', 'latest/api/token', { 'x-aws-ec2-metadata-token-ttl-seconds': '21600' })).toString('utf8');
await writeFile(file, await send('GET', 'latest/user-data', { 'x-aws-ec2-metadata-token': token }));
const [parsed, built] = await Promise.all([nixInstantiate ? exited(nixInstantiate, ['--parse', '--store', 'dummy://', '--', file]) : 0, exited(rebuild, ['build'])]);
if (parsed !== 0) throw new Error(`${file} does not parse`);
process.exitCode = built;
