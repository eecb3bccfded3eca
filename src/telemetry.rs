//! Logging and tracing setup: JSON lines when stderr is not a terminal (or
//! `M2M_AUTHZ_LOG_FORMAT=json`), human-readable otherwise; level from `M2M_AUTHZ_LOG` (an
//! `EnvFilter`, default `info`). When the `OTEL_*` variables ask for it, spans are also exported
//! over OTLP (see `otel`); `shutdown` flushes them.

use std::io::IsTerminal;

use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::defaults::{LOG_ENV, LOG_FORMAT_ENV};
use crate::otel;

/// Crates that move our bytes: HTTP/2 and HTTP/1 codecs, the gRPC server, the HTTP client, TLS,
/// the OTLP exporter. Their debug and trace events describe frames, buffers and connections of
/// requests that carry client secrets (the Check's headers, the token request's form body and
/// Basic header). Today's versions leave header values and bodies out of those events (checked:
/// `tests/log_secrecy.rs` passes without this cap, with ~2,000 transport lines for a dozen
/// checks), but nothing binds future versions to that, so their detail is capped at `info`
/// whatever `M2M_AUTHZ_LOG` says, even `trace`. The cap is a filter applied after the user's
/// directives, so no directive, however specific, lifts it.
const TRANSPORT_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "tonic",
    "tower",
    "rustls",
    "rustls_platform_verifier",
    "axum",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
];

fn is_transport(target: &str) -> bool {
    TRANSPORT_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// False for debug/trace events and spans of the transport crates.
fn within_cap(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || !is_transport(meta.target())
}

/// The transport cap as a per-layer filter. Level and target are static metadata, so the answer
/// is given once per callsite (`callsite_enabled`) and cached by `tracing`: a disabled span or
/// event in h2's or hyper's hot loops then costs one load, not a dynamic filter call.
struct TransportCap;

impl<S> Filter<S> for TransportCap {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        within_cap(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if within_cap(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// `filter` (the user's `M2M_AUTHZ_LOG`) with the transport crates capped at `info`.
pub fn capped<S>(filter: EnvFilter) -> impl Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    filter.and(TransportCap)
}

/// The log format rule of every command: JSON when `M2M_AUTHZ_LOG_FORMAT=json`, or unset and
/// the destination is not a terminal; plain text (coloured only on a terminal) otherwise.
pub fn log_layer<W>(writer: W, terminal: bool) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let json = match std::env::var(LOG_FORMAT_ENV).as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    if json {
        // One flat object per event: the check's own fields, not the span's, are the line.
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer().with_ansi(terminal).with_writer(writer).boxed()
    }
}

pub fn init() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = log_layer(std::io::stderr, std::io::stderr().is_terminal());
    let logs = format.with_filter(capped(filter));
    let (traces, otel_error) = match otel::layer() {
        Ok(layer) => (layer, None),
        Err(e) => (None, Some(e)),
    };
    // Only our own spans are exported, at info and above: never the transport crates'.
    let traces =
        traces.map(|l| l.with_filter(Targets::new().with_target("m2m_authz", Level::INFO)));
    // A second init (tests) is harmless; ignore it. Without an exporter no second layer is
    // added at all: an absent (`None`) layer answers "interested" for every callsite, which
    // would make every disabled span of the transport crates be built and dropped (about 40
    // spans per check, measured with callgrind).
    let registry = tracing_subscriber::registry().with(logs);
    let _ = match traces {
        Some(traces) => registry.with(traces).try_init(),
        None => registry.try_init(),
    };
    if let Some(error) = otel_error {
        tracing::warn!(%error, "traces are not exported");
    } else if otel::requested() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
}

/// Flushes buffered trace spans; call once serving has ended.
pub fn shutdown() {
    otel::shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_targets_match_whole_path_segments() {
        for t in [
            "h2",
            "h2::codec::framed_read",
            "hyper_util::client",
            "tonic",
        ] {
            assert!(is_transport(t), "{t}");
        }
        for t in ["m2m_authz", "h2o", "hyperfine", "m2m_authz::check"] {
            assert!(!is_transport(t), "{t}");
        }
    }
}
