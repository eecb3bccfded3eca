//! Interop with an independent, certified OAuth2 server: the npm package `oidc-provider` issues
//! client-credentials JWT access tokens (`typ: at+jwt`, RFC 9068); m2m-authz exchanges and
//! verifies them with the generic `oauth2` profile.

mod common;

use common::check::basic;

use common::oidc::{OidcOptions, OidcProvider};
use m2m_authz::authorizer::Authorizer;
use m2m_authz::config::Config;
use m2m_authz::decision::Decision;
use m2m_authz::request::{AuthRequest, Headers};

fn config(op: &OidcProvider, client_auth: &str, alg: &str) -> Config {
    let yaml = format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {}\n  audience: {}\n  client_auth: {client_auth}\n  algorithms: [{alg}]\n  token_type: at+jwt\n",
        op.token_url(),
        op.jwks_url(),
        op.issuer(),
        op.audience()
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn request(headers: &[(&str, String)]) -> AuthRequest {
    AuthRequest {
        headers: headers
            .iter()
            .map(|(n, v)| (*n, v.clone()))
            .collect::<Headers>(),
        ..Default::default()
    }
}

fn user(d: &Decision) -> Option<String> {
    match d {
        Decision::Allow(a) => a
            .set()
            .iter()
            .find(|(h, _)| &**h == "x-user-id")
            .map(|(_, v)| v.to_string()),
        Decision::Deny(_) => None,
    }
}

fn status(d: &Decision) -> u16 {
    match d {
        Decision::Allow(_) => 200,
        Decision::Deny(d) => d.status,
    }
}

#[tokio::test]
async fn oidc_provider_tokens_are_exchanged_and_verified() {
    crate::needs!(OidcProvider);
    for alg in ["RS256", "ES256"] {
        let op = OidcProvider::start(OidcOptions {
            alg: alg.into(),
            ..Default::default()
        })
        .await;
        let secret = op.client_secret().to_owned();
        for (auth, client) in [
            ("client_secret_post", op.client_id().to_owned()),
            ("client_secret_basic", op.basic_client_id()),
        ] {
            let a = Authorizer::new(&config(&op, auth, alg)).unwrap();
            a.provider()
                .jwks()
                .refresh()
                .await
                .expect("oidc-provider JWKS loads");
            let d = a
                .check(&request(&[("authorization", basic(&client, &secret))]))
                .await
                .unwrap();
            assert_eq!(
                user(&d).as_deref(),
                Some(op.user_id()),
                "{alg} {auth}: {d:?}\n{}",
                op.stderr_log()
            );

            let d = a
                .check(&request(&[(
                    "authorization",
                    basic(&client, "not-the-secret"),
                )]))
                .await
                .unwrap();
            assert_eq!(status(&d), 401, "{alg} {auth}: wrong secret");
        }
        let a = Authorizer::new(&config(&op, "client_secret_post", alg)).unwrap();
        a.provider().jwks().refresh().await.unwrap();
        // A token without the user claim verifies but is refused 403.
        let d = a
            .check(&request(&[(
                "authorization",
                basic(&op.nouser_client_id(), &secret),
            )]))
            .await
            .unwrap();
        assert_eq!(status(&d), 403, "{alg}: no user claim");
        // A token the caller obtained itself is verified directly.
        let token = op.access_token().await;
        let d = a
            .check(&request(&[("authorization", format!("Bearer {token}"))]))
            .await
            .unwrap();
        assert_eq!(user(&d).as_deref(), Some(op.user_id()), "{alg}: bearer");
    }
}

#[tokio::test]
async fn a_profile_that_expects_stytch_tokens_refuses_rfc_9068_ones() {
    crate::needs!(OidcProvider);
    // The `typ` check is per profile: `JWT` pinned, `at+jwt` presented → refused as invalid_token.
    let op = OidcProvider::start(OidcOptions::default()).await;
    let mut c = config(&op, "client_secret_post", "RS256");
    c.provider.token_type = Some("JWT".into());
    let a = Authorizer::new(&c).unwrap();
    a.provider().jwks().refresh().await.unwrap();
    let token = op.access_token().await;
    let d = a
        .check(&request(&[("authorization", format!("Bearer {token}"))]))
        .await
        .unwrap();
    assert_eq!(status(&d), 401);
}

#[tokio::test]
async fn an_issuer_alone_is_enough_oidc_provider_is_discovered() {
    crate::needs!(OidcProvider);
    // Only `issuer`: the token endpoint, the JWKS and the client authentication come from
    // oidc-provider's /.well-known/openid-configuration. Without `client_auth` the sidecar
    // picks client_secret_basic (both are listed); with it, the configured one is used.
    let op = OidcProvider::start(OidcOptions::default()).await;
    let secret = op.client_secret().to_owned();
    for (client_auth, client) in [
        ("", op.basic_client_id()),
        (
            "  client_auth: client_secret_post\n",
            op.client_id().to_owned(),
        ),
    ] {
        let yaml = format!(
            "provider:\n  kind: oauth2\n  issuer: {}\n  audience: {}\n  token_type: at+jwt\n{client_auth}",
            op.issuer(),
            op.audience()
        );
        let a = Authorizer::new(&Config::from_yaml(&yaml).unwrap()).unwrap();
        let discovery = a.provider().discovery().expect("discovered");
        let endpoints = discovery.refresh().await.expect("oidc-provider discovery");
        assert_eq!(endpoints.token_endpoint.as_str(), op.token_url());
        assert_eq!(endpoints.jwks_uri.as_str(), op.jwks_url());
        assert!(endpoints.introspection_endpoint.is_some());
        a.provider().jwks().refresh().await.expect("JWKS loads");
        let d = a
            .check(&request(&[("authorization", basic(&client, &secret))]))
            .await
            .unwrap();
        assert_eq!(
            user(&d).as_deref(),
            Some(op.user_id()),
            "{client_auth}: {d:?}\n{}",
            op.stderr_log()
        );
    }
}

/// oidc-provider issuing opaque access tokens (its `accessTokenFormat: opaque`): the sidecar
/// discovers the introspection endpoint, introspects the exchanged token with its own
/// resource-server client, serves the next check from cache, and introspects a caller's opaque
/// Bearer token the same way; a garbage or revoked one is refused with 401.
#[tokio::test]
async fn oidc_provider_opaque_tokens_are_introspected() {
    crate::needs!(OidcProvider);
    let op = OidcProvider::start(OidcOptions {
        token_format: "opaque".into(),
        ..Default::default()
    })
    .await;
    let secret = op.client_secret().to_owned();
    let yaml = format!(
        "provider:\n  kind: oauth2\n  issuer: {}\n  audience: {}\n  introspection:\n    client_id: {}\n    client_secret: {secret}\n",
        op.issuer(),
        op.audience(),
        op.rs_client_id()
    );
    let a = Authorizer::new(&Config::from_yaml(&yaml).unwrap()).unwrap();
    let endpoints = a
        .provider()
        .discovery()
        .expect("discovered")
        .refresh()
        .await
        .expect("oidc-provider discovery");
    assert!(endpoints.introspection_endpoint.is_some());
    a.provider().jwks().refresh().await.expect("JWKS loads");

    let client = request(&[("authorization", basic(op.client_id(), &secret))]);
    for _ in 0..2 {
        let d = a.check(&client).await.unwrap();
        assert_eq!(
            user(&d).as_deref(),
            Some(op.user_id()),
            "{d:?}\n{}",
            op.stderr_log()
        );
    }
    assert_eq!(
        op.introspection_calls(),
        1,
        "the second check is served from cache"
    );

    let token = op.access_token().await;
    assert_eq!(token.matches('.').count(), 0, "an opaque token: {token}");
    let caller = request(&[("authorization", format!("Bearer {token}"))]);
    for _ in 0..2 {
        let d = a.check(&caller).await.unwrap();
        assert_eq!(user(&d).as_deref(), Some(op.user_id()), "{d:?}");
    }
    assert_eq!(op.introspection_calls(), 2);

    let garbage = request(&[("authorization", "Bearer not-a-token-at-all".to_owned())]);
    assert_eq!(status(&a.check(&garbage).await.unwrap()), 401);

    // Revoked by its own client (RFC 7009), then presented: inactive, 401.
    let revoked = op.access_token().await;
    let resp = common::http_client()
        .post(format!("{}/token/revocation", op.issuer()))
        .form(&[
            ("token", revoked.as_str()),
            ("client_id", op.client_id()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .expect("revocation request");
    assert_eq!(resp.status(), 200);
    let d = a
        .check(&request(&[("authorization", format!("Bearer {revoked}"))]))
        .await
        .unwrap();
    assert_eq!(status(&d), 401, "{d:?}");
}
