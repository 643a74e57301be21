// A real authorization server for the OAuth interop scenarios: npm `oidc-provider` (pinned in
// ../package.json), configured the way an MCP deployment would configure it, on 127.0.0.1 only.
//
//   IDP_PORT=PORT IDP_RESOURCE=http://127.0.0.1:RS/mcp IDP_CC_SECRET=... \
//   IDP_RSA_KEY_FILE=rsa.pem IDP_EC_KEY_FILE=ec.pem [ACCESS_TTL=3600] [IDP_SECRETS_FILE=f] node idp.mjs
//
// Issuer http://127.0.0.1:PORT (discovery at /.well-known/openid-configuration; oidc-provider serves
// no RFC 8414 /.well-known/oauth-authorization-server, so a client must fall back to the OIDC path).
// Features: devInteractions (the provider's own login and consent pages), device flow (RFC 8628,
// pages at /device), client credentials, resource indicators (RFC 8707: the one resource is the MCP
// server at IDP_RESOURCE; its access tokens are JWTs with aud = that URL, scope mcp:tools, lifetime
// ACCESS_TTL s), rotating refresh tokens (a second use of a rotated refresh token is answered with
// invalid_grant and revokes the whole grant, which is how a client that spends a refresh token twice
// is caught), PKCE required for every authorization-code request.
//
// Clients (ids are fixed, secrets and keys come from the run script):
//   cc-client      client_credentials; client_secret_basic or client_secret_post; secret IDP_CC_SECRET
//   jwt-client     client_credentials; private_key_jwt with either key: RS256 (IDP_RSA_KEY_FILE, kid
//                  rs-key) or ES256 (IDP_EC_KEY_FILE, kid ec-key); the files hold the PRIVATE keys the
//                  sidecar signs with, this script publishes only their public halves as the client's jwks
//   device-client  public (auth none); device_code + refresh_token; scope openid offline_access mcp:tools
//
// stdout: one JSON object per line. `{"event":"listening",...}` once, then one line per token request:
// {"event":"token","grant_type":...,"client_id":...,"auth":...,"resource":...,"scope":...,
//  "status":200,"outcome":"ok"|"<oauth error code>","rotated":bool,"refresh_token_issued":bool}
// and one per device authorization request. run.sh counts these lines (refreshes, invalid_grant).
// IDP_SECRETS_FILE, if set, receives every access and refresh token issued, one per line, so the run
// script can grep the sidecar's logs and responses for them; tokens never go to stdout.
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { Provider, errors } from 'oidc-provider';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`idp: ${name} is required`);
    process.exit(2);
  }
  return v;
}

const port = Number(process.env.IDP_PORT || process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('idp: IDP_PORT (or the first argument) must be a port number');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const resource = need('IDP_RESOURCE');
const ccSecret = need('IDP_CC_SECRET');
const accessTtl = Number(process.env.ACCESS_TTL || 3600);
const secretsFile = process.env.IDP_SECRETS_FILE;

const log = (obj) => process.stdout.write(`${JSON.stringify({ t: new Date().toISOString(), ...obj })}\n`);

// The public half of a private key file, as a JWK for the client's registered jwks.
function publicJwk(file, kid, alg) {
  const jwk = createPublicKey(readFileSync(file)).export({ format: 'jwk' });
  return { ...jwk, kid, alg, use: 'sig' };
}
const clientKeys = [
  publicJwk(need('IDP_RSA_KEY_FILE'), 'rs-key', 'RS256'),
  publicJwk(need('IDP_EC_KEY_FILE'), 'ec-key', 'ES256'),
];

// The provider's own signing key (ID tokens, JWT access tokens), fresh per run: resource servers
// fetch it from jwks_uri, which is what they must do in real life too.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `idp-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

const configuration = {
  clients: [
    {
      client_id: 'cc-client',
      client_secret: ccSecret,
      token_endpoint_auth_method: 'client_secret_basic', // oidc-provider accepts _post for it too
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'mcp:tools',
    },
    {
      client_id: 'jwt-client',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: clientKeys },
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'mcp:tools',
    },
    {
      client_id: 'device-client',
      client_name: 'mcp-sidecar interop',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      grant_types: [DEVICE_GRANT, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      scope: 'openid offline_access mcp:tools',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'mcp:tools'],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A request without `resource` gets the MCP server (so a client that sends none still gets a
      // token the resource server accepts); a grant covering several resources is left to the caller.
      defaultResource: (ctx, client, oneOf) => oneOf ?? resource,
      // A refresh without `resource` keeps the granted resource: the new access token is again a
      // JWT for the MCP server, not an opaque token for the userinfo endpoint.
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
        return {
          scope: 'mcp:tools',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: accessTtl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  issueRefreshToken: (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    DeviceCode: 600,
    RefreshToken: 24 * 3600,
    IdToken: 3600,
    Grant: 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
  },
};

const provider = new Provider(issuer, configuration);

// Which client authentication a token request used, without its secret.
function clientAuth(ctx, body) {
  if (ctx.headers.authorization?.toLowerCase().startsWith('basic ')) return 'client_secret_basic';
  if (body?.client_secret) return 'client_secret_post';
  if (body?.client_assertion) {
    try {
      const header = JSON.parse(Buffer.from(String(body.client_assertion).split('.')[0], 'base64url'));
      return `private_key_jwt/${header.alg}${header.kid ? `/${header.kid}` : ''}`;
    } catch {
      return 'private_key_jwt/unparseable';
    }
  }
  return 'none';
}

provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route !== 'token' && route !== 'device_authorization') return;
  const params = ctx.oidc?.params ?? {};
  const body = ctx.oidc?.body ?? {};
  const res = typeof ctx.body === 'object' && ctx.body !== null ? ctx.body : {};
  const entry = {
    event: route === 'token' ? 'token' : 'device_authorization',
    grant_type: params.grant_type ?? body.grant_type,
    client_id: ctx.oidc?.client?.clientId ?? params.client_id ?? body.client_id,
    auth: clientAuth(ctx, body),
    // what the client sent (the provider fills in its default resource in params)
    resource: body.resource ?? null,
    scope: body.scope ?? null,
    status: ctx.status,
    outcome: ctx.status === 200 ? 'ok' : (res.error ?? `http_${ctx.status}`),
  };
  if (res.error_description) entry.error_description = res.error_description;
  if (route === 'token' && ctx.status === 200) {
    entry.granted_scope = res.scope ?? null;
    entry.expires_in = res.expires_in;
    entry.refresh_token_issued = Boolean(res.refresh_token);
    entry.rotated = Boolean(res.refresh_token) && entry.grant_type === 'refresh_token'
      && res.refresh_token !== body.refresh_token;
    if (secretsFile) {
      const lines = [res.access_token, res.refresh_token, res.id_token].filter(Boolean).map((v) => `${v}\n`);
      appendFileSync(secretsFile, lines.join(''), { mode: 0o600 });
    }
  }
  log(entry);
});

provider.on('server_error', (ctx, err) => log({ event: 'server_error', path: ctx.path, error: String(err?.stack ?? err) }));
provider.on('grant.revoked', (ctx, grantId) => log({ event: 'grant_revoked', grant_id: grantId, route: ctx.oidc?.route }));

const server = provider.listen(port, '127.0.0.1', () => {
  log({ event: 'listening', issuer, resource, access_ttl: accessTtl });
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
