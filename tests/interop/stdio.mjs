// Scenario G client: the official TypeScript SDK client with StdioClientTransport spawning
// `mcp-sidecar stdio` (the way stdio-only hosts run servers) in front of server-everything.
// It checks what a host's user would see and exits non-zero with a message on the first mismatch.
//
//   node stdio.mjs SIDECAR_BIN UPSTREAM_URL STATE_DIR
//
// stdout: one line per check. stderr: the sidecar's own log (its stderr is passed through).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const [bin, upstream, stateDir] = process.argv.slice(2);
if (!bin || !upstream || !stateDir) {
  console.error('usage: node stdio.mjs SIDECAR_BIN UPSTREAM_URL STATE_DIR');
  process.exit(2);
}

const ROOT = { uri: 'file:///interop-stdio', name: 'interop' };
const overall = setTimeout(() => fail('gave up after 60 s'), 60_000);
function fail(msg) {
  console.error(`stdio client: FAIL: ${msg}`);
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
function ok(msg) {
  console.log(`ok   ${msg}`);
}
/** Polls `check` until it holds, for at most `ms`. */
async function until(check, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

const transport = new StdioClientTransport({
  command: bin,
  args: ['stdio'],
  env: {
    MCP_SIDECAR_UPSTREAM_URL: upstream,
    MCP_SIDECAR_AUTH: 'none',
    MCP_SIDECAR_STATE_DIR: stateDir,
    MCP_SIDECAR_LOG: 'debug',
  },
  stderr: 'inherit',
});
const client = new Client(
  { name: 'mcp-sidecar-interop-stdio', version: '0.0.0' },
  { capabilities: { roots: { listChanged: true }, sampling: {}, elicitation: {} } },
);
const SAMPLED = 'sampled-by-the-typescript-client';
const ELICITED = 'Grace Hopper (typescript client)';
const asked = { sampling: 0, elicitation: 0 };
const updated = [];
client.setRequestHandler(CreateMessageRequestSchema, async () => {
  asked.sampling += 1;
  return { role: 'assistant', content: { type: 'text', text: SAMPLED }, model: 'interop-typescript', stopReason: 'endTurn' };
});
client.setRequestHandler(ElicitRequestSchema, async () => {
  asked.elicitation += 1;
  return { action: 'accept', content: { name: ELICITED, check: true } };
});
client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
  updated.push(n.params.uri);
});
let rootsAsked = 0;
const logs = [];
client.setRequestHandler(ListRootsRequestSchema, async () => {
  rootsAsked += 1;
  return { roots: [ROOT] };
});
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
  logs.push(String(n.params.data));
});
const transportErrors = [];
client.onerror = (err) => transportErrors.push(String(err?.message ?? err));

// What the sidecar wrote, in order, as the transport parsed it: the SDK's own progress dispatch
// races its response dispatch when both lines arrive in one read (a handler for the progress runs
// a microtask after the response retired it: typescript-sdk#2580), so the order of the wire, not
// the onprogress calls, is what the front is checked on.
const wire = [];
try {
  await client.connect(transport);
  const dispatch = transport.onmessage;
  if (typeof dispatch !== 'function') fail('the SDK client set no onmessage on its transport');
  transport.onmessage = (message, extra) => {
    wire.push(message);
    dispatch(message, extra);
  };
  const server = client.getServerVersion();
  if (!server?.name) fail(`initialize: no serverInfo (${JSON.stringify(server)})`);
  ok(`initialize over stdio: server ${server.name} ${server.version}`);

  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  for (const want of ['echo', 'trigger-long-running-operation', 'get-roots-list']) {
    if (!names.includes(want)) fail(`tools/list: no tool ${want} in ${JSON.stringify(names)}`);
  }
  ok(`tools/list: ${names.length} tools`);

  const text = `stdio-${process.pid}-${Date.now()}`;
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
  const done = wire.findIndex((m) =>
    JSON.stringify(m.result ?? '').includes('Long running operation completed'),
  );
  const before = wire
    .slice(0, done)
    .filter((m) => m.method === 'notifications/progress' && m.params?.total === 2)
    .map((m) => `progress ${m.params.progress}/${m.params.total}`);
  if (done < 0 || before.length < 2 || before[0] !== 'progress 1/2' || before[1] !== 'progress 2/2') {
    fail(`long-running: expected progress 1/2 and 2/2 on stdout before the result: ${JSON.stringify(before)} (onprogress saw ${JSON.stringify(events)})`);
  }
  if (!events.includes('progress 1/2')) {
    fail(`long-running: onprogress never called: ${JSON.stringify(events)}`);
  }
  ok(`progress 1/2 and 2/2 written before the result (onprogress saw ${JSON.stringify(events)})`);

  // server-everything asks a client with the roots capability for its roots once connected (a
  // server-to-client request), then sends a log notification saying how many it got.
  if (!(await until(() => rootsAsked > 0, 20_000))) fail('server-everything never asked for roots/list');
  if (!(await until(() => logs.some((l) => l.includes('Roots updated: 1 root')), 20_000))) {
    fail(`no notification that the roots arrived; log notifications: ${JSON.stringify(logs)}`);
  }
  ok(`roots/list from the server answered by the client; notification: "${logs.find((l) => l.includes('Roots updated'))}"`);
  const listed = await client.callTool({ name: 'get-roots-list', arguments: {} });
  if (!JSON.stringify(listed).includes(ROOT.uri)) fail(`get-roots-list: ${JSON.stringify(listed)}`);
  ok('get-roots-list shows the root the client answered with');

  const { resources } = await client.listResources();
  if (!resources.length) fail('resources/list is empty');
  const uri = resources[0].uri;
  await client.subscribeResource({ uri });
  await client.callTool({ name: 'toggle-subscriber-updates', arguments: {} });
  if (!(await until(() => updated.includes(uri), 20_000))) fail(`no notifications/resources/updated for ${uri}`);
  ok(`resources/subscribe ${uri}: notifications/resources/updated arrived`);

  const textOf = (r) => (r.content ?? []).map((c) => c.text ?? '').join(' ');
  const sampled = textOf(await client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'hello' } }));
  if (asked.sampling !== 1 || !sampled.includes(SAMPLED)) fail(`sampling: asked ${asked.sampling} times, tool said ${sampled.slice(0, 300)}`);
  ok('sampling/createMessage from the server answered by the client; the tool returned the answer');
  const elicited = textOf(await client.callTool({ name: 'trigger-elicitation-request', arguments: {} }));
  if (asked.elicitation !== 1 || !elicited.includes(ELICITED)) fail(`elicitation: asked ${asked.elicitation} times, tool said ${elicited.slice(0, 300)}`);
  ok('elicitation/create from the server answered by the client; the tool returned the answer');

  await client.close();
  // The one error the SDK race above raises, for a progress written before the result.
  const raced = (e) => e.startsWith('Received a progress notification for an unknown token') && e.includes('"progress":2');
  const errors = transportErrors.filter((e) => !raced(e));
  if (errors.length) fail(`transport errors: ${JSON.stringify(errors)}`);
  clearTimeout(overall);
  ok('all checks passed');
} catch (err) {
  fail(`${err?.stack ?? err}`);
}
