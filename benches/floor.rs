//! The do-nothing ext_authz server (issue 7, issue 19): answers OK to every Check and does
//! nothing else. Two builds of it, so both distances stay visible in one run:
//!
//! - **stock** (`m2m-authz-loadgen floor`): tonic's `Server::builder()` at its defaults on
//!   `tokio::runtime::Runtime::new()`, the system allocator. What a do-nothing tonic server is
//!   out of the box; kept as it was measured in issue 7.
//! - **tuned** (`m2m-authz-tuned floor`, benches/tuned.rs): the sidecar's own transport
//!   (`server::check_server`), runtime (`runtime::Workers`, the same default worker count) and
//!   global allocator, so the distance between m2m-authz and the limit of its own stack shows.

use m2m_authz::proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use m2m_authz::proto::envoy::service::auth::v3::check_response::HttpResponse;
use m2m_authz::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use m2m_authz::proto::google::rpc;

/// Answers every Check with a copy of `answer`.
pub struct Floor {
    pub answer: CheckResponse,
}

/// OK with nothing to change: what a do-nothing server answers.
pub fn empty_ok() -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: 0,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
    }
}

/// Serves the floor with `builder`'s transport settings on `listen` (`host:port` or
/// `unix:/path`) until killed, answering `answer` to every Check.
pub async fn serve(
    listen: String,
    mut builder: tonic::transport::Server,
    answer: CheckResponse,
) -> anyhow::Result<()> {
    // Not even the disabled spans of h2 and tonic: the floor does no work at all. (Without a
    // subscriber, `tracing`'s `log` feature would still look at each span.)
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let router = builder.add_service(AuthorizationServer::new(Floor { answer }));
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)?;
        router
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
            .await?;
    } else {
        let l = tokio::net::TcpListener::bind(&listen).await?;
        router
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
            )
            .await?;
    }
    Ok(())
}
