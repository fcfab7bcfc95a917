//! [`H2Connection`]: the client side of one HTTP/2 connection that tonic's
//! generated client sends its calls on, opened on first use and again
//! after it breaks.
//!
//! Why not tonic's `Channel`: it puts a buffer task between a call and the
//! connection, one more hand-off (and wake-up) for every call; a
//! `GrpcTransport` talks to one server over one connection and needs
//! neither the buffer's load balancing nor its reconnect policy.

use coderclaw_net::endpoint::Endpoint;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;

/// An error from sending a call (tonic turns it into a status).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a call may take until its reply starts, connecting included:
/// a stream's reply starts at once and then runs as long as its task; an
/// upload's comes after all of it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// While calls are open, a ping this often, and the connection given up
/// when one is not answered in [`PING_TIMEOUT`]: a peer that vanished
/// without closing (a machine gone, a NAT that forgot the flow) would
/// leave a stream waiting for ever.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends each call on the current connection, connecting when there is
/// none or it has closed. Clones share the connection.
#[derive(Clone)]
pub(super) struct H2Connection {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: Endpoint,
    current: tokio::sync::Mutex<Current>,
}

/// The open connection and its number, so a caller that saw it fail drops
/// that one and not a newer one another caller opened; numbers are never
/// reused.
#[derive(Default)]
struct Current {
    next: u64,
    open: Option<(u64, SendRequest<Body>)>,
}

impl H2Connection {
    /// Connects to `endpoint` on first use.
    pub(super) fn lazy(endpoint: Endpoint) -> Self {
        Self { shared: Arc::new(Shared { endpoint, current: Default::default() }) }
    }
}

impl Shared {
    /// The open connection, or a new one. Callers finding it closed at
    /// once queue on the lock, and those after the first find the new one.
    async fn sender(&self) -> Result<(u64, SendRequest<Body>), BoxError> {
        let mut current = self.current.lock().await;
        if let Some((n, sender)) = current.open.as_ref().filter(|(_, s)| !s.is_closed()) {
            return Ok((*n, sender.clone()));
        }
        let io = self.endpoint.connect().await.map_err(|e| unavailable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(format!("{}: HTTP/2 handshake: {e}", self.endpoint.authority)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gRPC connection closed");
            }
        });
        let n = current.next;
        current.next += 1;
        current.open = Some((n, sender.clone()));
        Ok((n, sender))
    }

    /// Forgets connection `n` if it is still the current one.
    async fn drop_connection(&self, n: u64) {
        let mut current = self.current.lock().await;
        if current.open.as_ref().is_some_and(|(m, _)| *m == n) {
            current.open = None;
        }
    }

    /// Sends `req`; once more on a new connection when the current one
    /// turned out closed before the request left (so it cannot have run).
    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
        let (mut req, mut retried) = (req, false);
        loop {
            let (n, mut sender) = self.sender().await?;
            let mut e = match sender.try_send_request(req).await {
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            self.drop_connection(n).await;
            match e.take_message() {
                Some(unsent) if !retried => {
                    (req, retried) = (unsent, true);
                }
                unsent => {
                    // Sent, then the connection failed: the server may or
                    // may not have acted on it.
                    let when = if unsent.is_some() { "before the call was sent" } else { "during the call" };
                    let authority = &self.endpoint.authority;
                    return Err(unavailable(format!("{authority}: the connection failed {when}: {}", e.into_error())));
                }
            }
        }
    }
}

/// UNAVAILABLE: the connection, not the call, failed. A call that was sent
/// may or may not have been acted on; only a call that is safe to repeat
/// should be repeated.
fn unavailable(message: String) -> BoxError {
    Box::new(tonic::Status::unavailable(message))
}

impl tower::Service<http::Request<Body>> for H2Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the connection's, checked when the call is sent.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            match tokio::time::timeout(CALL_TIMEOUT, shared.send(req)).await {
                Ok(reply) => reply,
                Err(_) => {
                    let late = format!("{}: no reply within {} s", shared.endpoint.authority, CALL_TIMEOUT.as_secs());
                    Err(Box::new(tonic::Status::deadline_exceeded(late)) as BoxError)
                }
            }
        })
    }
}
