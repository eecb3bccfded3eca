//! An HTTP upstream that answers every request with 200 and a JSON echo of
//! what it received, and remembers each request, so tests can check what
//! Envoy forwarded (and that denied requests never arrived).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// One request as the upstream saw it; also the JSON body of its answer:
/// `{"method":..,"path":..,"query":..,"headers":{name:[values..]},"body":..}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    /// Every received header: lower-case name -> all its values, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body, as (lossy) UTF-8.
    pub body: String,
}

impl EchoRequest {
    /// All values of header `name` (case-insensitive); empty if absent.
    pub fn header_values(&self, name: &str) -> &[String] {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The value of header `name` when it occurs exactly once; panics if it
    /// occurs more than once (a test should see that).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_values(name) {
            [] => None,
            [one] => Some(one),
            many => panic!("header {name} occurs {} times: {many:?}", many.len()),
        }
    }
}

/// The running echo server (on a tokio task of the current runtime).
#[derive(Debug)]
pub struct EchoUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<EchoRequest>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl EchoUpstream {
    /// Starts on 127.0.0.1 with a random port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo upstream");
        let addr = listener.local_addr().expect("echo upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(echo).with_state(seen.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            seen,
            shutdown: Some(shutdown),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<EchoRequest> {
        self.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<EchoRequest> {
        self.seen.lock().unwrap().last().cloned()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        // Stops accepting at once; open (keep-alive) connections are closed
        // when idle.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn echo(
    State(seen): State<Arc<Mutex<Vec<EchoRequest>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<EchoRequest> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let request = EchoRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: map,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    seen.lock().unwrap().push(request.clone());
    axum::Json(request)
}
