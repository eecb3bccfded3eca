//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when the standard variables ask for
//! it: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with the other
//! `OTEL_*` settings (headers, timeout, sampler, `OTEL_BSP_*`, service name, resource) read by the
//! SDK. Without an endpoint nothing is installed: no layer, no exporter thread, no parsing of
//! `traceparent`.
//!
//! The exporter is the `otel` Cargo feature. A build without it still reads the variables: a
//! `serve` or `check-config` that asks for export is refused (`missing_feature`) rather than
//! quietly exporting nothing.

/// The variables that ask for trace export, the traces-only one first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(String),
    /// Export was asked for, but this binary was built without the `otel` feature.
    #[error("{0}")]
    NotBuilt(String),
}

/// The variable that asks for trace export in `env` (a variable lookup), if any: an endpoint
/// is set, and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says no.
fn requested_by(env: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    let is =
        |name: &str, value: &str| env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    ENDPOINT_VARS
        .into_iter()
        .find(|name| env(name).is_some_and(|v| !v.trim().is_empty()))
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether the environment asks for trace export.
pub fn requested() -> bool {
    requested_by(process_env).is_some()
}

/// One line naming the variable that asks for trace export when this binary was built without
/// the `otel` feature; `None` when export is not asked for or is built in. `serve` and
/// `check-config` refuse to go on with it.
pub fn missing_feature() -> Option<String> {
    missing_feature_in(process_env)
}

fn missing_feature_in(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if cfg!(feature = "otel") {
        return None;
    }
    let var = requested_by(env)?;
    Some(format!(
        "{var}: {}",
        crate::features::missing("exporting traces", crate::features::OTEL)
    ))
}

/// Without the `otel` feature there is no layer to install; asked for anyway (only a command
/// that skipped `missing_feature` gets here), it is an error that is logged as a warning.
#[cfg(not(feature = "otel"))]
pub fn layer() -> Result<Option<tracing_subscriber::layer::Identity>, OtelError> {
    match missing_feature() {
        Some(line) => Err(OtelError::NotBuilt(line)),
        None => Ok(None),
    }
}

/// Never, without the `otel` feature: no span per check is built.
#[cfg(not(feature = "otel"))]
pub fn enabled() -> bool {
    false
}

/// Nothing to flush without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn shutdown() {}

/// Nothing to parent without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn set_parent(_span: &tracing::Span, _headers: &crate::request::Headers) {}

#[cfg(feature = "otel")]
pub use export::{enabled, layer, set_parent, shutdown};

/// The SDK side: the exporter, its tracer provider, and `traceparent` parsing.
#[cfg(feature = "otel")]
mod export {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Subscriber;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use super::{OtelError, requested};
    use crate::request::Headers;

    const SERVICE_NAME: &str = "m2m-authz";

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    static ENABLED: AtomicBool = AtomicBool::new(false);

    fn set(name: &str) -> bool {
        std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
    }

    /// The tracing layer that turns spans into OpenTelemetry spans, or `None` when export is not
    /// requested. Call once, at start-up; `shutdown` flushes what it buffered.
    pub fn layer<S>() -> Result<Option<impl Layer<S>>, OtelError>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        if !requested() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
        // The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; our name is the default.
        let named = set("OTEL_SERVICE_NAME")
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
        if !named {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        if PROVIDER.set(provider).is_err() {
            // Already installed by an earlier call: keep that one.
            return Ok(None);
        }
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
    }

    /// Whether spans are being exported (the layer is installed).
    pub fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// Exports what is still buffered and stops the exporter. Call once serving has ended.
    pub fn shutdown() {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }

    /// Makes `span` a child of the W3C `traceparent` (and `tracestate`) the request carries; does
    /// nothing when tracing is off or the header is absent or malformed.
    pub fn set_parent(span: &tracing::Span, headers: &Headers) {
        if !enabled() {
            return;
        }
        let carrier = TraceHeaders {
            traceparent: headers.get_all(TRACEPARENT).next().flatten(),
            tracestate: headers.get_all(TRACESTATE).next().flatten(),
        };
        if carrier.traceparent.is_none() {
            return;
        }
        let context = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(context);
    }

    const TRACEPARENT: &str = "traceparent";
    const TRACESTATE: &str = "tracestate";

    /// The two headers the W3C trace-context propagator reads.
    struct TraceHeaders<'a> {
        traceparent: Option<&'a str>,
        tracestate: Option<&'a str>,
    }

    impl Extractor for TraceHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                TRACEPARENT => self.traceparent,
                TRACESTATE => self.tracestate,
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            [
                (TRACEPARENT, self.traceparent),
                (TRACESTATE, self.tracestate),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|_| k))
            .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn an_endpoint_asks_for_export_unless_switched_off() {
        assert_eq!(requested_by(env(&[])), None);
        assert_eq!(
            requested_by(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            requested_by(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            Some("OTEL_EXPORTER_OTLP_ENDPOINT")
        );
        assert_eq!(
            requested_by(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])),
            Some("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        );
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                requested_by(env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    off
                ])),
                None
            );
        }
    }

    /// The lean build refuses export it cannot do, naming the variable and the feature.
    #[cfg(not(feature = "otel"))]
    #[test]
    fn export_without_the_feature_is_refused_naming_the_variable() {
        let line = missing_feature_in(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]))
        .unwrap();
        assert!(
            line.starts_with(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: exporting traces needs the `otel` feature"
            ),
            "{line}"
        );
        assert_eq!(missing_feature_in(env(&[])), None);
        assert_eq!(
            missing_feature_in(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])),
            None
        );
    }

    #[cfg(feature = "otel")]
    #[test]
    fn export_with_the_feature_is_never_refused() {
        assert_eq!(
            missing_feature_in(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            None
        );
    }
}
