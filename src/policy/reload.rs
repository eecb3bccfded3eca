//! The live policy: compiled once, published through an `ArcSwap` so every check reads one whole
//! snapshot, and replaced atomically when `policy.file` changes (polled) or on SIGHUP.
//!
//! A reload is all or nothing and never weakens the policy silently:
//! - a file is applied only once it has stopped changing: the same size, modification time and
//!   SHA-256 on two reads at least half a `reload_interval` apart (SIGHUP starts the same two
//!   reads at once), so a file caught half-written — even one that still parses — is never
//!   applied; writing the new file beside the old one and renaming it over is still best;
//! - an empty file, or one without an explicit `default`, is refused (a file emptied by `>` or
//!   cut short would otherwise read as "no rules");
//! - a file that is not a regular file, is larger than `MAX_POLICY_FILE_BYTES`, or is not UTF-8
//!   is refused without being parsed;
//! - a refused file leaves the previous policy in place, and is counted and logged once (not
//!   on every poll) until the file changes again.
//!
//! One file (about 400 lines of code, the rest its unit tests): the settle-then-swap rules above
//! are one state machine, and the tests drive its private steps.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Policy, PolicyConfig, PolicyDocument, PolicyError, ScopeClaim};
use crate::supervisor::{Stage, Supervisor};

/// The largest policy file that is read. A policy of thousands of rules fits many times over;
/// a bigger file is refused unread, so a mistaken path (a log, a device) costs nothing.
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;

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
    state: std::sync::Mutex<FileState>,
}

impl PolicyFile {
    /// How long a changed file must stay the same before it is applied.
    fn settle(&self) -> Duration {
        self.interval / 2
    }
}

struct FileState {
    /// SHA-256 of the content last applied or refused, so an unchanged file is not re-parsed
    /// and a broken one is reported once, not on every poll.
    settled: [u8; 32],
    /// New content seen once, and when it was first seen: applied when seen again unchanged
    /// after the settle time.
    pending: Option<(Snapshot, Instant)>,
    /// The last failure to read the file (missing, unreadable), reported once until it changes.
    read_failure: Option<String>,
}

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    len: u64,
    modified: Option<SystemTime>,
    digest: [u8; 32],
}

/// What one look at the policy file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// No file, or the content in force (or already refused).
    Unchanged,
    /// New content, not yet seen unchanged for the settle time: look again after it.
    Settling,
    /// A new policy is in force.
    Applied,
}

fn file_error(problem: impl Into<String>) -> PolicyError {
    PolicyError {
        field: "policy.file".into(),
        problem: problem.into(),
    }
}

