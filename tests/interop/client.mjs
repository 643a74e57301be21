// Scenario A client: the official TypeScript SDK client talking Streamable HTTP to URL (the
// sidecar in run.sh; any MCP server works, which is how it was checked against server-everything
// alone). It asserts what an MCP user would see, and exits non-zero with a message on the first
// mismatch.
//
//   node client.mjs http://127.0.0.1:PORT/mcp
//
// stdout: one line per check. stderr: every HTTP exchange the SDK made (method, status,
// content-type), which is what to read when the proxy in between misbehaves.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const url = process.argv[2];
if (!url) {
  console.error('usage: node client.mjs URL');
  process.exit(2);
}

// The tools exported by the pinned @modelcontextprotocol/server-everything (see package.json).
const ECHO_TOOL = 'echo'; // argument `message`, answers "Echo: <message>"
const LONG_TOOL = 'trigger-long-running-operation'; // arguments `duration` (s), `steps`
const LONG_ARGS = { duration: 3, steps: 3 };

// A hung proxy must fail the test, not hang CI.
const overall = setTimeout(() => fail(`gave up after 60 s (events so far: ${JSON.stringify(events)})`), 60_000);

const events = []; // arrival order of everything the long-running call produced
const transportErrors = [];
let closing = false;

function fail(msg) {
  console.error(`client: FAIL: ${msg}`);
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
function ok(msg) {
  console.log(`ok   ${msg}`);
}

// Logs each HTTP exchange, so a failure shows what the proxy answered and to which request.
async function loggingFetch(input, init = {}) {
  const method = init.method ?? 'GET';
  let rpc = '';
  if (typeof init.body === 'string') {
    try {
      const b = JSON.parse(init.body);
      rpc = Array.isArray(b) ? 'batch' : (b.method ?? `response id=${b.id}`);
    } catch {
      rpc = '(non-JSON body)';
    }
  }
  const res = await fetch(input, init);
  console.error(
    `http: ${method} ${rpc} -> ${res.status} ${res.headers.get('content-type') ?? '-'}` +
      ` session=${res.headers.get('mcp-session-id') ? 'yes' : 'no'}`,
  );
  return res;
}

const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: loggingFetch });
const client = new Client({ name: 'mcp-sidecar-interop', version: '0.0.0' });
client.onerror = (err) => {
  console.error(`client: transport error: ${err?.stack ?? err}`);
  if (!closing) transportErrors.push(String(err?.message ?? err));
};

try {
  // 1. initialize (+ notifications/initialized, and the SDK's GET stream)
  await client.connect(transport);
  const server = client.getServerVersion();
  if (!server?.name) fail(`initialize: no serverInfo (${JSON.stringify(server)})`);
  if (!transport.sessionId) fail('initialize: no Mcp-Session-Id came back through the proxy');
  ok(`initialize: server ${server.name} ${server.version}, protocol ${transport.protocolVersion}, session id present`);
  // run.sh looks this session up in the upstream's log
  console.log(`session ${transport.sessionId}`);

  // 2. tools/list
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  for (const want of [ECHO_TOOL, LONG_TOOL]) {
    if (!names.includes(want)) fail(`tools/list: no tool ${want} in ${JSON.stringify(names)}`);
  }
  ok(`tools/list: ${names.length} tools incl. ${ECHO_TOOL}, ${LONG_TOOL}`);

  // 3. tools/call echo, with a value that cannot be confused with anything else
  const text = `interop-${process.pid}-${Date.now()}`;
  const echoed = await client.callTool({ name: ECHO_TOOL, arguments: { message: text } });
  const got = echoed.content?.[0]?.text;
  if (echoed.isError || got !== `Echo: ${text}`) fail(`echo: expected "Echo: ${text}", got ${JSON.stringify(echoed)}`);
  ok(`tools/call ${ECHO_TOOL}: "${got}"`);

  // 4. long-running operation with progress. Progress notifications arrive on the POST's SSE
  // response stream. Order alone cannot tell a streaming proxy from one that buffers the whole
  // response (buffered progress would still precede the result), so on the first progress the
  // client issues a second request on the same session: its answer can only come back before
  // the final result if the first progress really reached the client while the operation ran.
  let midFlight;
  const result = await client.callTool({ name: LONG_TOOL, arguments: LONG_ARGS }, undefined, {
    onprogress: (p) => {
      events.push(`progress ${p.progress}/${p.total}`);
      if (!midFlight) {
        midFlight = client
          .callTool({ name: ECHO_TOOL, arguments: { message: 'mid-flight' } })
          .then((r) => events.push(`mid-flight echo: ${r.content?.[0]?.text}`))
          .catch((e) => events.push(`mid-flight echo failed: ${e.message}`));
      }
    },
    // keep the SDK's per-request timeout out of the way; the overall timer above bounds the test
    timeout: 50_000,
  });
  events.push('result');
  await midFlight;
  console.error(`client: long-running events in arrival order: ${JSON.stringify(events)}`);

  const resultText = result.content?.[0]?.text ?? '';
  if (result.isError || !resultText.includes('Long running operation completed')) {
    fail(`${LONG_TOOL}: unexpected result ${JSON.stringify(result)}`);
  }
  const resultAt = events.indexOf('result');
  const progressBefore = events.slice(0, resultAt).filter((e) => e.startsWith('progress'));
  if (progressBefore.length < 2) {
    fail(`${LONG_TOOL}: expected >= 2 progress notifications before the result, arrival order: ${JSON.stringify(events)}`);
  }
  const progressAfter = events.slice(resultAt + 1).filter((e) => e.startsWith('progress'));
  if (progressAfter.length > 0) fail(`${LONG_TOOL}: progress after the result: ${JSON.stringify(events)}`);
  const midAt = events.findIndex((e) => e.startsWith('mid-flight'));
  if (events[midAt] !== 'mid-flight echo: Echo: mid-flight') fail(`mid-flight echo: ${JSON.stringify(events)}`);
  if (midAt > resultAt) {
    fail(`progress was not streamed: a request sent on the first progress was answered only after the final result: ${JSON.stringify(events)}`);
  }
  ok(`tools/call ${LONG_TOOL} ${JSON.stringify(LONG_ARGS)}: ${progressBefore.length} progress notifications streamed before the result: ${JSON.stringify(events)}`);

  // 5. DELETE ends the session (the SDK treats 405 as fine too)
  closing = true;
  await transport.terminateSession();
  ok('DELETE session: accepted');
  await client.close();

  if (transportErrors.length) fail(`transport errors while the session was open: ${JSON.stringify(transportErrors)}`);
  clearTimeout(overall);
  ok('all checks passed');
} catch (err) {
  fail(`${err?.stack ?? err}`);
}
