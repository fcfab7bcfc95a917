//! SIGINT and SIGTERM (what a terminal, systemd, Kubernetes and Docker
//! send) as futures, for the commands that stop cleanly on either.

use anyhow::{Context, Result};

/// SIGINT and SIGTERM, listened for from creation on.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// The name of the next one.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Resolves with the name of the first SIGINT or SIGTERM.
pub(crate) fn interrupted() -> Result<impl std::future::Future<Output = &'static str>> {
    let mut signals = Signals::new()?;
    Ok(async move { signals.next().await })
}
