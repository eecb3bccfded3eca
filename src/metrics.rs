//! Prometheus metrics for the admin port's `/metrics`. Checks are counted here as the gRPC edge
//! answers them; everything the core counts (cache, exchanges, JWKS fetches, policy reloads) is
//! read from its plain atomics at scrape time by a collector, so the core needs no metrics crate.
//!
//! Labels are low-cardinality by construction: each value is a `&'static str` from a fixed set
//! (a decision, a `Deny::reason`, an `Unavailable::reason`, an outcome), never a client id, user
//! id, secret, token or path.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::authorizer::Authorizer;
use crate::outcome::Outcome;
use crate::stats::{LATENCY_BUCKETS_MICROS, LatencySnapshot};

/// The `Content-Type` of what `Metrics::render` returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

/// The labels of an allowed check (`Outcome::of` an allow).
const ALLOWED: CheckLabels = CheckLabels {
    decision: "allow",
    reason: "ok",
};

type LatencyFamily = Family<DecisionLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MICROS.iter().map(|m| micros_to_seconds(*m)))
}

fn micros_to_seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// Every metric the sidecar exposes.
pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    check_duration: LatencyFamily,
    /// The series every cached allow lands in, resolved once: the hit path then skips the
    /// families' label hashing and map lookups. (Counter and Histogram clones share their
    /// values with the family's.)
    allowed: Counter,
    allowed_duration: Histogram,
}

