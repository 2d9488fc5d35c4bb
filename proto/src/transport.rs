//! How every berth client connects to a server (DESIGN.md, Security):
//! gRPC over rustls with mutual TLS. The CLI, the agent and the servers'
//! own connections to each other all come through here; each of them
//! reads its credentials in one place of its own and hands them over.
//!
//! A client checks that the server's certificate was signed by the
//! cluster's CA and names [`SERVER_NAME`], which the CA puts only in
//! servers' certificates: an agent's or the admin's certificate cannot
//! pass for a server's, and a server is known by its role rather than by
//! the address it was reached at.
//!
//! A joiner does not know the CA yet: it holds a join token that carries
//! the CA's digest. [`pinned_by_digest`] makes a configuration that takes
//! the CA from the server's own chain only if its digest is the token's,
//! and then checks the server against it, so that nothing the joiner
//! sends (its token included) reaches a server of another CA.

use std::future::Future;
use std::io::BufReader;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The name every server's certificate carries (a DNS subject name the
/// CA gives servers only), and the name clients check.
pub const SERVER_NAME: &str = "berth-server";

/// The ALPN protocol of gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// What a client presents and trusts.
#[derive(Clone, Default)]
pub struct ClientCredentials {
    /// The CA certificates it trusts, PEM (the cluster's; two of them
    /// during a CA rotation).
    pub trusted_pem: String,
    /// Its own certificate (and the chain up to the CA), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClientCredentials").finish_non_exhaustive()
    }
}

/// Why a TLS configuration could not be made, or a connection not opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{what} is not PEM: {reason}")]
    BadPem { what: &'static str, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("the key holds no private key")]
    NoKey,
    #[error("the trusted CA certificates: {0}")]
    Trust(String),
    #[error("the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid server address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("making a key: {0}")]
    Key(String),
    #[error("not a join token: {0}")]
    BadToken(String),
}

/// The configuration of a client that presents `creds`' certificate and
/// trusts the servers its CAs signed.
pub fn client_config(
    creds: &ClientCredentials,
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let roots = roots(&creds.trusted_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = builder.with_client_auth_cert(
        certs(&creds.cert_pem, "the certificate")?,
        private_key(&creds.key_pem)?,
    )?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// The configuration of a client with no certificate of its own (a
/// joiner) that trusts the CA whose certificate has the SHA-256 digest
/// `ca_digest` (hex), found in the server's own chain. After a handshake,
/// the returned [`PinnedCa`] holds that CA's certificate.
pub fn pinned_by_digest(
    ca_digest: &str,
) -> Result<(Arc<rustls::ClientConfig>, PinnedCa), TransportError> {
    let pinned = PinnedCa {
        inner: Arc::new(Pinned {
            digest: ca_digest.to_ascii_lowercase(),
            seen: Mutex::new(None),
            provider: provider(),
        }),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned.clone()))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok((Arc::new(cfg), pinned))
}

/// A new key and a certificate request for it, PEM: what a joiner sends
/// (the request names nothing; the cluster decides the names).
pub fn new_key_and_request() -> Result<(String, String), TransportError> {
    let fail = |e: rcgen::Error| TransportError::Key(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(fail)?;
    Ok((key.serialize_pem(), csr.pem().map_err(fail)?))
}

/// The parts of a join token, `BERTH1-<CA digest>-<role>-<secret>`: the
/// CA's digest and the secret checked as 64 hex digits each (lower case),
/// the role as written. The one reader of the format: the server checks
/// the role and the secret against the cluster's, a joiner reads the
/// digest before it sends anything.
pub fn token_parts(token: &str) -> Result<TokenParts, TransportError> {
    let bad = |why: &str| TransportError::BadToken(why.to_string());
    let mut parts = token.trim().split('-');
    if parts.next() != Some("BERTH1") {
        return Err(bad("it does not begin with BERTH1-"));
    }
    let (Some(digest), Some(role), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("it is not BERTH1-DIGEST-ROLE-SECRET"));
    };
    let hex64 = |v: &str| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex64(digest) {
        return Err(bad("the CA digest is not 64 hex digits"));
    }
    if !hex64(secret) {
        return Err(bad("the secret is not 64 hex digits"));
    }
    Ok(TokenParts {
        ca_digest: digest.to_ascii_lowercase(),
        role: role.to_string(),
        secret: secret.to_ascii_lowercase(),
    })
}

/// What [`token_parts`] reads.
pub struct TokenParts {
    pub ca_digest: String,
    pub role: String,
    pub secret: String,
}

/// The SHA-256 digest (hex) of a certificate's DER: what a join token
/// carries of the cluster's CA.
pub fn digest_of_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The CA a [`pinned_by_digest`] client found in the server's chain.
#[derive(Clone, Debug)]
pub struct PinnedCa {
    inner: Arc<Pinned>,
}

impl PinnedCa {
    /// The CA's certificate, PEM, once a server presented it.
    pub fn ca_pem(&self) -> Option<String> {
        let seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref().map(|der| pem("CERTIFICATE", der))
    }
}

#[derive(Debug)]
struct Pinned {
    digest: String,
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let me = &self.inner;
        let Some(ca) = intermediates
            .iter()
            .find(|c| digest_of_der(c.as_ref()) == me.digest)
        else {
            return Err(rustls::Error::General(format!(
                "the server's CA is not the one the join token names (digest {}): \
                 the token is for another cluster, or the server is not a member",
                short(&me.digest)
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the cluster's CA: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            me.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;
        *me.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.as_ref().to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.inner.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.inner.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A gRPC endpoint for a server at `addr` (HOST:PORT), to be connected
/// with a [`Connector`].
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, TransportError> {
    let addr = addr.strip_prefix("https://").unwrap_or(addr);
    if addr.contains("://") || !addr.contains(':') {
        return Err(TransportError::BadAddress(addr.to_string()));
    }
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| TransportError::BadAddress(addr.to_string()))
}

/// Opens TCP connections with TLS for tonic's channels: TCP_NODELAY (a
/// small message must not wait for a delayed ACK), TCP keepalives if
/// asked, and the handshake with the client's configuration.
#[derive(Clone)]
pub struct Connector {
    tls: TlsSource,
    keepalive: Option<Duration>,
}

/// Where a connector takes its TLS configuration from.
#[derive(Clone)]
enum TlsSource {
    Fixed(Arc<rustls::ClientConfig>),
    /// Asked again for each connection: credentials that change (a
    /// renewal, a CA rotation) reach a channel's reconnections.
    Current(Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>),
}

impl Connector {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls: TlsSource::Fixed(tls),
            keepalive: None,
        }
    }

    /// A connector that takes `current()` for each connection it opens.
    pub fn current(
        current: impl Fn() -> Arc<rustls::ClientConfig> + Send + Sync + 'static,
    ) -> Self {
        Self {
            tls: TlsSource::Current(Arc::new(current)),
            keepalive: None,
        }
    }

    /// TCP keepalive probes after this long idle (tonic's own
    /// `tcp_keepalive` does not reach a custom connector).
    pub fn keepalive(mut self, after: Duration) -> Self {
        self.keepalive = Some(after);
        self
    }
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = match &self.tls {
            TlsSource::Fixed(c) => c.clone(),
            TlsSource::Current(f) => f(),
        };
        let keepalive = self.keepalive;
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_matches(|c| c == '[' || c == ']').to_string())
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            if let Some(after) = keepalive {
                let ka = socket2::TcpKeepalive::new()
                    .with_time(after)
                    .with_interval(after);
                socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka)?;
            }
            let name = ServerName::try_from(SERVER_NAME)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), tls_failure(&e)))?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A handshake's failure in words a user can act on: rustls names the
