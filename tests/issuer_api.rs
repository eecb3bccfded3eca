//! The embedded issuer's HTTP API, end to end: a real SQLite file in a temp
//! directory, the real axum server on 127.0.0.1:0, reqwest as the client and
//! jsonwebtoken verifying tokens against the served JWKS.
#![cfg(feature = "issuer")]

mod common;

use common::process::TempDir;

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use m2m_authz::issuer::{Issuer, IssuerConfig, IssuerError};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PROJECT_ID: &str = "project-test-api";
const PROJECT_SECRET: &str = "api-test-project-secret-0123456789";

fn config_in(dir: &TempDir) -> IssuerConfig {
    let mut config = IssuerConfig::default();
    config.database = dir.join("issuer.db");
    config.project_id = PROJECT_ID.into();
    config.project_secret = Some(PROJECT_SECRET.into());
    config.token_lifetime = Duration::from_secs(1800);
    config
}

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), IssuerError>>>,
}

impl Server {
    async fn start(config: IssuerConfig) -> Self {
        let issuer = Issuer::open_async(config).await.expect("open issuer");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(issuer.serve_on(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn token_url(&self) -> String {
        self.url(&format!("/v1/public/{PROJECT_ID}/oauth2/token"))
    }

    fn manage(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .basic_auth(PROJECT_ID, Some(PROJECT_SECRET))
    }

    async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let body = resp.json::<Value>().await.expect("JSON body");
        (status, body)
    }

    async fn create_client(&self, body: Value) -> (String, String) {
        let (status, body) = Self::send(
            self.manage(reqwest::Method::POST, "/v1/m2m/clients")
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let client = &body["m2m_client"];
        (
            client["client_id"].as_str().expect("client_id").to_owned(),
            client["client_secret"]
                .as_str()
                .expect("client_secret")
                .to_owned(),
        )
    }

    async fn user_client(&self, user: &str, scopes: &[&str]) -> (String, String) {
        self.create_client(json!({"scopes": scopes, "trusted_metadata": {"user_id": user}}))
            .await
    }

    async fn token_form(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        Self::send(self.http.post(self.token_url()).form(form)).await
    }

    async fn token(&self, id: &str, secret: &str) -> String {
        let (status, body) = self
            .token_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    async fn jwks(&self) -> JwkSet {
        let resp = self
            .http
            .get(self.url(&format!("/v1/sessions/jwks/{PROJECT_ID}")))
            .send()
            .await
            .expect("jwks request");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("jwks body")
    }

    /// Verifies as the sidecar will: key by kid from the served JWKS, RS256,
    /// `typ: JWT`, Stytch's issuer and audience.
    async fn verify(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if header.typ.as_deref() != Some("JWT") || header.alg != Algorithm::RS256 {
            return Err(format!("unexpected header {header:?}"));
        }
        let kid = header.kid.ok_or("no kid")?;
        let jwks = self.jwks().await;
        let jwk = jwks.find(&kid).ok_or(format!("kid {kid} not in JWKS"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[format!("stytch.com/{PROJECT_ID}")]);
        validation.set_audience(&[PROJECT_ID]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

fn assert_api_error(status: StatusCode, body: &Value, want: StatusCode, error_type: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    assert_eq!(body["status_code"], want.as_u16(), "{body}");
    assert!(body["request_id"].as_str().is_some(), "{body}");
    assert!(body["error_message"].as_str().is_some(), "{body}");
    // Stytch's error pages have one anchor per type.
    let url = body["error_url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("https://stytch.com/docs/") && url.ends_with(&format!("#{error_type}")),
        "{body}"
    );
}

fn assert_oauth_error(status: StatusCode, body: &Value, want: StatusCode, error: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["status_code"], want.as_u16(), "{body}");
    assert!(body["request_id"].as_str().is_some(), "{body}");
    assert!(body["error_description"].as_str().is_some(), "{body}");
    assert!(body["error_uri"].as_str().is_some(), "{body}");
}

#[tokio::test]
async fn management_requires_project_credentials() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server.user_client("u1", &["read"]).await;
    let token = server.token(&id, &secret).await;

    let path = "/v1/m2m/clients/search";
    let attempts = [
        server.http.post(server.url(path)),
        server
            .http
            .post(server.url(path))
            .basic_auth(PROJECT_ID, Some("wrong-secret-0123456789")),
        server
            .http
            .post(server.url(path))
            .basic_auth("other-project", Some(PROJECT_SECRET)),
        server
            .http
            .post(server.url(path))
            .basic_auth(&id, Some(&secret)),
        server.http.post(server.url(path)).bearer_auth(&token),
        server
            .http
            .post(server.url(path))
            .header("authorization", "Basic not-base64!"),
    ];
    for attempt in attempts {
        let (status, body) = Server::send(attempt.json(&json!({}))).await;
        assert_api_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized_credentials",
        );
    }
    // Every management route is guarded, not only search.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/m2m/clients".to_owned()),
        (reqwest::Method::GET, format!("/v1/m2m/clients/{id}")),
        (reqwest::Method::PUT, format!("/v1/m2m/clients/{id}")),
        (reqwest::Method::DELETE, format!("/v1/m2m/clients/{id}")),
        (
            reqwest::Method::POST,
            format!("/v1/m2m/clients/{id}/secrets/rotate/start"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/m2m/clients/{id}/secrets/rotate"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/m2m/clients/{id}/secrets/rotate/cancel"),
        ),
    ] {
        let (status, body) = Server::send(
            server
                .http
                .request(method.clone(), server.url(&path))
                .basic_auth(&id, Some(&secret))
                .json(&json!({})),
        )
        .await;
        assert_api_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized_credentials",
        );
    }
    // The client survived all of that.
    let (status, _) =
        Server::send(server.manage(reqwest::Method::GET, &format!("/v1/m2m/clients/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn client_create_get_update_delete() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;

    let (status, created) = Server::send(
        server
            .manage(reqwest::Method::POST, "/v1/m2m/clients")
            .json(&json!({
                "client_name": "orders bot",
                "client_description": "reads orders",
                "scopes": ["read:orders", "write:orders", "read:orders"],
                "trusted_metadata": {"user_id": "user-1", "plan": "pro"},
            })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["status_code"], 200);
    assert!(created["request_id"].as_str().is_some());
    let client = &created["m2m_client"];
    let id = client["client_id"].as_str().unwrap().to_owned();
    let secret = client["client_secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("m2m-client-test-"), "{id}");
    assert!(secret.starts_with("secret-test-"));
    assert!(secret.len() >= "secret-test-".len() + 43, "256-bit secret");
    assert_eq!(client["client_name"], "orders bot");
    assert_eq!(client["client_description"], "reads orders");
    assert_eq!(client["status"], "active");
    assert_eq!(client["scopes"], json!(["read:orders", "write:orders"]));
    assert_eq!(
        client["trusted_metadata"],
        json!({"user_id": "user-1", "plan": "pro"})
    );
    assert_eq!(
        client["client_secret_last_four"],
        secret[secret.len() - 4..]
    );
    assert_eq!(client["next_client_secret_last_four"], Value::Null);

    let path = format!("/v1/m2m/clients/{id}");
    let (status, got) = Server::send(server.manage(reqwest::Method::GET, &path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["m2m_client"]["client_id"], id.as_str());
    assert!(
        got["m2m_client"].get("client_secret").is_none(),
        "the secret is shown only at creation"
    );

    // A chosen client id works too.
    let (custom, _) = server
        .create_client(json!({"client_id": "my-client.1", "client_name": "custom"}))
        .await;
    assert_eq!(custom, "my-client.1");

    let (status, updated) = Server::send(server.manage(reqwest::Method::PUT, &path).json(&json!({
        "client_name": "orders bot v2",
        "client_description": "",
        "scopes": ["read:orders"],
        "trusted_metadata": {"user_id": "user-2"},
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let c = &updated["m2m_client"];
    assert_eq!(c["client_name"], "orders bot v2");
    assert_eq!(c["client_description"], "");
    assert_eq!(c["scopes"], json!(["read:orders"]));
    assert_eq!(c["trusted_metadata"], json!({"user_id": "user-2"}));
    assert_eq!(c["status"], "active");

    // Stytch's SDKs repeat the id in the body, and newer ones may send
    // fields this issuer does not know: both are fine.
    let (status, body) = Server::send(server.manage(reqwest::Method::PUT, &path).json(&json!({
        "client_id": id, "client_description": "again", "field_from_the_future": {"x": 1},
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["m2m_client"]["client_description"], "again");

    // Deactivate and activate through status.
    for status_value in ["inactive", "active"] {
        let (status, body) = Server::send(
            server
                .manage(reqwest::Method::PUT, &path)
                .json(&json!({"status": status_value})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["m2m_client"]["status"], status_value);
        assert_eq!(body["m2m_client"]["client_name"], "orders bot v2");
    }

    // Bad input.
    let bad = [
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"trusted_metadata": (0..21).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            "metadata_too_many_keys",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"client_id": "my-client.1"}),
            "duplicate_m2m_client_id",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"scopes": ["has space"]}),
            "invalid_m2m_client_scope",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"client_name": 5}),
            "bad_request",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"scopes": "read:orders", "some_new_field": true}),
            "bad_request",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"client_secret": "password1"}),
            "insecure_m2m_client_secret",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"client_secret": 12345678}),
            "bad_request",
        ),
        (
            reqwest::Method::PUT,
            path.clone(),
            json!({"client_id": "my-client.1", "client_name": "hijack"}),
            "m2m_client_invalid_client_id",
        ),
        (
            reqwest::Method::POST,
            "/v1/m2m/clients".to_owned(),
            json!({"trusted_metadata": {"user_id": "x".repeat(5000)}}),
            "metadata_too_large",
        ),
        (
            reqwest::Method::PUT,
            path.clone(),
            json!({"status": "paused"}),
            "m2m_client_invalid_status",
        ),
    ];
    for (method, p, body, error_type) in bad {
        let (status, resp) = Server::send(server.manage(method, &p).json(&body)).await;
        assert_api_error(status, &resp, StatusCode::BAD_REQUEST, error_type);
    }

    let (status, deleted) = Server::send(server.manage(reqwest::Method::DELETE, &path)).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["client_id"], id.as_str());
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, body) = Server::send(server.manage(method, &path)).await;
        assert_api_error(status, &body, StatusCode::NOT_FOUND, "m2m_client_not_found");
    }
    let (status, body) = Server::send(
        server
            .manage(reqwest::Method::PUT, &path)
            .json(&json!({"client_name": "x"})),
    )
    .await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "m2m_client_not_found");
    // The deleted client's secret no longer gets tokens.
    let (status, body) = server
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .await;
    assert_oauth_error(status, &body, StatusCode::BAD_REQUEST, "invalid_client");
    server.shutdown().await;
}

