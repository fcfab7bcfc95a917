//! The WASI context, built from the grant and nothing else. Directories are
//! preopened through cap-std, so `..`, absolute paths and symlinks cannot
//! leave them; read-only grants reject every write. Only granted environment
//! variables exist. Sockets are off. The guest's stdout and stderr go to
//! capped in-memory pipes that the host turns into log events (so a panic
//! message reaches the user).

use crate::Error;
use coderclaw_core::{Access, Grant};
use std::path::PathBuf;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
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

/// The run's WASI context and what the host keeps from building it.
pub(crate) struct BuiltWasi {
    pub ctx: WasiCtx,
    pub dirs: Vec<ResolvedDir>,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

/// Builds the WASI context for a grant whose directories are canonical.
pub(crate) fn wasi_ctx(grant: &Grant) -> Result<BuiltWasi, Error> {
    let mut b = WasiCtxBuilder::new();
    let stdout = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
    let stderr = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
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
