//! The live policy: compiled once, published through an `ArcSwap` so every check reads one whole
//! snapshot, and replaced atomically when `policy.file` changes (polled) or on SIGHUP. A file that
//! fails to parse or validate leaves the previous policy in place, is logged once as one clear
//! error, and is counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::{Policy, PolicyConfig, PolicyDocument, PolicyError, ScopeClaim};

pub struct LivePolicy {
    current: ArcSwap<Policy>,
    file: Option<PolicyFile>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

struct PolicyFile {
    path: PathBuf,
    scope_claim: ScopeClaim,
    /// The configured provider names, which rules may reference.
    providers: Vec<String>,
    interval: Duration,
    /// SHA-256 of the content last applied or rejected, so an unchanged file is not re-parsed
    /// and a broken one is reported once, not on every poll.
    last_seen: std::sync::Mutex<[u8; 32]>,
}

impl LivePolicy {
    /// Builds the policy from config: inline rules, a policy file (relative paths are taken from
    /// `base_dir`, the main config's folder), or none (require a credential everywhere).
    pub fn from_config(
        config: Option<&PolicyConfig>,
        base_dir: Option<&Path>,
        providers: &[String],
    ) -> Result<Self, PolicyError> {
        let Some(config) = config else {
            return Ok(Self::fixed(Policy::require_all()));
        };
        let Some(file) = &config.file else {
            let policy = Policy::compile(
                &config.rules,
                config.default.as_ref(),
                config.scope_claim,
                "policy.",
                providers,
            )?;
            return Ok(Self::fixed(policy));
        };
        if !config.rules.is_empty() || config.default.is_some() {
            return Err(PolicyError {
                field: "policy.file".into(),
                problem: "give rules either inline or in the file, not both".into(),
            });
        }
        let path = match base_dir {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.clone(),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
            field: "policy.file".into(),
            problem: format!("cannot read {}: {e}", path.display()),
        })?;
        let policy = parse(&text, config.scope_claim, providers).map_err(|e| PolicyError {
            field: format!("policy.file ({}): {}", path.display(), e.field),
            problem: e.problem,
        })?;
        Ok(LivePolicy {
            current: ArcSwap::from_pointee(policy),
            file: Some(PolicyFile {
                path,
                scope_claim: config.scope_claim,
                providers: providers.to_vec(),
                interval: config.reload_interval,
                last_seen: std::sync::Mutex::new(Sha256::digest(text.as_bytes()).into()),
            }),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    pub fn fixed(policy: Policy) -> Self {
        LivePolicy {
            current: ArcSwap::from_pointee(policy),
            file: None,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    /// The current policy, whole, for a short look.
    pub fn load(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    /// The current policy, whole, to hold across awaits.
    pub fn snapshot(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the policy file. `Ok(true)`: a new policy is in force; `Ok(false)`: nothing to
    /// do (no file, or unchanged); `Err`: the file is broken and the previous policy stays.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(&file.path).map_err(|e| PolicyError {
            field: "policy.file".into(),
            problem: format!("cannot read {}: {e}", file.path.display()),
        });
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        {
            let Ok(mut last) = file.last_seen.lock() else {
                return Ok(false);
            };
            if *last == digest {
                return Ok(false);
            }
            *last = digest;
        }
        match parse(&text, file.scope_claim, &file.providers) {
            Ok(policy) => {
                self.current.store(Arc::new(policy));
                self.reloads_ok.fetch_add(1, Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// Polls the file every `policy.reload_interval`, and reloads at once on SIGHUP. Returns
    /// `None` when there is no file to watch.
    pub fn spawn_watcher(self: Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.file.as_ref()?.interval;
        Some(tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trigger = match hangup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = tick.tick() => "change",
                        _ = h.recv() => "SIGHUP",
                    },
                    None => {
                        tick.tick().await;
                        "change"
                    }
                };
                match self.reload() {
                    Ok(true) => tracing::info!(trigger, "policy reloaded"),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::error!(trigger, %error, "policy reload failed; keeping the previous policy")
                    }
                }
            }
        }))
    }
}

fn parse(text: &str, scope_claim: ScopeClaim, providers: &[String]) -> Result<Policy, PolicyError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let doc: PolicyDocument = serde_path_to_error::deserialize(de).map_err(|e| PolicyError {
        field: e.path().to_string(),
        problem: e.into_inner().to_string(),
    })?;
    Policy::compile(&doc.rules, doc.default.as_ref(), scope_claim, "", providers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Matched};
    use crate::request::AuthRequest;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "m2m-policy-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn first_rule(p: &LivePolicy) -> String {
        match p.load().select(&AuthRequest::default()).0 {
            Matched::Rule { name, .. } => name.to_owned(),
            Matched::Default => "default".into(),
        }
    }

    #[test]
    fn reloads_good_files_and_keeps_the_old_policy_on_bad_ones() {
        let d = dir();
        std::fs::write(d.join("policy.yaml"), "rules: [{name: one, deny: true}]\n").unwrap();
        let config: PolicyConfig = serde_yaml_ng::from_str("file: policy.yaml").unwrap();
        let live =
            LivePolicy::from_config(Some(&config), Some(&d), &["default".to_owned()]).unwrap();
        assert_eq!(first_rule(&live), "one");
        assert_eq!(live.reload(), Ok(false), "unchanged");

        std::fs::write(
            d.join("policy.yaml"),
            "rules: [{name: two, allow_anonymous: true}]\n",
        )
        .unwrap();
        assert_eq!(live.reload(), Ok(true));
        assert_eq!(first_rule(&live), "two");
        assert_eq!(
            live.load().select(&AuthRequest::default()).1,
            &Action::AllowAnonymous
        );

        std::fs::write(d.join("policy.yaml"), "rules: [{name: three}]\n").unwrap();
        let e = live.reload().unwrap_err();
        assert_eq!(e.field, "rules[0]");
        assert_eq!(
            first_rule(&live),
            "two",
            "a broken file keeps the previous policy"
        );
        assert_eq!(live.reload(), Ok(false), "a broken file is reported once");

        std::fs::write(
            d.join("policy.yaml"),
            "rules: [{name: four, deny: true}]\nbogus: 1\n",
        )
        .unwrap();
        assert!(live.reload().is_err());
        std::fs::remove_file(d.join("policy.yaml")).unwrap();
        assert!(live.reload().is_err());
        assert_eq!(first_rule(&live), "two");
        assert_eq!(
            (
                live.reloads_ok.load(Relaxed),
                live.reloads_failed.load(Relaxed)
            ),
            (1, 3)
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn startup_errors_name_the_file_and_field() {
        let d = dir();
        std::fs::write(
            d.join("p.yaml"),
            "rules: [{name: a, require: {all_of: ['x:']}}]\n",
        )
        .unwrap();
        let config: PolicyConfig = serde_yaml_ng::from_str("file: p.yaml").unwrap();
        let e = LivePolicy::from_config(Some(&config), Some(&d), &["default".to_owned()])
            .err()
            .unwrap();
        assert!(
            e.field.starts_with("policy.file") && e.field.ends_with("rules[0].require.all_of[0]"),
            "{e}"
        );
        let config: PolicyConfig = serde_yaml_ng::from_str("file: missing.yaml").unwrap();
        assert_eq!(
            LivePolicy::from_config(Some(&config), Some(&d), &["default".to_owned()])
                .err()
                .unwrap()
                .field,
            "policy.file"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
