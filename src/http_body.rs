//! Reading provider responses with a size cap, so a broken or hostile endpoint cannot make the
//! sidecar buffer without bound; and telling, from a failed request, that the provider's TLS
//! certificate was not trusted or the handshake refused ([`Failure`], so the log can say which
//! setting to look at).

/// `e` and the errors under it. A TLS or socket error sits a few sources down, inside an
/// `io::Error` whose own `source()` skips it, so each `io::Error`'s wrapped error is looked into
/// as well (it may itself be an `io::Error`: hyper-util wraps rustls's).
fn causes(e: &reqwest::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(
        Some(e as &(dyn std::error::Error + 'static)),
        |err: &&(dyn std::error::Error + 'static)| {
            let inner = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            inner.or_else(|| err.source())
        },
    )
}

/// The rustls error under `e`, if the request failed in TLS.
fn rustls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    causes(e).find_map(|err| err.downcast_ref::<rustls::Error>())
}

/// Whether `e` failed because the server's certificate did not verify (unknown issuer, wrong
/// name, expired…).
fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// Whether the connection closed under the request before any answer, with no error of its
/// own: hyper gave up on it (canceled, or the message cut short), or the socket was reset.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    causes(e).any(|err| {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_canceled() || h.is_incomplete_message())
            || err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                )
            })
    })
}

/// Whether an https server refused the TLS connection: it ended the handshake with an alert (a
/// server that requires a client certificate and got none, or did not accept the one it got),
/// or closed the connection before answering. In TLS 1.3 the server judges the client's
/// certificate after the client has finished its side of the handshake, so the alert may reach
/// a connection the client already counts as open, and the request then fails as "connection
/// closed" with the alert lost on the way (hyper's "connection was not ready").
fn is_tls_refused(e: &reqwest::Error) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::AlertReceived(_)))
        || (e.url().is_some_and(|u| u.scheme() == "https") && closed_before_answer(e))
}

/// Why a request to a provider endpoint failed before an answer: one classification, in one
/// order, for the token, JWKS, introspection and discovery endpoints, each of which maps it to
/// its own error (a new kind makes the compiler point at all four).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    /// The server's certificate did not verify: the log says to set `provider.ca_file`.
    UntrustedCertificate,
    /// The server refused the TLS handshake ([`is_tls_refused`]): the log names the client
    /// certificate settings.
    TlsRefused,
    Connect,
    /// Anything else on the way ("transport error").
    Other,
}

impl Failure {
    pub fn of(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if is_untrusted_certificate(e) {
            Failure::UntrustedCertificate
        } else if is_tls_refused(e) {
            Failure::TlsRefused
        } else if e.is_connect() {
            Failure::Connect
        } else {
            Failure::Other
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
