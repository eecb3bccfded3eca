"""Stytch's official Python SDK (PyPI `stytch`) against the embedded issuer.

Run by tests/stytch_sdk.rs with the issuer's address and project credentials in
the environment (STYTCH_SDK_BASE_URL, STYTCH_SDK_PROJECT_ID,
STYTCH_SDK_PROJECT_SECRET). An https:// base URL is passed as the SDK's
`custom_base_url`, as users do; the issuer's CA then comes from SSL_CERT_FILE
(aiohttp, the async calls) and REQUESTS_CA_BUNDLE (requests). Every step asserts on what the SDK itself returns
(response fields, `StytchError.details.status_code` / `error_type`) and prints
one line: `ok <step>` or `FAIL <step>: <why>`. The last line is
`done <passed>/<total>`; the exit status is 0 only if every step passed.
"""

import os
import sys
import traceback

import stytch
from stytch.core.response_base import StytchError

BASE_URL = os.environ["STYTCH_SDK_BASE_URL"]
PROJECT_ID = os.environ["STYTCH_SDK_PROJECT_ID"]
PROJECT_SECRET = os.environ["STYTCH_SDK_PROJECT_SECRET"]


def base_url_args():
    """How the SDK is pointed at the issuer.

    The SDK refuses a `custom_base_url` that is not https:// (stytch 15.3,
    core/client_base.py `_resolve_api_url`), but returns an `environment` other
    than "test"/"live" as the base URL unchecked; that reaches a plain-HTTP
    issuer. Over HTTPS, `custom_base_url` is used, as an application would.
    """
    if BASE_URL.startswith("https://"):
        return {"custom_base_url": BASE_URL}
    return {"environment": BASE_URL.rstrip("/") + "/"}


client = stytch.Client(
    project_id=PROJECT_ID,
    secret=PROJECT_SECRET,
    suppress_warnings=True,
    **base_url_args(),
)
m2m = client.m2m

# Imported secrets: random enough for the issuer's strength rule.
IMPORTED_SECRET = "imported-Xk9mQ2vR7Lp4zT8wN3bJ6"
IMPORTED_SECRET_2 = "imported-Hq5cV1nF8sD2gK7yP4aW9"

results = []
# Secrets the steps learn, by client id.
secrets = {}


def step(name):
    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            results.append((name, False))
            print(f"FAIL {name}: {detail}", flush=True)
        else:
            results.append((name, True))
            print(f"ok {name}", flush=True)
        return fn

    return run


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_error(call, status_code, error_type):
    """Runs `call`, which must raise StytchError with these details."""
    try:
        result = call()
    except StytchError as e:
        d = e.details
        check(
            (d.status_code, d.error_type) == (status_code, error_type),
            f"got {d.status_code} {d.error_type!r}, want {status_code} {error_type!r}",
        )
        check(bool(d.request_id), "error without request_id")
        return d
    raise AssertionError(f"no error; got {result!r}")


CLIENT_ID = "sdk-client-1"
SECOND_ID = "sdk-client-2"


@step("clients.create with client_id, client_secret, trusted_metadata, name, description")
def _():
    r = m2m.clients.create(
        client_id=CLIENT_ID,
        client_secret=IMPORTED_SECRET,
        client_name="SDK client",
        client_description="created by the Python SDK",
        scopes=["read:orders", "write:orders"],
        trusted_metadata={"user_id": "user-42", "team": "sdk"},
    )
    c = r.m2m_client
    check(r.status_code == 200, f"status_code {r.status_code}")
    check(c.client_id == CLIENT_ID, c.client_id)
    check(c.client_secret == IMPORTED_SECRET, "imported secret not returned")
    check(c.client_secret_last_four == IMPORTED_SECRET[-4:], c.client_secret_last_four)
    check(c.client_name == "SDK client", c.client_name)
    check(c.client_description == "created by the Python SDK", c.client_description)
    check(c.status == "active", c.status)
    check(sorted(c.scopes) == ["read:orders", "write:orders"], c.scopes)
    check(c.trusted_metadata == {"user_id": "user-42", "team": "sdk"}, c.trusted_metadata)


@step("clients.create generates a secret when none is given")
def _():
    r = m2m.clients.create(
        client_id=SECOND_ID, scopes=["read:orders"], trusted_metadata={"user_id": "user-43"}
    )
    check(r.m2m_client.client_secret.startswith("secret-test-"), "generated secret shape")
    secrets[SECOND_ID] = r.m2m_client.client_secret


@step("clients.create refuses a weak client_secret (400 insecure_m2m_client_secret)")
def _():
    expect_error(
        lambda: m2m.clients.create(client_id="sdk-weak", client_secret="password", scopes=[]),
        400,
        "insecure_m2m_client_secret",
    )


@step("clients.create refuses a duplicate client_id (400 duplicate_m2m_client_id)")
def _():
    expect_error(
        lambda: m2m.clients.create(client_id=CLIENT_ID, scopes=[]), 400, "duplicate_m2m_client_id"
    )


