//! The Envoy edge: `envoy.service.auth.v3.Authorization/Check` turned into an `AuthRequest`
//! once, and a `Decision` turned back into a `CheckResponse`. Nothing here decides anything.
//!
//! Every answer also carries `dynamic_metadata`, which Envoy's ext_authz filter publishes under
//! its namespace [`METADATA_NAMESPACE`] for access logs and later filters (RBAC, rate limits):
//! see [`metadata`] for the keys.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::answer::Edge;
use crate::authorizer::Authorizer;
use crate::config::{MetadataKey, MetadataKeys};
use crate::decision::{Allow, Decision, Deny};
use crate::defaults::{AUTHORIZATION, USER_ID_HEADER};
use crate::metrics::Metrics;
use crate::proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use crate::proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::Authorization, check_response::HttpResponse,
};
use crate::proto::envoy::r#type::v3::HttpStatus;
use crate::proto::google::protobuf::{Struct, Value, value::Kind};
use crate::proto::google::rpc;
use crate::request::{AuthRequest, Headers};

/// gRPC status codes carried in `CheckResponse.status` (google.rpc.Code).
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Where Envoy's HTTP ext_authz filter puts a `CheckResponse`'s `dynamic_metadata`.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";

pub fn to_auth_request(check: CheckRequest) -> AuthRequest {
    let attributes = check.attributes.unwrap_or_default();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    // With `encode_raw_headers`, Envoy sends each header line separately in `header_map`;
    // otherwise repeated headers arrive joined with "," in the `headers` map. Names and values
    // are moved out of the decoded message, not copied (issue 19).
    let headers = match http.header_map {
        Some(map) if !map.headers.is_empty() => {
            let mut headers = Headers::with_capacity(map.headers.len());
            for h in map.headers {
                let value = if h.raw_value.is_empty() {
                    Some(h.value)
                } else {
                    String::from_utf8(h.raw_value).ok()
                };
                headers.push_owned(h.key, value);
            }
            headers
        }
        _ => {
            let mut headers = Headers::with_capacity(http.headers.len());
            for (name, value) in http.headers {
                headers.push_owned(name, Some(value));
            }
            headers
        }
    };
    AuthRequest {
        method: http.method,
        host: http.host,
        path: http.path,
        headers,
        context: attributes.context_extensions.into_iter().collect(),
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
    }
}

/// The answer with every dynamic metadata key (the default).
pub fn to_check_response(decision: &Decision) -> CheckResponse {
    to_check_response_with(decision, MetadataKeys::ALL)
}

/// The answer, its dynamic metadata limited to `keys`.
pub fn to_check_response_with(decision: &Decision, keys: MetadataKeys) -> CheckResponse {
    match decision {
        Decision::Allow(allow) => allowed(allow, keys),
        Decision::Deny(deny) => denied(deny, keys),
    }
}

fn string(value: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(value)),
    }
}

/// The metadata Struct of an answer: the non-empty values of the keys among `keys`. On every
/// check's path: one allocation per key and value (plus the B-tree's node), nothing else; a
/// value is computed only for a key that is sent.
struct MetadataStruct {
    keys: MetadataKeys,
    fields: BTreeMap<String, Value>,
}

impl MetadataStruct {
    fn new(keys: MetadataKeys) -> Self {
        MetadataStruct {
            keys,
            fields: BTreeMap::new(),
        }
    }

    fn put<'a>(&mut self, key: MetadataKey, value: impl FnOnce() -> Cow<'a, str>) {
        if self.keys.has(key) {
            let value = value();
            if !value.is_empty() {
                self.fields
                    .insert(key.name().to_owned(), string(value.into_owned()));
            }
        }
    }

    /// `None` when there is nothing to say.
    fn finish(self) -> Option<Struct> {
        (!self.fields.is_empty()).then_some(Struct {
            fields: self.fields,
        })
    }
}

fn allowed_metadata(allow: &Allow, keys: MetadataKeys) -> Option<Struct> {
    let identity = &allow.identity;
    let mut m = MetadataStruct::new(keys);
    m.put(MetadataKey::UserId, || {
        allow
            .set()
            .iter()
            .find(|(name, _)| &**name == USER_ID_HEADER)
            .map_or("", |(_, value)| value)
            .into()
    });
    m.put(MetadataKey::ClientId, || (*identity.client_id).into());
    m.put(MetadataKey::Scope, || identity.scopes.join(" ").into());
    m.put(MetadataKey::Provider, || {
        allow.provider.as_deref().unwrap_or("").into()
    });
    m.put(MetadataKey::Rule, || {
        allow.rule.as_deref().unwrap_or("").into()
    });
    m.finish()
}

fn denied_metadata(deny: &Deny, keys: MetadataKeys) -> Option<Struct> {
    let mut m = MetadataStruct::new(keys);
    m.put(MetadataKey::Reason, || deny.reason.into());
    m.put(MetadataKey::Rule, || {
        deny.rule.as_deref().unwrap_or("").into()
    });
    m.finish()
}

