//! The WASI context, built from the grant and nothing else. Directories are
//! preopened through cap-std, so `..`, absolute paths and symlinks cannot
//! leave them; read-only grants reject every write. Only granted environment
//! variables exist. Sockets are off. The guest's stdout and stderr go to
//! capped in-memory buffers that the host turns into log events (so a panic
//! message reaches the user).

use crate::Error;
use coderclaw_core::{Access, Grant};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// A granted directory after canonicalisation: where the guest sees it and
/// where it really is.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedDir {
    pub guest: String,
    pub host: PathBuf,
}

/// Canonicalises the grant's directories (they must exist).
pub(crate) fn resolve_grant(grant: &Grant) -> Result<Grant, Error> {
    grant.with_resolved_dirs(|p| {
        std::fs::canonicalize(p).map_err(|e| Error::GrantDir { path: p.to_path_buf(), message: e.to_string() })
    })
}

/// Most bytes of guest stdout and of stderr kept per run; the rest is dropped.
pub(crate) const GUEST_OUTPUT_BYTES: usize = 64 << 10;

/// Guest stdout or stderr: keeps the first `cap` bytes and counts the rest.
/// Writes never fail, so a chatty guest is not broken by the cap (a closed
/// stream would make Rust's `println!` panic).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    cap: usize,
    kept: Arc<Mutex<(Vec<u8>, u64)>>,
}

impl GuestOutput {
    fn new(cap: usize) -> Self {
        GuestOutput { cap, kept: Arc::default() }
    }

    fn take(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(kept.0.len()).min(bytes.len());
        kept.0.extend_from_slice(&bytes[..room]);
        kept.1 += (bytes.len() - room) as u64;
    }

    /// The kept bytes and how many were dropped.
    pub(crate) fn contents(&self) -> (Vec<u8>, u64) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(GUEST_OUTPUT_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The run's WASI context and what the host keeps from building it.
pub(crate) struct BuiltWasi {
    pub ctx: WasiCtx,
    pub dirs: Vec<ResolvedDir>,
    pub stdout: GuestOutput,
    pub stderr: GuestOutput,
}

/// Builds the WASI context for a grant whose directories are canonical.
pub(crate) fn wasi_ctx(grant: &Grant) -> Result<BuiltWasi, Error> {
    let mut b = WasiCtxBuilder::new();
    let stdout = GuestOutput::new(GUEST_OUTPUT_BYTES);
    let stderr = GuestOutput::new(GUEST_OUTPUT_BYTES);
    b.stdout(stdout.clone()).stderr(stderr.clone());
    let mut dirs = Vec::with_capacity(grant.dirs().len());
    for d in grant.dirs() {
        let perms = match d.access {
            Access::Read => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|e| Error::GrantDir { path: d.host.clone(), message: e.to_string() })?;
        dirs.push(ResolvedDir { guest: d.guest.clone(), host: d.host.clone() });
    }
    for (k, v) in grant.env() {
        b.env(k, v);
    }
    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    Ok(BuiltWasi { ctx: b.build(), dirs, stdout, stderr })
}
