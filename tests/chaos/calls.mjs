// A client that keeps calling one tool through the sidecar on ONE MCP session (the official
// TypeScript SDK client, from tests/interop's pinned packages) and reports every call, so that a
// chaos scenario can tell which calls failed while its fault was on and when calls recovered.
//
//   node calls.mjs URL --tool NAME [--args JSON] --for SECONDS [--every MS] [--timeout MS]
//                      [--stop-file PATH]
//
// stdout: `{"t":EPOCH_S,"ok":bool,"ms":..,"error":..}` per call, then
// `{"summary":true,"calls":N,"failed":N}`. Exit 0 unless the session could not be opened at all:
// failed calls are the figure, not an error of this script. Every call is bounded (--timeout,
// default 10 s) and so is the whole run (--for plus one timeout); it ends earlier once
// --stop-file exists.
import { existsSync } from 'node:fs';
import { Client } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/index.js';
import { StreamableHTTPClientTransport } from '../interop/node_modules/@modelcontextprotocol/sdk/dist/esm/client/streamableHttp.js';

const args = process.argv.slice(2);
const url = args.shift();
const opt = { tool: 'echo', args: null, for: 10, every: 200, timeout: 10_000, stopFile: null };
while (args.length) {
  const a = args.shift();
  const v = args.shift();
  if (a === '--tool') opt.tool = v;
  else if (a === '--args') opt.args = JSON.parse(v);
  else if (a === '--for') opt.for = Number(v);
  else if (a === '--every') opt.every = Number(v);
  else if (a === '--timeout') opt.timeout = Number(v);
  else if (a === '--stop-file') opt.stopFile = v;
  else {
    console.error(`calls: unknown argument ${a}`);
    process.exit(2);
  }
}
if (!url) {
  console.error('usage: node calls.mjs URL --tool NAME [--args JSON] --for SECONDS [--every MS]');
  process.exit(2);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
setTimeout(() => {
  console.error('calls: overall deadline passed');
  process.exit(3);
}, (opt.for * 1000) + opt.timeout + 30_000).unref();

const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: 'mcp-sidecar-chaos-calls', version: '0.0.0' });
client.onerror = () => {}; // transport errors while a fault is on are expected; calls report them
await client.connect(transport);

const end = Date.now() + opt.for * 1000;
let calls = 0;
let failed = 0;
let n = 0;
while (Date.now() < end && !(opt.stopFile && existsSync(opt.stopFile))) {
  const started = Date.now();
  n += 1;
  const args = opt.args ?? (opt.tool === 'echo' ? { message: `chaos-${n}` } : {});
  let ok = false;
  let error;
  try {
    const r = await client.callTool({ name: opt.tool, arguments: args }, undefined, { timeout: opt.timeout });
    ok = !r.isError && (opt.tool !== 'echo' || r.content?.[0]?.text === `Echo: ${args.message}`);
    if (!ok) error = JSON.stringify(r).slice(0, 300);
  } catch (err) {
    error = String(err?.message ?? err).slice(0, 300);
  }
  calls += 1;
  if (!ok) failed += 1;
  console.log(JSON.stringify({ t: started / 1000, ok, ms: Date.now() - started, ...(error ? { error } : {}) }));
  const wait = opt.every - (Date.now() - started);
  if (wait > 0) await sleep(wait);
}
console.log(JSON.stringify({ summary: true, calls, failed }));
await client.close().catch(() => {});
process.exit(0);
