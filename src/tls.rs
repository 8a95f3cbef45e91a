//! TLS for mesh links (rustls with the ring provider).
//!
//! - Listener: `tls.certFile` + `tls.keyFile` (PEM) → a [`TlsAcceptor`]; the listener then serves
//!   `wss://`. Both files are read and parsed when the node starts, so a bad path or a key that
//!   does not match fails `start()` with an error naming the field, not the first connection.
//! - Dialers: `wss://` peers are verified against `tls.caFile` when set (exactly that bundle:
//!   the CA is pinned, system roots are ignored), else against the system roots.
//!
//! The crypto provider is passed explicitly instead of installing a process-wide default, so two
//! copies of the addon in one process (an OpenClaw reload) cannot fight over it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;
use crate::error::{Error, ErrorCode, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::ConfigInvalid, format!("{field}: {msg}"))
}

fn read_certs(field: &str, path: &str) -> Result<Vec<CertificateDer<'static>>> {
    if !std::path::Path::new(path).is_file() {
        return Err(invalid(field, format!("{path}: no such file")));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(field, format!("{path}: {e}")))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("{path}: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(field, format!("{path}: no PEM certificate found")));
    }
    Ok(certs)
}

/// The listener's TLS acceptor, or `None` when `tls.certFile`/`keyFile` are unset.
pub fn server(tls: &TlsConfig) -> Result<Option<TlsAcceptor>> {
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(invalid("tls.keyFile", "is required with tls.certFile")),
        (None, Some(_)) => return Err(invalid("tls.certFile", "is required with tls.keyFile")),
    };
    let certs = read_certs("tls.certFile", cert_file)?;
    if !std::path::Path::new(key_file).is_file() {
        return Err(invalid("tls.keyFile", format!("{key_file}: no such file")));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| invalid("tls.keyFile", format!("{key_file}: {e}")))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorCode::Internal, format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls.certFile", format!("{cert_file} / {key_file}: {e}")))?;
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// The connector `wss://` dialers use: pinned to `tls.caFile`, or the system roots.
pub fn client(tls: &TlsConfig) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            for cert in read_certs("tls.caFile", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid("tls.caFile", format!("{ca}: {e}")))?;
            }
        }
        None => {
            // Unreadable individual system certificates are skipped: one broken file in
            // /etc/ssl must not stop the node; a missing store only fails wss:// dials.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorCode::Internal, format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// The name a `wss://` peer's certificate must carry (a DNS name or an IP literal).
pub fn server_name(host: &str) -> std::result::Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}
