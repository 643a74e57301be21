// An OAuth-protected MCP server for the OAuth interop scenarios: Streamable HTTP with stateful
// sessions (the pinned @modelcontextprotocol/sdk, as server-everything runs it) behind a bearer check
// that validates every request's access token against the real authorization server (idp.mjs):
// a JWT (RFC 9068, typ at+jwt) signed by a key from the issuer's jwks_uri (found through its OIDC
// discovery document), iss = the issuer, aud = this server's resource URL, not expired, scope
// including mcp:tools. It listens on 127.0.0.1 only.
//
//   RS_PORT=PORT RS_ISSUER=http://127.0.0.1:IDP node resource-server.mjs
//
// Resource URL http://127.0.0.1:PORT/mcp. RFC 9728 metadata at
// /.well-known/oauth-protected-resource/mcp. Without a token: 401 with
//   WWW-Authenticate: Bearer resource_metadata="<that URL>", scope="mcp:tools"
// with a bad token: the same plus error="invalid_token"; with a valid token lacking the scope:
// 403 error="insufficient_scope" (RFC 6750).
//
// Test control (loopback only, like everything here): POST /_test/revoke-seen makes every access
// token seen so far invalid (401 invalid_token from then on), as when an authorization server revokes
// tokens before they expire; the client must get a new token and retry.
//
// One tool, `whoami`, answers with the caller's token claims that identify it (sub, client_id, scope,
// aud, and jti/iat/exp so a test can tell tokens apart; never the token itself).
//
// stdout: one JSON object per line per request: {"event":"request","method":..,"path":..,
// "rpc":..,"auth":"ok"|"missing"|"invalid"|"insufficient_scope","reason":..,"sub":..,"client_id":..,
// "jti":..,"exp":..,"status":..}
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';

const port = Number(process.env.RS_PORT || process.argv[2]);
const issuer = process.env.RS_ISSUER;
if (!Number.isInteger(port) || port <= 0 || !issuer) {
  console.error('usage: RS_PORT=PORT RS_ISSUER=URL node resource-server.mjs');
  process.exit(2);
}
const origin = `http://127.0.0.1:${port}`;
const resource = `${origin}/mcp`;
const metadataPath = '/.well-known/oauth-protected-resource/mcp';
const metadataUrl = `${origin}${metadataPath}`;
const REQUIRED_SCOPE = 'mcp:tools';
const MAX_BODY = 4 * 1024 * 1024;

const log = (obj) => process.stdout.write(`${JSON.stringify({ t: new Date().toISOString(), ...obj })}\n`);

// The issuer's keys, found the way a resource server finds them: its discovery document's jwks_uri.
// Fetched on first use (the authorization server may start after this server), retried on failure.
let jwks;
async function keySet() {
  if (jwks) return jwks;
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!res.ok) throw new Error(`discovery at ${issuer}: HTTP ${res.status}`);
  const meta = await res.json();
  if (meta.issuer !== issuer) throw new Error(`discovery issuer ${meta.issuer} is not ${issuer}`);
  jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  return jwks;
}

function challenge(params) {
  const parts = Object.entries({ ...params, resource_metadata: metadataUrl, scope: params.scope ?? REQUIRED_SCOPE })
    .map(([k, v]) => `${k}="${String(v).replace(/["\\]/g, '')}"`);
  return `Bearer ${parts.join(', ')}`;
}

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

// Returns { status: 200, authInfo, claims } or { status, header, auth, reason } for the refusal.
async function authenticate(req) {
  const header = req.headers.authorization;
  if (!header) return { status: 401, header: challenge({}), auth: 'missing' };
  const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i.exec(header.trim());
  if (!m) {
    return {
      status: 401,
      header: challenge({ error: 'invalid_request', error_description: 'malformed Authorization header' }),
      auth: 'invalid',
      reason: 'malformed Authorization header',
    };
  }
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(m[1], await keySet(), {
      issuer,
      audience: resource,
      typ: 'at+jwt',
      algorithms: ['RS256', 'PS256', 'ES256'],
    }));
  } catch (err) {
    const reason = `${err.code ?? err.name}: ${err.message}`;
    return {
      status: 401,
      header: challenge({ error: 'invalid_token', error_description: err.code ?? 'token rejected' }),
      auth: 'invalid',
      reason,
    };
  }
  if (revokedJtis.has(claims.jti)) {
    return {
      status: 401,
      header: challenge({ error: 'invalid_token', error_description: 'token revoked' }),
      auth: 'invalid',
      reason: 'revoked by /_test/revoke-seen',
      claims,
    };
  }
  seenJtis.add(claims.jti);
  const scopes = typeof claims.scope === 'string' ? claims.scope.split(' ').filter(Boolean) : [];
  if (!scopes.includes(REQUIRED_SCOPE)) {
    return {
      status: 403,
      header: challenge({ error: 'insufficient_scope', error_description: `requires ${REQUIRED_SCOPE}` }),
      auth: 'insufficient_scope',
      reason: `token scope: ${claims.scope ?? '(none)'}`,
      claims,
    };
  }
  return {
    status: 200,
    claims,
    authInfo: {
      token: m[1],
      clientId: claims.client_id,
      scopes,
      expiresAt: claims.exp,
      resource: new URL(resource),
      extra: { claims },
    },
  };
}

