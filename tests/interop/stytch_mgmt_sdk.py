"""Stytch's Management SDK (PyPI `stytch-management`) against the embedded issuer.

Run by tests/stytch_management.rs with the issuer's address, project
credentials, management key and slugs in the environment (see the names
below). Drives the M2M JWT template through the SDK's `jwt_templates.get|set`,
then shows with the `stytch` SDK that the next token carries the new claims
and `aud`. Every step asserts on what the SDKs return (response fields,
`StytchError.status_code` / `error_type`) and prints `ok <step>` or
`FAIL <step>: <why>`; the last line is `done <passed>/<total>`, and the exit
status is 0 only if every step passed.

Not named stytch_management.py: the script's folder comes first on sys.path,
and that name would hide the SDK's package.
"""

import base64
import json
import os
import sys
import traceback

import stytch
import stytch_management
from stytch.core.response_base import StytchError as ApiError
from stytch_management.errors import StytchError as ManagementError
from stytch_management.http_client import HTTPClient
from stytch_management.jwttemplates import JWTTemplates

BASE_URL = os.environ["STYTCH_MGMT_BASE_URL"]
PROJECT_ID = os.environ["STYTCH_MGMT_PROJECT_ID"]
PROJECT_SECRET = os.environ["STYTCH_MGMT_PROJECT_SECRET"]
KEY_ID = os.environ["STYTCH_MGMT_KEY_ID"]
KEY_SECRET = os.environ["STYTCH_MGMT_KEY_SECRET"]
PROJECT_SLUG = os.environ["STYTCH_MGMT_PROJECT_SLUG"]
ENV_SLUG = os.environ["STYTCH_MGMT_ENVIRONMENT_SLUG"]
# The template the issuer starts with (its config's claims_template).
INITIAL_TEMPLATE = os.environ["STYTCH_MGMT_INITIAL_TEMPLATE"]

HTTPS = BASE_URL.startswith("https://")


def templates_with(key_id, key_secret):
    """The SDK's jwt_templates, as an application gets them.

    Over HTTPS through `stytch_management.Client`, as users do (the issuer's CA
    trusted through REQUESTS_CA_BUNDLE). stytch-management 1.2's `Client`
    refuses a base_url that is not https://, but its resources take the SDK's
    own HTTPClient, which does not; a plain-HTTP issuer is reached that way,
    through the same request and error code.
    """
    if HTTPS:
        return stytch_management.Client(key_id, key_secret, base_url=BASE_URL).jwt_templates
    return JWTTemplates(HTTPClient(key_id, key_secret, base_url=BASE_URL.rstrip("/") + "/"))


templates = templates_with(KEY_ID, KEY_SECRET)

# As in tests/interop/stytch_sdk.py: `custom_base_url` over HTTPS, `environment`
# for a plain-HTTP issuer.
api = stytch.Client(
    project_id=PROJECT_ID,
    secret=PROJECT_SECRET,
    suppress_warnings=True,
    **(
        {"custom_base_url": BASE_URL}
        if HTTPS
        else {"environment": BASE_URL.rstrip("/") + "/"}
    ),
)

SEED_TEMPLATE = (
    '{"user_id": {{ client.trusted_metadata.stytch_user_id }}, "tier": "gold"}'
)
CUSTOM_AUDIENCE = "orders-api"

results = []


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


def expect(call, error_class, status_code, error_type):
    """Runs `call`, which must raise `error_class` with these details."""
    try:
        result = call()
    except error_class as e:
        d = getattr(e, "details", e)
        check(
            (d.status_code, d.error_type) == (status_code, error_type),
            f"got {d.status_code} {d.error_type!r}, want {status_code} {error_type!r}",
        )
        check(bool(d.request_id), "error without request_id")
        return d
    raise AssertionError(f"no error; got {result!r}")


