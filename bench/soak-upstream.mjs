// The soak run's MCP upstream: Streamable HTTP with sessions, on 127.0.0.1, that validates every
// request's bearer token against the real authorization server (a JWT from oidc-provider, checked
// against the issuer's JWKS: signature, issuer, expiry), so that the sidecar's rotating 4 s tokens
// are really checked, not only carried.
//
//   SOAK_PORT=PORT SOAK_ISSUER=http://127.0.0.1:IDP node bench/soak-upstream.mjs
//
// Answers: initialize (a new Mcp-Session-Id), notifications (202), tools/call `echo` (JSON reply,
// the text back) and `echo_sse` (the same reply as one SSE event), GET (an SSE stream with a
// `ping` comment and an event every second until the client leaves), DELETE (200, the session
// ends); an unknown session gets 404, a bad or expired token 401 with `error="invalid_token"`.
// stdout: one JSON line per minute with counts (requests, 401s, open streams), for the report.
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify } from '../tests/interop/node_modules/jose/dist/webapi/index.js';

const port = Number(process.env.SOAK_PORT);
const issuer = process.env.SOAK_ISSUER;
if (!Number.isInteger(port) || !issuer) {
  console.error('usage: SOAK_PORT=PORT SOAK_ISSUER=URL node soak-upstream.mjs');
  process.exit(2);
}
const jwks = createRemoteJWKSet(new URL(`${issuer}/jwks`));
const sessions = new Set();
const counts = { requests: 0, unauthorized: 0, streams_open: 0, sessions_started: 0 };
setInterval(() => process.stdout.write(`${JSON.stringify({ t: Date.now() / 1000, ...counts, sessions: sessions.size })}\n`), 60_000).unref();

async function authorized(req) {
  const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  if (!m) return false;
  try {
    await jwtVerify(m[1], jwks, { issuer });
    return true;
  } catch {
    return false;
  }
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers }).end(JSON.stringify(body));
}

createServer(async (req, res) => {
  counts.requests += 1;
  const chunks = [];
  for await (const c of req) chunks.push(c);
  if (!(await authorized(req))) {
    counts.unauthorized += 1;
    res.writeHead(401, { 'WWW-Authenticate': 'Bearer error="invalid_token"', 'Content-Type': 'application/json' }).end('{}');
    return;
  }
  const session = req.headers['mcp-session-id'];
  if (req.method === 'GET') {
    if (!sessions.has(session)) return json(res, 404, { error: 'unknown session' });
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    counts.streams_open += 1;
    res.write(': ping\n\n');
    let n = 0;
    const timer = setInterval(() => res.write(`id: ${++n}\nevent: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"debug","data":${n}}}\n\n`), 1000);
    res.on('close', () => {
      clearInterval(timer);
      counts.streams_open -= 1;
    });
    return;
  }
  if (req.method === 'DELETE') {
    sessions.delete(session);
    return res.writeHead(200).end();
  }
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString());
  } catch {
    return json(res, 400, { error: 'not JSON' });
  }
  if (body.method === 'initialize') {
    const id = randomUUID();
    sessions.add(id);
    counts.sessions_started += 1;
    return json(res, 200, {
      jsonrpc: '2.0',
      id: body.id,
      result: { protocolVersion: body.params?.protocolVersion ?? '2025-11-25', capabilities: { tools: {} }, serverInfo: { name: 'soak-upstream', version: '0' } },
    }, { 'Mcp-Session-Id': id });
  }
  if (session !== undefined && !sessions.has(session)) return json(res, 404, { error: 'unknown session' });
  if (body.id === undefined) return res.writeHead(202).end();
  if (body.method === 'tools/call') {
    const reply = { jsonrpc: '2.0', id: body.id, result: { content: [{ type: 'text', text: String(body.params?.arguments?.text ?? '') }] } };
    if (body.params?.name === 'echo_sse') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      return res.end(`event: message\ndata: ${JSON.stringify(reply)}\n\n`);
    }
    return json(res, 200, reply);
  }
  if (body.method === 'ping' || body.method === 'tools/list') return json(res, 200, { jsonrpc: '2.0', id: body.id, result: {} });
  return json(res, 200, { jsonrpc: '2.0', id: body.id, error: { code: -32601, message: 'method not found' } });
}).listen(port, '127.0.0.1');
