//! The byte connection to coderd: TCP, then TLS for `https://` URLs (rustls with the
//! system's roots plus `--coder-ca-file`). The buildinfo GET and the websocket upgrade each
//! run on one (docs/coder-transport.md, "Connecting").

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::ConnectError;
use crate::config::coder::CoderUrl;

const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// A connection to coderd, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// The TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `--coder-ca-file` could not be read or holds no certificate.
    #[error("--coder-ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Neither the system nor `--coder-ca-file` gave a usable root.
    #[error("no trusted root certificates: the system has none and --coder-ca-file is not set")]
    NoRoots,
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Opens connections to one coderd.
#[derive(Clone)]
pub struct Connector {
    url: CoderUrl,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url.to_string())
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Connector {
    /// A connector for `url`; for `https://` it loads the system's roots and `ca_file`.
    pub fn new(
        url: CoderUrl,
        ca_file: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<Self, TlsSetupError> {
        let tls = if url.tls() {
            Some(TlsConnector::from(Arc::new(tls_config(ca_file)?)))
        } else {
            None
        };
        Ok(Self {
            url,
            tls,
            connect_timeout,
        })
    }

    /// The URL it connects to.
    pub fn url(&self) -> &CoderUrl {
        &self.url
    }

    /// A new connection: TCP (no Nagle), then the TLS handshake for `https://`, all within
    /// the connect timeout.
    pub async fn connect(&self) -> Result<BoxIo, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.connect_inner())
            .await
            .map_err(|_| ConnectError::Timeout {
                what: "connecting",
                after: self.connect_timeout,
            })?
    }

    async fn connect_inner(&self) -> Result<BoxIo, ConnectError> {
        let addr = format!("{}:{}", self.url.host(), self.url.port());
        let tcp = TcpStream::connect((self.url.host(), self.url.port()))
            .await
            .map_err(|source| ConnectError::Network {
                what: format!("connecting to {addr}"),
                source,
            })?;
        tcp.set_nodelay(true).ok();
        // A coderd that vanished without a reset is noticed while idle too, as the gRPC
        // reporter does it: probes after 30 s of silence, every 10 s, 3 unanswered.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_RETRIES);
        if let Err(error) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%error, "setting TCP keepalive on the connection to coderd");
        }
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = ServerName::try_from(self.url.host().to_owned()).map_err(|e| {
            ConnectError::Network {
                what: format!("TLS server name {:?}", self.url.host()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            }
        })?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Network {
                what: format!("TLS handshake with {addr}"),
                source: explain_handshake_error(source),
            })?;
        Ok(Box::new(stream))
    }
}

/// What to do about coderd's certificate when it is marked as a CA.
const CA_AS_SERVER_CERTIFICATE: &str = "coderd's certificate is marked as a CA \
(basicConstraints CA:TRUE, as `openssl req -x509` makes them) and is used as the \
server's own: rustls refuses that even when the certificate is the one in \
--coder-ca-file (Go's TLS in the Coder agent accepts it). Give coderd a server \
certificate signed by that CA and keep the CA in --coder-ca-file, or make the \
self-signed certificate with basicConstraints CA:FALSE";

/// What to do about a certificate signed by a CA the proxy does not trust.
const UNKNOWN_ISSUER: &str = "coderd's certificate is not signed by a CA this proxy \
trusts (the system's roots, and --coder-ca-file when given): give the CA that signed \
it, in PEM, with --coder-ca-file";

/// What a TLS handshake with a plain-HTTP server looks like.
const NOT_TLS: &str = "the server did not answer in TLS: if coderd serves plain HTTP \
there, use an http:// URL";

/// The handshake's error, with what to do added where rustls' own words do not say it.
fn explain_handshake_error(error: std::io::Error) -> std::io::Error {
    let hint = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|error| match error {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
                if other.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                Some(CA_AS_SERVER_CERTIFICATE)
            }
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                Some(UNKNOWN_ISSUER)
            }
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                Some(NOT_TLS)
            }
            _ => None,
        });
    match hint {
        Some(hint) => std::io::Error::new(error.kind(), format!("{error}: {hint}")),
        None => error,
    }
}

/// rustls client settings: the system's roots plus every certificate in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "reading the system's root certificates");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| TlsSetupError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    // ring rather than rustls' default aws-lc-rs: no C/cmake build for the proxy. rustls
    // 0.23.48 deprecates it only because it lacks post-quantum key exchange; the classical
    // suites it offers are what coderd's Go TLS stack negotiates with any client.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(error: rustls::Error) -> String {
        explain_handshake_error(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
            .to_string()
    }

    #[test]
    fn handshake_errors_an_operator_can_fix_say_what_to_do() {
        let unknown = explained(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(unknown.contains("--coder-ca-file"), "{unknown}");
        let plain = explained(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(plain.contains("http:// URL"), "{plain}");
        let other = explained(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
        assert!(!other.contains("--coder-ca-file"), "{other}");
    }
}
