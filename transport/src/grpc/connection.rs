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
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;

/// An error from sending a call (tonic turns it into a status).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a call may wait for its reply to start: a stream's reply
/// starts at once and then runs as long as its task; an upload's comes
/// after all of it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends each call on the current connection, connecting when there is
/// none or it has closed. Clones share the connection.
#[derive(Clone)]
pub(super) struct H2Connection {
    endpoint: Endpoint,
    current: Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>,
}

impl H2Connection {
    /// Connects to `endpoint` on first use.
    pub(super) fn lazy(endpoint: Endpoint) -> Self {
        Self { endpoint, current: Arc::default() }
    }

    /// The open connection, or a new one. Callers that find it closed at
    /// once wait for one reconnect rather than each opening their own.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        let mut current = self.current.lock().await;
        if let Some(sender) = current.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.endpoint.connect().await.map_err(|e| unavailable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(format!("{}: HTTP/2 handshake: {e}", self.endpoint.authority)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gRPC connection closed");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }
}

/// A failure of the connection, not of the call: UNAVAILABLE, so the
/// caller may try again (the next call reconnects).
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
        let this = self.clone();
        Box::pin(async move {
            let mut sender = this.sender().await?;
            let authority = &this.endpoint.authority;
            match tokio::time::timeout(CALL_TIMEOUT, sender.send_request(req)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(unavailable(format!("{authority}: the connection broke: {e}"))),
                Err(_) => {
                    let late = format!("{authority}: no reply within {} s", CALL_TIMEOUT.as_secs());
                    Err(Box::new(tonic::Status::deadline_exceeded(late)) as BoxError)
                }
            }
        })
    }
}