def claims_of(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@step("jwt_templates.get returns the initial template")
def _():
    r = templates.get(PROJECT_SLUG, ENV_SLUG, "M2M")
    check(r.status_code == 200 and r.request_id, f"{r!r}")
    check(r.jwt_template.template_content == INITIAL_TEMPLATE, f"{r.jwt_template!r}")
    check(r.jwt_template.custom_audience == "", f"{r.jwt_template!r}")
    check(r.jwt_template.jwt_template_type.value == "M2M", f"{r.jwt_template!r}")


@step("a wrong workspace key secret or key id is refused (401 unauthorized_credentials)")
def _():
    for key_id, key_secret in [
        (KEY_ID, KEY_SECRET + "x"),
        (KEY_ID + "x", KEY_SECRET),
        (KEY_ID, KEY_SECRET[:-1]),
    ]:
        expect(
            lambda: templates_with(key_id, key_secret).get(PROJECT_SLUG, ENV_SLUG, "M2M"),
            ManagementError,
            401,
            "unauthorized_credentials",
        )
    expect(
        lambda: templates_with(KEY_ID, KEY_SECRET + "x").set(
            PROJECT_SLUG, ENV_SLUG, "{}", "", "M2M"
        ),
        ManagementError,
        401,
        "unauthorized_credentials",
    )


@step("the project secret does not open the management API (401)")
def _():
    expect(
        lambda: templates_with(PROJECT_ID, PROJECT_SECRET).get(PROJECT_SLUG, ENV_SLUG, "M2M"),
        ManagementError,
        401,
        "unauthorized_credentials",
    )


@step("a wrong project or environment slug is not found (404)")
def _():
    expect(
        lambda: templates.get(PROJECT_SLUG + "-other", ENV_SLUG, "M2M"),
        ManagementError,
        404,
        "project_not_found",
    )
    expect(
        lambda: templates.set(PROJECT_SLUG, "live", "{}", "", "M2M"),
        ManagementError,
        404,
        "environment_not_found",
    )
    expect(
        lambda: templates.get(PROJECT_SLUG, ENV_SLUG, "SESSION"),
        ManagementError,
        400,
        "invalid_jwt_template_type",
    )


@step("set refuses a bad template (400 invalid_template_content) and keeps the old one")
def _():
    for bad in [
        "not json",
        '{"user_id": "{{ client.trusted_metadata.stytch_user_id }}"}',
        '{"aud": "someone-else"}',
        '{"x": {{ client.password }}}',
        "",
    ]:
        d = expect(
            lambda: templates.set(PROJECT_SLUG, ENV_SLUG, bad, "", "M2M"),
            ManagementError,
            400,
            "invalid_template_content",
        )
        check(d.error_message, "no error_message")
    r = templates.get(PROJECT_SLUG, ENV_SLUG, "M2M")
    check(r.jwt_template.template_content == INITIAL_TEMPLATE, f"{r.jwt_template!r}")


@step("set refuses a bad custom_audience (400 invalid_custom_audience)")
def _():
    for bad in ["two words", "x" * 300]:
        expect(
            lambda: templates.set(PROJECT_SLUG, ENV_SLUG, "{}", bad, "M2M"),
            ManagementError,
            400,
            "invalid_custom_audience",
        )


@step("set the seed's template with a custom_audience; get returns it")
def _():
    r = templates.set(PROJECT_SLUG, ENV_SLUG, SEED_TEMPLATE, CUSTOM_AUDIENCE, "M2M")
    check(r.status_code == 200 and r.request_id, f"{r!r}")
    check(r.jwt_template.template_content == SEED_TEMPLATE, f"{r.jwt_template!r}")
    check(r.jwt_template.custom_audience == CUSTOM_AUDIENCE, f"{r.jwt_template!r}")
    g = templates.get(PROJECT_SLUG, ENV_SLUG, "M2M")
    check(g.jwt_template == r.jwt_template, f"{g.jwt_template!r} != {r.jwt_template!r}")


@step("m2m.token carries the new claims and aud; authenticate_token accepts it")
def _():
    created = api.m2m.clients.create(
        client_name="template client",
        scopes=["read:orders"],
        trusted_metadata={"stytch_user_id": "user-42"},
    )
    client = created.m2m_client
    token = api.m2m.token(
        client_id=client.client_id, client_secret=client.client_secret
    )
    claims = claims_of(token.access_token)
    check(claims.get("user_id") == "user-42", f"{claims!r}")
    check(claims.get("tier") == "gold", f"{claims!r}")
    check(claims.get("aud") == [PROJECT_ID, CUSTOM_AUDIENCE], f"{claims!r}")
    auth = api.m2m.authenticate_token(access_token=token.access_token)
    check(auth.client_id == client.client_id, f"{auth!r}")
    check(auth.custom_claims.get("user_id") == "user-42", f"{auth!r}")


@step("clients.create refuses scopes the SDKs cannot parse (400 invalid_m2m_client_scope)")
def _():
    for scopes in [["read:orders:extra"], ["two words"], [""]]:
        expect(
            lambda: api.m2m.clients.create(scopes=scopes),
            ApiError,
            400,
            "invalid_m2m_client_scope",
        )


@step("removing the custom_audience: aud is the project id again")
def _():
    templates.set(PROJECT_SLUG, ENV_SLUG, SEED_TEMPLATE, "", "M2M")
    created = api.m2m.clients.create(scopes=[], trusted_metadata={"stytch_user_id": "user-7"})
    client = created.m2m_client
    token = api.m2m.token(client_id=client.client_id, client_secret=client.client_secret)
    claims = claims_of(token.access_token)
    check(claims.get("aud") == [PROJECT_ID], f"{claims!r}")
    check(claims.get("user_id") == "user-7", f"{claims!r}")


@step("clients.create without the template's key still succeeds; its token lacks the claim")
def _():
    created = api.m2m.clients.create(
        scopes=["read:orders"], trusted_metadata={"other": "value-not-for-logs"}
    )
    client = created.m2m_client
    check(created.status_code == 200, f"{created!r}")
    token = api.m2m.token(client_id=client.client_id, client_secret=client.client_secret)
    claims = claims_of(token.access_token)
    check("user_id" not in claims and claims.get("tier") == "gold", f"{claims!r}")
    # For the Rust side, which looks for the issuer's warning about this client.
    print(f"info missing-key-client {client.client_id}", flush=True)


passed = sum(1 for _, ok in results if ok)
print(f"done {passed}/{len(results)}", flush=True)
sys.exit(0 if passed == len(results) else 1)
