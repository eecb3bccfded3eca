//! deploy/kubernetes/components/monitoring: the alerts and the Grafana dashboard.
//!
//! - the rule file inside the PrometheusRule (its `spec`, extracted here, never kept twice)
//!   passes `promtool check rules`, and `promtool test rules` with alerts.test.yaml;
//! - every alert has a `for:`, a severity, a summary and a runbook line, and a unit test that
//!   expects it to fire;
//! - every metric that an alert or a dashboard panel names is one the real binary exports on its
//!   admin `/metrics`, or the real Envoy on `/stats/prometheus`, after a few checks through the
//!   kit's Envoy stack.
//!
//! Needs `promtool` (scripts/tools: Debian package prometheus) and Envoy; without them each test
//! says what it needs and is skipped, or fails under `M2M_AUTHZ_REQUIRE_TOOLS=1`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::envoy::Front;
use common::process::TempDir;
use common::provider::{AUDIENCE, FakeProvider, ISSUER};
use serde_yaml_ng::Value;

const COMPONENT: &str = "deploy/kubernetes/components/monitoring";
/// The name alerts.test.yaml gives the rule file (`rule_files`).
const TESTED_RULES: &str = "m2m-authz.rules.yaml";

fn read(relative: &str) -> String {
    let path = common::tools::repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The Prometheus rule file: the PrometheusRule's `spec`.
fn rule_file() -> Value {
    let manifest: Value =
        serde_yaml_ng::from_str(&read(&format!("{COMPONENT}/prometheusrule.yaml")))
            .expect("prometheusrule.yaml is YAML");
    assert_eq!(
        manifest.get("kind").and_then(Value::as_str),
        Some("PrometheusRule")
    );
    manifest
        .get("spec")
        .cloned()
        .expect("PrometheusRule without spec")
}

/// Every rule of the rule file.
fn rules(file: &Value) -> Vec<&Value> {
    let groups = file
        .get("groups")
        .and_then(Value::as_sequence)
        .expect("spec.groups");
    groups
        .iter()
        .flat_map(|g| {
            g.get("rules")
                .and_then(Value::as_sequence)
                .expect("group without rules")
        })
        .collect()
}

fn text<'a>(value: &'a Value, key: &str, what: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no {key}"))
}

