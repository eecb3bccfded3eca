//! The demo's protected application: answers every method and path with 200 and a JSON echo of
//! what it received, so the user sees exactly which headers Envoy forwarded (`x-user-id` set,
//! no credential).

use std::collections::BTreeMap;
use std::future::Future;

use axum::Router;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

/// The most request body read (and not echoed) to keep Envoy's upstream connection reusable.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .fallback(echo)
        .layer(axum::middleware::from_fn_with_state(
            MAX_REQUEST_BODY,
            crate::whole_body::read_first,
        ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> impl IntoResponse {
    let body = echo_body(&method, &uri, &headers);
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], text)
}

/// The echo's body, fields in this order: `{"method","path","headers":{name: value}}`.
#[derive(Serialize)]
struct Echo {
    method: String,
    /// With the query, if any.
    path: String,
    /// A header that arrived more than once is shown as the list of its values, so a duplicate
    /// cannot hide.
    headers: BTreeMap<String, Value>,
}

fn echo_body(method: &Method, uri: &Uri, headers: &HeaderMap) -> Echo {
    let mut map = BTreeMap::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        map.insert(name.as_str().to_owned(), value);
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    Echo {
        method: method.as_str().to_owned(),
        path,
        headers: map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn echoes_method_path_and_every_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("user-demo-1"));
        headers.append("x-dup", HeaderValue::from_static("a"));
        headers.append("x-dup", HeaderValue::from_static("b"));
        let uri: Uri = "/v1/orders?limit=2".parse().unwrap();
        let body = echo_body(&Method::GET, &uri, &headers);
        let text = serde_json::to_string(&body).unwrap();
        assert!(text.starts_with(r#"{"method":"GET","path":"/v1/orders?limit=2","headers":"#));
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "method": "GET",
                "path": "/v1/orders?limit=2",
                "headers": {"x-user-id": "user-demo-1", "x-dup": ["a", "b"]},
            })
        );
    }
}
