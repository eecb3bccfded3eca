//! The stop signals of `serve`, `issuer` and `demo`: SIGTERM (Kubernetes, a supervisor) and
//! SIGINT (ctrl-c), and for `demo`, which runs in a terminal, SIGHUP (the terminal closed).
//!
//! The handlers are installed at once, before anything is started, so that a signal arriving
//! while the command starts is not the default action (an exit with no drain, and for `demo`
//! Envoy left running) but a stop as soon as the command is up. `serve` leaves SIGHUP to the
//! policy reload (`policy.file`).

use std::io;

/// Whether SIGHUP stops the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// SIGHUP stops it too (`demo`: the terminal it runs in went away).
    Stops,
    /// SIGHUP is left alone (`serve` reloads its policy on it).
    Ignored,
}

/// The installed handlers; [`StopSignals::recv`] completes on the first stop signal.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers; needs a tokio runtime. Fails only if the OS refuses a handler.
    pub fn install(hangup: Hangup) -> io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            fn named(what: &'static str) -> impl Fn(io::Error) -> io::Error {
                move |e| io::Error::new(e.kind(), format!("cannot handle {what}: {e}"))
            }
            Ok(StopSignals {
                term: signal(SignalKind::terminate()).map_err(named("SIGTERM"))?,
                int: signal(SignalKind::interrupt()).map_err(named("SIGINT"))?,
                hup: match hangup {
                    Hangup::Stops => Some(signal(SignalKind::hangup()).map_err(named("SIGHUP"))?),
                    Hangup::Ignored => None,
                },
            })
        }
        #[cfg(not(unix))]
        {
            let _ = hangup;
            Ok(StopSignals {})
        }
    }

    /// Completes on the first stop signal, naming it (and logging it).
    pub async fn recv(&mut self) -> &'static str {
        let name = self.next().await;
        tracing::info!(signal = name, "stop signal received");
        name
    }

    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        let hup = async {
            match self.hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = hup => "SIGHUP",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "ctrl-c"
    }

    /// [`StopSignals::recv`] as an owned future, for APIs that take a stop future.
    pub async fn stopped(mut self) {
        self.recv().await;
    }
}
