#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/<name>, from readable definitions.

Run from anywhere: python3 fuzz/seeds/make_seeds.py. Seeds only start the fuzzer off in the right
shapes; what it finds later goes to fuzz/work/ (git-ignored), never here.
"""
import base64
import json
import os
import struct


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(ROOT), "tests", "fixtures")


def write(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64(raw):
    return base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode()


def b64url(raw):
    raw = raw if isinstance(raw, bytes) else raw.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# credentials: flags byte, then lines of (name byte, value).
AUTH, AUTH_MIXED, CID, CSECRET, CSECRET_UPPER, USER, OTHER = range(7)


def lines(flags, *pairs):
    out = bytes([flags])
    for i, (name, value) in enumerate(pairs):
        if i:
            out += b"\n"
        out += bytes([name]) + (value if isinstance(value, bytes) else value.encode())
    return out


write("credentials", "basic", lines(0, (AUTH, "Basic " + b64("client-1:s3cret"))))
write("credentials", "basic-encoded", lines(0, (AUTH_MIXED, "basic " + b64("id%3A1:a%3Ab%2Bc+d"))))
write("credentials", "basic-no-colon", lines(0, (AUTH, "Basic " + b64("client-1"))))
write("credentials", "basic-not-utf8", lines(0, (AUTH, "Basic " + b64(b"\xff\xfe:\xc3\x28"))))
write("credentials", "bearer", lines(0, (AUTH, "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")))
write("credentials", "pair", lines(0, (CID, "client-1"), (CSECRET, "s3cret")))
write("credentials", "pair-and-basic", lines(0, (AUTH, "Basic " + b64("client-1:s3cret")), (CID, "client-1"), (CSECRET_UPPER, "s3cret")))
write("credentials", "joined", lines(0, (AUTH, "Basic " + b64("a:b") + ",Basic " + b64("c:d"))))
write("credentials", "twice", lines(0, (AUTH, "Bearer a"), (AUTH, "Bearer b"), (USER, "admin")))
write("credentials", "not-utf8-header", lines(0, (CSECRET, b"\xff"), (CID, "x")))
write("credentials", "small-limit", lines(8, (AUTH, "Basic " + b64("x" * 80 + ":y"))))
write("credentials", "sources-off", lines(7, (AUTH, "Basic " + b64("a:b")), (OTHER, "1")))


# check_request: protobuf, encoded by hand (field numbers from proto/).
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):
    payload = payload if isinstance(payload, bytes) else payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def check_request(headers=(), raw=(), method="GET", path="/v1/orders", host="api.test", ctx=()):
    http = field(2, method) + field(4, path) + field(5, host)
    for k, v in headers:
        http += field(3, field(1, k) + field(2, v))
    if raw:
        hm = b"".join(field(1, field(1, k) + field(3, v)) for k, v in raw)
        http += field(13, hm)
    attrs = field(4, field(2, http))
    for k, v in ctx:
        attrs += field(10, field(1, k) + field(2, v))
    return field(1, attrs)


write("check_request", "basic", check_request([("authorization", "Basic " + b64("client-1:s3cret")), ("x-user-id", "admin")]))
write("check_request", "pair", check_request([("x-client-id", "client-1"), ("x-client-secret", "s3cret")], ctx=[("route", "orders")]))
write("check_request", "raw-headers", check_request(raw=[("authorization", b"Bearer a.b.c"), ("authorization", b"\xff\xfe")]))
write("check_request", "empty", b"")
write("check_request", "no-http", field(1, field(4, b"")))


# verify: mode byte; even: a token as text; odd: header JSON, NUL, claims JSON (signed EdDSA).
EXP = 4102444800  # 2100-01-01
claims = {"iss": "https://issuer.test", "aud": ["api://test"], "sub": "client-1", "user_id": "user-1",
          "iat": 1_799_999_000, "nbf": 1_700_000_000, "exp": EXP, "scope": "read:orders"}


def signed(mode, header, body):
    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    c = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return bytes([mode]) + h.encode() + b"\0" + c.encode()


ed = {"alg": "EdDSA", "typ": "JWT", "kid": "ed25519"}
write("verify", "eddsa-good", signed(1, ed, claims))
write("verify", "eddsa-no-typ-check", signed(9, {"alg": "EdDSA", "kid": "ed25519"}, claims))
write("verify", "eddsa-max-age", signed(5, ed, claims))
write("verify", "eddsa-no-aud-rule", signed(3, ed, {k: v for k, v in claims.items() if k != "aud"}))
write("verify", "eddsa-user-object", signed(1, ed, dict(claims, user_id={"id": 1})))
write("verify", "eddsa-user-crlf", signed(1, ed, dict(claims, user_id="u\r\nx: y")))
write("verify", "eddsa-expired", signed(1, ed, dict(claims, exp=1_000_000_000)))
write("verify", "eddsa-exp-float", signed(1, ed, dict(claims, exp=4102444800.5)))
write("verify", "eddsa-jku", signed(1, dict(ed, jku="http://127.0.0.1:1/jwks", x5u="http://127.0.0.1:1/x", jwk={"kty": "OKP"}), claims))
write("verify", "eddsa-crit", signed(1, dict(ed, crit=["b64"]), claims))
write("verify", "rs256-claimed", signed(1, {"alg": "RS256", "typ": "JWT", "kid": "rsa-a"}, claims))
write("verify", "hs256", signed(1, {"alg": "HS256", "typ": "JWT", "kid": "rsa-a"}, claims))
write("verify", "none", bytes([0]) + (b64url('{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(claims)) + ".").encode())
write("verify", "text-garbage", bytes([0]) + b"eyJ.eyJ.x")
write("verify", "text-rs256", bytes([0]) + (b64url('{"alg":"RS256","typ":"JWT","kid":"rsa-a"}') + "." + b64url(json.dumps(claims)) + "." + b64url(b"\0" * 256)).encode())


# jwks: documents.
def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


keys = [fixture(n) for n in ("rsa-a.jwk.json", "rsa-b.jwk.json", "ec-p256.jwk.json", "ed25519.jwk.json")]
write("jwks", "all", json.dumps({"keys": keys, "request_id": "r"}))
write("jwks", "one-rsa-pinned-rs256", " " + json.dumps({"keys": keys[:1]}))
write("jwks", "mixed-unusable", json.dumps({"keys": [dict(keys[0], use="enc"), {"kty": "oct", "k": "c2VjcmV0"},
                                                     dict(keys[2], crv="P-384"), {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
                                                     dict(keys[0], alg="PS256", kid="ps")]}))
write("jwks", "empty", '{"keys":[]}')
write("jwks", "not-a-set", '[{"kty":"RSA"}]')


# token_response: status (2 bytes), Retry-After length (255: none), Retry-After, body.
def token_response(status, body, retry_after=None):
    ra = b"\xff" if retry_after is None else bytes([len(retry_after)]) + retry_after.encode()
    return struct.pack(">H", status) + ra + (body if isinstance(body, bytes) else body.encode())


write("token_response", "ok", token_response(200, '{"access_token":"eyJ.eyJ.sig","token_type":"Bearer","expires_in":3600,"request_id":"r"}'))
write("token_response", "ok-string-expiry", token_response(200, '{"access_token":"t","token_type":"bearer","expires_in":"60"}'))
write("token_response", "invalid-client", token_response(401, '{"error":"invalid_client","error_description":"no"}'))
write("token_response", "invalid-scope", token_response(400, '{"error":"invalid_scope"}'))
write("token_response", "429-seconds", token_response(429, "", "7"))
write("token_response", "429-date", token_response(429, "", "Sun, 06 Nov 1994 08:49:37 GMT"))
write("token_response", "503", token_response(503, "<html>down</html>"))
write("token_response", "no-token", token_response(200, '{"token_type":"Bearer"}'))


# config: YAML files.
write("config", "stytch", "provider:\n  kind: stytch\n  project_id: project-test-1\n  base_url: https://test.stytch.com\n")
write("config", "oauth2-full", """listen:
  grpc: 127.0.0.1:9001
  drain_timeout: 10s
