//! Traces over OTLP/HTTP from the real binary: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! receiver in this test, one Check carrying a W3C `traceparent` arrives as an `ext_authz.check`
//! span in the caller's trace (child of the caller's span), with the token exchange and the JWKS
//! refetch it caused as its children, its decision as attributes, and no secret or token in it.
#![cfg(feature = "otel")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::process::POLL_INTERVAL;
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use common::sidecar::Sidecar;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, check_response::HttpResponse};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const CLIENT_ID: &str = "client-traced";
const SECRET: &str = "SECRETtracedP4k8sW2";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A minimal OTLP/HTTP receiver: keeps every export request body.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

async fn traces(
    State(r): State<Receiver>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    r.bodies.lock().unwrap().push(body);
    // An empty ExportTraceServiceResponse: full success.
    ([("content-type", "application/x-protobuf")], Vec::new())
}

impl Receiver {
    async fn start(&self) -> std::net::SocketAddr {
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| ExportTraceServiceRequest::decode(b.clone()).ok())
            .flat_map(|r| r.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    fn raw(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().concat()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn check_request() -> CheckRequest {
    common::check::Check::get("/v1/orders")
        .basic(CLIENT_ID, SECRET)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .build()
}

#[tokio::test]
async fn a_check_is_traced_in_the_callers_trace_with_its_exchange_and_jwks_fetch() {
    let receiver = Receiver::default();
    let collector = receiver.start().await;
    let p = FakeProvider::start().await;
    p.add_client(CLIENT_ID, SECRET, "user-traced");
    let sidecar = Sidecar::start_with_env(
        &format!(
            "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n",
            p.token_url(),
            p.jwks_url()
        ),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{collector}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    // The sidecar has loaded a JWKS with rsa-a only; tokens are now signed with rsa-b, so the
    // check's exchange is followed by a JWKS refetch for the unknown key.
    p.rotate("rsa-b", &["rsa-a", "rsa-b"]);

    let answer = sidecar
        .client()
        .await
        .check(check_request())
        .await
        .expect("a Check answer")
        .into_inner();
    assert!(
        matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
        "allowed:\n{}",
        sidecar.logs()
    );

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (check, children) = loop {
        let spans = receiver.spans();
        let ours: Vec<&Span> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == TRACE_ID)
            .collect();
        let check = ours.iter().find(|s| s.name == "ext_authz.check");
        let children: Vec<&Span> = match check {
            Some(c) => ours
                .iter()
                .filter(|s| s.parent_span_id == c.span_id)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        if let Some(check) = check
            && names.contains(&"token.exchange")
            && names.contains(&"jwks.fetch")
        {
            break (
                (*check).clone(),
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no check span with exchange and JWKS children in trace {TRACE_ID}; received: {:?}\n{}",
            spans
                .iter()
                .map(|s| (s.name.clone(), hex(&s.trace_id), hex(&s.parent_span_id)))
                .collect::<Vec<_>>(),
            sidecar.logs()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert_eq!(
        hex(&check.parent_span_id),
        PARENT_SPAN_ID,
        "child of the caller's span"
    );
    assert_eq!(attribute(&check, "decision").as_deref(), Some("allow"));
    assert_eq!(attribute(&check, "reason").as_deref(), Some("ok"));
    assert!(children.len() >= 2, "{children:?}");

    let raw = receiver.raw();
    let contains = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(SECRET), "the secret was exported");
    for token in p.issued_tokens() {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!contains(signature), "an access token was exported");
    }
}
