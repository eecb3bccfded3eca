//! The sidecar's `stytch` profile against the embedded issuer, through a real Envoy: the whole
//! product on one machine, with secret rotation and signing-key rotation under traffic.
#![cfg(feature = "issuer")]

mod common;

use common::check::check_request;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::echo::{EchoRequest, EchoUpstream};
use common::envoy::{Envoy, Front};
use common::issuer::IssuerProcess;
use common::sidecar::Sidecar;
use serde_json::Value;

struct Stack {
    issuer: IssuerProcess,
    _sidecar: Sidecar,
    _upstream: EchoUpstream,
    envoy: Envoy,
    http: reqwest::Client,
}

async fn stack() -> Stack {
    let issuer = IssuerProcess::start().await;
    let (sidecar, Front { envoy, upstream }) =
        common::envoy::stack(&issuer.stytch_provider_yaml()).await;
    Stack {
        issuer,
        _sidecar: sidecar,
        _upstream: upstream,
        envoy,
        http: common::http_client(),
    }
}

impl Stack {
    /// Sends the credential through Envoy; returns the status and the `x-user-id` the upstream
    /// saw (read from the echo's own answer, so concurrent calls do not mix).
    async fn call(&self, id: &str, secret: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .get(self.envoy.url("/v1/orders"))
            .basic_auth(id, Some(secret))
            .header("x-user-id", "admin")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let seen: Option<EchoRequest> = if status == 200 {
            r.json().await.ok()
        } else {
            None
        };
        let user = seen.and_then(|e| e.header("x-user-id").map(str::to_owned));
        (status, user)
    }
}

#[tokio::test]
async fn stytch_profile_end_to_end_with_secret_rotation() {
    crate::needs!(Envoy);
    let s = stack().await;
    let (id, old) = s.issuer.create_client("user-42", "read:orders");
    assert_eq!(s.call(&id, &old).await, (200, Some("user-42".into())));

    // Rotation started: the old and the next secret both reach the upstream as the same user.
    let out = s.issuer.cli(&["clients", "rotate", "start", &id, "--json"]);
    let next = serde_json::from_str::<Value>(out.trim()).unwrap()["next_client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.call(&id, &next).await, (200, Some("user-42".into())));
    assert_eq!(s.call(&id, &old).await, (200, Some("user-42".into())));

    // Completed: the old secret gets no new token from the issuer; the next one works.
    s.issuer.cli(&["clients", "rotate", "complete", &id]);
    assert_eq!(s.issuer.token_status(&id, &old).await, 400);
    assert_eq!(s.issuer.token_status(&id, &next).await, 200);
    assert_eq!(s.call(&id, &next).await, (200, Some("user-42".into())));

    // A sidecar that had not cached the old secret refuses it at once. (One that had cached it
    // honours it until the entry expires: see the README on bounding that window.)
    let fresh = Sidecar::start(&s.issuer.stytch_provider_yaml()).await;
    let mut client = fresh.client().await;
    let denied = client
        .check(check_request(&id, &old))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.unwrap().code, 16, "UNAUTHENTICATED");

    // A deactivated client's fresh credentials are refused too.
    let (id2, secret2) = s.issuer.create_client("user-43", "read:orders");
    s.issuer.cli(&["clients", "deactivate", &id2]);
    assert_eq!(s.call(&id2, &secret2).await.0, 401);
}

#[tokio::test]
async fn signing_key_rotation_under_traffic_fails_no_request() {
    crate::needs!(Envoy);
    let s = Arc::new(stack().await);
    let clients: Vec<(String, String)> = (0..4)
        .map(|i| s.issuer.create_client(&format!("user-{i}"), "read:orders"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut traffic = Vec::new();
    for (i, (id, secret)) in clients.iter().cloned().enumerate() {
        let (s, stop, done) = (s.clone(), stop.clone(), done.clone());
        traffic.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (status, user) = s.call(&id, &secret).await;
                if status != 200 || user.as_deref() != Some(&format!("user-{i}")) {
                    failures.push((status, user));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    // Rotate while traffic flows, then bring in new clients whose first tokens are signed with the
    // new key: the sidecar must learn it (unknown kid → JWKS refetch) without a failed request.
    let out = s.issuer.cli(&["issuer", "rotate-key"]);
    assert!(!out.is_empty());
    for i in 10..14 {
        let (id, secret) = s.issuer.create_client(&format!("user-{i}"), "read:orders");
        assert_eq!(
            s.call(&id, &secret).await,
            (200, Some(format!("user-{i}"))),
            "new client after rotation"
        );
    }
    // Old-key tokens still cached and verified: keep the loop going a little longer.
    let target = done.load(Ordering::SeqCst) + 40;
    while done.load(Ordering::SeqCst) < target {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        let failures = t.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests across the rotation: {failures:?}"
        );
    }
    assert!(done.load(Ordering::SeqCst) >= 40);
}

/// A template's `custom_audience` joins `aud` beside the project id: the stytch profile accepts
/// such tokens as it is, and with `audience: <custom>` it requires the custom value (a token
/// without it is refused). No Envoy: the Authorizer itself, against the issuer process.
#[tokio::test]
async fn stytch_profile_and_a_custom_audience() {
    use common::authz::{authorizer, status};
    use common::check::basic_request;
    let issuer = IssuerProcess::start().await;
    let template = issuer.dir.join("template.json");
    std::fs::write(
        &template,
        r#"{"user_id": {{ client.trusted_metadata.user_id }}}"#,
    )
    .unwrap();
    let template = template.to_str().unwrap();
    issuer.cli(&[
        "issuer",
        "template",
        "set",
        "--file",
        template,
        "--custom-audience",
        "orders-api",
    ]);
    let (id, secret) = issuer.create_client("user-aud", "read");
    let plain = issuer.stytch_provider_yaml();
    let requiring = format!("{plain}  audience: orders-api\n");
    for (yaml, what) in [(&plain, "project id"), (&requiring, "custom audience")] {
        let a = authorizer(yaml).await;
        assert_eq!(
            status(&a.check(&basic_request(&id, &secret)).await),
            200,
            "checking the {what}"
        );
    }
    // Without the custom audience in the template, the profile that requires it refuses.
    issuer.cli(&[
        "issuer",
        "template",
        "set",
        "--file",
        template,
        "--custom-audience",
        "",
    ]);
    let a = authorizer(&requiring).await;
    // The provider, not the caller, is at fault: the sidecar answers unavailable (503 through
    // Envoy with failure_mode_allow off), as for any token its own provider issues unusable.
    let got = a.check(&basic_request(&id, &secret)).await;
    assert_eq!(status(&got), 503, "a token without the required audience");
    let why = format!("{:?}", got.err());
    assert!(why.contains("WrongAudience"), "{why}");
    let a = authorizer(&plain).await;
    assert_eq!(status(&a.check(&basic_request(&id, &secret)).await), 200);
}
