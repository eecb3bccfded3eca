//! Accepting TLS connections so that no client holds others up: each handshake runs in its own
//! task, bounded in time ([`HANDSHAKE_TIMEOUT`]) and in number ([`MAX_PENDING_HANDSHAKES`]), and
//! the server receives only finished handshakes. A client that connects and never finishes its
//! handshake, or a flood of them, costs a slot for at most the timeout. Used by the Check
//! listener (`listen.tls`, [`crate::grpc_tls`]) and by the embedded issuer's HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long one client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be under way at once; accepting waits for a free slot.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// A connection whose handshake finished, and its peer.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// The finished handshakes of one listener. Dropping it stops accepting.
pub struct Handshakes {
    ready: mpsc::Receiver<Accepted>,
    task: JoinHandle<()>,
}

impl Handshakes {
    /// Accepts on `tcp` from now on; `what` names the listener in log lines.
    pub fn start(tcp: TcpListener, acceptor: TlsAcceptor, what: &'static str) -> Handshakes {
        let (tx, ready) = mpsc::channel(MAX_PENDING_HANDSHAKES);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx, what));
        Handshakes { ready, task }
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Accepted>> {
        self.ready.poll_recv(cx)
    }

    /// The next finished handshake; `None` only once the accept task has ended.
    pub async fn recv(&mut self) -> Option<Accepted> {
        self.ready.recv().await
    }
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Accepted>,
    what: &'static str,
) {
    let slots = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(listener = what, error = %e, "cannot accept connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Small request/response pairs: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
        // add tens of milliseconds to some of them.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(slot);
            match done {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // Debug only: a scanner or a flood must not fill the logs.
                Ok(Err(e)) => {
                    tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => tracing::debug!(listener = what, %peer, "TLS handshake timed out"),
            }
        });
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
