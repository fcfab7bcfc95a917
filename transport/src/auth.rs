//! Who a network call is: one rule for every server adapter (REST, SSE,
//! WebSocket, gRPC, MCP over HTTP).

use coderclaw_core::decision::Subject;
use coderclaw_core::task::RuntimeMode;
use coderclaw_security::security::Security;
use coderclaw_tasks::{ErrorCode, RuntimeError, TaskService};
use std::net::SocketAddr;

/// The subject of a call from `peer` with session `token` on a server in
/// `mode`: local-only refuses other machines; no token is refused (a
/// loopback connection does not say which local user made it); a session
/// used from another machine is decided as an untrusted device.
pub(crate) fn authenticate(
    service: &TaskService,
    mode: RuntimeMode,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<Subject, RuntimeError> {
    peer_allowed(mode, peer)?;
    let Some(token) = token else {
        return Err(RuntimeError::new(
            ErrorCode::Unauthenticated,
            "every call needs a session: send `Authorization: Bearer <token>`",
        ));
    };
    let subject = service.authenticate_peer(Some(token), peer.ip())?;
    // A token proves the user, not the machine the call comes from.
    Ok(if peer.ip().is_loopback() { subject } else { Security::as_remote(subject) })
}

/// Whether a server in `mode` serves `peer` at all: local-only refuses
/// other machines, before any credential is looked at.
pub(crate) fn peer_allowed(mode: RuntimeMode, peer: SocketAddr) -> Result<(), RuntimeError> {
    if mode == RuntimeMode::LocalOnly && !peer.ip().is_loopback() {
        return Err(RuntimeError::new(ErrorCode::Forbidden, "this server is local-only: remote sessions are refused"));
    }
    Ok(())
}
