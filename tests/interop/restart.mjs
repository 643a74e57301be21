// Scenario D: an MCP session survives a restart of the upstream server.
//
//   node restart.mjs SIDECAR_MCP_URL UPSTREAM_PORT [TRANSPORT]
//
// TRANSPORT is server-everything's: streamableHttp (the default) or sse, the 2024-11-05
// transport, whose session the sidecar bridges (its upstream stream ends with the crash).
//
// The sidecar in front of UPSTREAM_PORT is already running (run.sh starts it). This script starts
// server-everything there, connects the official SDK client through the sidecar, calls a tool,
// kills the server (SIGKILL: a crash, not a goodbye), starts a new one on the same port and calls
// a tool again on the same client session. The new server has never heard of that session: the
// call only succeeds if the sidecar re-initialized upstream on the client's behalf, which Claude
// Code itself never does (PROTOCOL.md).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, port, serverTransport = 'streamableHttp'] = process.argv.slice(2);
if (!url || !port || !['streamableHttp', 'sse'].includes(serverTransport)) {
  console.error('usage: node restart.mjs SIDECAR_MCP_URL UPSTREAM_PORT [streamableHttp|sse]');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const everything = join(here, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js');
const overall = setTimeout(() => fail('gave up after 90 s'), 90_000);
let server;

function fail(msg) {
  console.log(`FAIL ${msg}`);
  server?.kill('SIGKILL');
  process.exit(1);
}
const ok = (msg) => console.log(`ok   ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startServer(generation) {
  const child = spawn(process.execPath, ['--require', join(here, 'lib/loopback.cjs'), everything, serverTransport], {
    env: { ...process.env, PORT: port },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  child.on('exit', (code, signal) => console.error(`server-everything #${generation} exited (${code ?? signal})`));
  return child;
}

async function until(what, check, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    await sleep(100);
  }
  fail(`${what} did not happen within ${seconds} s`);
}

async function echo(client, message) {
  const r = await client.callTool({ name: 'echo', arguments: { message } });
  const text = r.content?.[0]?.text;
  if (r.isError || text !== `Echo: ${message}`) fail(`echo ${message}: got ${JSON.stringify(r)}`);
  return text;
}

try {
  const ready = new URL('/ready', url);
  server = startServer(1);
  await until('the sidecar turning ready', async () => (await fetch(ready)).status === 200);

  const transport = new StreamableHTTPClientTransport(new URL(url));
  const client = new Client({ name: 'mcp-sidecar-interop-restart', version: '0.0.0' });
  client.onerror = (err) => console.error(`client: transport error (expected while the server is down): ${err?.message ?? err}`);
  await client.connect(transport);
  const session = transport.sessionId;
  if (!session) fail('no session id after initialize');
  ok(`session ${session}: ${await echo(client, 'before-restart')}`);

  server.kill('SIGKILL');
  await new Promise((r) => server.once('exit', r));
  server = startServer(2);
  await until('the new server answering', async () => {
    // Not the sse transport's /sse: that response never ends.
    await fetch(`http://127.0.0.1:${port}/${serverTransport === 'sse' ? 'message' : 'mcp'}`);
    return true;
  });
  ok('server-everything restarted (it knows no sessions now)');

  ok(`same client session after the restart: ${await echo(client, 'after-restart')}`);
  if (transport.sessionId !== session) fail(`the client's session id changed: ${session} -> ${transport.sessionId}`);
  ok('the client kept its session id');
  await client.close();
  server.kill('SIGTERM');
  clearTimeout(overall);
  ok('all checks passed');
} catch (err) {
  fail(`${err?.stack ?? err}`);
}
