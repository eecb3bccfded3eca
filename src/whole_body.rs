//! Reading a request's whole body before the request is answered, so that its HTTP/1.1
//! connection stays reusable.
//!
//! hyper closes a connection whose request body is still unread when the response has been
//! written. Many clients (urllib3, so `requests` and Stytch's Python SDK) write the headers and
//! the body in two sends; when the answer does not need the body (a route that ignores it, a
//! refusal before it is looked at, an unknown path) the response can go out before the body
//! arrives, and the client's next request on that connection finds it closed
//! (`RemoteDisconnected`). Reading the body first, whatever the route, takes that race away.
//!
//! Used by the embedded issuer's API, the admin listener and the demo's echo application. The
//! HTTP authorization listener drains bodies itself, with its own bounds
//! ([`crate::http_authz`]).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

/// Middleware (`axum::middleware::from_fn_with_state(limit, whole_body::read_first)`): reads up to
/// `limit` bytes of the body, then passes the request on with the bytes read. A body longer than
/// `limit` is passed on cut after its first frames past the limit, so that the route's own size
/// check (`DefaultBodyLimit`, at most `limit`) refuses it in the route's own error shape; the
/// rest stays unread and the connection closes after the answer, as it should for a body that
/// large.
pub async fn read_first(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = read_capped(body, limit).await else {
        // The client broke off its own body: nothing will read the answer.
        return (
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )
            .into_response();
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The body's bytes until its end, or until more than `limit` have been read.
async fn read_capped(body: Body, limit: usize) -> Result<Bytes, axum::Error> {
    let mut chunks = body.into_data_stream();
    let Some(first) = chunks.next().await.transpose()? else {
        return Ok(Bytes::new());
    };
    let mut read = Vec::new();
    let mut next = Some(first);
    while let Some(chunk) = next {
        if read.is_empty() && chunks.is_end_stream() {
            // One chunk, the usual case: no copy.
            return Ok(chunk);
        }
        read.extend_from_slice(&chunk);
        if read.len() > limit {
            break;
        }
        next = chunks.next().await.transpose()?;
    }
    Ok(Bytes::from(read))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const LIMIT: usize = 1024;

    /// One route that ignores its body, one that reads it, behind the middleware.
    async fn serve() -> std::net::SocketAddr {
        let app = Router::new()
            .route("/ignores", post(|| async { "ignored" }))
            .route(
                "/reads",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(DefaultBodyLimit::max(LIMIT))
            .layer(axum::middleware::from_fn_with_state(LIMIT, read_first));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Sends a POST whose body follows its headers after a pause, and reads the answer:
    /// `(status, body)`, or `None` when the connection closed first.
    async fn post_late_body(
        conn: &mut TcpStream,
        path: &str,
        body: &[u8],
    ) -> Option<(u16, String)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.ok()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(body).await.ok()?;
        read_response(conn).await
    }

    async fn read_response(conn: &mut TcpStream) -> Option<(u16, String)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if rest.len() >= length {
                    let status = head.split(' ').nth(1)?.parse().ok()?;
                    return Some((status, rest[..length].to_owned()));
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_late_body_on_a_route_that_ignores_it_keeps_the_connection() {
        let addr = serve().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        for path in ["/ignores", "/reads", "/nowhere", "/ignores"] {
            let answer = post_late_body(&mut conn, path, b"{\"client_id\":\"c\"}").await;
            let want = match path {
                "/ignores" => (200, "ignored".to_owned()),
                "/reads" => (200, "17".to_owned()),
                _ => (404, String::new()),
            };
            assert_eq!(
                answer,
                Some(want),
                "{path}: the connection closed or the answer is wrong"
            );
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_by_the_route() {
        let addr = serve().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let answer = post_late_body(&mut conn, "/reads", &[b'x'; LIMIT]).await;
        assert_eq!(
            answer,
            Some((200, LIMIT.to_string())),
            "a body at the limit is read whole"
        );
        let answer = post_late_body(&mut conn, "/reads", &[b'x'; LIMIT + 1]).await;
        assert_eq!(answer.map(|(status, _)| status), Some(413));
    }
}
