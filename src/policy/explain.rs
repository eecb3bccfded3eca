//! `m2m-authz policy explain`: which rule a request would match and what the decision would be,
//! for an operator wondering why a request was denied. Uses the same compiled policy and matcher
//! as the request path.

use std::collections::BTreeMap;

use super::{Action, Matched, Policy, Target};
use crate::request::AuthRequest;

/// A request as the operator describes it on the command line.
#[derive(Debug, Clone, Default)]
pub struct Question {
    pub method: String,
    pub path: String,
    pub host: String,
    pub context: BTreeMap<String, String>,
    /// The scopes the caller's token would grant; `None`: not given.
    pub scopes: Option<Vec<String>>,
}

pub fn explain(policy: &Policy, q: &Question) -> String {
    let request = AuthRequest {
        method: q.method.to_ascii_uppercase(),
        host: q.host.clone(),
        path: q.path.clone(),
        context: q.context.clone(),
        ..Default::default()
    };
    let mut out = String::new();
    let selected = Target::of(&request).and_then(|target| {
        out.push_str(&format!("canonical path: {}\n", target.path));
        if !target.host.is_empty() {
            out.push_str(&format!("canonical host: {}\n", target.host));
        }
        policy.select_target(&request.method, &target, &request.context)
    });
    let (matched, action) = match selected {
        Ok(s) => s,
        Err(e) => {
            let hint = if e == crate::canonical::TargetError::MissingHost {
                "; some rules match on host: give --host"
            } else {
                ""
            };
            out.push_str(&format!(
                "rule: none (refused before any rule is consulted: {e}{hint})\n"
            ));
            out.push_str("decision: deny 400 invalid_request\n");
            return out;
        }
    };
    match matched {
        Matched::Rule { index, name } => out.push_str(&format!(
            "rule: {name} (rule {} of {}; first match wins)\n",
            index + 1,
            policy.rules().len()
        )),
        Matched::Default => out.push_str(&format!(
            "rule: default (none of the {} rules matched)\n",
            policy.rules().len()
        )),
    }
    match action {
        Action::Deny => {
            out.push_str("action: deny\n");
            out.push_str("decision: deny 403 access_denied (the route is closed by policy)\n");
        }
        Action::AllowAnonymous => {
            out.push_str("action: allow_anonymous\n");
            out.push_str(
                "decision: allow without a credential; identity and credential headers are stripped\n",
            );
        }
        Action::Require(r) => {
            let mut need = Vec::new();
            if !r.all_of.is_empty() {
                need.push(format!("all of [{}]", r.all_of.join(" ")));
            }
            if !r.any_of.is_empty() {
                need.push(format!("any of [{}]", r.any_of.join(" ")));
            }
            let need = if need.is_empty() {
                "a valid credential".to_owned()
            } else {
                format!("a valid credential with {}", need.join(" and "))
            };
            let upstream = match r.upstream {
                super::UpstreamCredential::Strip => "stripped",
                super::UpstreamCredential::Bearer => "replaced by Bearer <access token>",
            };
            out.push_str(&format!(
                "action: require {need}; upstream credential: {upstream}\n"
            ));
            match &q.scopes {
                None => out.push_str(
                    "decision: allow if the credential is valid and its scopes suffice (give --scopes to check)\n",
                ),
                Some(granted) if r.met_by(granted) => out.push_str(&format!(
                    "decision with scopes \"{}\": allow (if the credential is valid)\n",
                    granted.join(" ")
                )),
                Some(granted) => out.push_str(&format!(
                    "decision with scopes \"{}\": deny 403 insufficient_scope (required: {})\n",
                    granted.join(" "),
                    r.describe()
                )),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyDocument, ScopeClaim};

    #[test]
    fn explains_rule_and_decision() {
        let doc: PolicyDocument = serde_yaml_ng::from_str(
            "rules:\n  - {name: read, match: {methods: [GET], path: '/v1/orders/{id}'}, require: {all_of: ['read:orders']}}\n  - {name: public, match: {path: {prefix: /pub}}, allow_anonymous: true}\ndefault: {deny: true}\n",
        )
        .unwrap();
        let p = Policy::compile(
            &doc.rules,
            doc.default.as_ref(),
            ScopeClaim::Auto,
            "",
            &["default".to_owned()],
        )
        .unwrap();
        let q = |m: &str, path: &str, scopes: Option<&str>| Question {
            method: m.into(),
            path: path.into(),
            scopes: scopes.map(|s| s.split(' ').map(str::to_owned).collect()),
            ..Default::default()
        };
        let ok = explain(&p, &q("get", "/v1/orders/7", Some("read:*")));
        assert!(ok.contains("\nrule: read (rule 1 of 2"), "{ok}");
        assert!(ok.contains(": allow"), "{ok}");
        let no = explain(&p, &q("GET", "/v1/orders/7", Some("write:orders")));
        assert!(
            no.contains("deny 403 insufficient_scope (required: read:orders)"),
            "{no}"
        );
        let public = explain(&p, &q("POST", "/pub/x", None));
        assert!(
            public.contains("rule: public") && public.contains("allow without a credential"),
            "{public}"
        );
        let default = explain(&p, &q("GET", "/elsewhere", None));
        assert!(
            default.contains("\nrule: default") && default.contains("deny 403"),
            "{default}"
        );
        // The canonical path is what was matched, and is shown.
        let spelled = explain(&p, &q("GET", "//v1/orders/%37/?x=1", Some("read:orders")));
        assert!(
            spelled.starts_with("canonical path: /v1/orders/7/\n")
                && spelled.contains("\nrule: read"),
            "{spelled}"
        );
        let host = explain(
            &p,
            &Question {
                host: "API.Example.com.:443".into(),
                ..q("GET", "/x", None)
            },
        );
        assert!(host.contains("canonical host: api.example.com\n"), "{host}");
        for bad in ["/a%2fb", "/../x", "*"] {
            let refused = explain(&p, &q("GET", bad, None));
            assert!(
                refused.contains("rule: none") && refused.contains("deny 400 invalid_request"),
                "{refused}"
            );
        }
    }
}

/// `m2m-authz policy explain` arguments.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[arg(long, env = crate::defaults::CONFIG_ENV)]
    pub config: std::path::PathBuf,
    #[arg(long, default_value = "GET")]
    pub method: String,
    #[arg(long)]
    pub path: String,
    #[arg(long, default_value = "")]
    pub host: String,
    /// The scopes the caller's token grants, space-separated.
    #[arg(long)]
    pub scopes: Option<String>,
    /// An Envoy context extension, `key=value`; repeatable.
    #[arg(long = "context", value_parser = parse_pair)]
    pub context: Vec<(String, String)>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Loads the config (and its policy file) as `serve` would, and explains the question.
pub fn run(args: &ExplainArgs) -> Result<String, crate::config::ConfigError> {
    let config = crate::config::Config::load(&args.config)?;
    let live = super::reload::LivePolicy::from_config(
        config.policy.as_ref(),
        config.dir.as_deref(),
        &config.provider_names(),
    )
    .map_err(|e| crate::config::ConfigError::Invalid {
        field: e.field,
        problem: e.problem,
    })?;
    let question = Question {
        method: args.method.clone(),
        path: args.path.clone(),
        host: args.host.clone(),
        context: args.context.iter().cloned().collect(),
        scopes: args.scopes.as_ref().map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
    };
    Ok(explain(&live.snapshot(), &question))
}