async fn search(server: &Server, body: Value) -> (StatusCode, Value) {
    Server::send(
        server
            .manage(reqwest::Method::POST, "/v1/m2m/clients/search")
            .json(&body),
    )
    .await
}

fn ids(body: &Value) -> Vec<String> {
    body["m2m_clients"]
        .as_array()
        .expect("m2m_clients")
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn client_search_filters_and_pagination() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let mut all = Vec::new();
    for i in 0..7 {
        let scopes = if i < 3 {
            json!(["read"])
        } else {
            json!(["write", "admin"])
        };
        let (id, _) = server
            .create_client(
                json!({"client_id": format!("c{i}"), "client_name": format!("name-{i}"),
                                  "scopes": scopes}),
            )
            .await;
        all.push(id);
    }
    for id in ["c1", "c4"] {
        let (status, _) = Server::send(
            server
                .manage(reqwest::Method::PUT, &format!("/v1/m2m/clients/{id}"))
                .json(&json!({"status": "inactive"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    // No body: everything, in creation order.
    let (status, body) =
        Server::send(server.manage(reqwest::Method::POST, "/v1/m2m/clients/search")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), all);
    assert_eq!(body["results_metadata"]["total"], 7);
    assert_eq!(body["results_metadata"]["next_cursor"], Value::Null);

    // limit + cursor walk.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let (status, body) = search(&server, json!({"limit": 3, "cursor": cursor})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results_metadata"]["total"], 7);
        seen.extend(ids(&body));
        pages += 1;
        cursor = body["results_metadata"]["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(pages < 5, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);

    let cases = [
        (
            json!({"operator": "AND", "operands": [
                {"filter_name": "status", "filter_value": ["active"]},
                {"filter_name": "scopes", "filter_value": ["write"]}]}),
            vec!["c3", "c5", "c6"],
        ),
        (
            json!({"operator": "OR", "operands": [
                {"filter_name": "client_id", "filter_value": ["c0", "c2"]},
                {"filter_name": "client_name", "filter_value": ["name-6"]}]}),
            vec!["c0", "c2", "c6"],
        ),
        (
            json!({"operator": "AND", "operands": [
                {"filter_name": "status", "filter_value": ["inactive"]}]}),
            vec!["c1", "c4"],
        ),
        (
            json!({"operator": "AND", "operands": [
                {"filter_name": "scopes", "filter_value": ["read", "nothing"]}]}),
            vec!["c0", "c1", "c2"],
        ),
        (
            json!({"operator": "AND", "operands": [
                {"filter_name": "client_id", "filter_value": ["c0"]},
                {"filter_name": "client_name", "filter_value": ["name-1"]}]}),
            vec![],
        ),
    ];
    for (query, want) in cases {
        let (status, body) = search(&server, json!({"query": query})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(ids(&body), want, "{query}");
        assert_eq!(body["results_metadata"]["total"], want.len());
    }

    // Filters and pagination together.
    let query = json!({"operator": "AND", "operands": [
        {"filter_name": "scopes", "filter_value": ["admin"]}]});
    let (_, first) = search(&server, json!({"query": query, "limit": 2})).await;
    assert_eq!(ids(&first), ["c3", "c4"]);
    assert_eq!(first["results_metadata"]["total"], 4);
    let cursor = first["results_metadata"]["next_cursor"].clone();
    let (_, second) = search(
        &server,
        json!({"query": query, "limit": 2, "cursor": cursor}),
    )
    .await;
    assert_eq!(ids(&second), ["c5", "c6"]);
    assert_eq!(second["results_metadata"]["next_cursor"], Value::Null);

    for (body, error_type) in [
        (json!({"limit": 0}), "invalid_limit"),
        (json!({"limit": 1001}), "invalid_limit"),
        (json!({"cursor": "bogus"}), "invalid_cursor"),
        (
            json!({"query": {"operator": "XOR", "operands": []}}),
            "invalid_search_query",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": "color", "filter_value": ["red"]}]}}),
            "m2m_search_filter_name_not_recognized",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": "status", "filter_value": []}]}}),
            "m2m_search_missing_filter_value",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": "status"}]}}),
            "m2m_search_missing_filter_value",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_value": ["active"]}]}}),
            "m2m_search_missing_filter_name",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": 7, "filter_value": ["active"]}]}}),
            "m2m_search_filter_name_must_be_string",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": "scopes", "filter_value": "read"}]}}),
            "m2m_search_expected_array_of_strings",
        ),
        (
            json!({"query": {"operator": "AND", "operands": [
                {"filter_name": "scopes", "filter_value": ["read", 5]}]}}),
            "m2m_search_expected_array_of_strings",
        ),
    ] {
        let (status, resp) = search(&server, body).await;
        assert_api_error(status, &resp, StatusCode::BAD_REQUEST, error_type);
    }
    let (status, body) = search(&server, json!({"limit": 1000})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_accepts_form_json_body_and_basic_credentials() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server.user_client("user-7", &["read:orders"]).await;

    // Form body.
    let (status, form) = server
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{form}");
    assert_eq!(form["token_type"], "bearer");
    assert_eq!(form["expires_in"], 1800);
    assert_eq!(form["status_code"], 200);
    assert!(form["request_id"].as_str().is_some());

    // JSON body.
    let (status, json_body) = Server::send(server.http.post(server.token_url()).json(&json!({
        "grant_type": "client_credentials",
        "client_id": id,
        "client_secret": secret,
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{json_body}");

    // Basic, with the id form-urlencoded as RFC 6749 §2.3.1 says ('-' as %2D
    // must decode back).
    let encoded_id = id.replace('-', "%2D");
    let (status, basic) = Server::send(
        server
            .http
            .post(server.token_url())
            .basic_auth(&encoded_id, Some(&secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{basic}");

    // Basic plus the same id in the body is fine; a different one is not.
    let (status, _) = Server::send(
        server
            .http
            .post(server.token_url())
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("client_id", &id)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (other, other_secret) = server.user_client("user-8", &[]).await;
    let (status, body) = Server::send(
        server
            .http
            .post(server.token_url())
            .basic_auth(&id, Some(&secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &other),
                ("client_secret", &other_secret),
            ]),
    )
    .await;
    assert_oauth_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    for token in [&form, &json_body, &basic] {
        let claims = server
            .verify(token["access_token"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(claims["sub"], id.as_str());
        assert_eq!(claims["user_id"], "user-7");
    }
    server.shutdown().await;
}

/// What Stytch's Python SDK sends: the project's Basic credentials and the
/// client's in a JSON body.
#[tokio::test]
async fn token_endpoint_takes_project_basic_beside_client_credentials_in_the_body() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server.user_client("user-9", &["read:orders"]).await;
    let body =
        json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
    let with_basic = |user: &str, password: &str, body: &Value| {
        server
            .http
            .post(server.token_url())
            .basic_auth(user, Some(password))
            .json(body)
    };

    let (status, ok) = Server::send(with_basic(PROJECT_ID, PROJECT_SECRET, &body)).await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    let claims = server
        .verify(ok["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        claims["sub"],
        id.as_str(),
        "the body's client is authenticated"
    );
    // The same as a form body.
    let (status, form) = Server::send(
        server
            .http
            .post(server.token_url())
            .basic_auth(PROJECT_ID, Some(PROJECT_SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{form}");

    type Case<'a> = (&'a str, &'a str, Value, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // The project's secret must be right, even with a right client.
        (
            PROJECT_ID,
            "wrong-project-secret-0123456789",
            body.clone(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        // Another project's id is neither this project nor the client.
        (
            "project-test-other",
            PROJECT_SECRET,
            body.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // The project's credentials do not stand in for a client's secret.
        (
            PROJECT_ID,
            PROJECT_SECRET,
            json!({"grant_type": "client_credentials", "client_id": id}),
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
        // The body's client is still authenticated.
        (
            PROJECT_ID,
            PROJECT_SECRET,
            json!({"grant_type": "client_credentials", "client_id": id,
                   "client_secret": "secret-test-wrong"}),
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
    ];
    for (user, password, body, want_status, want_error) in cases {
        let (status, resp) = Server::send(with_basic(user, password, &body)).await;
        assert_oauth_error(status, &resp, want_status, want_error);
    }
    server.shutdown().await;
}

/// The project secret in the Basic header is taken as sent, as the management
/// API takes it: a base64-style secret with `+`, `/`, `=` or a `%` is not
/// form-decoded into another one.
#[tokio::test]
async fn project_basic_at_the_token_endpoint_is_not_form_decoded() {
    let dir = TempDir::new("issuer-api");
    let project_secret = "Zm9v+YmFy/YmF6%zz+cXV4==0123456789";
    let mut config = config_in(&dir);
    config.project_secret = Some(project_secret.into());
    let server = Server::start(config).await;
    let (status, created) = Server::send(
        server
            .http
            .post(server.url("/v1/m2m/clients"))
            .basic_auth(PROJECT_ID, Some(project_secret))
            .json(&json!({"trusted_metadata": {"user_id": "u"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["m2m_client"]["client_id"].as_str().unwrap();
    let secret = created["m2m_client"]["client_secret"].as_str().unwrap();
    let body =
        json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
    for (password, want) in [
        (project_secret, StatusCode::OK),
        (
            &project_secret.replace('+', " ")[..],
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let (status, resp) = Server::send(
            server
                .http
                .post(server.token_url())
                .basic_auth(PROJECT_ID, Some(password))
                .json(&body),
        )
        .await;
        assert_eq!(status, want, "{resp}");
    }
    server.shutdown().await;
}

/// A JSON token body may not repeat a member (serde would keep the last one
/// silently); unknown members are ignored.
#[tokio::test]
async fn token_endpoint_json_body_duplicates_and_unknown_members() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server.user_client("user-10", &["read"]).await;
    let post_raw = |raw: String| {
        server
            .http
            .post(server.token_url())
            .header("content-type", "application/json")
            .body(raw)
    };
    let base = format!(
        r#""grant_type":"client_credentials","client_id":"{id}","client_secret":"{secret}""#
    );
    for dup in [
        format!(r#"{{{base},"client_id":"{id}"}}"#),
        format!(r#"{{{base},"client_secret":"secret-test-other"}}"#),
        format!(r#"{{{base},"scope":"read","scope":"read"}}"#),
        format!(r#"{{{base},"extra":1,"extra":2}}"#),
    ] {
        let (status, body) = Server::send(post_raw(dup.clone())).await;
        assert_oauth_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            !body.to_string().contains(&secret),
            "the error echoes the secret"
        );
    }
    let (status, body) = Server::send(post_raw(format!(
        r#"{{{base},"audience":"x","extra":{{"a":[1,2]}},"n":null}}"#
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.shutdown().await;
}

/// `client_secret` on create imports a secret: it gets tokens, is shown
/// back once, and never again.
#[tokio::test]
async fn create_imports_a_client_secret() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let imported = "auth0-Style_Secret-9fK2mQ7xVb3LpZ8w";
    let (status, created) = Server::send(
        server
            .manage(reqwest::Method::POST, "/v1/m2m/clients")
            .json(&json!({"client_id": "migrated", "client_secret": imported,
                          "trusted_metadata": {"user_id": "user-11"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["m2m_client"]["client_secret"], imported);
    assert_eq!(created["m2m_client"]["client_secret_last_four"], "pZ8w");
    let token = server.token("migrated", imported).await;
    let claims = server.verify(&token).await.unwrap();
    assert_eq!(claims["user_id"], "user-11");
    let (_, got) =
        Server::send(server.manage(reqwest::Method::GET, "/v1/m2m/clients/migrated")).await;
    assert!(!got.to_string().contains(imported), "{got}");
    // Weak, short, long, spaced: refused, and the error does not echo it.
    let long = "aZ7$".repeat(65);
    for (weak, error_type) in [
        ("Ab1!xyz", "m2m_client_invalid_client_secret"),
        ("aaaaaaaaaaaaaaaaaaaaaaaa", "insecure_m2m_client_secret"),
        ("abcdefghijklmnopqrstuvwx", "insecure_m2m_client_secret"),
        ("Xk9#mQ2v R7Lp4!z", "m2m_client_invalid_client_secret"),
        (long.as_str(), "m2m_client_invalid_client_secret"),
    ] {
        let (status, body) = Server::send(
            server
                .manage(reqwest::Method::POST, "/v1/m2m/clients")
                .json(&json!({"client_secret": weak})),
        )
        .await;
        assert_api_error(status, &body, StatusCode::BAD_REQUEST, error_type);
        assert!(!body.to_string().contains(weak), "{body}");
    }
    server.shutdown().await;
}

/// What axum itself would refuse in plain text (a body over the limit, a path
/// that does not decode) comes back in each endpoint's JSON shape, so the
/// SDKs see a status and a type; client names need not be unique (only
/// client ids, as on Stytch); a wrong client secret is 400 when the client
/// sent it in the body (as Stytch answers) and 401 with `WWW-Authenticate`
/// when it authenticated with the Authorization header (RFC 6749 §5.2).
#[tokio::test]
async fn refusals_keep_the_json_shape_and_the_status_follows_the_credentials() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let huge = json!({"client_name": "x".repeat(70 * 1024)});
    let (status, body) = Server::send(
        server
            .manage(reqwest::Method::POST, "/v1/m2m/clients")
            .json(&huge),
    )
    .await;
    assert_api_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    );
    let (status, body) = Server::send(server.http.post(server.token_url()).form(&[
        ("grant_type", "client_credentials"),
        ("scope", &"a".repeat(70 * 1024)),
    ]))
    .await;
    assert_oauth_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    let (status, body) =
        Server::send(server.manage(reqwest::Method::GET, "/v1/m2m/clients/%FF%FE")).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    let (a, _) = server
        .create_client(json!({"client_name": "API key"}))
        .await;
    let (b, _) = server
        .create_client(json!({"client_name": "API key"}))
        .await;
    assert_ne!(a, b);

    let (id, _) = server.user_client("user-1", &["read"]).await;
    let wrong = [
        ("grant_type", "client_credentials"),
        ("client_id", id.as_str()),
        ("client_secret", "secret-test-wrong"),
    ];
    let in_body = server
        .http
        .post(server.token_url())
        .form(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(in_body.status(), StatusCode::BAD_REQUEST);
    assert!(in_body.headers().get("www-authenticate").is_none());
    let in_header = server
        .http
        .post(server.token_url())
        .basic_auth(&id, Some("secret-test-wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(in_header.status(), StatusCode::UNAUTHORIZED);
    assert!(in_header.headers().get("www-authenticate").is_some());
    let body: Value = in_header.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_errors() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server.user_client("user-1", &["read"]).await;
    let grant = ("grant_type", "client_credentials");

    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("client_id", &id), ("client_secret", &secret)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![
                grant,
                ("client_id", &id),
                ("client_secret", "secret-test-wrong"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
        (
            vec![
                grant,
                ("client_id", "m2m-client-test-nobody"),
                ("client_secret", &secret),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
        (
            vec![grant, ("client_id", &id)],
            StatusCode::BAD_REQUEST,
            "invalid_client",
        ),
        (
            vec![
                grant,
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", "write"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            vec![
                grant,
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", "read\twrite"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            vec![grant, grant, ("client_id", &id), ("client_secret", &secret)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (form, want_status, want_error) in cases {
        let (status, body) = server.token_form(&form).await;
        assert_oauth_error(status, &body, want_status, want_error);
    }

    // A Bearer token is not client authentication.
    let token = server.token(&id, &secret).await;
    let (status, body) = Server::send(
        server
            .http
            .post(server.token_url())
            .bearer_auth(&token)
            .form(&[grant]),
    )
    .await;
    assert_oauth_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");

    // Non-string JSON fields are refused.
    let (status, body) = Server::send(server.http.post(server.token_url()).json(&json!({
        "grant_type": "client_credentials", "client_id": id, "client_secret": 5,
    })))
    .await;
    assert_oauth_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    // Another project's token URL.
    let (status, body) = Server::send(
        server
            .http
            .post(server.url("/v1/public/project-other/oauth2/token"))
            .form(&[grant, ("client_id", &id), ("client_secret", &secret)]),
    )
    .await;
    assert_oauth_error(status, &body, StatusCode::NOT_FOUND, "project_not_found");

    // Inactive clients get no token, with the right secret; active again, they do.
    let path = format!("/v1/m2m/clients/{id}");
    let (status, _) = Server::send(
        server
            .manage(reqwest::Method::PUT, &path)
            .json(&json!({"status": "inactive"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .token_form(&[grant, ("client_id", &id), ("client_secret", &secret)])
        .await;
    assert_oauth_error(status, &body, StatusCode::BAD_REQUEST, "invalid_client");
    let (status, _) = Server::send(
        server
            .manage(reqwest::Method::PUT, &path)
            .json(&json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.token(&id, &secret).await;
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_carry_stytch_claims_and_narrowed_scopes() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, secret) = server
        .user_client("user-42", &["read:orders", "write:orders", "admin"])
        .await;

    let token = server.token(&id, &secret).await;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.alg, Algorithm::RS256);
    assert!(header.kid.as_deref().unwrap().starts_with("jwk-test-"));
    let claims = server.verify(&token).await.unwrap();
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["iss"], format!("stytch.com/{PROJECT_ID}"));
    assert_eq!(claims["aud"], json!([PROJECT_ID]));
    assert_eq!(claims["scope"], "read:orders write:orders admin");
    assert_eq!(claims["user_id"], "user-42");
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 1800));

    // Narrowing to a subset, in the requested order.
    let (status, body) = server
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("scope", "admin read:orders"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = server
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["scope"], "admin read:orders");

    // A token is not valid for another audience.
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwks = server.jwks().await;
    let key = DecodingKey::from_jwk(jwks.find(&header.kid.unwrap()).unwrap()).unwrap();
    let mut other = Validation::new(Algorithm::RS256);
    other.set_audience(&["project-other"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &other).is_err());

    // A client without user_id gets no user_id claim rather than a null.
    let (bare, bare_secret) = server.create_client(json!({"scopes": []})).await;
    let claims = server
        .verify(&server.token(&bare, &bare_secret).await)
        .await
        .unwrap();
    assert!(claims.get("user_id").is_none(), "{claims}");
    assert_eq!(claims["scope"], "");
    server.shutdown().await;
}

#[tokio::test]
async fn jwks_has_stytch_shape() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (status, body) = Server::send(
        server
            .http
            .get(server.url(&format!("/v1/sessions/jwks/{PROJECT_ID}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status_code"], 200);
    assert!(body["request_id"].as_str().is_some());
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["e"], "AQAB");
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key["n"].as_str().unwrap())
        .unwrap();
    assert_eq!(n.len() * 8, 2048);

    let (status, body) = Server::send(
        server
            .http
            .get(server.url("/v1/sessions/jwks/project-other")),
    )
    .await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "project_not_found");
    server.shutdown().await;
}

#[tokio::test]
async fn secret_rotation_start_complete_cancel() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, old) = server.user_client("user-1", &[]).await;
    let base = format!("/v1/m2m/clients/{id}/secrets/rotate");
    let token_status = |id: String, secret: String| {
        let server = &server;
        async move {
            server
                .token_form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &id),
                    ("client_secret", &secret),
                ])
                .await
                .0
        }
    };

    // Nothing to complete or cancel yet.
    for suffix in ["", "/cancel"] {
        let (status, body) =
            Server::send(server.manage(reqwest::Method::POST, &format!("{base}{suffix}"))).await;
        assert_api_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "m2m_client_not_rotating_secret",
        );
    }

    let (status, started) =
        Server::send(server.manage(reqwest::Method::POST, &format!("{base}/start"))).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let new = started["m2m_client"]["next_client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        started["m2m_client"]["next_client_secret_last_four"],
        new[new.len() - 4..]
    );
    assert_ne!(new, old);
    assert_eq!(token_status(id.clone(), old.clone()).await, StatusCode::OK);
    assert_eq!(token_status(id.clone(), new.clone()).await, StatusCode::OK);
    let (status, body) =
        Server::send(server.manage(reqwest::Method::POST, &format!("{base}/start"))).await;
    assert_api_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "m2m_client_already_rotating_secret",
    );

    let (status, done) = Server::send(server.manage(reqwest::Method::POST, &base)).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done["m2m_client"]["client_secret_last_four"],
        new[new.len() - 4..]
    );
    assert_eq!(
        done["m2m_client"]["next_client_secret_last_four"],
        Value::Null
    );
    assert_eq!(
        token_status(id.clone(), old.clone()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(token_status(id.clone(), new.clone()).await, StatusCode::OK);

    // Start then cancel: the would-be secret never works afterwards.
    let (_, started) =
        Server::send(server.manage(reqwest::Method::POST, &format!("{base}/start"))).await;
    let abandoned = started["m2m_client"]["next_client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token_status(id.clone(), abandoned.clone()).await,
        StatusCode::OK
    );
    let (status, cancelled) =
        Server::send(server.manage(reqwest::Method::POST, &format!("{base}/cancel"))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(
        cancelled["m2m_client"]["next_client_secret_last_four"],
        Value::Null
    );
    assert_eq!(
        token_status(id.clone(), abandoned).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(token_status(id.clone(), new).await, StatusCode::OK);

    let (status, body) = Server::send(server.manage(
        reqwest::Method::POST,
        "/v1/m2m/clients/nobody/secrets/rotate/start",
    ))
    .await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "m2m_client_not_found");
    server.shutdown().await;
}

#[tokio::test]
async fn key_rotation_retirement_and_restart() {
    let dir = TempDir::new("issuer-api");
    let config = config_in(&dir);
    let server = Server::start(config.clone()).await;
    let (id, secret) = server.user_client("user-1", &["read"]).await;

    let before = server.token(&id, &secret).await;
    let kid_before = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    // Rotate through a separate connection, as the CLI would from another
    // process; the running server must notice without a restart.
    let rotation = tokio::task::spawn_blocking({
        let config = config.clone();
        move || m2m_authz::issuer::rotate_signing_key(&config)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rotation.previous_kid.as_deref(), Some(kid_before.as_str()));

    let after = server.token(&id, &secret).await;
    let kid_after = jsonwebtoken::decode_header(&after).unwrap().kid.unwrap();
    assert_eq!(kid_after, rotation.new_kid);
    assert_ne!(kid_after, kid_before);
    assert_eq!(server.jwks().await.keys.len(), 2);
    assert_eq!(server.verify(&before).await.unwrap()["sub"], id.as_str());
    assert_eq!(server.verify(&after).await.unwrap()["sub"], id.as_str());

    // Restart on the same database: keys persist, old tokens still verify,
    // and the rotated key keeps signing.
    server.shutdown().await;
    let server = Server::start(config.clone()).await;
    assert_eq!(server.jwks().await.keys.len(), 2);
    server.verify(&before).await.unwrap();
    server.verify(&after).await.unwrap();
    let again = server.token(&id, &secret).await;
    assert_eq!(
        jsonwebtoken::decode_header(&again).unwrap().kid.unwrap(),
        kid_after
    );

    // The signing key cannot be retired; the old one can, and its tokens
    // then stop verifying.
    let retire = |kid: String| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || m2m_authz::issuer::retire_signing_key(&config, &kid))
    };
    assert!(retire(kid_after.clone()).await.unwrap().is_err());
    retire(kid_before.clone()).await.unwrap().unwrap();
    let jwks = server.jwks().await;
    assert_eq!(jwks.keys.len(), 1);
    assert!(jwks.find(&kid_before).is_none());
    assert!(server.verify(&before).await.is_err());
    server.verify(&after).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn configured_claims_template_is_applied() {
    let dir = TempDir::new("issuer-api");
    let mut config = config_in(&dir);
    config.claims_template = Some(
        r#"{"user_id": {{ client.trusted_metadata.user_id }},
            "org": {"id": {{ client.trusted_metadata.org.id }}, "tier": "gold"},
            "client": {{ client.client_id }}}"#
            .into(),
    );
    let server = Server::start(config).await;
    let (id, secret) = server
        .create_client(json!({"trusted_metadata": {"user_id": 9, "org": {"id": "org-1"}}}))
        .await;
    let claims = server
        .verify(&server.token(&id, &secret).await)
        .await
        .unwrap();
    assert_eq!(claims["user_id"], 9);
    assert_eq!(claims["org"], json!({"id": "org-1", "tier": "gold"}));
    assert_eq!(claims["client"], id.as_str());
    server.shutdown().await;

    // A template using a reserved claim is refused when the issuer opens.
    let mut bad = config_in(&dir);
    bad.claims_template = Some(r#"{"sub": {{ client.client_id }}}"#.into());
    let err = Issuer::open_async(bad).await.unwrap_err();
    assert!(err.to_string().contains("claims_template"), "{err}");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (status, body) = Server::send(server.http.get(server.url("/v1/nothing"))).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "route_not_found");
    let (status, body) = Server::send(server.http.get(server.token_url())).await;
    assert_api_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    server.shutdown().await;
}

const MGMT_KEY_ID: &str = "workspace-key-api";
const MGMT_KEY_SECRET: &str = "api-test-management-secret-0123";
const TEMPLATE_PATH: &str = "/pwa/v3/projects/project-test-api/environments/test/jwt_templates/M2M";

/// The management routes take only the management key; the template they set survives a
/// restart whose config names another template; updates refuse scopes the SDKs cannot parse.
#[tokio::test]
async fn m2m_template_management_api_and_persistence() {
    let dir = TempDir::new("issuer-api-template");

    // No management key configured: closed to everyone, the project included.
    let server = Server::start(config_in(&dir)).await;
    for (user, pass) in [(PROJECT_ID, PROJECT_SECRET), (MGMT_KEY_ID, MGMT_KEY_SECRET)] {
        let (status, body) = Server::send(
            server
                .http
                .get(server.url(TEMPLATE_PATH))
                .basic_auth(user, Some(pass)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error_type"], "unauthorized_credentials");
    }
    server.shutdown().await;

    let managed = || {
        let mut config = config_in(&dir);
        config.management.key_id = MGMT_KEY_ID.into();
        config.management.key_secret = Some(MGMT_KEY_SECRET.into());
        config
    };
    let server = Server::start(managed()).await;
    let mgmt = |method: reqwest::Method| {
        server
            .http
            .request(method, server.url(TEMPLATE_PATH))
            .basic_auth(MGMT_KEY_ID, Some(MGMT_KEY_SECRET))
    };
    // Wrong secret, no credentials, a Bearer token: 401 with a challenge.
    for req in [
        server
            .http
            .get(server.url(TEMPLATE_PATH))
            .basic_auth(MGMT_KEY_ID, Some("wrong-secret-0123456789")),
        server.http.get(server.url(TEMPLATE_PATH)),
        server
            .http
            .get(server.url(TEMPLATE_PATH))
            .bearer_auth("x.y.z"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error_type"], "unauthorized_credentials");
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let (status, body) = Server::send(mgmt(reqwest::Method::GET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["jwt_template"],
        json!({"template_content": m2m_authz::issuer::DEFAULT_CLAIMS_TEMPLATE,
               "custom_audience": "", "jwt_template_type": "M2M"})
    );
    // Bad bodies: each a Stytch-shaped 400.
    for (body, error_type) in [
        (json!({}), "missing_template_content"),
        (json!({"template_content": 5}), "bad_request"),
        (
            json!({"template_content": "{}", "custom_audience": ["a"]}),
            "bad_request",
        ),
        (
            json!({"template_content": "{\"exp\": 1}"}),
            "invalid_template_content",
        ),
        (
            json!({"template_content": "{}", "custom_audience": "a\nb"}),
            "invalid_custom_audience",
        ),
    ] {
        let (status, got) = Server::send(mgmt(reqwest::Method::PUT).json(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {got}");
        assert_eq!(got["error_type"], error_type, "{body}: {got}");
        assert_eq!(got["status_code"], 400);
    }
    let resp = mgmt(reqwest::Method::PUT)
        .header("content-type", "application/json")
        .body("{\"template_content\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = mgmt(reqwest::Method::POST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A good one (with a member a newer SDK might add), then a token that uses it.
    let template = r#"{"user_id": {{ client.trusted_metadata.stytch_user_id }}}"#;
    let (status, body) = Server::send(mgmt(reqwest::Method::PUT).json(&json!({
        "template_content": template, "custom_audience": "orders-api", "jwt_template_type": "M2M"
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jwt_template"]["custom_audience"], "orders-api");
    let (id, secret) = server
        .create_client(json!({"scopes": ["read:x"], "trusted_metadata": {"stytch_user_id": "u-5"}}))
        .await;
    let (status, token) = Server::send(server.http.post(server.token_url()).json(&json!({
        "grant_type": "client_credentials", "client_id": id, "client_secret": secret
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let payload = token["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["user_id"], "u-5");
    assert_eq!(claims["aud"], json!([PROJECT_ID, "orders-api"]));

    // Scopes the SDKs cannot parse: refused on update as on create.
    for scopes in [json!(["a:b:c"]), json!(["two words"]), json!([""])] {
        let (status, body) = Server::send(
            server
                .manage(reqwest::Method::PUT, &format!("/v1/m2m/clients/{id}"))
                .json(&json!({ "scopes": scopes })),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{scopes}: {body}");
        assert_eq!(body["error_type"], "invalid_m2m_client_scope", "{body}");
    }
    server.shutdown().await;

    // A restart whose config names another template keeps the stored one.
    let mut config = managed();
    config.claims_template = Some(r#"{"other": {{ client.client_id }}}"#.into());
    let server = Server::start(config).await;
    let (status, body) = Server::send(
        server
            .http
            .get(server.url(TEMPLATE_PATH))
            .basic_auth(MGMT_KEY_ID, Some(MGMT_KEY_SECRET)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jwt_template"]["template_content"], template);
    assert_eq!(body["jwt_template"]["custom_audience"], "orders-api");
    server.shutdown().await;
}

/// Stytch's Python SDK (urllib3) writes a request's headers and its body in two sends, and
/// reuses the connection. Whether or not the route reads the body (rotation ignores it, a wrong
/// project secret or an unknown path is refused before it), the connection must stay open for
/// the next request: the issuer once closed it when its answer went out before the body
/// arrived, and the SDK's next call failed with `RemoteDisconnected`.
#[tokio::test]
async fn a_body_sent_after_its_headers_leaves_the_connection_reusable() {
    use tokio::io::AsyncWriteExt;

    let dir = TempDir::new("issuer-api");
    let server = Server::start(config_in(&dir)).await;
    let (id, _) = server.user_client("u1", &["read"]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let basic = |secret: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{PROJECT_ID}:{secret}"))
    };
    let body = format!("{{\"client_id\":\"{id}\"}}");
    let requests = [
        (
            format!("/v1/m2m/clients/{id}/secrets/rotate/start"),
            PROJECT_SECRET,
            200,
        ),
        (
            format!("/v1/m2m/clients/{id}/secrets/rotate/cancel"),
            "wrong-project-secret",
            401,
        ),
        ("/v1/nowhere".to_owned(), PROJECT_SECRET, 404),
        (
            format!("/v1/m2m/clients/{id}/secrets/rotate/cancel"),
            PROJECT_SECRET,
            200,
        ),
    ];
    for (path, secret, want) in requests {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Basic {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            basic(secret),
            body.len()
        );
        if let Err(e) = conn.write_all(head.as_bytes()).await {
            panic!("POST {path}: the issuer closed the connection after the last answer: {e}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = conn.write_all(body.as_bytes()).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            common::raw_http::read_response(&mut conn),
        )
        .await
        .expect("no answer within 5 s");
        let Some((status, _, body)) = answer else {
            panic!("POST {path}: the issuer closed the connection (body sent: {sent:?})");
        };
        assert_eq!(status, want, "POST {path}: {body}");
    }
    server.shutdown().await;
}
