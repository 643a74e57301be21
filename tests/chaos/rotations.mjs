// Chaos: forced refresh-token rotations with two sidecars sharing one STATE_DIR. Each round the
// resource server revokes every access token it has seen (`POST /_test/revoke-seen`), then one
// `whoami` call goes through each sidecar at the same moment: both get 401 invalid_token and must
// refresh, and only one may spend the refresh token (the other adopts the result from the shared
// state under the file lock). oidc-provider answers a reused refresh token with invalid_grant and
// revokes the grant, so one mistake shows in the IdP's log and breaks every later round.
//
//   node rotations.mjs SIDECAR_A_MCP_URL SIDECAR_B_MCP_URL RS_ORIGIN ROUNDS
//
// stdout: one JSON line {"result":{"rounds":N,"calls":N,"failed":N}}.
import { Client } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js';
import { StreamableHTTPClientTransport } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js';

const [a, b, rs, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg);
if (!a || !b || !rs || !Number.isInteger(rounds) || rounds < 1) {
  console.error('usage: node rotations.mjs SIDECAR_A_MCP_URL SIDECAR_B_MCP_URL RS_ORIGIN ROUNDS');
  process.exit(2);
}
const overall = setTimeout(() => {
  console.log('FAIL overall deadline passed');
  process.exit(1);
}, (30 + rounds * 5) * 1000);

async function connect(url) {
  const client = new Client({ name: 'mcp-sidecar-chaos-rotations', version: '0.0.0' });
  client.onerror = () => {};
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  return client;
}
const clients = [await connect(a), await connect(b)];
const figures = { rounds: 0, calls: 0, failed: 0, errors: [] };

async function whoami(client) {
  try {
    const r = await client.callTool({ name: 'whoami', arguments: {} }, undefined, { timeout: 15_000 });
    if (r.isError) throw new Error(JSON.stringify(r).slice(0, 200));
    return true;
  } catch (err) {
    if (figures.errors.length < 5) figures.errors.push(String(err?.message ?? err).slice(0, 200));
    return false;
  }
}

for (let i = 0; i < rounds; i++) {
  const revoke = await fetch(`${rs}/_test/revoke-seen`, { method: 'POST' });
  if (!revoke.ok) {
    console.log(`FAIL revoke-seen answered ${revoke.status}`);
    process.exit(1);
  }
  const results = await Promise.all(clients.map(whoami));
  figures.rounds += 1;
  figures.calls += results.length;
  figures.failed += results.filter((ok) => !ok).length;
  if ((i + 1) % 100 === 0) console.log(`round ${i + 1}: failed calls so far ${figures.failed}`);
}
console.log(JSON.stringify({ result: figures }));
await Promise.all(clients.map((c) => c.close().catch(() => {})));
clearTimeout(overall);
process.exit(0);
