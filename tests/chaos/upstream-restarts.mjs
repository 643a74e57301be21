// Chaos: server-everything SIGKILLed and restarted N times under one live TypeScript SDK client
// session through the sidecar (the sidecar is already running in front of UPSTREAM_PORT).
//
//   node upstream-restarts.mjs SIDECAR_MCP_URL UPSTREAM_PORT RESTARTS
//
// After each restart has completed (the new server accepts connections) it counts, on the same
// client session:
//   - failed tool calls: 3 `echo` calls, each must answer its own text;
//   - lost progress notifications: one `trigger-long-running-operation` (2 steps) whose progress
//     notifications travel on the call's own SSE response;
//   - lost stream notifications: `toggle-simulated-logging` starts server-sent log messages (every
//     5 s, at level debug so none is filtered) that reach the client only over its standalone GET
//     stream; a restart after which none arrives within 12 s counts as lost (the sidecar keeps the
//     client's GET stream open and re-attaches it to the session it re-makes: src/stream.rs).
// stdout: progress lines, then one JSON line {"result":{...}}. Exit 0 when the run completed (the
// figures are judged by the caller), 1 when it could not (the server did not come back, say).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Client } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js';
import { StreamableHTTPClientTransport } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/types.js';

const [url, port, restartsArg] = process.argv.slice(2);
const restarts = Number(restartsArg);
if (!url || !port || !Number.isInteger(restarts) || restarts < 1) {
  console.error('usage: node upstream-restarts.mjs SIDECAR_MCP_URL UPSTREAM_PORT RESTARTS');
  process.exit(2);
}
const interop = join(dirname(fileURLToPath(import.meta.url)), '../interop');
const everything = join(interop, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Bounded: per restart at most ~30 s (server start, calls, the notification window).
const overall = setTimeout(() => fail('overall deadline passed'), (60 + restarts * 45) * 1000);
let server;

function fail(msg) {
  console.log(`FAIL ${msg}`);
  server?.kill('SIGKILL');
  process.exit(1);
}

function startServer() {
  const child = spawn(process.execPath, ['--require', join(interop, 'lib/loopback.cjs'), everything, 'streamableHttp'], {
    env: { ...process.env, PORT: port },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
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
    await sleep(50);
  }
  fail(`${what} did not happen within ${seconds} s`);
}

const figures = {
  restarts: 0,
  calls_after_restart: 0,
  failed_calls_after_restart: 0,
  progress_expected: 0,
  progress_lost: 0,
  stream_windows: 0,
  stream_windows_lost: 0,
  first_call_ms: [],
};

let logged = 0;
server = startServer();
await until('the sidecar turning ready', async () => (await fetch(new URL('/ready', url))).status === 200, 60);
const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: 'mcp-sidecar-chaos-restarts', version: '0.0.0' });
client.onerror = () => {};
client.setNotificationHandler(LoggingMessageNotificationSchema, () => {
  logged += 1;
});
await client.connect(transport);
const session = transport.sessionId;
await client.setLoggingLevel('debug');

async function call(message) {
  try {
    const r = await client.callTool({ name: 'echo', arguments: { message } }, undefined, { timeout: 10_000 });
    return !r.isError && r.content?.[0]?.text === `Echo: ${message}`;
  } catch {
    return false;
  }
}

for (let i = 1; i <= restarts; i++) {
  server.kill('SIGKILL');
  await new Promise((r) => (server.exitCode !== null || server.signalCode !== null ? r() : server.once('exit', r)));
  server = startServer();
  await until(`server-everything #${i + 1} accepting connections`, async () => {
    await fetch(`http://127.0.0.1:${port}/mcp`);
    return true;
  });
  figures.restarts += 1;

  for (let c = 0; c < 3; c++) {
    const started = Date.now();
    const ok = await call(`restart-${i}-${c}`);
    if (c === 0) figures.first_call_ms.push(Date.now() - started);
    figures.calls_after_restart += 1;
    if (!ok) figures.failed_calls_after_restart += 1;
  }

  let progress = 0;
  figures.progress_expected += 2;
  try {
    await client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 2 } }, undefined, {
      timeout: 15_000,
      onprogress: () => {
        progress += 1;
      },
    });
  } catch {
    // counted through `progress`
  }
  figures.progress_lost += Math.max(0, 2 - progress);

  // The logging toggle is per upstream session: the restarted server knows none, so it starts.
  const before = logged;
  figures.stream_windows += 1;
  try {
    await client.callTool({ name: 'toggle-simulated-logging', arguments: {} }, undefined, { timeout: 10_000 });
  } catch {
    // no toggle, no notification: counted as lost below
  }
  const deadline = Date.now() + 12_000;
  while (logged === before && Date.now() < deadline) await sleep(100);
  if (logged === before) figures.stream_windows_lost += 1;
  console.log(`restart ${i}: calls failed so far ${figures.failed_calls_after_restart}, progress lost ${figures.progress_lost}, stream windows lost ${figures.stream_windows_lost}`);
}
if (transport.sessionId !== session) fail(`the client's session id changed: ${session} -> ${transport.sessionId}`);
const ms = figures.first_call_ms.sort((a, b) => a - b);
figures.first_call_ms = { p50: ms[Math.floor(ms.length / 2)], max: ms[ms.length - 1] };
console.log(JSON.stringify({ result: figures }));
await client.close().catch(() => {});
server.kill('SIGTERM');
clearTimeout(overall);
process.exit(0);
