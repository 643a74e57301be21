// Scenario E: the legacy HTTP+SSE transport (protocol 2024-11-05) through the sidecar.
//
//   node legacy-sse.mjs SIDECAR_MCP_URL
//
// The SDK's SSEClientTransport opens GET on the sidecar, reads the `endpoint` event (which the
// sidecar rewrote to a path of its own), POSTs its messages there and reads the replies from the
// stream; the sidecar fronts server-everything's `sse` transport.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';

const url = process.argv[2];
if (!url) {
  console.error('usage: node legacy-sse.mjs SIDECAR_MCP_URL');
  process.exit(2);
}
const overall = setTimeout(() => fail('gave up after 60 s'), 60_000);
function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
const ok = (msg) => console.log(`ok   ${msg}`);

const posted = [];
async function loggingFetch(input, init = {}) {
  const res = await fetch(input, init);
  if ((init.method ?? 'GET') === 'POST') posted.push(new URL(String(input)).pathname);
  return res;
}

try {
  const transport = new SSEClientTransport(new URL(url), { fetch: loggingFetch, eventSourceInit: { fetch: loggingFetch } });
  const client = new Client({ name: 'mcp-sidecar-interop-legacy', version: '0.0.0' });
  await client.connect(transport);
  ok(`initialize over HTTP+SSE: server ${client.getServerVersion()?.name}`);
  const { tools } = await client.listTools();
  if (!tools.some((t) => t.name === 'echo')) fail(`no echo tool in ${JSON.stringify(tools.map((t) => t.name))}`);
  ok(`tools/list: ${tools.length} tools`);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'legacy' } });
  if (r.content?.[0]?.text !== 'Echo: legacy') fail(`echo: ${JSON.stringify(r)}`);
  ok(`tools/call echo: ${r.content[0].text}`);
  const rewritten = `${new URL(url).pathname}/legacy/`;
  if (posted.length === 0 || !posted.every((p) => p.startsWith(rewritten))) {
    fail(`POSTs must go to the sidecar's rewritten endpoint ${rewritten}..., went to ${JSON.stringify(posted)}`);
  }
  ok(`every POST went through the sidecar's rewritten endpoint (${posted[0]})`);
  await client.close();
  clearTimeout(overall);
  ok('all checks passed');
} catch (err) {
  fail(`${err?.stack ?? err}`);
}