fn allowed(allow: &Allow, keys: MetadataKeys) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: code::OK,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: allowed_headers(allow),
            headers_to_remove: allow
                .remove()
                .iter()
                .filter(|h| !(allow.forward.is_some() && &***h == AUTHORIZATION))
                .map(|h| h.to_string())
                .collect(),
            response_headers_to_add: Vec::new(),
        })),
        dynamic_metadata: allowed_metadata(allow, keys),
    }
}

fn denied(deny: &Deny, keys: MetadataKeys) -> CheckResponse {
    let grpc_code = match deny.status {
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        429 => code::RESOURCE_EXHAUSTED,
        _ => code::PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: deny.reason.to_owned(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(deny.status),
            }),
            headers: deny_headers(deny),
            body: deny.body.clone(),
        })),
        dynamic_metadata: denied_metadata(deny, keys),
    }
}

fn allowed_headers(allow: &Allow) -> Vec<HeaderValueOption> {
    let mut headers: Vec<HeaderValueOption> =
        allow.set().iter().map(|(k, v)| header(k, v)).collect();
    if let Some(token) = &allow.forward {
        headers.push(header(AUTHORIZATION, &format!("Bearer {}", token.expose())));
    }
    headers
}

fn deny_headers(deny: &Deny) -> Vec<HeaderValueOption> {
    let mut headers = vec![
        header("content-type", "application/json"),
        header("cache-control", "no-store"),
    ];
    if let Some(challenge) = &deny.challenge {
        headers.push(header("www-authenticate", challenge));
    }
    if let Some(seconds) = deny.retry_after {
        headers.push(header("retry-after", &seconds.to_string()));
    }
    headers
}

/// The tonic service.
pub struct ExtAuthz {
    authorizer: Arc<Authorizer>,
    metrics: Option<Arc<Metrics>>,
    metadata: MetadataKeys,
}

impl ExtAuthz {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        ExtAuthz {
            authorizer,
            metrics: None,
            metadata: MetadataKeys::ALL,
        }
    }

    /// Sends only these dynamic metadata keys (`dynamic_metadata`; all by default).
    pub fn with_metadata(mut self, keys: MetadataKeys) -> Self {
        self.metadata = keys;
        self
    }

    /// Counts every answered check (and its latency) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    /// A panic anywhere in answering — the conversion, the core, the response, the metrics —
    /// becomes a clean UNAVAILABLE (and is counted), never a reset stream: the core contains its
    /// own, and `answer::contained` catches the adapter's.
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        match crate::answer::contained(&self.authorizer, self.answer(request)).await {
            Some(answer) => answer,
            None => Err(Status::unavailable("the check could not be answered")),
        }
    }
}

