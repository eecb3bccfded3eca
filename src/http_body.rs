//! Reading provider responses with a size cap, so a broken or hostile endpoint cannot make the
//! sidecar buffer without bound; and telling, from a failed request, that the provider's TLS
//! certificate was not trusted (so the log can say to set `provider.ca_file`).

/// The rustls error under `e`, if the request failed in TLS. It sits a few sources down, inside
/// an `io::Error` whose own `source()` skips it, so each `io::Error` is looked into as well.
fn rustls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        // An io::Error's wrapped error may itself be an io::Error (hyper-util wraps rustls's):
        // descend into it rather than past it.
        next = inner.or_else(|| err.source());
    }
    None
}

/// Whether `e` failed because the server's certificate did not verify (unknown issuer, wrong
/// name, expired…).
pub fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// Whether `e` is the server ending the TLS handshake with an alert: a server that requires a
/// client certificate (mutual TLS) and got none, or did not accept the one it got.
pub fn is_tls_refused(e: &reqwest::Error) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::AlertReceived(_)))
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
