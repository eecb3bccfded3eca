//! Token endpoint answers (`exchange::parse_token_response`): two bytes of status, one byte of
//! `Retry-After` length (255: no header), the header value, then the body.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use m2m_authz::exchange::{ExchangeError, MAX_PROVIDER_RETRY_AFTER, parse_token_response};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]) % 600;
    let (retry_after, body) = match data[2] {
        255 => (None, &data[3..]),
        n => {
            let n = usize::from(n).min(data.len() - 3);
            (
                Some(String::from_utf8_lossy(&data[3..3 + n]).into_owned()),
                &data[3 + n..],
            )
        }
    };
    match parse_token_response(status, retry_after.as_deref(), body, 1_700_000_000) {
        Ok(issued) => {
            assert!((200..300).contains(&status));
            assert!(!issued.access_token.is_empty());
            assert!(issued.expires_in.is_none_or(|d| d > Duration::ZERO));
        }
        Err(ExchangeError::RateLimited { retry_after }) => {
            assert_eq!(status, 429);
            assert!(retry_after >= Duration::from_secs(1));
            assert!(retry_after <= MAX_PROVIDER_RETRY_AFTER);
        }
        Err(e) => {
            assert!(status != 429);
            // A caller's fault only when the provider said so.
            if e.is_callers_fault() {
                assert!(!(200..300).contains(&status));
            }
        }
    }
});
