//! A CheckRequest as arbitrary protobuf bytes (what anyone reaching the gRPC port can send):
//! decoded with prost, turned into an `AuthRequest` (`ext_authz::to_auth_request`), and its
//! credentials extracted as a check would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_authz::config::CredentialsConfig;
use m2m_authz::credentials::Extractor;
use m2m_authz::ext_authz::to_auth_request;
use m2m_authz::proto::envoy::service::auth::v3::CheckRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(check) = CheckRequest::decode(data) else {
        return;
    };
    let request = to_auth_request(check);
    let _ = Extractor::new(&CredentialsConfig::default()).extract(&request.headers);
});