impl Metrics {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        let mut registry = Registry::default();
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "m2m_authz_checks",
            "Checks answered, by decision (allow, deny, error) and reason",
            checks.clone(),
        );
        let check_duration: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "m2m_authz_check_duration",
            "Time to answer a Check, by decision",
            Unit::Seconds,
            check_duration.clone(),
        );
        registry.register_collector(Box::new(CoreCollector { authorizer }));
        let allowed = checks.get_or_create(&ALLOWED).clone();
        let allowed_duration = check_duration
            .get_or_create(&DecisionLabel {
                decision: ALLOWED.decision,
            })
            .clone();
        Metrics {
            registry,
            checks,
            check_duration,
            allowed,
            allowed_duration,
        }
    }

    /// Counts one answered Check and how long it took.
    pub fn record_check(&self, outcome: &Outcome, elapsed: Duration) {
        let labels = CheckLabels {
            decision: outcome.decision.as_str(),
            reason: outcome.reason,
        };
        if labels == ALLOWED {
            self.allowed.inc();
            self.allowed_duration.observe(elapsed.as_secs_f64());
            return;
        }
        self.checks.get_or_create(&labels).inc();
        self.check_duration
            .get_or_create(&DecisionLabel {
                decision: labels.decision,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the core's counters at scrape time.
struct CoreCollector {
    authorizer: Arc<Authorizer>,
}

impl fmt::Debug for CoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CoreCollector")
    }
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let a = &self.authorizer;
        let s = a.stats();
        for (name, help, value) in [
            (
                "m2m_authz_cache_hits",
                "Checks answered from a cached identity",
                s.hits,
            ),
            (
                "m2m_authz_cache_misses",
                "Checks that needed an exchange or a verification",
                s.misses,
            ),
            (
                "m2m_authz_cache_coalesced",
                "Misses that joined an exchange already in flight for the same credential",
                s.coalesced,
            ),
            (
                "m2m_authz_cache_negative_hits",
                "Checks refused from the negative cache without asking the provider",
                s.negative_hits,
            ),
            (
                "m2m_authz_cache_evictions",
                "Cache entries dropped to stay within cache.max_entries",
                s.evictions,
            ),
            (
                "m2m_authz_cache_refreshes",
                "Background refreshes started ahead of a token's expiry",
                s.refreshes,
            ),
            (
                "m2m_authz_cache_stale_served",
                "Checks answered from a past-soft-expiry identity because the provider failed",
                s.stale_served,
            ),
            (
                "m2m_authz_shared_cache_hits",
                "Exchanges avoided by a token another pod shared through cache.shared (Redis)",
                s.shared_hits,
            ),
            (
                "m2m_authz_shared_cache_misses",
                "Flights that found no usable shared token and exchanged",
                s.shared_misses,
            ),
            (
                "m2m_authz_shared_cache_errors",
                "Shared tier failures (Redis down, slow, or values that fail to open or verify); checks went on without it",
                s.shared_errors,
            ),
            (
                "m2m_authz_shared_cache_lock_waits",
                "Flights that waited for another pod's exchange of the same credential",
                s.shared_lock_waits,
            ),
            (
                "m2m_authz_exchanges_limited_known",
                "Exchanges for credentials with a cached identity (refreshes, re-exchanges) refused by the sidecar's limits even with their reserved share",
                s.exchanges_limited_known,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        gauge(
            &mut encoder,
            "m2m_authz_cache_entries",
            "Cached identities",
            a.cache().len() as f64,
        )?;
        gauge(
            &mut encoder,
            "m2m_authz_cache_negative_entries",
            "Remembered refusals",
            a.cache().negative_len() as f64,
        )?;
        counter_family(
            &mut encoder,
            "m2m_authz_exchanges",
            "Token exchanges, by outcome (limited: refused by the sidecar's own limits)",
            &[
                ("ok", s.exchanges_ok),
                ("rejected", s.exchanges_rejected),
                ("failed", s.exchanges_failed),
                ("limited", s.exchanges_limited),
            ],
        )?;
        histogram(
            &mut encoder,
            "m2m_authz_exchange_duration",
            "Time the token endpoint took to answer, whatever the outcome",
            &s.exchange_latency,
        )?;
        labelled_counter(
            &mut encoder,
            "m2m_authz_panics",
            "Panics contained, by where (check: answered UNAVAILABLE; exchange: every check waiting for that exchange answered UNAVAILABLE); each is a bug",
            "site",
            &[("check", s.check_panics), ("exchange", s.flight_panics)],
        )?;
        encode_jwks(&mut encoder, a)?;
        encode_providers(&mut encoder, a)?;
        counter_family(
            &mut encoder,
            "m2m_authz_policy_reloads",
            "Route policy reloads, by outcome (failed: the previous policy stays in force)",
            // Counted by the live policy itself, which also exists before any Authorizer (config
            // validation) and so keeps its own counters.
            &[
                (
                    "ok",
                    a.policy()
                        .reloads_ok
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    "failed",
                    a.policy()
                        .reloads_failed
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            ],
        )?;
        let mut info = encoder.encode_descriptor(
            "m2m_authz_build_info",
            "Always 1; the version is a label",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// The JWKS metrics, one series per configured provider (`provider` is its name in the config:
/// a fixed, small set).
fn encode_jwks(encoder: &mut DescriptorEncoder, a: &Authorizer) -> Result<(), fmt::Error> {
    let mut fetches = encoder.encode_descriptor(
        "m2m_authz_jwks_fetches",
        "JWKS fetches, by provider and outcome",
        None,
        MetricType::Counter,
    )?;
    for (name, provider) in a.providers() {
        let counts = provider.jwks().fetches();
        for (outcome, value) in [("ok", load(&counts.ok)), ("failed", load(&counts.failed))] {
            ConstCounter::new(value)
                .encode(fetches.encode_family(&[("provider", name), ("outcome", outcome)])?)?;
        }
    }
    let mut keys = encoder.encode_descriptor(
        "m2m_authz_jwks_keys",
        "Usable signing keys in the loaded JWKS, by provider (0: none loaded yet)",
        None,
        MetricType::Gauge,
    )?;
    for (name, provider) in a.providers() {
        let count = provider.jwks().snapshot().map_or(0, |k| k.len());
        ConstGauge::new(count as f64).encode(keys.encode_family(&[("provider", name)])?)?;
    }
    let mut age = encoder.encode_descriptor(
        "m2m_authz_jwks_age",
        "Time since the loaded JWKS was fetched, by provider (absent: none loaded yet)",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    for (name, provider) in a.providers() {
        if let Some(set) = provider.jwks().snapshot() {
            ConstGauge::new(set.fetched_at.elapsed().as_secs_f64())
                .encode(age.encode_family(&[("provider", name)])?)?;
        }
    }
    Ok(())
}

/// Each provider's exchanges by outcome and their latency (`provider` is its name in the
/// config: a fixed, small set). The unlabelled `m2m_authz_exchanges` and
/// `m2m_authz_exchange_duration` stay the totals over every provider.
fn encode_providers(encoder: &mut DescriptorEncoder, a: &Authorizer) -> Result<(), fmt::Error> {
    let mut exchanges = encoder.encode_descriptor(
        "m2m_authz_provider_exchanges",
        "Token exchanges, by provider and outcome (rejected: the provider refused the credentials; failed: unreachable, erroring or rate limiting; limited: refused by the sidecar's own limits)",
        None,
        MetricType::Counter,
    )?;
    for (name, s) in a.provider_stats() {
        for (outcome, counter) in [
            ("ok", &s.exchanges_ok),
            ("rejected", &s.exchanges_rejected),
            ("failed", &s.exchanges_failed),
            ("limited", &s.exchanges_limited),
        ] {
            ConstCounter::new(load(counter))
                .encode(exchanges.encode_family(&[("provider", name), ("outcome", outcome)])?)?;
        }
    }
    let mut duration = encoder.encode_descriptor(
        "m2m_authz_provider_exchange_duration",
        "Time each provider's token endpoint took to answer, whatever the outcome",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (name, s) in a.provider_stats() {
        let h = s.exchange_latency.snapshot();
        duration
            .encode_family(&[("provider", name)])?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                micros_to_seconds(h.sum_micros),
                h.count,
                &buckets(&h),
                None,
            )?;
    }
    Ok(())
}

fn buckets(h: &LatencySnapshot) -> Vec<(f64, u64)> {
    LATENCY_BUCKETS_MICROS
        .iter()
        .zip(h.per_bucket)
        .map(|(bound, n)| (micros_to_seconds(*bound), n))
        .collect()
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    by_outcome: &[(&'static str, u64)],
) -> Result<(), fmt::Error> {
    labelled_counter(encoder, name, help, "outcome", by_outcome)
}

/// One counter per value of `label` (a fixed, small set).
fn labelled_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_of_label, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(&[(label, *value_of_label)])?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &LatencySnapshot,
) -> Result<(), fmt::Error> {
    let buckets = buckets(h);
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        micros_to_seconds(h.sum_micros),
        h.count,
        &buckets,
        None,
    )
}
