// Stytch's official Node SDK (npm `stytch`, installed by scripts/tools into
// .tools/node) against the embedded issuer: the same M2M calls and error paths
// as tests/interop/stytch_sdk.py, through the Node SDK's own API.
//
// Usage: node tests/interop/stytch_sdk.mjs   (run by tests/stytch_sdk.rs)
//
// Environment:
//   STYTCH_SDK_BASE_URL        the issuer, http://host:port or https://host:port
//   STYTCH_SDK_PROJECT_ID      the issuer's project id
//   STYTCH_SDK_PROJECT_SECRET  the issuer's project secret
//   M2M_AUTHZ_TOOLS            the .tools dir (default: <repo>/.tools)
//   NODE_EXTRA_CA_CERTS        read by node itself: a PEM CA to trust for an
//                              https:// issuer with a private CA
//
// Every step asserts on what the SDK itself returns (response fields;
// StytchError's status_code / error_type / request_id; ClientError's code for
// the local JWT checks) and prints `ok <step>` on stdout. The first failing
// step prints `FAIL <step>: <why>` and the script exits 1; after the last step
// it prints `done <n>/<n>` and exits 0. The SDK's own warnings go to stderr.

import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const toolsDir = process.env.M2M_AUTHZ_TOOLS || path.resolve(here, '..', '..', '.tools');
const require = createRequire(path.join(toolsDir, 'node', 'package.json'));
const stytch = require('stytch');

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`stytch_sdk.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const BASE_URL = env('STYTCH_SDK_BASE_URL').replace(/\/+$/, '');
const PROJECT_ID = env('STYTCH_SDK_PROJECT_ID');
const PROJECT_SECRET = env('STYTCH_SDK_PROJECT_SECRET');

// The SDK (14.2, dist/shared/client.js) refuses a `custom_base_url` that is
// not https:// ("custom_base_url must use HTTPS scheme"), but takes `env` as the
// base URL unchecked (with a console warning on stderr). So an https:// issuer
// goes through the documented `custom_base_url`, a plain-HTTP one through `env`.
function sdkClient(secret) {
  const config = { project_id: PROJECT_ID, secret };
  if (BASE_URL.startsWith('https://')) {
    config.custom_base_url = BASE_URL;
  } else {
    config.env = `${BASE_URL}/`;
  }
  return new stytch.Client(config);
}

const client = sdkClient(PROJECT_SECRET);
const m2m = client.m2m;

// Imported secrets: random enough for the issuer's strength rule.
const IMPORTED_SECRET = 'imported-Xk9mQ2vR7Lp4zT8wN3bJ6';
const IMPORTED_SECRET_2 = 'imported-Hq5cV1nF8sD2gK7yP4aW9';
const CLIENT_ID = 'node-client-1';
const SECOND_ID = 'node-client-2';
// Secrets the steps learn, by client id.
const secrets = {};

const steps = [];
function step(name, fn) {
  steps.push([name, fn]);
}

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) {
    throw new CheckFailed(typeof message === 'string' ? message : JSON.stringify(message));
  }
}

function sorted(list) {
  return [...list].sort();
}

function same(a, b) {
  return isDeepStrictEqual(a, b);
}

/** Awaits `call`, which must reject with a StytchError carrying these fields. */
async function expectStytchError(call, statusCode, errorType) {
  let result;
  try {
    result = await call();
  } catch (e) {
    check(
      e instanceof stytch.StytchError,
      `want StytchError ${statusCode} ${errorType}, got ${e?.constructor?.name}: ${e?.message}`,
    );
    check(
      e.status_code === statusCode && e.error_type === errorType,
      `got ${e.status_code} ${e.error_type}, want ${statusCode} ${errorType}`,
    );
    check(Boolean(e.request_id), 'error without request_id');
    check(Boolean(e.error_message), 'error without error_message');
    return e;
  }
  throw new CheckFailed(`no error; got ${JSON.stringify(result)}`);
}

/** Awaits `call`, which must reject with the SDK's local ClientError of this code. */
async function expectClientError(call, code) {
  let result;
  try {
    result = await call();
  } catch (e) {
    check(
      e instanceof stytch.ClientError,
      `want ClientError ${code}, got ${e?.constructor?.name}: ${e?.message}`,
    );
    check(e.code === code, `got ClientError ${e.code}, want ${code}`);
    return e;
  }
  throw new CheckFailed(`no error; got ${JSON.stringify(result)}`);
}

function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

step('clients.create with client_id, client_secret, trusted_metadata, name, description', async () => {
  const r = await m2m.clients.create({
    client_id: CLIENT_ID,
    client_secret: IMPORTED_SECRET,
    client_name: 'SDK client',
    client_description: 'created by the Node SDK',
    scopes: ['read:orders', 'write:orders'],
    trusted_metadata: { user_id: 'user-42', team: 'sdk' },
  });
  const c = r.m2m_client;
  check(r.status_code === 200, `status_code ${r.status_code}`);
  check(Boolean(r.request_id), 'response without request_id');
  check(c.client_id === CLIENT_ID, c.client_id);
  check(c.client_secret === IMPORTED_SECRET, 'imported secret not returned');
  check(c.client_secret_last_four === IMPORTED_SECRET.slice(-4), c.client_secret_last_four);
  check(c.client_name === 'SDK client', c.client_name);
  check(c.client_description === 'created by the Node SDK', c.client_description);
  check(c.status === 'active', c.status);
  check(same(sorted(c.scopes), ['read:orders', 'write:orders']), c.scopes);
  check(same(c.trusted_metadata, { user_id: 'user-42', team: 'sdk' }), c.trusted_metadata);
});

step('clients.create generates a secret when none is given', async () => {
  const r = await m2m.clients.create({
    client_id: SECOND_ID,
    scopes: ['read:orders'],
    trusted_metadata: { user_id: 'user-43' },
  });
  const secret = r.m2m_client.client_secret;
  check(typeof secret === 'string' && secret.startsWith('secret-test-'), 'generated secret shape');
  secrets[SECOND_ID] = secret;
});

step('clients.create refuses a weak client_secret (400 insecure_m2m_client_secret)', async () => {
  await expectStytchError(
    () => m2m.clients.create({ client_id: 'node-weak', client_secret: 'password', scopes: [] }),
    400,
    'insecure_m2m_client_secret',
  );
});

step('clients.create refuses a duplicate client_id (400 duplicate_m2m_client_id)', async () => {
  await expectStytchError(
    () => m2m.clients.create({ client_id: CLIENT_ID, scopes: [] }),
    400,
    'duplicate_m2m_client_id',
  );
});

step('clients.get', async () => {
  const r = await m2m.clients.get({ client_id: CLIENT_ID });
  const c = r.m2m_client;
  check(r.status_code === 200, `status_code ${r.status_code}`);
  check(c.client_id === CLIENT_ID && c.client_name === 'SDK client', c);
  check(c.trusted_metadata.user_id === 'user-42', c.trusted_metadata);
  check(c.client_secret === undefined, 'get returned the client secret');
  check(c.next_client_secret_last_four == null, c.next_client_secret_last_four);
});

step('clients.get of an unknown client (404 m2m_client_not_found)', async () => {
  await expectStytchError(
    () => m2m.clients.get({ client_id: 'node-nobody' }),
    404,
    'm2m_client_not_found',
  );
});

step('client_id spelling: path-encoded ids round-trip, bad ones are 400 m2m_client_invalid_client_id', async () => {
  // The SDK puts client_id in the path through encodeURIComponent.
  const id = 'node.client~3_x-Y';
  const created = (await m2m.clients.create({ client_id: id, scopes: [] })).m2m_client;
  check(created.client_id === id, created.client_id);
  check((await m2m.clients.get({ client_id: id })).m2m_client.client_id === id, 'get');
  const renamed = (await m2m.clients.update({ client_id: id, client_name: 'dots' })).m2m_client;
  check(renamed.client_name === 'dots', renamed.client_name);
  check((await m2m.clients.delete({ client_id: id })).client_id === id, 'delete');
  for (const bad of ['a/b', 'a b', '..', 'x'.repeat(129)]) {
    await expectStytchError(
      () => m2m.clients.create({ client_id: bad, scopes: [] }),
      400,
      'm2m_client_invalid_client_id',
    );
  }
  // Encoded, a slash or space stays inside the one path segment: no such client.
  for (const odd of ['a/b', 'a b', '../search']) {
    await expectStytchError(() => m2m.clients.get({ client_id: odd }), 404, 'm2m_client_not_found');
  }
});

step('clients.search by client_id', async () => {
  const r = await m2m.clients.search({
    query: {
      operator: 'AND',
      operands: [{ filter_name: 'client_id', filter_value: [CLIENT_ID] }],
    },
  });
  check(same(r.m2m_clients.map((c) => c.client_id), [CLIENT_ID]), r.m2m_clients);
  check(r.results_metadata.total === 1, r.results_metadata);
});

step('clients.search with limit and cursor paging', async () => {
  const first = await m2m.clients.search({ limit: 1 });
  check(first.m2m_clients.length === 1, first.m2m_clients);
  check(first.results_metadata.total === 2, first.results_metadata);
  check(Boolean(first.results_metadata.next_cursor), 'no next_cursor on page 1');
  const second = await m2m.clients.search({
    limit: 1,
    cursor: first.results_metadata.next_cursor,
  });
  const ids = sorted([first.m2m_clients[0].client_id, second.m2m_clients[0].client_id]);
  check(same(ids, [CLIENT_ID, SECOND_ID]), ids);
  check(second.results_metadata.next_cursor == null, second.results_metadata);
});

step('clients.search by client_name, scopes and status (AND / OR)', async () => {
  const ids = async (operator, ...operands) => {
    const r = await m2m.clients.search({
      query: {
        operator,
        operands: operands.map(([n, v]) => ({ filter_name: n, filter_value: v })),
      },
    });
    return sorted(r.m2m_clients.map((c) => c.client_id));
  };
  check(same(await ids('AND', ['client_name', ['SDK client']]), [CLIENT_ID]), 'client_name');
  check(same(await ids('AND', ['scopes', ['write:orders']]), [CLIENT_ID]), 'scopes');
  check(same(await ids('AND', ['status', ['active']]), [CLIENT_ID, SECOND_ID]), 'status');
  check(
    same(await ids('AND', ['scopes', ['read:orders']], ['client_id', [SECOND_ID]]), [SECOND_ID]),
    'AND',
  );
  check(
    same(
      await ids('OR', ['client_name', ['SDK client']], ['client_id', [SECOND_ID]]),
      [CLIENT_ID, SECOND_ID],
    ),
    'OR',
  );
  check(same(await ids('AND', ['client_name', ['nobody']]), []), 'no match');
});

step('clients.update name, description, scopes, trusted_metadata', async () => {
  const c = (
    await m2m.clients.update({
      client_id: CLIENT_ID,
      client_name: 'SDK client renamed',
      client_description: 'updated',
      scopes: ['read:orders', 'write:orders', 'read:users'],
      trusted_metadata: { user_id: 'user-42' },
    })
  ).m2m_client;
  check(c.client_name === 'SDK client renamed', c.client_name);
  check(c.client_description === 'updated', c.client_description);
  check(same(sorted(c.scopes), ['read:orders', 'read:users', 'write:orders']), c.scopes);
  check(same(c.trusted_metadata, { user_id: 'user-42' }), c.trusted_metadata);
  // A field left out is left as it was (the SDK drops undefined members).
  const again = (await m2m.clients.update({ client_id: CLIENT_ID, client_name: 'SDK client renamed' }))
    .m2m_client;
  check(again.client_description === 'updated', again.client_description);
  check(same(sorted(again.scopes), ['read:orders', 'read:users', 'write:orders']), again.scopes);
});

step('m2m.token without scopes, then authenticateToken', async () => {
  const r = await m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET });
  check(r.token_type === 'bearer' && r.expires_in > 0, r);
  const claims = await m2m.authenticateToken({ access_token: r.access_token });
  check(claims.client_id === CLIENT_ID, claims.client_id);
  check(same(sorted(claims.scopes), ['read:orders', 'read:users', 'write:orders']), claims.scopes);
  check(claims.custom_claims.user_id === 'user-42', claims.custom_claims);
});

step('m2m.token with scopes; authenticateToken with required_scopes', async () => {
  const r = await m2m.token({
    client_id: CLIENT_ID,
    client_secret: IMPORTED_SECRET,
    scopes: ['read:orders'],
  });
  const token = r.access_token;
  const claims = await m2m.authenticateToken({ access_token: token, required_scopes: ['read:orders'] });
  check(same(claims.scopes, ['read:orders']), claims.scopes);
  await expectClientError(
    () => m2m.authenticateToken({ access_token: token, required_scopes: ['write:orders'] }),
    'missing_scopes',
  );
  await expectClientError(
    () => m2m.authenticateToken({ access_token: token, max_token_age_seconds: 0 }),
    'jwt_too_old',
  );
});

step('authenticateToken: action:* wildcard scopes and max_token_age_seconds', async () => {
  const r = await m2m.clients.create({
    client_id: 'node-wildcard',
    scopes: ['read:*', 'write:orders'],
    trusted_metadata: { user_id: 'user-44' },
  });
  const secret = r.m2m_client.client_secret;
  const token = (await m2m.token({ client_id: 'node-wildcard', client_secret: secret }))
    .access_token;
  const claims = await m2m.authenticateToken({
    access_token: token,
    required_scopes: ['read:users', 'write:orders'],
    max_token_age_seconds: 300,
  });
  check(claims.custom_claims.user_id === 'user-44', claims.custom_claims);
  await expectClientError(
    () => m2m.authenticateToken({ access_token: token, required_scopes: ['write:users'] }),
    'missing_scopes',
  );
  await m2m.clients.delete({ client_id: 'node-wildcard' });
});

step('local verification: the token header, iss, aud and kid match the JWKS', async () => {
  const token = (await m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET }))
    .access_token;
  const [h, p] = token.split('.');
  const header = decodePart(h);
  const payload = decodePart(p);
  check(header.alg === 'RS256' && header.typ === 'JWT' && Boolean(header.kid), header);
  check(payload.iss === `stytch.com/${PROJECT_ID}`, payload.iss);
  check(same(payload.aud, [PROJECT_ID]), payload.aud);
  check(payload.sub === CLIENT_ID, payload.sub);
  // The key the SDK looks up: /v1/sessions/jwks/<project_id> under the base URL.
  const response = await fetch(`${BASE_URL}/v1/sessions/jwks/${PROJECT_ID}`);
  check(response.status === 200, `JWKS status ${response.status}`);
  const jwks = await response.json();
  const key = jwks.keys.find((k) => k.kid === header.kid);
  check(key && key.kty === 'RSA' && key.alg === 'RS256', `no RS256 key ${header.kid} in the JWKS`);
  check(key.d === undefined && key.p === undefined, 'the JWKS publishes private key members');
});

step('local verification refuses a tampered token and one for another project (jwt_invalid)', async () => {
  const token = (await m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET }))
    .access_token;
  const [h, p, s] = token.split('.');
  // Another payload under the same signature: scopes widened.
  const widened = Buffer.from(
    JSON.stringify({ ...decodePart(p), scope: 'read:orders admin:all' }),
  ).toString('base64url');
  await expectClientError(
    () => m2m.authenticateToken({ access_token: `${h}.${widened}.${s}` }),
    'jwt_invalid',
  );
  // The signature's first byte changed.
  const sig = Buffer.from(s, 'base64url');
  sig[0] ^= 0x01;
  await expectClientError(
    () => m2m.authenticateToken({ access_token: `${h}.${p}.${sig.toString('base64url')}` }),
    'jwt_invalid',
  );
  await expectClientError(() => m2m.authenticateToken({ access_token: 'not-a-jwt' }), 'jwt_invalid');
  // An SDK configured for another project: its audience and issuer differ, and the issuer
  // has no key set under that project's JWKS path.
  const other = new stytch.Client({
    project_id: 'project-test-someone-else',
    secret: PROJECT_SECRET,
    ...(BASE_URL.startsWith('https://')
      ? { custom_base_url: BASE_URL }
      : { env: `${BASE_URL}/` }),
  });
  await expectClientError(() => other.m2m.authenticateToken({ access_token: token }), 'jwt_invalid');
});

step('concurrent calls: clients.get, m2m.token and authenticateToken in parallel', async () => {
  const results = await Promise.all([
    m2m.clients.get({ client_id: CLIENT_ID }),
    m2m.clients.get({ client_id: SECOND_ID }),
    m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET, scopes: ['read:users'] }),
    m2m.token({ client_id: SECOND_ID, client_secret: secrets[SECOND_ID] }),
  ]);
  check(results[0].m2m_client.client_id === CLIENT_ID, results[0]);
  check(results[1].m2m_client.client_id === SECOND_ID, results[1]);
  const claims = await Promise.all([
    m2m.authenticateToken({ access_token: results[2].access_token }),
    m2m.authenticateToken({ access_token: results[3].access_token }),
  ]);
  check(same(claims[0].scopes, ['read:users']) && claims[0].client_id === CLIENT_ID, claims[0]);
  check(claims[1].client_id === SECOND_ID, claims[1]);
});

step('m2m.token with a scope the client lacks (400 invalid_scope)', async () => {
  await expectStytchError(
    () => m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET, scopes: ['admin:all'] }),
    400,
    'invalid_scope',
  );
});

step('m2m.token with a wrong client secret (400 invalid_client)', async () => {
  await expectStytchError(
    () => m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET_2 }),
    400,
    'invalid_client',
  );
});

step('m2m.token of an unknown client (400 invalid_client)', async () => {
  await expectStytchError(
    () => m2m.token({ client_id: 'node-nobody', client_secret: IMPORTED_SECRET }),
    400,
    'invalid_client',
  );
});

step('wrong project secret: management calls refused (401 unauthorized_credentials)', async () => {
  const wrong = sdkClient('not-the-project-secret');
  await expectStytchError(
    () => wrong.m2m.clients.get({ client_id: CLIENT_ID }),
    401,
    'unauthorized_credentials',
  );
  await expectStytchError(
    () => wrong.m2m.clients.create({ client_id: 'node-intruder', scopes: [] }),
    401,
    'unauthorized_credentials',
  );
  // The Node SDK's m2m.token sends no project credentials at all (only the client's, in the
  // form body), so the project secret plays no part there: the client's own secret suffices.
  const r = await wrong.m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET });
  check((await m2m.authenticateToken({ access_token: r.access_token })).client_id === CLIENT_ID, r);
  await expectStytchError(() => m2m.clients.get({ client_id: 'node-intruder' }), 404, 'm2m_client_not_found');
});

step('secrets.rotateStart, both secrets work, secrets.rotate completes', async () => {
  const r = await m2m.clients.secrets.rotateStart({ client_id: CLIENT_ID });
  const next = r.m2m_client.next_client_secret;
  check(next && next !== IMPORTED_SECRET, 'no new next_client_secret');
  check(r.m2m_client.next_client_secret_last_four === next.slice(-4), r.m2m_client);
  for (const secret of [IMPORTED_SECRET, next]) {
    await m2m.token({ client_id: CLIENT_ID, client_secret: secret });
  }
  const done = (await m2m.clients.secrets.rotate({ client_id: CLIENT_ID })).m2m_client;
  check(done.client_secret_last_four === next.slice(-4), done.client_secret_last_four);
  check(done.next_client_secret_last_four == null, done.next_client_secret_last_four);
  await m2m.token({ client_id: CLIENT_ID, client_secret: next });
  await expectStytchError(
    () => m2m.token({ client_id: CLIENT_ID, client_secret: IMPORTED_SECRET }),
    400,
    'invalid_client',
  );
});

step('clients.update status inactive: m2m.token refused (400 invalid_client)', async () => {
  let c = (await m2m.clients.update({ client_id: SECOND_ID, status: 'inactive' })).m2m_client;
  check(c.status === 'inactive', c.status);
  const secret = secrets[SECOND_ID];
  await expectStytchError(
    () => m2m.token({ client_id: SECOND_ID, client_secret: secret }),
    400,
    'invalid_client',
  );
  c = (await m2m.clients.update({ client_id: SECOND_ID, status: 'active' })).m2m_client;
  check(c.status === 'active', c.status);
  await m2m.token({ client_id: SECOND_ID, client_secret: secret });
});

step('secrets.rotateStart then secrets.rotateCancel keeps the old secret only', async () => {
  const next = (await m2m.clients.secrets.rotateStart({ client_id: SECOND_ID })).m2m_client
    .next_client_secret;
  const c = (await m2m.clients.secrets.rotateCancel({ client_id: SECOND_ID })).m2m_client;
  check(c.next_client_secret_last_four == null, c.next_client_secret_last_four);
  await m2m.token({ client_id: SECOND_ID, client_secret: secrets[SECOND_ID] });
  await expectStytchError(
    () => m2m.token({ client_id: SECOND_ID, client_secret: next }),
    400,
    'invalid_client',
  );
});

step('clients.delete, then get (404) and m2m.token (400)', async () => {
  const r = await m2m.clients.delete({ client_id: SECOND_ID });
  check(r.client_id === SECOND_ID, r.client_id);
  await expectStytchError(
    () => m2m.clients.get({ client_id: SECOND_ID }),
    404,
    'm2m_client_not_found',
  );
  await expectStytchError(
    () => m2m.token({ client_id: SECOND_ID, client_secret: secrets[SECOND_ID] }),
    400,
    'invalid_client',
  );
  await expectStytchError(
    () => m2m.clients.delete({ client_id: SECOND_ID }),
    404,
    'm2m_client_not_found',
  );
});

for (const [name, fn] of steps) {
  try {
    await fn();
  } catch (e) {
    const why = e instanceof CheckFailed ? e.message : `${e?.constructor?.name}: ${e?.message}`;
    console.log(`FAIL ${name}: ${why}`);
    process.exit(1);
  }
  console.log(`ok ${name}`);
}
console.log(`done ${steps.length}/${steps.length}`);
// Exit at once rather than when the event loop drains: the SDK's JWKS fetcher (jose 5,
// createRemoteJWKSet) leaves the body of a non-200 JWKS response unread, which keeps that
// keep-alive socket, and so this process, alive (the "another project" step causes one).
process.exit(0);
