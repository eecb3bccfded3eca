//! Credential extraction from request headers (`credentials::Extractor::extract`).
//!
//! Input: one byte of configuration (which sources are on, a small or the default size limit),
//! then header lines separated by `\n`: each line's first byte picks the header name, the rest is
//! its value (bytes that are not UTF-8 arrive as `None`, as the ext_authz adapter passes them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_authz::config::{CredentialsConfig, HeaderPairConfig};
use m2m_authz::credentials::{Credential, Extractor, Source};
use m2m_authz::request::Headers;

const NAMES: [&str; 7] = [
    "authorization",
    "Authorization",
    "x-client-id",
    "x-client-secret",
    "X-CLIENT-SECRET",
    "x-user-id",
    "x-other",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let config = CredentialsConfig {
        basic: flags & 1 == 0,
        bearer: flags & 2 == 0,
        headers: HeaderPairConfig {
            enabled: flags & 4 == 0,
            ..Default::default()
        },
        max_header_bytes: if flags & 8 == 0 { 4096 } else { 64 },
    };
    let mut headers = Headers::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = NAMES[usize::from(pick) % NAMES.len()];
        headers.push(name, String::from_utf8(value.to_vec()).ok());
    }
    let extractor = Extractor::new(&config);
    match extractor.extract(&headers) {
        Ok(Credential::Client {
            client_id,
            secret,
            source,
        }) => {
            assert!(!client_id.is_empty() && !secret.expose().is_empty());
            assert!(source != Source::Basic || config.basic);
            assert!(source != Source::HeaderPair || config.headers.enabled);
            if source == Source::Basic {
                assert!(!client_id.chars().any(char::is_control));
            }
            // Decoding never makes a value longer than the header it came from.
            assert!(client_id.len() <= config.max_header_bytes);
            assert!(secret.expose().len() <= config.max_header_bytes);
            // Debug output never shows the secret.
            assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        }
        Ok(Credential::Bearer(token)) => {
            assert!(config.bearer);
            let t = token.expose();
            assert!(!t.is_empty() && t.len() <= config.max_header_bytes);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
            );
        }
        Err(_) => {}
    }
});
