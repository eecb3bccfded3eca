//! Durations are written as humantime strings: `30s`, `5m`, `1h 30m`. Used as
//! `#[serde(with = "crate::config::duration")]` (or `duration::optional` for an `Option`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// No setting means more than a year, and the ceiling keeps every `Instant + duration` and
/// `duration * n` the code computes from config far from overflow (a panic at start or on
/// the request path). Fields with tighter bounds check them in `validate`.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let d = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("expected a duration such as 30s or 5m: {e}"))
    })?;
    if d > MAX {
        return Err(serde::de::Error::custom(
            "expected a duration of at most 365 days",
        ));
    }
    Ok(d)
}

/// An optional duration: present means set.
pub mod optional {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}