@step("clients.get")
def _():
    c = m2m.clients.get(client_id=CLIENT_ID).m2m_client
    check(c.client_id == CLIENT_ID and c.client_name == "SDK client", c)
    check(c.trusted_metadata["user_id"] == "user-42", c.trusted_metadata)
    check(c.next_client_secret_last_four is None, c.next_client_secret_last_four)


@step("clients.get of an unknown client (404 m2m_client_not_found)")
def _():
    expect_error(lambda: m2m.clients.get(client_id="sdk-nobody"), 404, "m2m_client_not_found")


@step("clients.search by client_id")
def _():
    r = m2m.clients.search(
        query={
            "operator": "AND",
            "operands": [{"filter_name": "client_id", "filter_value": [CLIENT_ID]}],
        }
    )
    check([c.client_id for c in r.m2m_clients] == [CLIENT_ID], r.m2m_clients)
    check(r.results_metadata.total == 1, r.results_metadata)


@step("clients.search with limit and cursor paging")
def _():
    first = m2m.clients.search(limit=1)
    check(len(first.m2m_clients) == 1, first.m2m_clients)
    check(first.results_metadata.total == 2, first.results_metadata)
    check(first.results_metadata.next_cursor, "no next_cursor on page 1")
    second = m2m.clients.search(limit=1, cursor=first.results_metadata.next_cursor)
    ids = {first.m2m_clients[0].client_id, second.m2m_clients[0].client_id}
    check(ids == {CLIENT_ID, SECOND_ID}, ids)
    check(second.results_metadata.next_cursor is None, second.results_metadata)


@step("clients.search by client_name, scopes and status (AND / OR)")
def _():
    def ids(operator, *operands):
        q = {
            "operator": operator,
            "operands": [{"filter_name": n, "filter_value": v} for n, v in operands],
        }
        return sorted(c.client_id for c in m2m.clients.search(query=q).m2m_clients)

    check(ids("AND", ("client_name", ["SDK client"])) == [CLIENT_ID], "client_name")
    check(ids("AND", ("scopes", ["write:orders"])) == [CLIENT_ID], "scopes")
    check(ids("AND", ("status", ["active"])) == [CLIENT_ID, SECOND_ID], "status")
    check(
        ids("AND", ("scopes", ["read:orders"]), ("client_id", [SECOND_ID])) == [SECOND_ID],
        "AND",
    )
    check(
        ids("OR", ("client_name", ["SDK client"]), ("client_id", [SECOND_ID]))
        == [CLIENT_ID, SECOND_ID],
        "OR",
    )
    check(ids("AND", ("client_name", ["nobody"])) == [], "no match")


@step("clients.update name, description, scopes, trusted_metadata")
def _():
    c = m2m.clients.update(
        client_id=CLIENT_ID,
        client_name="SDK client renamed",
        client_description="updated",
        scopes=["read:orders", "write:orders", "read:users"],
        trusted_metadata={"user_id": "user-42"},
    ).m2m_client
    check(c.client_name == "SDK client renamed", c.client_name)
    check(c.client_description == "updated", c.client_description)
    check(sorted(c.scopes) == ["read:orders", "read:users", "write:orders"], c.scopes)
    check(c.trusted_metadata == {"user_id": "user-42"}, c.trusted_metadata)


@step("m2m.token without scopes, then authenticate_token")
def _():
    r = m2m.token(client_id=CLIENT_ID, client_secret=IMPORTED_SECRET)
    check(r.token_type == "bearer" and r.expires_in > 0, r)
    claims = m2m.authenticate_token(access_token=r.access_token)
    check(claims is not None, "authenticate_token returned None")
    check(claims.client_id == CLIENT_ID, claims.client_id)
    check(sorted(claims.scopes) == ["read:orders", "read:users", "write:orders"], claims.scopes)
    check(claims.custom_claims.get("user_id") == "user-42", claims.custom_claims)


@step("m2m.token with scopes; authenticate_token with required_scopes")
def _():
    r = m2m.token(client_id=CLIENT_ID, client_secret=IMPORTED_SECRET, scopes=["read:orders"])
    token = r.access_token
    claims = m2m.authenticate_token(access_token=token, required_scopes=["read:orders"])
    check(claims is not None and claims.scopes == ["read:orders"], claims)
    check(
        m2m.authenticate_token(access_token=token, required_scopes=["write:orders"]) is None,
        "a scope not granted was accepted",
    )
    check(
        m2m.authenticate_token(access_token=token, max_token_age=0) is None,
        "max_token_age=0 accepted a token",
    )


@step("authenticate_token: action:* wildcard scopes and max_token_age")
def _():
    r = m2m.clients.create(
        client_id="sdk-wildcard",
        scopes=["read:*", "write:orders"],
        trusted_metadata={"user_id": "user-44"},
    )
    secret = r.m2m_client.client_secret
    token = m2m.token(client_id="sdk-wildcard", client_secret=secret).access_token
    claims = m2m.authenticate_token(
        access_token=token, required_scopes=["read:users", "write:orders"], max_token_age=300
    )
    check(claims is not None and claims.custom_claims.get("user_id") == "user-44", claims)
    check(
        m2m.authenticate_token(access_token=token, required_scopes=["write:users"]) is None,
        "write:users accepted without a wildcard",
    )
    m2m.clients.delete(client_id="sdk-wildcard")


