//! [`Endpoint`]: where a client connects (host, port, TLS or not, a path),
//! parsed once from a URL of the schemes a protocol uses, and the one way a
//! coderclaw client opens a connection: TCP with a timeout, then TLS
//! verified against [`crate::tls::connector`]'s roots.

use crate::client::ClientError;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Connect timeout (TCP and the TLS handshake each).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection, plain or TLS.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// A server to connect to.
#[derive(Clone)]
pub struct Endpoint {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `host:port` as written in the URL.
    pub authority: String,
    /// The URL's path and query (no trailing `/`; empty for none).
    pub path: String,
    schemes: Schemes,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// The URL schemes of one protocol: plain, and over TLS, with the default
/// ports.
#[derive(Debug, Clone, Copy)]
pub struct Schemes {
    /// e.g. `http`.
    pub plain: &'static str,
    /// e.g. `https`.
    pub secure: &'static str,
    /// Port when the URL has none and it is plain.
    pub plain_port: u16,
    /// Port when the URL has none and it is TLS.
    pub secure_port: u16,
}

impl Endpoint {
    /// Parses `url` of `schemes`; `ca` is an extra PEM CA file trusted for
    /// TLS, `alpn` the application protocols offered.
    pub fn parse(url: &str, schemes: Schemes, ca: Option<&Path>, alpn: &[&[u8]]) -> Result<Self, ClientError> {
        let bad = |message: String| ClientError::BadUrl { url: url.to_owned(), message };
        let uri: http::Uri = url.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
        let host = uri.host().ok_or_else(|| bad("the URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let secure = match uri.scheme_str() {
            Some(s) if s == schemes.secure => true,
            Some(s) if s == schemes.plain => false,
            _ => return Err(bad(format!("use a {}:// or {}:// URL", schemes.plain, schemes.secure))),
        };
        let port = uri.port_u16().unwrap_or(if secure { schemes.secure_port } else { schemes.plain_port });
        let tls = if secure { Some(crate::tls::connector_for(ca, alpn).map_err(bad)?) } else { None };
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let path = uri.path_and_query().map_or("", |p| p.as_str()).trim_end_matches('/').to_owned();
        Ok(Self { host, port, authority, path, schemes, tls })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the server is this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Refuses to carry a credential in clear text to another machine:
    /// TLS, or plain only to loopback. Every coderclaw client calls this
    /// before it attaches a token.
    pub fn check_credentials_allowed(&self) -> Result<(), ClientError> {
        if self.is_tls() || self.is_loopback() {
            return Ok(());
        }
        let Schemes { plain, secure, .. } = self.schemes;
        Err(ClientError::BadUrl {
            url: format!("{plain}://{}", self.authority),
            message: format!(
                "a token is never sent over plain {plain} to another machine: use {secure} (plain {plain} only to \
                 localhost)"
            ),
        })
    }

    fn down(&self, message: String) -> ClientError {
        ClientError::Unreachable { authority: self.authority.clone(), message }
    }

    /// Opens a connection (TCP, then TLS when the URL asked for it).
    pub async fn connect(&self) -> Result<Box<dyn Connection>, ClientError> {
        let tcp =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| self.down("connect timed out".into()))?
                .map_err(|e| self.down(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else { return Ok(Box::new(tcp)) };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| self.down(e.to_string()))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| self.down("TLS handshake timed out".into()))?
            .map_err(|e| self.down(format!("TLS: {e}")))?;
        Ok(Box::new(stream))
    }
}
