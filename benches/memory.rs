//! Resident memory per cached credential: the real `TokenCache` filled with identities built by
//! the sidecar's own `IdentityBuilder`. Run by `m2m-authz-loadgen memory` (the system allocator)
//! and `m2m-authz-tuned memory` (the sidecar's allocator: the figure that holds for the sidecar).

use std::sync::Arc;
use std::time::Duration;

use crate::common::provider::Minter;

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Fills the real `TokenCache` with identities built by the sidecar's own `IdentityBuilder` from
/// realistic claims, under the default identity and credential config: what one cached Basic
/// credential costs. `keep_tokens`: as when some route forwards the access token upstream.
pub fn memory(entries: usize, keep_tokens: bool) -> anyhow::Result<()> {
    use m2m_authz::cache::{CacheSettings, KeyDeriver, TokenCache};
    use m2m_authz::config::{CredentialsConfig, IdentityConfig};
    use m2m_authz::credentials::Extractor;
    use m2m_authz::identity::{IdentityBuilder, IdentityMap};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    rt.block_on(async {
        // A real token's length (one signature; the entries get copies of that length).
        let template = Minter.mint("client-00000000", "user-client-00000000");
        let settings = CacheSettings {
            max_entries: entries + 1,
            max_negative_entries: 50_000,
            refresh_ahead: 0.8,
            expiry_margin: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
            max_credential_age: None,
        };
        let builder = IdentityBuilder::new(
            IdentityMap::new(&IdentityConfig::default()).map_err(anyhow::Error::msg)?,
            Extractor::new(&CredentialsConfig::default()).credential_headers(),
        );
        let keys = KeyDeriver::default();
        let slot = b"default http://127.0.0.1:1/oauth2/token";
        let cache = TokenCache::new(settings, Arc::new(m2m_authz::stats::Stats::default()));
        let before = vm_rss_kib();
        let mut values = 0usize;
        let mut token_bytes = 0usize;
        for i in 0..entries {
            let client = format!("client-{i:08}");
            let user = format!("user-{client}");
            let mut token = template.clone();
            token.replace_range(..client.len(), &client);
            values += user.len() + client.len();
            let claims = serde_json::json!({"sub": client, "user_id": user, "scope": "read:orders"});
            let serde_json::Value::Object(claims) = claims else {
                unreachable!()
            };
            let kept = keep_tokens.then_some(token.as_str());
            token_bytes += kept.map_or(0, str::len);
            let identity = builder
                .build(&claims, vec!["read:orders".into()], kept)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let secret = format!("secret-{i:08}-xxxxxxxxxxxxxxxxxxxxxxxx");
            let key = keys.derive(&[
                b"client",
                slot,
                client.as_bytes(),
                secret.as_bytes(),
                b"",
            ]);
            cache.insert(key, Arc::new(identity), Duration::from_secs(3600));
        }
        let after = vm_rss_kib();
        assert_eq!(cache.len(), entries);
        let per = (after.saturating_sub(before) * 1024) as f64 / entries as f64;
        let n = entries as f64;
        println!(
            "memory entries={entries} keep_tokens={keep_tokens} rss_before_kib={before} rss_after_kib={after} \
             bytes_per_entry={per:.0} header_values={:.0} access_token={:.0} per_entry_excl_values_and_token={:.0}",
            values as f64 / n,
            token_bytes as f64 / n,
            per - (values + token_bytes) as f64 / n
        );
        Ok(())
    })
}
