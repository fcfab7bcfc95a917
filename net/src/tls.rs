//! The one TLS configuration for both ends: rustls with ring. Clients trust
//! the web PKI roots and, optionally, extra CA certificates from a PEM file
//! (a team server with its own CA); servers present a PEM chain and key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A connector trusting the web PKI roots plus the certificates in `ca`.
pub fn connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    connector_for(ca, &[])
}

/// [`connector`] offering the application protocols `alpn` (`h2` for gRPC).
pub fn connector_for(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// An acceptor serving the PEM certificate chain `cert` with the PEM key `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    acceptor_for(cert, key, &[])
}

/// [`acceptor`] agreeing on the application protocols `alpn` (gRPC clients
/// insist on `h2`).
pub fn acceptor_for(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, String> {
    let fail = |what: &Path, e: String| format!("TLS: {}: {e}", what.display());
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS: the certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
