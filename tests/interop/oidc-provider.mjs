// A real OAuth 2.0 / OpenID Connect authorization server for interop tests:
// the npm package `oidc-provider` (major 9), installed by scripts/tools into
// .tools/node. It issues client_credentials access tokens as JWTs (RFC 9068,
// header typ "at+jwt") for one resource server (the audience), carrying a
// custom `user_id` claim taken from the client's metadata.
//
// Usage: node tests/interop/oidc-provider.mjs
// Listens on 127.0.0.1:$OIDC_PORT (default 0 = random) and prints exactly one
// line "READY <port>" on stdout once it accepts connections; everything else
// goes to stderr. Exits on SIGTERM / SIGINT.
//
// Environment (all optional):
//   M2M_AUTHZ_TOOLS        the .tools dir (default: <repo>/.tools)
//   OIDC_PORT              port to bind (default 0)
//   OIDC_CLIENT_ID         client using client_secret_post  (default m2m-test-client)
//   OIDC_CLIENT_SECRET     secret of all clients below      (default m2m-test-secret-0123456789abcdef)
//   OIDC_BASIC_CLIENT_ID   client using client_secret_basic (default <OIDC_CLIENT_ID>-basic)
//   OIDC_NOUSER_CLIENT_ID  client_secret_post client WITHOUT user_id (default <OIDC_CLIENT_ID>-nouser)
//   OIDC_USER_ID           value of the user_id claim       (default user-interop-1)
//   OIDC_AUDIENCE          default resource indicator = aud (default urn:m2m-authz:test-api)
//   OIDC_SCOPES            space-separated scopes the clients may ask for (default "read:orders write:orders")
//   OIDC_ALG               RS256 (default) or ES256: signing alg of access tokens
//   OIDC_TTL_SECONDS       access token lifetime (default 600)
//   OIDC_TOKEN_FORMAT      jwt (default) or opaque: the access token format (RFC 7662
//                          introspection is how an opaque one is checked)
//   OIDC_RS_CLIENT_ID      resource-server client (client_secret_basic, no grants) that
//                          introspects tokens (default <OIDC_CLIENT_ID>-rs)
// Every request to the introspection endpoint is logged to stderr as a line
// "INTROSPECTION-REQUEST", so a test can count them.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// oidc-provider prints NOTICEs with console.info, which writes to stdout.
// stdout is reserved for the READY line, so send all console output to stderr.
for (const name of ['log', 'info', 'debug']) {
  console[name] = (...args) => console.error(...args);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const toolsDir = process.env.M2M_AUTHZ_TOOLS || path.resolve(here, '..', '..', '.tools');
const entry = path.join(toolsDir, 'node', 'node_modules', 'oidc-provider', 'lib', 'index.js');

let Provider;
let errors;
try {
  ({ default: Provider, errors } = await import(pathToFileURL(entry).href));
} catch (err) {
  console.error(`cannot load oidc-provider from ${entry}: run scripts/tools first (${err.message})`);
  process.exit(2);
}

const env = (name, fallback) => {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
};

const clientId = env('OIDC_CLIENT_ID', 'm2m-test-client');
const clientSecret = env('OIDC_CLIENT_SECRET', 'm2m-test-secret-0123456789abcdef');
const basicClientId = env('OIDC_BASIC_CLIENT_ID', `${clientId}-basic`);
const noUserClientId = env('OIDC_NOUSER_CLIENT_ID', `${clientId}-nouser`);
const userId = env('OIDC_USER_ID', 'user-interop-1');
const audience = env('OIDC_AUDIENCE', 'urn:m2m-authz:test-api');
const scopes = env('OIDC_SCOPES', 'read:orders write:orders');
const alg = env('OIDC_ALG', 'RS256');
const ttl = Number.parseInt(env('OIDC_TTL_SECONDS', '600'), 10);
const port = Number.parseInt(env('OIDC_PORT', '0'), 10);
const tokenFormat = env('OIDC_TOKEN_FORMAT', 'jwt');
const rsClientId = env('OIDC_RS_CLIENT_ID', `${clientId}-rs`);

if (!['jwt', 'opaque'].includes(tokenFormat)) {
  console.error(`OIDC_TOKEN_FORMAT must be jwt or opaque, got ${tokenFormat}`);
  process.exit(2);
}

if (!['RS256', 'ES256'].includes(alg)) {
  console.error(`OIDC_ALG must be RS256 or ES256, got ${alg}`);
  process.exit(2);
}
if (!Number.isInteger(ttl) || ttl <= 0) {
  console.error(`OIDC_TTL_SECONDS must be a positive integer, got ${process.env.OIDC_TTL_SECONDS}`);
  process.exit(2);
}

// Fresh signing keys for every run: one RSA (RS256) and one P-256 (ES256) key.
// The provider publishes their public halves at its jwks_uri.
function privateJwk(type, options, kidPrefix) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, use: 'sig', kid: `${kidPrefix}-${crypto.randomBytes(6).toString('hex')}` };
}
const jwks = {
  keys: [
    privateJwk('rsa', { modulusLength: 2048 }, 'rsa'),
    privateJwk('ec', { namedCurve: 'P-256' }, 'ec'),
  ],
};

// Bind first, so that the issuer can name the real port.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const boundPort = server.address().port;
const issuer = `http://127.0.0.1:${boundPort}`;

const commonClient = {
  client_secret: clientSecret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: scopes,
};

const provider = new Provider(issuer, {
  clients: [
    { ...commonClient, client_id: clientId, token_endpoint_auth_method: 'client_secret_post', user_id: userId },
    { ...commonClient, client_id: basicClientId, token_endpoint_auth_method: 'client_secret_basic', user_id: userId },
    { ...commonClient, client_id: noUserClientId, token_endpoint_auth_method: 'client_secret_post' },
    // The sidecar as a resource server: it only introspects.
    {
      client_id: rsClientId,
      client_secret: clientSecret,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  // `user_id` is our own client metadata field; it becomes a token claim below.
  extraClientMetadata: { properties: ['user_id'] },
  jwks,
  scopes: ['openid', 'offline_access', ...scopes.split(' ').filter(Boolean)],
  features: {
    // Only the M2M flow is needed; the interactive login pages stay at their
    // development defaults and are never used.
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Requests without `resource=` get the test API as audience.
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) {
          throw new errors.InvalidTarget();
        }
        return {
          audience,
          scope: scopes,
          accessTokenTTL: ttl,
          accessTokenFormat: tokenFormat,
          jwt: { sign: { alg } },
        };
      },
    },
  },
  // The custom claim the sidecar maps to the user identity.
  extraTokenClaims: async (_ctx, token) => {
    const client = token.client ?? (await provider.Client.find(token.clientId));
    return client?.user_id ? { user_id: client.user_id } : undefined;
  },
  ttl: { ClientCredentials: ttl },
});
provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
// Plain HTTP on loopback: do not expect a TLS-terminating proxy.
provider.proxy = false;

const handle = provider.callback();
server.on('request', (req, res) => {
  if (req.url?.startsWith('/token/introspection')) {
    console.error('INTROSPECTION-REQUEST');
  }
  handle(req, res);
});
server.removeAllListeners('error');
server.on('error', (err) => console.error('oidc-provider server error:', err));

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`oidc-provider: ${signal}, exiting`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

console.error(`oidc-provider: issuer ${issuer}, audience ${audience}, alg ${alg}, ${tokenFormat} tokens, clients ${clientId} (post), ${basicClientId} (basic), ${noUserClientId} (post, no user_id)`);
process.stdout.write(`READY ${boundPort}\n`);