provider:
  kind: oauth2
  token_url: https://idp.example/oauth2/token
  jwks_url: https://idp.example/jwks
  issuer: [https://idp.example, https://idp2.example]
  audience: api://test
  client_auth: client_secret_basic
  scope: "read:orders write:orders"
  token_params: {audience: api://test}
  algorithms: [RS256, ES256, EdDSA]
  token_type: at+jwt
  leeway: 30s
  max_token_age: 1h
  connect_timeout: 2s
  request_timeout: 5s
  jwks_refresh_interval: 5m
  jwks_min_refetch_interval: 30s
  max_token_bytes: 8192
credentials:
  basic: true
  bearer: true
  headers: {enabled: true, client_id: x-client-id, client_secret: x-client-secret}
  max_header_bytes: 4096
identity:
  headers: {x-user-id: user_id, x-client-id: sub, x-org: /ext/org~1id}
  required: [x-user-id]
cache:
  max_entries: 1000
  max_negative_entries: 100
  refresh_ahead: 0.8
  expiry_margin: 60s
  negative_ttl: 30s
  stale_if_error: 0s
  max_credential_age: 5m
  max_exchanges_per_second: 200
  max_concurrent_exchanges: 64
  exchange_queue_timeout: 1s
realm: api
""")
write("config", "embedded", "provider:\n  kind: embedded\n  embedded:\n    listen: 127.0.0.1:9400\n    project_id: project-demo\n    project_secret: demo-project-secret-0123456789\n")
write("config", "unix", "listen: {grpc: 'unix:/run/m2m.sock'}\nprovider: {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i}\n")
write("config", "anchors", "a: &a {kind: oauth2, token_url: 'http://a/t', jwks_url: 'http://a/j', issuer: i}\nprovider: *a\n")
write("config", "bad-field", "provider: {kind: oauth2}\ncache: {max_entris: 3}\n")

# canonical: first line the Host, the rest the path (or a whole policy file).
for name, data in [
    ("plain", "api.example.com\n/v1/orders"),
    ("trailing-slash", "api.example.com\n/v1/orders/?x=1"),
    ("double-slash", "api.example.com\n//admin/users"),
    ("dot-segments", "api.example.com\n/docs/./a/../../admin"),
    ("encoded-dots", "api.example.com\n/docs/%2e%2E/admin"),
    ("matrix", "api.example.com\n/docs/..;/admin;jsessionid=1"),
    ("encoded-slash", "api.example.com\n/docs/..%2fadmin"),
    ("encoded-semicolon", "api.example.com\n/admin%3b/x"),
    ("backslash", "api.example.com\n/docs\\..\\admin"),
    ("nul", "api.example.com\n/a%00b"),
    ("not-utf8", "api.example.com\n/caf%c3%28"),
    ("above-root", "api.example.com\n/../admin"),
    ("absolute-form", "api.example.com\nhttp://evil/admin"),
    ("asterisk", "api.example.com\n*"),
    ("unicode", "api.example.com\n/caf\u00e9/%7Euser"),
    ("host-trailing-dot", "x.INTERNAL.example.com.:8443\n/"),
    ("host-ipv6", "[0:0::1]:8080\n/v1/Reports/"),
    ("host-empty", "\n/v1/orders"),
    ("host-bad", "a..b\n/"),
    ("policy-file", "default: {deny: true}\nrules:\n  - {name: a, match: {path: '/a/{id}/'}, allow_anonymous: true}\n"),
]:
    write("canonical", name, data)