@step("m2m.token with extra body parameters (ignored)")
def _():
    r = m2m.token(
        client_id=CLIENT_ID,
        client_secret=IMPORTED_SECRET,
        extra={"audience": "ignored", "resource": ["a", "b"]},
    )
    check(m2m.authenticate_token(access_token=r.access_token) is not None, "token refused")


@step("async: clients.get_async, m2m.token_async, authenticate_token_async")
def _():
    import asyncio

    async def run():
        c = (await m2m.clients.get_async(client_id=CLIENT_ID)).m2m_client
        check(c.client_id == CLIENT_ID, c)
        r = await m2m.token_async(
            client_id=CLIENT_ID, client_secret=IMPORTED_SECRET, scopes=["read:users"]
        )
        claims = await m2m.authenticate_token_async(access_token=r.access_token)
        check(claims is not None and claims.scopes == ["read:users"], claims)
        await client.async_client.close()

    asyncio.run(run())


@step("m2m.token with a scope the client lacks (400 invalid_scope)")
def _():
    expect_error(
        lambda: m2m.token(
            client_id=CLIENT_ID, client_secret=IMPORTED_SECRET, scopes=["admin:all"]
        ),
        400,
        "invalid_scope",
    )


@step("m2m.token with a wrong client secret (400 invalid_client)")
def _():
    expect_error(
        lambda: m2m.token(client_id=CLIENT_ID, client_secret=IMPORTED_SECRET_2),
        400,
        "invalid_client",
    )


@step("m2m.token with a wrong project secret (401 invalid_client)")
def _():
    wrong = stytch.Client(
        project_id=PROJECT_ID,
        secret="not-the-project-secret",
        suppress_warnings=True,
        **base_url_args(),
    )
    expect_error(
        lambda: wrong.m2m.token(client_id=CLIENT_ID, client_secret=IMPORTED_SECRET),
        401,
        "invalid_client",
    )
    expect_error(
        lambda: wrong.m2m.clients.get(client_id=CLIENT_ID), 401, "unauthorized_credentials"
    )


@step("secrets.rotate_start, both secrets work, secrets.rotate completes")
def _():
    r = m2m.clients.secrets.rotate_start(client_id=CLIENT_ID)
    nxt = r.m2m_client.next_client_secret
    check(nxt and nxt != IMPORTED_SECRET, "no new next_client_secret")
    check(r.m2m_client.next_client_secret_last_four == nxt[-4:], r.m2m_client)
    for secret in (IMPORTED_SECRET, nxt):
        m2m.token(client_id=CLIENT_ID, client_secret=secret)
    done = m2m.clients.secrets.rotate(client_id=CLIENT_ID).m2m_client
    check(done.client_secret_last_four == nxt[-4:], done.client_secret_last_four)
    check(done.next_client_secret_last_four is None, done.next_client_secret_last_four)
    m2m.token(client_id=CLIENT_ID, client_secret=nxt)
    expect_error(
        lambda: m2m.token(client_id=CLIENT_ID, client_secret=IMPORTED_SECRET),
        400,
        "invalid_client",
    )


@step("clients.update status inactive: m2m.token refused (400 invalid_client)")
def _():
    c = m2m.clients.update(client_id=SECOND_ID, status="inactive").m2m_client
    check(c.status == "inactive", c.status)
    secret = secrets[SECOND_ID]
    expect_error(
        lambda: m2m.token(client_id=SECOND_ID, client_secret=secret), 400, "invalid_client"
    )
    c = m2m.clients.update(client_id=SECOND_ID, status="active").m2m_client
    check(c.status == "active", c.status)
    m2m.token(client_id=SECOND_ID, client_secret=secret)


@step("secrets.rotate_start then secrets.rotate_cancel keeps the old secret only")
def _():
    nxt = m2m.clients.secrets.rotate_start(client_id=SECOND_ID).m2m_client.next_client_secret
    c = m2m.clients.secrets.rotate_cancel(client_id=SECOND_ID).m2m_client
    check(c.next_client_secret_last_four is None, c.next_client_secret_last_four)
    m2m.token(client_id=SECOND_ID, client_secret=secrets[SECOND_ID])
    expect_error(
        lambda: m2m.token(client_id=SECOND_ID, client_secret=nxt), 400, "invalid_client"
    )


@step("clients.delete, then get (404) and m2m.token (400)")
def _():
    r = m2m.clients.delete(client_id=SECOND_ID)
    check(r.client_id == SECOND_ID, r.client_id)
    expect_error(lambda: m2m.clients.get(client_id=SECOND_ID), 404, "m2m_client_not_found")
    expect_error(
        lambda: m2m.token(client_id=SECOND_ID, client_secret=secrets[SECOND_ID]),
        400,
        "invalid_client",
    )
    expect_error(
        lambda: m2m.clients.delete(client_id=SECOND_ID), 404, "m2m_client_not_found"
    )


passed = sum(1 for _, ok in results if ok)
print(f"done {passed}/{len(results)}", flush=True)
sys.exit(0 if passed == len(results) else 1)
