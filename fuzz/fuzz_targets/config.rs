//! The YAML configuration (`config::Config::from_yaml`): parsing and whole-file validation of
//! arbitrary text must refuse or accept, never panic, and an accepted file must hold together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_authz::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_yaml(text) {
        // What start-up does with a valid config, short of binding ports.
        let _ = config.summary();
        assert!(config.provider.resolved_token_url().is_some());
        assert!(config.provider.resolved_jwks_url().is_some());
        assert!(!config.identity.headers.is_empty());
        assert!(config.cache.max_entries >= 1);
        let _ = m2m_authz::identity::IdentityMap::new(&config.identity)
            .expect("validated identity config builds");
        let _ = m2m_authz::credentials::Extractor::new(&config.credentials);
    }
});