/// Reads the policy file whole. `Ok(None)`: it changed while being read (a writer is at work).
fn read_file(path: &Path) -> Result<Option<(String, Snapshot)>, PolicyError> {
    let cannot = |e: std::io::Error| file_error(format!("cannot read {}: {e}", path.display()));
    let before = std::fs::metadata(path).map_err(cannot)?;
    // Checked before opening: opening a FIFO would block until someone writes to it.
    if !before.is_file() {
        return Err(file_error(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let too_big = || {
        file_error(format!(
            "{} is larger than {MAX_POLICY_FILE_BYTES} bytes",
            path.display()
        ))
    };
    if before.len() > MAX_POLICY_FILE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_big());
    }
    let after = std::fs::metadata(path).map_err(cannot)?;
    let modified = before.modified().ok();
    if after.len() != bytes.len() as u64 || after.modified().ok() != modified {
        return Ok(None);
    }
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let text = String::from_utf8(bytes)
        .map_err(|_| file_error(format!("{} is not UTF-8 text", path.display())))?;
    Ok(Some((
        text,
        Snapshot {
            len: after.len(),
            modified,
            digest,
        },
    )))
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
            if !config.rules.is_empty() && config.default.is_none() {
                return Err(PolicyError {
                    field: "policy.default".into(),
                    problem: "required with rules: say what applies when no rule matches, e.g. default: {require: {}}".into(),
                });
            }
            return Ok(Self::fixed(policy));
        };
        if !config.rules.is_empty() || config.default.is_some() {
            return Err(PolicyError {
                field: "policy.file".into(),
                problem: "give rules either inline or in the file, not both".into(),
            });
        }
        if config.reload_interval.is_zero() {
            return Err(PolicyError {
                field: "policy.reload_interval".into(),
                problem: "expected a duration above zero".into(),
            });
        }
        let path = match base_dir {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.clone(),
        };
        let Some((text, snapshot)) = read_file(&path)? else {
            return Err(file_error(format!(
                "{} changed while it was read; start again once it is written",
                path.display()
            )));
        };
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
                state: std::sync::Mutex::new(FileState {
                    settled: snapshot.digest,
                    pending: None,
                    read_failure: None,
                }),
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

    /// One look at the policy file at `now`, as the watcher takes on each poll and on SIGHUP.
    /// New content is applied only when this look finds it as an earlier look did, at least
    /// the settle time before. `Err`: the file is unreadable or refused, the previous policy
    /// stays; returned (and counted) once per failure, not again until the file changes.
    pub fn poll(&self, now: Instant) -> Result<Poll, PolicyError> {
        let Some(file) = &self.file else {
            return Ok(Poll::Unchanged);
        };
        let Ok(mut state) = file.state.lock() else {
            return Ok(Poll::Unchanged);
        };
        let (text, snapshot) = match read_file(&file.path) {
            Ok(Some(read)) => read,
            Ok(None) => {
                state.pending = None;
                return Ok(Poll::Settling);
            }
            Err(e) => {
                state.pending = None;
                let text = e.to_string();
                if state.read_failure.as_ref() == Some(&text) {
                    return Ok(Poll::Unchanged);
                }
                state.read_failure = Some(text);
                self.reloads_failed.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        state.read_failure = None;
        if snapshot.digest == state.settled {
            state.pending = None;
            return Ok(Poll::Unchanged);
        }
        let unchanged_for = match &state.pending {
            Some((seen, since)) if *seen == snapshot => Some(now.saturating_duration_since(*since)),
            _ => None,
        };
        match unchanged_for {
            Some(age) if age >= file.settle() => {}
            Some(_) => return Ok(Poll::Settling),
            None => {
                state.pending = Some((snapshot, now));
                return Ok(Poll::Settling);
            }
        }
        state.pending = None;
        state.settled = snapshot.digest;
        self.apply(file, &text).map(|()| Poll::Applied)
    }

    /// Reads and applies the policy file now, without waiting for it to settle: for callers
    /// that know the file is complete (tests, tools). `Ok(true)`: a new policy is in force;
    /// `Ok(false)`: nothing to do (no file, or unchanged); `Err`: the file is refused and the
    /// previous policy stays.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let Ok(mut state) = file.state.lock() else {
            return Ok(false);
        };
        let read = match read_file(&file.path) {
            Ok(Some(read)) => Ok(read),
            Ok(None) => Err(file_error(format!(
                "{} changed while it was read",
                file.path.display()
            ))),
            Err(e) => Err(e),
        };
        let (text, snapshot) = match read {
            Ok(read) => read,
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        state.read_failure = None;
        state.pending = None;
        if snapshot.digest == state.settled {
            return Ok(false);
        }
        state.settled = snapshot.digest;
        self.apply(file, &text).map(|()| true)
    }

    fn apply(&self, file: &PolicyFile, text: &str) -> Result<(), PolicyError> {
        match parse(text, file.scope_claim, &file.providers) {
            Ok(policy) => {
                self.current.store(Arc::new(policy));
                self.reloads_ok.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// Polls the file every `policy.reload_interval` (and again after the settle time while a
    /// change settles), and looks at once on SIGHUP, until `supervisor` stops. Does nothing
    /// when there is no file.
    pub fn spawn_watcher(self: Arc<Self>, supervisor: &Supervisor) {
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let (interval, settle) = (file.interval, file.settle());
        supervisor.spawn(Stage::Background, "policy reload", async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut wait = interval;
            loop {
                let trigger = match hangup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = tokio::time::sleep(wait) => "change",
                        _ = h.recv() => "SIGHUP",
                    },
                    None => {
                        tokio::time::sleep(wait).await;
                        "change"
                    }
                };
                let result = self.poll(Instant::now());
                wait = if result == Ok(Poll::Settling) {
                    settle
                } else {
                    interval
                };
                match result {
                    Ok(Poll::Applied) => tracing::info!(trigger, "policy reloaded"),
                    Ok(Poll::Settling) => {
                        tracing::debug!(trigger, "policy file changed; waiting for it to settle")
                    }
                    Ok(Poll::Unchanged) => {}
                    Err(error) => {
                        tracing::error!(trigger, %error, "policy reload failed; keeping the previous policy")
                    }
                }
            }
        });
    }
}

/// Parses and compiles the text of a policy file, refusing an empty one and one without `default`.
pub fn parse(
    text: &str,
    scope_claim: ScopeClaim,
    providers: &[String],
) -> Result<Policy, PolicyError> {
    if text.trim().is_empty() {
        return Err(PolicyError {
            field: "(document)".into(),
            problem: "the policy file is empty; it must state rules and a default".into(),
        });
    }
    let doc: PolicyDocument =
        crate::yaml::from_str(text).map_err(|(field, problem)| PolicyError {
            field: field.unwrap_or_else(|| ".".to_owned()),
            problem,
        })?;
    let Some(default) = doc.default.as_ref() else {
        return Err(PolicyError {
            field: "default".into(),
            problem: "required: say what applies when no rule matches, e.g. default: {require: {}}"
                .into(),
        });
    };
    Policy::compile(&doc.rules, Some(default), scope_claim, "", providers)
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
        match p.load().select(&AuthRequest::default()).unwrap().0 {
            Matched::Rule { name, .. } => name.to_owned(),
            Matched::Default => "default".into(),
        }
    }

    fn live(d: &Path, interval: &str) -> LivePolicy {
        let config: PolicyConfig =
            serde_yaml_ng::from_str(&format!("file: policy.yaml\nreload_interval: {interval}"))
                .unwrap();
        LivePolicy::from_config(Some(&config), Some(d), &["default".to_owned()]).unwrap()
    }

    fn counts(p: &LivePolicy) -> (u64, u64) {
        (p.reloads_ok.load(Relaxed), p.reloads_failed.load(Relaxed))
    }

    const ONE: &str = "rules: [{name: one, deny: true}]\ndefault: {deny: true}\n";

    #[test]
    fn reloads_good_files_and_keeps_the_old_policy_on_bad_ones() {
        let d = dir();
        std::fs::write(d.join("policy.yaml"), ONE).unwrap();
        let live = live(&d, "2s");
        assert_eq!(first_rule(&live), "one");
        assert_eq!(live.reload(), Ok(false), "unchanged");

        std::fs::write(
            d.join("policy.yaml"),
            "rules: [{name: two, allow_anonymous: true}]\ndefault: {deny: true}\n",
        )
        .unwrap();
        assert_eq!(live.reload(), Ok(true));
        assert_eq!(first_rule(&live), "two");
        assert_eq!(
            live.load().select(&AuthRequest::default()).unwrap().1,
            &Action::AllowAnonymous
        );

        std::fs::write(
            d.join("policy.yaml"),
            "rules: [{name: three}]\ndefault: {deny: true}\n",
        )
        .unwrap();
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
        assert_eq!(counts(&live), (1, 3));
        let _ = std::fs::remove_dir_all(d);
    }

    /// Empty, comment-only and default-less files are refused, each counted and reported
    /// once; the previous policy stays in force throughout.
    #[test]
    fn a_reload_never_drops_the_policy_silently() {
        let d = dir();
        let file = d.join("policy.yaml");
        std::fs::write(&file, ONE).unwrap();
        let live = live(&d, "2s");
        let t0 = Instant::now();
        let settle = Duration::from_secs(1);
        let cases: &[(&str, &str)] = &[
            ("", "(document)"),
            ("\n  \n", "(document)"),
            ("# all rules commented out\n", "default"),
            ("rules: []\n", "default"),
            (
                "rules: [{name: a, allow_anonymous: true}, {name: b, deny: true}]\n",
                "default",
            ),
            (
                "rules: [{name: a, deny: true}]\ndefault: {deny: true}\n---\nrules: []\n",
                "",
            ),
        ];
        for (i, (text, field)) in cases.iter().enumerate() {
            std::fs::write(&file, text).unwrap();
            let at = t0 + settle * (2 * i as u32 + 1);
            assert_eq!(live.poll(at), Ok(Poll::Settling), "{text:?}");
            let e = live.poll(at + settle).unwrap_err();
            assert!(e.field.starts_with(field), "{text:?}: {e}");
            assert_eq!(live.poll(at + settle * 2), Ok(Poll::Unchanged), "{text:?}");
            assert_eq!(first_rule(&live), "one", "{text:?}");
        }
        assert_eq!(counts(&live), (0, cases.len() as u64));

        // A missing file: counted and reported once, not on every poll.
        std::fs::remove_file(&file).unwrap();
        let later = t0 + Duration::from_secs(60);
        assert!(live.poll(later).is_err());
        assert_eq!(live.poll(later + settle), Ok(Poll::Unchanged));
        assert_eq!(counts(&live), (0, cases.len() as u64 + 1));
        // A folder or a FIFO in its place is refused unread.
        std::fs::create_dir(&file).unwrap();
        let e = live.poll(later + settle * 2).unwrap_err();
        assert!(e.problem.contains("not a regular file"), "{e}");
        std::fs::remove_dir(&file).unwrap();
        // Too large: refused unread.
        std::fs::write(&file, vec![b'#'; MAX_POLICY_FILE_BYTES as usize + 1]).unwrap();
        let e = live.poll(later + settle * 3).unwrap_err();
        assert!(e.problem.contains("larger than"), "{e}");
        assert_eq!(first_rule(&live), "one");
        let _ = std::fs::remove_dir_all(d);
    }

    /// A writer caught half-way leaves a file that still parses (here: every rule but the
    /// last, default first). It is never applied: only content seen unchanged for the settle
    /// time is.
    #[test]
    fn a_half_written_file_is_never_applied() {
        let d = dir();
        let file = d.join("policy.yaml");
        std::fs::write(&file, ONE).unwrap();
        let live = live(&d, "2s");
        let full = "default: {require: {}}\nrules:\n  - {name: open, match: {path: /x}, allow_anonymous: true}\n  - {name: closed, match: {path: {prefix: /}}, deny: true}\n";
        let cut = full.len() - full.lines().last().unwrap().len() - 1;
        let t0 = Instant::now();
        let settle = Duration::from_secs(1);

        std::fs::write(&file, &full[..cut]).unwrap();
        assert_eq!(live.poll(t0), Ok(Poll::Settling));
        // Still the same an instant later (a SIGHUP right after a poll): not yet settled.
        assert_eq!(live.poll(t0 + Duration::from_millis(1)), Ok(Poll::Settling));
        std::fs::write(&file, full).unwrap();
        assert_eq!(
            live.poll(t0 + settle),
            Ok(Poll::Settling),
            "changed: wait again"
        );
        assert_eq!(first_rule(&live), "one", "the cut file was never applied");
        assert_eq!(live.poll(t0 + settle * 2), Ok(Poll::Applied));
        assert_eq!(
            live.load()
                .select(&AuthRequest {
                    path: "/y".into(),
                    ..Default::default()
                })
                .unwrap()
                .1,
            &Action::Deny
        );
        assert_eq!(live.poll(t0 + settle * 3), Ok(Poll::Unchanged));
        assert_eq!(counts(&live), (1, 0));

        // Replaced by rename: applied after the settle time the same way.
        std::fs::write(d.join("next.yaml"), ONE).unwrap();
        std::fs::rename(d.join("next.yaml"), &file).unwrap();
        assert_eq!(live.poll(t0 + settle * 4), Ok(Poll::Settling));
        assert_eq!(live.poll(t0 + settle * 5), Ok(Poll::Applied));
        assert_eq!(first_rule(&live), "one");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn startup_errors_name_the_file_and_field() {
        let d = dir();
        let start = |text: &str, config: &str| {
            std::fs::write(d.join("p.yaml"), text).unwrap();
            let config: PolicyConfig = serde_yaml_ng::from_str(config).unwrap();
            LivePolicy::from_config(Some(&config), Some(&d), &["default".to_owned()])
                .err()
                .unwrap()
        };
        let e = start(
            "rules: [{name: a, require: {all_of: ['x:']}}]\ndefault: {deny: true}\n",
            "file: p.yaml",
        );
        assert!(
            e.field.starts_with("policy.file") && e.field.ends_with("rules[0].require.all_of[0]"),
            "{e}"
        );
        let e = start("rules: []\n", "file: p.yaml");
        assert!(e.field.ends_with(": default"), "{e}");
        let e = start("", "file: p.yaml");
        assert!(e.field.ends_with("(document)"), "{e}");
        assert_eq!(start("", "file: missing.yaml").field, "policy.file");
        assert_eq!(
            start("", "file: p.yaml\nreload_interval: 0s").field,
            "policy.reload_interval"
        );
        // Inline rules must state their default too; a policy with no rules need not.
        assert_eq!(
            start("", "rules: [{name: a, deny: true}]").field,
            "policy.default"
        );
        let config: PolicyConfig = serde_yaml_ng::from_str("scope_claim: scp").unwrap();
        assert!(LivePolicy::from_config(Some(&config), None, &["default".to_owned()]).is_ok());
        let _ = std::fs::remove_dir_all(d);
    }
}
