//! HTTP/1.1 by hand over one TCP connection, for tests about the connection itself: kept alive
//! across requests, closed by the server, a body sent after its headers.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads up to the end of an HTTP head (a request's or a response's); `None` at end of stream.
pub async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// One response, leaving the connection at the next: (status, lower-cased head, body as many
/// bytes as its `content-length` says). `None` when the connection ends before it is whole.
pub async fn read_response(conn: &mut TcpStream) -> Option<(u16, String, String)> {
    let head = read_head(conn).await?.to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.ok()?;
    Some((status, head, String::from_utf8(body).unwrap()))
}
