//! m2m-authz: an Envoy ext_authz sidecar that turns machine client credentials into a verified
//! identity for the upstream. The core (credentials, exchange, jwks, verify, cache, identity,
//! decision, authorizer) knows nothing of gRPC; `ext_authz` and `server` are the edge.
//!
//! Dependencies point one way (checked by `tests/architecture.rs`): leaves (`defaults`, `clock`,
//! `canonical`, …) → the config schema (`config`, which imports only leaves and the embedded
//! issuer's own schema) → the settings each module compiles from its section (`settings`
//! compiles them all before any port opens) → the core → the edges (gRPC, admin HTTP, CLI).
//!
//! The core reaches the network only through three small traits — `exchange::TokenEndpoint`,
//! `jwks::KeySource`, `shared_cache::SharedStore` — and reads time only from `clock::Clock`;
//! `authorizer::Parts` gives it the real ones (reqwest, Redis, the system clock) or in-memory
//! fakes. Start and stop are in one place: `server::prepare` builds everything that can fail
//! before any port is bound, `supervisor` owns every background task under one cancellation
//! token, and `shutdown` is the one stop-signal helper of `serve`, `issuer` and `demo`.
//!
//! Optional parts are Cargo features, all on by default: `issuer` (the embedded issuer and the
//! demo), `shared-cache` (the Redis tier) and `otel` (trace export). Without them the lean sidecar
//! refuses, naming the field and the feature, any config that needs them (see `features`).
// `deny`, not `forbid`: one function may opt out with a SAFETY comment — the demo's
// parent-death signal for Envoy (src/demo/mod.rs), which has no safe API (it runs between fork
// and exec). Nothing else may.
#![deny(unsafe_code)]

pub mod admin;
pub mod answer;
pub mod authorizer;
pub mod cache;
pub mod canonical;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod defaults;
#[cfg(feature = "issuer")]
pub mod demo;
pub mod discovery;
pub mod exchange;
pub mod ext_authz;
pub mod features;
pub mod flight;
pub mod grpc_tls;
pub mod http_authz;
mod http_body;
pub mod identity;
pub mod introspect;
#[cfg(feature = "issuer")]
pub mod issuer;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod pem;
pub mod policy;
pub mod private_files;
pub mod provider;
pub mod request;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod settings;
#[cfg(feature = "shared-cache")]
pub mod shared_cache;
pub mod shutdown;
pub mod stats;
pub mod supervisor;
pub mod telemetry;
pub mod tls_accept;
pub mod verify;
pub mod whole_body;
pub mod yaml;

/// This project's own definitions of Envoy's ext_authz v3 wire types (see `proto/`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
        pub mod protobuf {
            tonic::include_proto!("google.protobuf");
        }
    }
}
