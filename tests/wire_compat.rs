//! Our own ext_authz wire definitions against Envoy's complete ones (the `envoy-types` crate):
//! what Envoy encodes, we decode; what we encode, Envoy decodes, field for field.

use envoy_types::pb::envoy::config::core::v3 as up_core;
use envoy_types::pb::envoy::service::auth::v3 as up;
use m2m_authz::decision::{Allow, Decision, Deny};
use m2m_authz::ext_authz::{to_auth_request, to_check_response};
use m2m_authz::identity::Identity;
use m2m_authz::proto::envoy::service::auth::v3 as ours;
use prost::Message;

fn upstream_request() -> up::CheckRequest {
    let http = up::attribute_context::HttpRequest {
        id: "req-1".into(),
        method: "POST".into(),
        headers: [
            (
                "authorization".to_owned(),
                "Basic Y2xpZW50OnNlY3JldA==".to_owned(),
            ),
            ("x-user-id".to_owned(), "admin".to_owned()),
        ]
        .into_iter()
        .collect(),
        path: "/v1/orders?id=7".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/2".into(),
        body: "ignored".into(),
        ..Default::default()
    };
    up::CheckRequest {
        attributes: Some(up::AttributeContext {
            source: Some(up::attribute_context::Peer {
                principal: "spiffe://mesh/ns/a/sa/b".into(),
                service: "caller".into(),
                ..Default::default()
            }),
            request: Some(up::attribute_context::Request {
                time: Some(Default::default()),
                http: Some(http),
            }),
            context_extensions: [("policy".to_owned(), "orders-write".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

#[test]
fn envoy_check_request_decodes_with_our_definitions() {
    let bytes = upstream_request().encode_to_vec();
    let ours = ours::CheckRequest::decode(bytes.as_slice()).expect("decodes");
    let req = to_auth_request(ours.clone());
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/orders?id=7");
    assert_eq!(req.host, "api.example.com");
    assert_eq!(
        req.context.get("policy").map(String::as_str),
        Some("orders-write")
    );
    assert_eq!(
        req.headers.get_all("x-user-id").collect::<Vec<_>>(),
        vec![Some("admin")]
    );
    let http = ours.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.id, "req-1");
    assert_eq!(http.scheme, "https");
}

#[test]
fn raw_header_map_keeps_repeated_headers_apart() {
    let mut request = upstream_request();
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.headers.clear();
    http.header_map = Some(up_core::HeaderMap {
        headers: vec![
            up_core::HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer a".to_vec(),
            },
            up_core::HeaderValue {
                key: "authorization".into(),
                value: String::new(),
                raw_value: b"Bearer b".to_vec(),
            },
            up_core::HeaderValue {
                key: "x-client-secret".into(),
                value: String::new(),
                raw_value: vec![0xff, 0xfe],
            },
        ],
    });
    let ours = ours::CheckRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    let req = to_auth_request(ours);
    assert_eq!(
        req.headers.get_all("authorization").collect::<Vec<_>>(),
        vec![Some("Bearer a"), Some("Bearer b")]
    );
    assert_eq!(
        req.headers.get_all("x-client-secret").collect::<Vec<_>>(),
        vec![None]
    );
}

#[test]
fn our_ok_response_decodes_as_envoys() {
    let decision = Decision::Allow(Allow {
        identity: std::sync::Arc::new(Identity {
            headers: Box::new([("x-user-id".into(), "user-1".into())]),
            remove: std::sync::Arc::new(["authorization".into(), "x-client-secret".into()]),
            client_id: "client-1".into(),
            scopes: Box::new(["read:orders".into(), "write:orders".into()]),
            access_token: None,
        }),
        forward: None,
        provider: Some("default".into()),
        rule: Some("orders-read".into()),
    });
    let bytes = to_check_response(&decision).encode_to_vec();
    let theirs = up::CheckResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(theirs.status.unwrap().code, 0);
    let Some(up::check_response::HttpResponse::OkResponse(ok)) = theirs.http_response else {
        panic!("expected ok_response");
    };
    let h = ok.headers[0].header.as_ref().unwrap();
    assert_eq!((h.key.as_str(), h.value.as_str()), ("x-user-id", "user-1"));
    assert_eq!(
        ok.headers[0].append_action,
        up_core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    assert_eq!(
        ok.headers_to_remove,
        vec!["authorization", "x-client-secret"]
    );
    assert_eq!(
        metadata(theirs.dynamic_metadata),
        [
            ("client_id", "client-1"),
            ("provider", "default"),
            ("rule", "orders-read"),
            ("scope", "read:orders write:orders"),
            ("user_id", "user-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

/// Envoy's view of `CheckResponse.dynamic_metadata`: every field, each a string value.
fn metadata(meta: Option<envoy_types::pb::google::protobuf::Struct>) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = meta
        .expect("dynamic_metadata")
        .fields
        .into_iter()
        .map(|(k, v)| match v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => (k, s),
            other => panic!("{k}: {other:?}"),
        })
        .collect();
    fields.sort();
    fields
}

#[test]
fn our_denied_response_decodes_as_envoys() {
    let decision = Decision::Deny(Deny {
        status: 401,
        challenge: Some("Bearer realm=\"m2m-authz\"".into()),
        retry_after: None,
        body: "{\"error\":\"unauthorized\"}".into(),
        reason: "no_credentials",
        rule: Some("default".into()),
    });
    let bytes = to_check_response(&decision).encode_to_vec();
    let theirs = up::CheckResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(theirs.status.unwrap().code, 16);
    let Some(up::check_response::HttpResponse::DeniedResponse(d)) = theirs.http_response else {
        panic!("expected denied_response");
    };
    assert_eq!(d.status.unwrap().code, 401);
    assert_eq!(d.body, "{\"error\":\"unauthorized\"}");
    let www = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .unwrap();
    assert_eq!(www.value, "Bearer realm=\"m2m-authz\"");
    assert_eq!(
        metadata(theirs.dynamic_metadata),
        [("reason", "no_credentials"), ("rule", "default")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}