function newMcpServer() {
  const server = new McpServer({ name: 'oauth-interop-resource-server', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: "Who the caller's access token says the caller is" },
    async (extra) => {
      const c = extra.authInfo?.extra?.claims ?? {};
      const who = {
        sub: c.sub, client_id: c.client_id, scope: c.scope, aud: c.aud, jti: c.jti, iat: c.iat, exp: c.exp,
      };
      return { content: [{ type: 'text', text: JSON.stringify(who) }], structuredContent: who };
    },
  );
  return server;
}

const transports = new Map(); // session id -> transport
const seenJtis = new Set();
const revokedJtis = new Set();

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function rpcName(body) {
  if (Array.isArray(body)) return 'batch';
  return body?.method ?? (body && 'id' in body ? 'response' : undefined);
}

async function handleMcp(req, res, entry) {
  const auth = await authenticate(req);
  entry.auth = auth.status === 200 ? 'ok' : auth.auth;
  if (auth.reason) entry.reason = auth.reason;
  if (auth.claims) Object.assign(entry, { sub: auth.claims.sub, client_id: auth.claims.client_id, jti: auth.claims.jti, exp: auth.claims.exp });

  let body;
  if (req.method === 'POST') {
    const text = await readBody(req);
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    entry.rpc = rpcName(body);
  }
  if (auth.status !== 200) {
    sendJson(res, auth.status, { error: auth.auth === 'insufficient_scope' ? 'insufficient_scope' : 'invalid_token' }, {
      'WWW-Authenticate': auth.header,
    });
    return;
  }
  req.auth = auth.authInfo;

  const sessionId = req.headers['mcp-session-id'];
  entry.session = sessionId;
  if (sessionId) {
    const transport = transports.get(sessionId);
    if (!transport) {
      sendJson(res, 404, { jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
      return;
    }
    await transport.handleRequest(req, res, body);
    return;
  }
  if (req.method === 'POST' && body && !Array.isArray(body) && isInitializeRequest(body)) {
    const server = newMcpServer();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        transports.set(id, transport);
        log({ event: 'session_initialized', session: id, sub: auth.claims.sub });
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) transports.delete(transport.sessionId);
    };
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
    return;
  }
  sendJson(res, 400, { jsonrpc: '2.0', error: { code: -32000, message: 'Bad Request: No valid session ID provided' }, id: null });
}

const httpServer = createServer(async (req, res) => {
  const path = new URL(req.url, origin).pathname;
  const entry = { event: 'request', method: req.method, path };
  res.on('finish', () => {
    entry.status = res.statusCode;
    log(entry);
  });
  try {
    if (path === metadataPath && req.method === 'GET') {
      sendJson(res, 200, {
        resource,
        authorization_servers: [issuer],
        scopes_supported: [REQUIRED_SCOPE],
        bearer_methods_supported: ['header'],
        resource_name: 'mcp-sidecar OAuth interop resource server',
      });
    } else if (path === '/_test/revoke-seen' && req.method === 'POST') {
      for (const jti of seenJtis) revokedJtis.add(jti);
      entry.revoked = seenJtis.size;
      seenJtis.clear();
      sendJson(res, 200, { revoked: entry.revoked });
    } else if (path === '/mcp') {
      await handleMcp(req, res, entry);
    } else {
      sendJson(res, 404, { error: 'not_found' });
    }
  } catch (err) {
    entry.error = String(err?.stack ?? err);
    if (!res.headersSent) sendJson(res, 500, { jsonrpc: '2.0', error: { code: -32603, message: 'Internal server error' }, id: null });
    else res.end();
  }
});

httpServer.listen(port, '127.0.0.1', () => log({ event: 'listening', resource, issuer, metadata: metadataUrl }));
const stop = () => {
  for (const t of transports.values()) t.close().catch(() => {});
  httpServer.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
