// Scenario E2: a client of the legacy HTTP+SSE transport (protocol 2024-11-05) bridged by the
// sidecar to a Streamable HTTP upstream (server-everything `streamableHttp`).
//
//   node bridge-sse.mjs SIDECAR_SSE_URL
//
// The SDK's SSEClientTransport opens GET on the sidecar's PATH/sse, POSTs its messages to the
// endpoint the first event names and reads every answer from the stream: tools, a long-running
// tool whose progress arrives before its result, and server-everything's roots/list request
// (server to client, on the stream) answered by the client with a POST.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import {
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const url = process.argv[2];
if (!url) {
  console.error('usage: node bridge-sse.mjs SIDECAR_SSE_URL');
  process.exit(2);
}
const ROOT = { uri: 'file:///interop-bridge', name: 'interop' };
const overall = setTimeout(() => fail('gave up after 60 s'), 60_000);
function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
const ok = (msg) => console.log(`ok   ${msg}`);
async function until(check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

const posted = [];
async function loggingFetch(input, init = {}) {
  const res = await fetch(input, init);
  if ((init.method ?? 'GET') === 'POST') posted.push(new URL(String(input)).pathname);
  return res;
}

try {
  const transport = new SSEClientTransport(new URL(url), { fetch: loggingFetch, eventSourceInit: { fetch: loggingFetch } });
  const client = new Client(
    { name: 'mcp-sidecar-interop-bridge', version: '0.0.0' },
    { capabilities: { roots: { listChanged: true } } },
  );
  let rootsAsked = 0;
  const logs = [];
  client.setRequestHandler(ListRootsRequestSchema, async () => {
    rootsAsked += 1;
    return { roots: [ROOT] };
  });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    logs.push(String(n.params.data));
  });
  await client.connect(transport);
  const server = client.getServerVersion();
  if (!server?.name) fail(`initialize: no serverInfo (${JSON.stringify(server)})`);
  ok(`initialize over HTTP+SSE, bridged: server ${server.name} ${server.version}`);

  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  for (const want of ['echo', 'trigger-long-running-operation', 'get-roots-list']) {
    if (!names.includes(want)) fail(`tools/list: no tool ${want} in ${JSON.stringify(names)}`);
  }
  ok(`tools/list: ${names.length} tools`);
  const text = `bridge-${process.pid}-${Date.now()}`;
  const echoed = await client.callTool({ name: 'echo', arguments: { message: text } });
  if (echoed.content?.[0]?.text !== `Echo: ${text}`) fail(`echo: ${JSON.stringify(echoed)}`);
  ok(`tools/call echo: "${echoed.content[0].text}"`);

  const events = [];
  const result = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 2, steps: 2 } },
    undefined,
    { onprogress: (p) => events.push(`progress ${p.progress}/${p.total}`), timeout: 50_000 },
  );
  events.push('result');
  if (!(result.content?.[0]?.text ?? '').includes('Long running operation completed')) {
    fail(`long-running: ${JSON.stringify(result)}`);
  }
  if (events.indexOf('progress 1/2') < 0 || events.indexOf('progress 1/2') > events.indexOf('result')) {
    fail(`long-running: no progress before the result: ${JSON.stringify(events)}`);
  }
  ok(`long-running tool: ${JSON.stringify(events)}`);

  if (!(await until(() => rootsAsked > 0, 20_000))) fail('server-everything never asked for roots/list');
  if (!(await until(() => logs.some((l) => l.includes('Roots updated: 1 root')), 20_000))) {
    fail(`no notification that the roots arrived; log notifications: ${JSON.stringify(logs)}`);
  }
  const listed = await client.callTool({ name: 'get-roots-list', arguments: {} });
  if (!JSON.stringify(listed).includes(ROOT.uri)) fail(`get-roots-list: ${JSON.stringify(listed)}`);
  ok('roots/list from the server (on the stream) answered by the client (a POST); get-roots-list shows it');

  const endpoint = `${new URL(url).pathname}/message`;
  if (posted.length === 0 || !posted.every((p) => p === endpoint)) {
    fail(`POSTs must go to the sidecar's ${endpoint}, went to ${JSON.stringify(posted)}`);
  }
  ok(`every POST went to the sidecar's ${endpoint} (${posted.length})`);
  await client.close();
  clearTimeout(overall);
  ok('all checks passed');
} catch (err) {
  fail(`${err?.stack ?? err}`);
}
