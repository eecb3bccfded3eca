//! Syntax checks shared by the config sections: header names and printable text.

use super::ConfigError;

/// Printable ASCII, spaces included.
pub fn is_visible(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// An HTTP header name (RFC 9110 token), or an error naming `field`.
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !name.starts_with(':');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, "expected an HTTP header name"))
    }
}
