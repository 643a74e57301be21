// MCP client for the OAuth interop scenarios: the official TypeScript SDK client over Streamable
// HTTP; initializes, checks that `whoami` is listed, calls it and prints its answer.
//
//   node whoami.mjs URL [--token TOKEN] [--repeat-for SECONDS] [--every SECONDS]
//
// --token sends `Authorization: Bearer TOKEN` itself (to test resource-server.mjs without the
// sidecar); through the sidecar no token is given. --repeat-for keeps the one session and calls
// whoami again every --every seconds (default 1) until that many seconds have passed, so a test can
// watch the caller's access token change underneath one client session (refresh across expiry).
//
// stdout: `whoami {"sub":..,"client_id":..,"scope":..,"jti":..,"exp":..}` per call, then
// `calls N distinct-tokens M`. Exit 0 when every call succeeded, 1 (with `FAIL ...`) otherwise.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const args = process.argv.slice(2);
const url = args.shift();
let token;
let repeatFor = 0;
let every = 1;
while (args.length) {
  const a = args.shift();
  if (a === '--token') token = args.shift();
  else if (a === '--repeat-for') repeatFor = Number(args.shift());
  else if (a === '--every') every = Number(args.shift());
  else {
    console.error(`whoami: unknown argument ${a}`);
    process.exit(2);
  }
}
if (!url) {
  console.error('usage: node whoami.mjs URL [--token TOKEN] [--repeat-for SECONDS] [--every SECONDS]');
  process.exit(2);
}

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
setTimeout(() => fail(`gave up after ${repeatFor + 60} s`), (repeatFor + 60) * 1000).unref();

async function loggingFetch(input, init = {}) {
  const res = await fetch(input, init);
  console.error(`http: ${init.method ?? 'GET'} -> ${res.status} ${res.headers.get('content-type') ?? '-'}`);
  return res;
}

const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: loggingFetch, requestInit });
const client = new Client({ name: 'oauth-interop-whoami', version: '1.0.0' });
try {
  await client.connect(transport);
} catch (err) {
  fail(`initialize: ${err?.message ?? err}`);
}
const { tools } = await client.listTools().catch((err) => fail(`tools/list: ${err?.message ?? err}`));
if (!tools.some((t) => t.name === 'whoami')) fail(`no whoami tool in ${JSON.stringify(tools.map((t) => t.name))}`);

const jtis = new Set();
let calls = 0;
const until = Date.now() + repeatFor * 1000;
for (;;) {
  let result;
  try {
    result = await client.callTool({ name: 'whoami', arguments: {} });
  } catch (err) {
    fail(`tools/call whoami (call ${calls + 1}): ${err?.message ?? err}`);
  }
  if (result.isError) fail(`whoami answered isError: ${JSON.stringify(result.content)}`);
  const who = result.structuredContent ?? JSON.parse(result.content?.[0]?.text ?? '{}');
  if (!who.sub) fail(`whoami answered without sub: ${JSON.stringify(result)}`);
  calls += 1;
  jtis.add(who.jti);
  console.log(`whoami ${JSON.stringify(who)}`);
  if (Date.now() + every * 1000 > until) break;
  await new Promise((r) => setTimeout(r, every * 1000));
}
console.log(`calls ${calls} distinct-tokens ${jtis.size}`);
await transport.terminateSession().catch(() => {});
await client.close();
process.exit(0);
