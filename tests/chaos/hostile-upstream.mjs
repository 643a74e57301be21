// A hostile MCP upstream for chaos scenario G (abuse bounds), on 127.0.0.1. It answers
// `initialize`, notifications and the other methods of the readiness handshake like a plain
// server, and misbehaves on `tools/call` by the tool's name:
//   huge_headers   a 200 whose headers hold 1 MiB (one X-Padding value)
//   no_newline     an SSE reply whose `data:` line never ends: 64 MiB of `x` and no newline
//   forever        an SSE reply that sends an event every 10 ms and never ends
//   echo           an ordinary JSON reply
//
//   node hostile-upstream.mjs PORT
//
// stdout: one JSON line per event worth counting: {"event":"forever_closed","after_ms":..} when a
// never-ending stream's connection is closed (the proxy must close it when its client leaves).
import { createServer } from 'node:http';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node hostile-upstream.mjs PORT');
  process.exit(2);
}
const log = (o) => process.stdout.write(`${JSON.stringify({ t: Date.now() / 1000, ...o })}\n`);
const server = createServer({ maxHeaderSize: 1 << 20 }, async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  if (req.method !== 'POST') return res.writeHead(405).end();
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString());
  } catch {
    return res.writeHead(400).end();
  }
  const reply = (result) => res.writeHead(200, { 'Content-Type': 'application/json', 'Mcp-Session-Id': 'hostile-1' })
    .end(JSON.stringify({ jsonrpc: '2.0', id: body.id, result }));
  if (body.method === 'initialize') {
    return reply({ protocolVersion: body.params?.protocolVersion ?? '2025-11-25', capabilities: { tools: {} }, serverInfo: { name: 'hostile', version: '0' } });
  }
  if (body.id === undefined) return res.writeHead(202).end();
  if (body.method !== 'tools/call') return reply({});
  const name = body.params?.name;
  if (name === 'huge_headers') {
    res.writeHead(200, { 'Content-Type': 'application/json', 'X-Padding': 'p'.repeat(1 << 20) });
    return res.end(JSON.stringify({ jsonrpc: '2.0', id: body.id, result: {} }));
  }
  if (name === 'no_newline') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write('data: ');
    const block = Buffer.alloc(1 << 20, 'x');
    for (let i = 0; i < 64 && !res.destroyed; i++) {
      if (!res.write(block)) await new Promise((r) => res.once('drain', r).once('close', r));
    }
    return res.end();
  }
  if (name === 'forever') {
    const started = Date.now();
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    let n = 0;
    const timer = setInterval(() => res.write(`id: ${++n}\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":${n}}}\n\n`), 10);
    res.on('close', () => {
      clearInterval(timer);
      log({ event: 'forever_closed', after_ms: Date.now() - started });
    });
    return;
  }
  return reply({ content: [{ type: 'text', text: String(body.params?.arguments?.text ?? '') }] });
});
server.listen(port, '127.0.0.1', () => log({ event: 'listening', port }));
