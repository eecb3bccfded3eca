//! Runs a real OAuth 2.0 authorization server (`oidc-provider` from npm, via
//! tests/interop/oidc-provider.mjs) that issues JWT access tokens for the
//! client_credentials grant.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{self, ChildGuard, Lines, TempDir};

/// The script, relative to the repository root.
pub const SCRIPT: &str = "tests/interop/oidc-provider.mjs";

/// How long the provider may take to print `READY <port>`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Configuration of the provider; `Default` gives the values below.
#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// Client authenticating with client_secret_post ("m2m-test-client").
    /// `<client_id>-basic` uses client_secret_basic, `<client_id>-nouser` is
    /// a post client whose tokens carry no `user_id`.
    pub client_id: String,
    /// Secret of all three clients.
    pub client_secret: String,
    /// The `user_id` claim of the first two clients' tokens ("user-interop-1").
    pub user_id: String,
    /// `aud` of the tokens, the default resource indicator ("urn:m2m-authz:test-api").
    pub audience: String,
    /// Space-separated scopes the clients may request ("read:orders write:orders").
    pub scopes: String,
    /// "RS256" (default) or "ES256".
    pub alg: String,
    /// Access token lifetime (`exp - iat`), default 600.
    pub ttl_seconds: u64,
    /// "jwt" (default) or "opaque": opaque tokens are checked by RFC 7662 introspection, by
    /// the `<client_id>-rs` client (client_secret_basic, same secret).
    pub token_format: String,
}

impl Default for OidcOptions {
    fn default() -> Self {
        Self {
            client_id: "m2m-test-client".to_owned(),
            client_secret: "m2m-test-secret-0123456789abcdef".to_owned(),
            user_id: "user-interop-1".to_owned(),
            audience: "urn:m2m-authz:test-api".to_owned(),
            scopes: "read:orders write:orders".to_owned(),
            alg: "RS256".to_owned(),
            ttl_seconds: 600,
            token_format: "jwt".to_owned(),
        }
    }
}

/// A running provider; stopped on drop.
#[derive(Debug)]
pub struct OidcProvider {
    child: ChildGuard,
    dir: TempDir,
    options: OidcOptions,
    port: u16,
    issuer: String,
    token_url: String,
    jwks_url: String,
}

impl OidcProvider {
    /// Starts the provider on a random 127.0.0.1 port and waits until its
    /// discovery document is served.
    pub async fn start(options: OidcOptions) -> Self {
        let tools = super::tools::tools_dir();
        super::tools::node_modules(); // fail early, with the right message
        let script = super::tools::repo_file(SCRIPT);
        let dir = TempDir::new("oidc");
        let stderr_path = dir.join("stderr.log");

        let mut cmd = Command::new(super::tools::node_bin());
        cmd.arg(&script)
            .env(super::tools::TOOLS_ENV, &tools)
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENT_ID", &options.client_id)
            .env("OIDC_CLIENT_SECRET", &options.client_secret)
            .env(
                "OIDC_BASIC_CLIENT_ID",
                format!("{}-basic", options.client_id),
            )
            .env(
                "OIDC_NOUSER_CLIENT_ID",
                format!("{}-nouser", options.client_id),
            )
            .env("OIDC_USER_ID", &options.user_id)
            .env("OIDC_AUDIENCE", &options.audience)
            .env("OIDC_SCOPES", &options.scopes)
            .env("OIDC_ALG", &options.alg)
            .env("OIDC_TTL_SECONDS", options.ttl_seconds.to_string())
            .env("OIDC_TOKEN_FORMAT", &options.token_format)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(process::log_file(&stderr_path));
        let mut child = ChildGuard::spawn("oidc-provider", &mut cmd);
        let mut stdout = Lines::spawn(child.child_mut().stdout.take().expect("piped stdout"));

        fn failed(child: &mut ChildGuard, stderr_path: &Path, err: String) -> ! {
            let status = child.stop();
            panic!(
                "oidc-provider did not start: {err}\nexit status: {status:?}\nstderr:\n{}",
                process::tail(stderr_path, 60)
            );
        }
        let port: u16 = match stdout.wait_for_prefix("READY ", START_TIMEOUT).await {
            Ok(line) => line["READY ".len()..].trim().parse().unwrap_or_else(|_| {
                failed(&mut child, &stderr_path, format!("bad ready line {line:?}"))
            }),
            Err(err) => failed(&mut child, &stderr_path, err),
        };
        let issuer = format!("http://127.0.0.1:{port}");

        // Endpoint paths are the provider's business: read them from discovery.
        let discovery_url = format!("{issuer}/.well-known/openid-configuration");
        let discovery = match process::wait_for_http_ok(&discovery_url, START_TIMEOUT).await {
            Ok(body) => body,
            Err(err) => failed(&mut child, &stderr_path, err),
        };
        let discovery: serde_json::Value =
            serde_json::from_str(&discovery).expect("discovery JSON");
        assert_eq!(discovery["issuer"], issuer.as_str(), "discovery issuer");
        let endpoint = |name: &str| {
            discovery[name]
                .as_str()
                .unwrap_or_else(|| panic!("discovery has no {name}: {discovery}"))
                .to_owned()
        };
        let token_url = endpoint("token_endpoint");
        let jwks_url = endpoint("jwks_uri");

        Self {
            child,
            dir,
            options,
            port,
            issuer,
            token_url,
            jwks_url,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the `iss` of its tokens (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint (`<issuer>/token`).
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The JWKS endpoint (`<issuer>/jwks`).
    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// The client_secret_post client.
    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    /// The client_secret_basic client.
    pub fn basic_client_id(&self) -> String {
        format!("{}-basic", self.options.client_id)
    }

    /// A client_secret_post client whose tokens have no `user_id` claim.
    pub fn nouser_client_id(&self) -> String {
        format!("{}-nouser", self.options.client_id)
    }

    /// The resource-server client that may introspect (client_secret_basic).
    pub fn rs_client_id(&self) -> String {
        format!("{}-rs", self.options.client_id)
    }

    /// How many requests reached the introspection endpoint so far (from the log).
    pub fn introspection_calls(&self) -> usize {
        self.stderr_log().matches("INTROSPECTION-REQUEST").count()
    }

    pub fn client_secret(&self) -> &str {
        &self.options.client_secret
    }

    /// `aud` of the issued tokens.
    pub fn audience(&self) -> &str {
        &self.options.audience
    }

    /// `user_id` claim of the tokens of `client_id()` and `basic_client_id()`.
    pub fn user_id(&self) -> &str {
        &self.options.user_id
    }

    pub fn options(&self) -> &OidcOptions {
        &self.options
    }

    /// The provider's log (stderr) so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// client_credentials request for `client_id` with client_secret_post;
    /// `extra` adds form fields (e.g. `("scope", "read:orders")`). Returns the
    /// raw response, whatever its status.
    pub async fn request_token(
        &self,
        client_id: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ];
        form.extend_from_slice(extra);
        super::http_client()
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .expect("token request")
    }

    /// A fresh access token (a JWT) for `client_id()`; panics unless 200.
    pub async fn access_token(&self) -> String {
        let resp = self
            .request_token(self.client_id(), self.client_secret(), &[])
            .await;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("token response JSON");
        assert_eq!(status, 200, "token endpoint answered {status}: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// Stops the provider now (also done on drop).
    pub fn stop(&mut self) {
        self.child.stop();
    }
}
