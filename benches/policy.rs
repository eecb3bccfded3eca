//! Policy matching: `Policy::select` over ~50 rules (first match wins), for a request matching
//! the first rule, one in the middle, the last, and none (the default).

use criterion::{Criterion, criterion_group, criterion_main};
use m2m_authz::policy::{Policy, PolicyDocument, ScopeClaim};
use m2m_authz::request::AuthRequest;
use std::hint::black_box;

fn rules() -> String {
    let mut y = String::from("rules:\n");
    y.push_str("  - name: health\n    match: {path: /healthz}\n    allow_anonymous: true\n");
    for i in 0..48 {
        match i % 4 {
            0 => y.push_str(&format!(
                "  - name: r{i}\n    match: {{methods: [GET, HEAD], host: \"*.svc{i}.example.com\", path: \"/v1/res{i}/{{id}}\"}}\n    require: {{any_of: [\"read:res{i}\", \"admin:res{i}\"]}}\n"
            )),
            1 => y.push_str(&format!(
                "  - name: r{i}\n    match: {{methods: [POST, PUT], path: {{prefix: /v1/res{i}/}}}}\n    require: {{all_of: [\"write:res{i}\"]}}\n"
            )),
            2 => y.push_str(&format!(
                "  - name: r{i}\n    match: {{context: {{policy: p{i}}}}}\n    require: {{all_of: [\"p{i}\"]}}\n"
            )),
            _ => y.push_str(&format!(
                "  - name: r{i}\n    match: {{host: api{i}.example.com, path: \"/v2/items{i}/{{a}}/sub/{{b}}\"}}\n    require: {{}}\n"
            )),
        }
    }
    y.push_str("  - name: admin\n    match: {path: {prefix: /admin}}\n    deny: true\n");
    y.push_str("default: {require: {}}\n");
    y
}

fn request(method: &str, host: &str, path: &str) -> AuthRequest {
    AuthRequest {
        method: method.into(),
        host: host.into(),
        path: path.into(),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let doc: PolicyDocument = serde_yaml_ng::from_str(&rules()).expect("policy yaml");
    let policy = Policy::compile(
        &doc.rules,
        doc.default.as_ref(),
        ScopeClaim::Auto,
        "",
        &["default".to_owned()],
    )
    .expect("policy");
    assert_eq!(policy.rules().len(), 50);
    let mut g = c.benchmark_group("policy_select_50_rules");
    for (name, req) in [
        ("first_rule", request("GET", "a.example.com", "/healthz")),
        (
            "middle_rule",
            request("GET", "x.svc24.example.com:443", "/v1/res24/42?x=1"),
        ),
        ("last_rule", request("GET", "a.example.com", "/admin/users")),
        (
            "no_match_default",
            request("GET", "a.example.com", "/v9/nothing/here"),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(policy.select(black_box(&req))).map(|s| s.0))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