impl ExtAuthz {
    async fn answer(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let request = to_auth_request(request.into_inner());
        let result = crate::answer::decide(
            &self.authorizer,
            self.metrics.as_deref(),
            Edge::Grpc,
            &request,
            started,
        )
        .await;
        match result {
            Ok(decision) => Ok(Response::new(to_check_response_with(
                &decision,
                self.metadata,
            ))),
            // An infrastructure failure is not a denial: answering UNAVAILABLE lets the
            // operator's `failure_mode_allow` decide (false by default, so Envoy fails closed).
            Err(error) => Err(Status::unavailable(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::BearerToken;
    use crate::decision::{DEFAULT_RULE, Refusal};
    use crate::identity::Identity;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjbGllbnQtMSJ9.c2lnbmF0dXJl";

    fn fields(response: &CheckResponse) -> Vec<(String, String)> {
        let Some(meta) = &response.dynamic_metadata else {
            return Vec::new();
        };
        meta.fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => (k.clone(), s.clone()),
                other => panic!("{k}: not a string value: {other:?}"),
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    fn identity(user: Option<&str>, scopes: &[&str]) -> Arc<Identity> {
        let mut headers: Vec<(Arc<str>, Box<str>)> =
            vec![("x-client-id".into(), "client-1".into())];
        if let Some(user) = user {
            headers.push((USER_ID_HEADER.into(), user.into()));
        }
        Arc::new(Identity {
            headers: headers.into(),
            remove: Arc::new([AUTHORIZATION.into(), "x-client-secret".into()]),
            client_id: "client-1".into(),
            scopes: scopes.iter().map(|s| Box::<str>::from(*s)).collect(),
            access_token: Some(BearerToken::new(TOKEN)),
        })
    }

    #[test]
    fn an_allowed_answer_carries_the_identity_as_dynamic_metadata() {
        for (rule, forward) in [("orders-read", None), (DEFAULT_RULE, Some(TOKEN))] {
            let allow = Allow {
                identity: identity(Some("user-1"), &["read:orders", "write:orders"]),
                forward: forward.map(BearerToken::new),
                provider: Some("partners".into()),
                rule: Some(rule.into()),
            };
            let response = to_check_response(&Decision::Allow(allow));
            assert_eq!(
                fields(&response),
                pairs(&[
                    (MetadataKey::UserId.name(), "user-1"),
                    (MetadataKey::ClientId.name(), "client-1"),
                    (MetadataKey::Scope.name(), "read:orders write:orders"),
                    (MetadataKey::Provider.name(), "partners"),
                    (MetadataKey::Rule.name(), rule),
                ])
            );
            // The access token may go upstream as a header, never into metadata.
            let text = format!("{:?}", response.dynamic_metadata);
            assert!(!text.contains(TOKEN) && !text.contains("Bearer"), "{text}");
        }
    }

    #[test]
    fn keys_with_nothing_to_say_are_left_out() {
        // No user id header, no scopes: those keys are absent, not empty strings.
        let allow = Allow {
            identity: identity(None, &[]),
            forward: None,
            provider: Some("default".into()),
            rule: Some(DEFAULT_RULE.into()),
        };
        assert_eq!(
            fields(&to_check_response(&Decision::Allow(allow))),
            pairs(&[
                (MetadataKey::ClientId.name(), "client-1"),
                (MetadataKey::Provider.name(), "default"),
                (MetadataKey::Rule.name(), DEFAULT_RULE),
            ])
        );
        // An anonymous route: only the rule that opened it.
        let anonymous = Allow {
            identity: Arc::new(Identity {
                headers: Box::new([]),
                remove: Arc::new([AUTHORIZATION.into()]),
                client_id: Box::default(),
                scopes: Box::new([]),
                access_token: None,
            }),
            forward: None,
            provider: None,
            rule: Some("health".into()),
        };
        assert_eq!(
            fields(&to_check_response(&Decision::Allow(anonymous))),
            pairs(&[(MetadataKey::Rule.name(), "health")])
        );
    }

    #[test]
    fn only_the_configured_keys_are_sent() {
        let allow = Allow {
            identity: identity(Some("user-1"), &["read:orders"]),
            forward: None,
            provider: Some("default".into()),
            rule: Some("orders-read".into()),
        };
        let keys = MetadataKeys::NONE
            .with(MetadataKey::UserId)
            .with(MetadataKey::Reason);
        let response = to_check_response_with(&Decision::Allow(allow.clone()), keys);
        assert_eq!(
            fields(&response),
            pairs(&[(MetadataKey::UserId.name(), "user-1")])
        );
        // The headers do not depend on the metadata.
        assert_eq!(
            response.http_response,
            to_check_response(&Decision::Allow(allow.clone())).http_response
        );
        let mut deny = Refusal::RouteDenied.to_deny("api");
        deny.rule = Some("admin-block".into());
        let response = to_check_response_with(&Decision::Deny(deny), keys);
        assert_eq!(
            fields(&response),
            pairs(&[(MetadataKey::Reason.name(), "route_denied")])
        );
        // None at all: no Struct, not an empty one.
        let response = to_check_response_with(&Decision::Allow(allow), MetadataKeys::NONE);
        assert_eq!(response.dynamic_metadata, None);
    }

    #[test]
    fn a_denied_answer_carries_its_reason_and_rule() {
        let mut deny = Refusal::RouteDenied.to_deny("api");
        deny.rule = Some("admin-block".into());
        let response = to_check_response(&Decision::Deny(deny));
        assert_eq!(
            fields(&response),
            pairs(&[
                (MetadataKey::Reason.name(), "route_denied"),
                (MetadataKey::Rule.name(), "admin-block")
            ])
        );
        // Refused before any rule was consulted: the reason alone.
        let deny = Refusal::Target(crate::canonical::TargetError::DotSegment).to_deny("api");
        let response = to_check_response(&Decision::Deny(deny));
        assert_eq!(
            fields(&response),
            pairs(&[(MetadataKey::Reason.name(), "malformed_path")])
        );
        // A wrong secret: the stable reason, nothing the caller sent.
        let mut deny = Refusal::Exchange(crate::exchange::ExchangeError::Rejected {
            code: "invalid_client".into(),
        })
        .to_deny("api");
        deny.rule = Some(DEFAULT_RULE.into());
        let response = to_check_response(&Decision::Deny(deny));
        assert_eq!(
            fields(&response),
            pairs(&[
                (MetadataKey::Reason.name(), "invalid_client"),
                (MetadataKey::Rule.name(), DEFAULT_RULE)
            ])
        );
    }

    /// Envoy reads field 4 as a `google.protobuf.Struct`: the bytes must be the well-known
    /// type's (a map entry of string key 1 and `Value` 2, whose `string_value` is field 3).
    #[test]
    fn dynamic_metadata_is_field_4_in_the_well_known_struct_encoding() {
        use prost::Message;
        let deny = Refusal::RouteDenied.to_deny("api");
        let bytes = to_check_response(&Decision::Deny(deny)).encode_to_vec();
        // field 4, length-delimited; one Struct.fields entry (field 1) of key "reason" and a
        // Value with string_value (field 3) "route_denied".
        let entry = [
            &[0x0a, 6][..],
            b"reason",
            &[0x12, 14, 0x1a, 12],
            b"route_denied",
        ]
        .concat();
        let expected = [
            &[0x22, entry.len() as u8 + 2, 0x0a, entry.len() as u8][..],
            &entry,
        ]
        .concat();
        assert!(
            bytes
                .windows(expected.len())
                .any(|w| w == expected.as_slice()),
            "{bytes:02x?}"
        );
    }
}