fn run_promtool(args: &[&str], dir: &TempDir) -> String {
    let out = Command::new(common::tools::promtool())
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run promtool");
    let report = format!(
        "promtool {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    report
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    crate::needs!(Promtool);
    let dir = TempDir::new("promtool");
    let file = rule_file();
    let full = serde_yaml_ng::to_string(&file).unwrap();
    std::fs::write(dir.join("rules.yaml"), &full).unwrap();
    let report = run_promtool(&["check", "rules", "rules.yaml"], &dir);
    let count = rules(&file).len();
    assert!(
        report.contains(&format!("SUCCESS: {count} rules found")),
        "{report}"
    );

    // The unit tests assert which alerts fire for whom and how severe, not the annotations'
    // wording: they run on the same rules without annotations.
    let mut bare = file.clone();
    for group in bare
        .get_mut("groups")
        .and_then(Value::as_sequence_mut)
        .unwrap()
    {
        for rule in group
            .get_mut("rules")
            .and_then(Value::as_sequence_mut)
            .unwrap()
        {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(
        dir.join(TESTED_RULES),
        serde_yaml_ng::to_string(&bare).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("alerts.test.yaml"),
        read(&format!("{COMPONENT}/alerts.test.yaml")),
    )
    .unwrap();
    let report = run_promtool(&["test", "rules", "alerts.test.yaml"], &dir);
    assert!(report.contains("SUCCESS"), "{report}");
}

/// The alerts the issue asks for, each on its own subject.
const REQUIRED_ALERTS: &[&str] = &[
    "M2mAuthzCheckErrors",
    "M2mAuthzExchangeFailures",
    "M2mAuthzExchangesLimited",
    "M2mAuthzKnownClientsLimited",
    "M2mAuthzJwksStale",
    "M2mAuthzPolicyReloadFailed",
    "M2mAuthzEnvoyExtAuthzErrors",
];

#[test]
fn every_alert_is_complete_and_has_a_firing_unit_test() {
    let file = rule_file();
    let tests: Value =
        serde_yaml_ng::from_str(&read(&format!("{COMPONENT}/alerts.test.yaml"))).unwrap();
    assert_eq!(
        tests["rule_files"][0].as_str(),
        Some(TESTED_RULES),
        "alerts.test.yaml must load the extracted rule file"
    );
    // Alert name -> whether some unit test expects it to fire.
    let mut fired = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            if case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
            {
                fired.insert(case["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut names = BTreeSet::new();
    for rule in rules(&file) {
        let name = text(rule, "alert", "a rule (recording rules are not expected)");
        assert!(names.insert(name.to_owned()), "{name}: two alerts");
        let expr = text(rule, "expr", name);
        text(rule, "for", name);
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        let kept = grouping_labels(expr);
        for key in ["summary", "runbook"] {
            let annotation = rule["annotations"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no {key} annotation"));
            assert!(!annotation.trim().is_empty(), "{name}: empty {key}");
            // A label the expression aggregates away would render empty.
            for label in annotation.split("$labels.").skip(1) {
                let label: String = label
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    kept.contains(&label),
                    "{name}: {key} names $labels.{label}, which `{expr}` does not keep"
                );
            }
        }
        assert!(
            fired.contains(name),
            "{name}: no unit test in alerts.test.yaml expects it to fire"
        );
    }
    for required in REQUIRED_ALERTS {
        assert!(names.contains(*required), "missing alert {required}");
    }
}

/// The labels every `by (...)` of `expr` keeps (the alerts aggregate with `by` only).
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let list = part.split(')').next().unwrap_or_default();
        kept.extend(list.split(',').map(|l| l.trim().to_owned()));
    }
    kept
}

/// Words of PromQL that are not metric names when not followed by `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers, strings,
/// range brackets and label lists that are neither functions (followed by `(`) nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips a quoted string starting at `i`; returns the index after it.
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            i = if matches!(chars[i], '"' | '\'' | '`') {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A dashboard variable or a number.
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '.'))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (pod) (...)`: an aggregation whose grouping comes first.
            let grouped = ["by", "without"].iter().any(|kw| {
                let end = next + kw.len();
                chars
                    .get(next..end)
                    .is_some_and(|w| w.iter().copied().eq(kw.chars()))
                    && chars
                        .get(end)
                        .is_some_and(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
            });
            let called = chars.get(next) == Some(&'(') || grouped;
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip_to(next, ')');
            } else if !called && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_read_from_expressions() {
    let expr = r#"histogram_quantile(0.99, sum by (le, pod) (rate(m2m_authz_check_duration_seconds_bucket{namespace="$namespace", pod=~"a|b"}[$__rate_interval])))
        / on (pod) group_left (version) m2m_authz_build_info > bool 0.5 and absent(envoy_http_ext_authz_ok{x="}{"})"#;
    let expected: BTreeSet<String> = [
        "m2m_authz_check_duration_seconds_bucket",
        "m2m_authz_build_info",
        "envoy_http_ext_authz_ok",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(metric_names(expr), expected);
}

/// Every PromQL expression of the dashboard: panel targets and variable queries.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&format!("{COMPONENT}/dashboard.json")))
            .expect("dashboard.json is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("panel targets") {
            exprs.push(target["expr"].as_str().expect("target expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(<selector>, <label>): the selector is PromQL.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _)| selector)
                .unwrap_or_else(|| panic!("dashboard variable query {query:?}"));
            exprs.push(inner.to_owned());
        }
    }
    exprs
}

/// The metric names of a Prometheus text exposition (sample names, so `_total`, `_bucket`,
/// `_sum` and `_count` as scraped).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(url: &str) -> String {
    let response = common::http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.text().await.expect("scrape body")
}

#[tokio::test]
async fn alerts_and_dashboard_name_only_metrics_the_binary_and_envoy_export() {
    crate::needs!(Envoy);
    let provider = FakeProvider::start().await;
    provider.add_client("client-1", "s3cret-monitoring", "user-1");
    let (sidecar, Front { envoy, upstream: _upstream }) = common::envoy::stack(&format!(
        "provider:\n  kind: oauth2\n  token_url: {}\n  jwks_url: {}\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  request_timeout: 2s\n",
        provider.token_url(),
        provider.jwks_url()
    ))
    .await;
    let http = common::http_client();
    // An allow, a refused secret and no credentials: every check family gets a series.
    for (auth, expected) in [
        (
            Some(common::check::basic("client-1", "s3cret-monitoring")),
            200,
        ),
        (Some(common::check::basic("client-1", "wrong")), 401),
        (None, 401),
    ] {
        let mut request = http.get(envoy.url("/v1/orders"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let status = request
            .send()
            .await
            .expect("request through Envoy")
            .status();
        assert_eq!(status.as_u16(), expected);
    }
    let mut exported = exposed_names(&scrape(&format!("{}/metrics", sidecar.admin_url())).await);
    let sidecar_count = exported.len();
    exported.extend(exposed_names(
        &scrape(&format!("{}/stats/prometheus", envoy.admin_url())).await,
    ));
    assert!(exported.contains("m2m_authz_checks_total"), "{exported:?}");
    assert!(exported.contains("envoy_http_ext_authz_error"));
    assert!(sidecar_count > 10 && exported.len() > sidecar_count);

    let file = rule_file();
    let mut exprs: Vec<(String, String)> = rules(&file)
        .into_iter()
        .map(|r| {
            let name = text(r, "alert", "rule");
            (format!("alert {name}"), text(r, "expr", name).to_owned())
        })
        .collect();
    exprs.extend(
        dashboard_exprs()
            .into_iter()
            .map(|e| ("dashboard".to_owned(), e)),
    );
    let mut used = BTreeSet::new();
    for (what, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: `{expr}` names no metric");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what}: `{expr}` names {name}, which neither m2m-authz's /metrics nor Envoy's /stats/prometheus exports"
            );
            used.insert(name);
        }
    }
    for prefix in ["m2m_authz_", "envoy_"] {
        assert!(
            used.iter().any(|n| n.starts_with(prefix)),
            "no {prefix} metric used"
        );
    }
}

/// One raw HTTP/1.1 request (the path sent as is, no client-side normalisation); the status.
async fn raw_status(addr: std::net::SocketAddr, method: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to Envoy's stats listener");
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: pod\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("Envoy answers within 10s")
    .expect("read response");
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP status in {head:?}"))
}

/// The example Pod's Envoy bootstrap (deploy/kubernetes/envoy.yaml), run for real with its ports
/// moved to free loopback ones: its `stats` listener forwards GET /stats/prometheus to the admin
/// and nothing else, whatever the spelling or method, and the admin stays on loopback.
#[tokio::test]
async fn envoy_stats_listener_exposes_only_prometheus_stats() {
    crate::needs!(Envoy);
    let bootstrap = read("deploy/kubernetes/envoy.yaml");
    let parsed: Value = serde_yaml_ng::from_str(&bootstrap).unwrap();
    assert_eq!(
        parsed["admin"]["address"]["socket_address"]["address"].as_str(),
        Some("127.0.0.1"),
        "Envoy's admin must stay on loopback"
    );
    let dir = TempDir::new("envoy-stats");
    let [admin, ingress, probes, stats] =
        std::array::from_fn(|_| common::process::free_addr().port());
    let mut config = bootstrap;
    for (from, to) in [
        (
            "port_value: 9902".to_owned(),
            format!("port_value: {admin}"),
        ),
        (
            "port_value: 10000".to_owned(),
            format!("port_value: {ingress}"),
        ),
        (
            "port_value: 9903".to_owned(),
            format!("port_value: {probes}"),
        ),
        (
            "port_value: 9904".to_owned(),
            format!("port_value: {stats}"),
        ),
        (
            "address: 0.0.0.0".to_owned(),
            "address: 127.0.0.1".to_owned(),
        ),
        (
            "/var/run/m2m-authz/check.sock".to_owned(),
            dir.join("check.sock").display().to_string(),
        ),
    ] {
        assert!(
            config.contains(&from),
            "{from:?} not in deploy/kubernetes/envoy.yaml"
        );
        config = config.replace(&from, &to);
    }
    std::fs::write(dir.join("envoy.yaml"), &config).unwrap();
    let mut cmd = Command::new(common::tools::envoy_bin());
    cmd.arg("-c")
        .arg(dir.join("envoy.yaml"))
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(common::process::log_file(&dir.join("stdout.log")))
        .stderr(common::process::log_file(&dir.join("stderr.log")));
    let _envoy = common::process::ChildGuard::spawn("envoy", &mut cmd);
    let stats_url = format!("http://127.0.0.1:{stats}/stats/prometheus");
    let body = common::process::wait_for_http_ok(&stats_url, common::envoy::START_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                common::process::tail(&dir.join("stderr.log"), 40)
            )
        });
    assert!(
        exposed_names(&body).contains("envoy_http_ext_authz_error"),
        "the stats listener serves Envoy's Prometheus stats"
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], stats).into();
    for (method, path, expected) in [
        ("GET", "/stats/prometheus", 200),
        ("GET", "/stats/prometheus?usedonly", 200),
        ("GET", "/stats/./prometheus", 200),
        ("GET", "//stats//prometheus", 200),
        ("HEAD", "/stats/prometheus", 404),
        ("POST", "/stats/prometheus", 404),
        ("GET", "/stats", 404),
        ("GET", "/stats/prometheus/", 404),
        ("GET", "/STATS/prometheus", 404),
        ("GET", "/config_dump", 404),
        ("GET", "/clusters", 404),
        ("POST", "/logging?level=trace", 404),
        ("POST", "/healthcheck/fail", 404),
        ("POST", "/quitquitquit", 404),
        ("POST", "/stats/prometheus/../../quitquitquit", 404),
        ("POST", "/stats/prometheus/..%2F..%2Fquitquitquit", 400),
        ("GET", "/stats%2Fprometheus", 400),
    ] {
        assert_eq!(
            raw_status(addr, method, path).await,
            expected,
            "{method} {path} on the stats listener"
        );
    }
    // Nothing above reached the admin's controls: Envoy still serves.
    let live = common::process::wait_for_http_ok(
        &format!("http://127.0.0.1:{admin}/ready"),
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("Envoy's admin still answers");
    assert_eq!(live.trim(), "LIVE");
}