/// alert the server sent (an expired or unknown certificate), or what was
/// wrong with the server's.
fn tls_failure(e: &std::io::Error) -> String {
    let text = e.to_string();
    let why = if text.contains("CertificateExpired") {
        "the server refused this client's certificate: it has expired (renew it, or get a new credential)"
    } else if text.contains("UnknownCA")
        || text.contains("unknown issuer") && text.contains("received")
    {
        "the server refused this client's certificate: another CA signed it (a credential of another cluster)"
    } else if text.contains("CertificateRevoked") {
        "the server refused this client's certificate: it was revoked"
    } else if text.contains("UnknownIssuer") {
        "the server's certificate was not signed by the cluster's CA this client trusts (another cluster, or a stale credential)"
    } else if text.contains("NotValidForName") {
        "the server's certificate is not a berth server's"
    } else if text.contains("Expired") {
        "the server's certificate has expired"
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "the server did not answer with TLS (is it an older berth-server without TLS, or not a berth-server?)"
    } else {
        ""
    };
    if why.is_empty() {
        format!("TLS: {text}")
    } else {
        format!("TLS: {why} ({text})")
    }
}

/// The trusted CA certificates of a PEM text.
pub fn roots(trusted_pem: &str) -> Result<rustls::RootCertStore, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    let trusted = certs(trusted_pem, "the trusted CA certificates")?;
    for c in trusted {
        roots
            .add(c)
            .map_err(|e| TransportError::Trust(e.to_string()))?;
    }
    Ok(roots)
}

/// The certificates of a PEM text, at least one.
pub fn certs(
    pem_text: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem_text.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::BadPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate(what));
    }
    Ok(certs)
}

/// The private key of a PEM text.
pub fn private_key(pem_text: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem_text.as_bytes()))
        .map_err(|e| TransportError::BadPem {
            what: "the key",
            reason: e.to_string(),
        })?
        .ok_or(TransportError::NoKey)
}

/// The one crypto provider of berth's TLS (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap_or_default());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
