//! JWT verification (`verify::verify`) against a fixed key set (RS256 rsa-a, ES256 ec-p256,
//! EdDSA ed25519), then the claims → identity headers mapping of whatever passes.
//!
//! Input: a mode byte, then either a token as text (mode even), or a header JSON and a claims
//! JSON separated by a NUL byte (mode odd), which are signed here with the Ed25519 fixture key so
//! that the claim rules behind the signature check are reached too.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use m2m_authz::config::IdentityConfig;
use m2m_authz::identity::IdentityMap;
use m2m_authz::jwks::{self, KeySet};
use m2m_authz::verify::{TokenRules, verify};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api://test";

struct Fixed {
    keys: KeySet,
    ed: EncodingKey,
    identity: IdentityMap,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let doc = format!(
            r#"{{"keys":[{},{},{}]}}"#,
            include_str!("../../tests/fixtures/rsa-a.jwk.json"),
            include_str!("../../tests/fixtures/ec-p256.jwk.json"),
            include_str!("../../tests/fixtures/ed25519.jwk.json"),
        );
        let pinned = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        Fixed {
            keys: jwks::parse(doc.as_bytes(), &pinned, tokio::time::Instant::now()).unwrap(),
            ed: EncodingKey::from_ed_pem(include_bytes!("../../tests/fixtures/ed25519.pem"))
                .unwrap(),
            identity: IdentityMap::new(&IdentityConfig::default()).unwrap(),
        }
    })
}

fn rules(mode: u8) -> TokenRules {
    TokenRules {
        issuers: vec![ISSUER.into()],
        audiences: if mode & 2 == 0 {
            vec![AUDIENCE.into()]
        } else {
            Vec::new()
        },
        leeway: Duration::from_secs(30),
        max_age: (mode & 4 != 0).then_some(Duration::from_secs(3600)),
        token_type: (mode & 8 == 0).then(|| "jwt".to_owned()),
        max_bytes: 8192,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixed();
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b"{}"[..]),
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &f.ed, Algorithm::EdDSA)
        else {
            return;
        };
        format!("{message}.{signature}")
    };
    let now = 1_800_000_000;
    let rules = rules(mode);
    if let Ok(v) = verify(&token, &f.keys, &rules, now) {
        // Whatever passed met every rule.
        assert!(token.len() <= rules.max_bytes);
        assert_eq!(v.claims.get("exp").and_then(|e| e.as_u64()), Some(v.exp));
        assert!(v.claims.get("iss").and_then(|i| i.as_str()) == Some(ISSUER));
        if let Some(kid) = &v.kid {
            assert!(f.keys.find(Some(kid)).is_some());
        }
        if let Ok(headers) = f.identity.headers(&v.claims) {
            for (name, value) in headers {
                assert!(!name.is_empty());
                assert!(!value.is_empty() && value.len() <= 1024);
                assert!(
                    value.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{value:?}"
                );
            }
        }
    }
});
