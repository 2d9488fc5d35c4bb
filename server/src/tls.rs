//! The server's one TLS setup place (DESIGN.md, Security): the rustls
//! configurations of its listener and of its own connections to other
//! servers, from the credentials in its data dir, and the connections it
//! accepts, each with who is at the other end.
//!
//! The listener asks every client for a certificate of the cluster's CA
//! but also lets a client without one finish the handshake: such a client
//! may only enroll (with a join token), and every other call gets a clear
//! refusal from the authorization layer (`auth.rs`) rather than a broken
//! handshake. A client that speaks plaintext gRPC is served the same way,
//! so that it reads a refusal that says TLS is needed, not a reset.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_proto::transport::{self, ClientCredentials, TransportError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::pki::{identity_of, Identity};

/// A member's credentials: its certificate (and the CA's after it, so
/// that a joiner can find the CA its token names), its key, and the CA
/// certificates it trusts (the cluster's, or two during a CA rotation).
#[derive(Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub trusted_pem: String,
}

/// Where a member keeps its credentials in its data dir.
pub fn credential_paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    )
}

/// Why the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the trusted CA certificates: {0}")]
    Trust(String),
    #[error("the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl Credentials {
    /// Reads the credentials a member keeps in `data_dir/tls`.
    pub fn load(data_dir: &Path) -> Result<Self, TlsError> {
        let (cert, key, ca) = credential_paths(data_dir);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| TlsError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
            trusted_pem: read(&ca)?,
        })
    }

    /// True if `data_dir` holds credentials (complete or not).
    pub fn present(data_dir: &Path) -> bool {
        credential_paths(data_dir).0.exists()
    }

    /// The server id this server's certificate names.
    pub fn server_id(&self) -> Result<u64, TlsError> {
        let der = transport::certs(&self.cert_pem, "the certificate file")?.remove(0);
        let id = identity_of(der.as_ref()).map_err(|e| TlsError::Read {
            path: "the certificate file".into(),
            reason: e.to_string(),
        })?;
        match (id.role, id.name.parse::<u64>()) {
            (crate::pki::Role::Server, Ok(n)) => Ok(n),
            _ => Err(TlsError::Read {
                path: "the certificate file".into(),
                reason: format!(
                    "it is the certificate of {} {}, not a server's",
                    id.role, id.name
                ),
            }),
        }
    }

    fn as_client(&self) -> ClientCredentials {
        ClientCredentials {
            trusted_pem: self.trusted_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// The listener's configuration: its own certificate, and clients'
/// certificates checked against the trusted CAs when they present one.
///
/// A certificate that fails the check (of another CA, expired) still
/// completes the handshake, as one proved to be held by the client (its
/// signature is checked), but marked refused: with TLS 1.3 a client
/// learns of a refusal in the handshake only as a bare alert on its first
/// read, where a refusal by the authorization layer tells it why.
pub fn server_config(creds: &Credentials) -> Result<rustls::ServerConfig, TlsError> {
    Ok(listener(creds)?.0)
}

/// The listener's configuration and the checks of client certificates it
/// defers to after the handshake (one verifier for both).
fn listener(creds: &Credentials) -> Result<(rustls::ServerConfig, ClientChecks), TlsError> {
    let provider = transport::provider();
    let checks = ClientChecks::new(creds, provider.clone())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(checks.lenient()))
        .with_single_cert(
            transport::certs(&creds.cert_pem, "the certificate file")?,
            transport::private_key(&creds.key_pem)?,
        )?;
    cfg.alpn_protocols = vec![transport::ALPN_H2.to_vec()];
    Ok((cfg, checks))
}

/// The check of clients' certificates against the trusted CAs (rustls'
/// WebPKI verifier), strict after the handshake and lenient within it.
#[derive(Debug, Clone)]
struct ClientChecks {
    strict: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl ClientChecks {
    fn new(
        creds: &Credentials,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let strict = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(transport::roots(&creds.trusted_pem)?),
            provider,
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Trust(e.to_string()))?;
        Ok(Self { strict })
    }

    fn lenient(&self) -> Lenient {
        Lenient(self.clone())
    }

    /// Why a presented chain is refused, if it is.
    fn refusal(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<String> {
        let (end, rest) = chain.split_first()?;
        let err = self
            .strict
            .verify_client_cert(end, rest, rustls::pki_types::UnixTime::now())
            .err()?;
        let why = match &err {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                "another CA signed it: it is not a certificate of this cluster".to_string()
            }
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
            ) => format!("it has expired ({err}): get a new credential"),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. },
            ) => format!("it is not valid yet ({err}): is this host's clock right?"),
            other => other.to_string(),
        };
        Some(why)
    }
}

/// The verifier the handshake uses: the signature of the client's
/// handshake is checked (it holds the certificate's key), the chain only
/// after, by [`ClientChecks::refusal`].
#[derive(Debug)]
struct Lenient(ClientChecks);

impl rustls::server::danger::ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.strict.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.strict.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.strict.supported_verify_schemes()
    }
}

/// The configuration of a connection this member makes (to another
/// server): the peer checked against the trusted CAs as a server, and
/// this member's certificate presented.
pub fn client_config(creds: &Credentials) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(transport::client_config(&creds.as_client())?)
}

/// The server's TLS, read from its data dir and read again when its
/// credentials change (a renewal, a CA rotation): new connections use the
/// new ones, open ones keep theirs.
pub struct ServerTls {
    data_dir: PathBuf,
    server: RwLock<(Arc<rustls::ServerConfig>, ClientChecks)>,
    client: RwLock<Arc<rustls::ClientConfig>>,
}

impl ServerTls {
    /// The TLS of the credentials in `data_dir/tls`.
    pub fn load(data_dir: &Path) -> Result<Arc<Self>, TlsError> {
        let creds = Credentials::load(data_dir)?;
        let (server, checks) = listener(&creds)?;
        Ok(Arc::new(Self {
            data_dir: data_dir.to_path_buf(),
            server: RwLock::new((Arc::new(server), checks)),
            client: RwLock::new(client_config(&creds)?),
        }))
    }

    /// Reads the credentials again.
    pub fn reload(&self) -> Result<(), TlsError> {
        let creds = Credentials::load(&self.data_dir)?;
        let (config, checks) = listener(&creds)?;
        let server = (Arc::new(config), checks);
        let client = client_config(&creds)?;
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = server;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    /// The configuration of this server's own connections to others.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn server(&self) -> (Arc<rustls::ServerConfig>, ClientChecks) {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connections `listener` accepts, handshakes done, each with its
    /// peer. Handshakes run side by side (a slow or silent client holds up
    /// no other), each for at most [`HANDSHAKE_TIMEOUT`]; one that fails
    /// is dropped (the client read the TLS alert that says why).
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before
                        // it was taken: the listener goes on.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // A small gRPC message must not wait for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                let tls = self.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp, addr)).await {
                        Ok(Ok(conn)) => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "connection refused in TLS: {e}"),
                        Err(_) => tracing::debug!(%addr, "no TLS handshake within 10 s"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn accept(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<Conn> {
        // A TLS connection begins with a handshake record (type 22); gRPC
        // in plaintext begins with HTTP/2's preface ("PRI * ...").
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await?;
        if n == 0 || first[0] != 0x16 {
            return Ok(Conn::Plain(
                tcp,
                Peer {
                    addr,
                    auth: PeerAuth::Plaintext,
                },
            ));
        }
        let (config, checks) = self.server();
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let auth = match chain.first() {
            None => PeerAuth::NoCertificate,
            Some(der) => match checks.refusal(chain) {
                Some(why) => PeerAuth::Refused(why),
                None => match identity_of(der.as_ref()) {
                    Ok(id) => PeerAuth::Member(id),
                    Err(e) => PeerAuth::Unreadable(e.to_string()),
                },
            },
        };
        Ok(Conn::Tls(Box::new(tls), Peer { addr, auth }))
    }
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection, as its handshake showed.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub auth: PeerAuth,
}

/// What a connection's handshake proved.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// No TLS at all.
    Plaintext,
    /// TLS without a client certificate: a joiner.
    NoCertificate,
    /// A certificate the cluster's CA signed, and whom it names.
    Member(Identity),
    /// A certificate of the CA that names no berth identity.
    Unreadable(String),
    /// A certificate the trusted CAs do not vouch for, and why.
    Refused(String),
}

/// An accepted connection: plaintext (to be refused by the authorization
/// layer) or TLS.
pub enum Conn {
    Plain(TcpStream, Peer),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(_, p) | Conn::Tls(_, p) => p.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{ClusterCa, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn creds(ca: &ClusterCa, role: Role, name: &str) -> Credentials {
        let issued = ca
            .issue(role, name, &["127.0.0.1".to_string()], DAY)
            .unwrap();
        Credentials {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.unwrap(),
            trusted_pem: ca.cert_pem().to_string(),
        }
    }

    /// One TLS connection on loopback: what the server saw of the client
    /// (the identity of its certificate, if any), or the handshake's error.
    async fn connect(
        server: rustls::ServerConfig,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Option<crate::pki::Identity>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .map(|c| crate::pki::identity_of(&c).unwrap());
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(who)
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(transport::SERVER_NAME).unwrap();
        let talk = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let talked = talk.await;
        let seen = served.await.unwrap();
        talked?;
        seen
    }

    #[tokio::test]
    async fn members_of_the_cluster_see_each_others_identity() {
        let ca = ClusterCa::generate("t").unwrap();
        let server = server_config(&creds(&ca, Role::Server, "1")).unwrap();
        let agent = client_config(&creds(&ca, Role::Agent, "node1")).unwrap();
        let who = connect(server, agent).await.unwrap().unwrap();
        assert_eq!((who.role, who.name.as_str()), (Role::Agent, "node1"));
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_connects_as_no_one() {
        let ca = ClusterCa::generate("t").unwrap();
        let server = server_config(&creds(&ca, Role::Server, "1")).unwrap();
        let roots = transport::roots(ca.cert_pem()).unwrap();
        let mut anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        anonymous.alpn_protocols = vec![transport::ALPN_H2.to_vec()];
        assert_eq!(connect(server, Arc::new(anonymous)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn another_clusters_certificate_is_refused_both_ways() {
        let ca = ClusterCa::generate("t").unwrap();
        let other = ClusterCa::generate("other").unwrap();
        // A client of another cluster, presenting its certificate: the
        // handshake completes (for a refusal that says why), and the
        // check after it refuses the chain.
        let ours = creds(&ca, Role::Server, "1");
        let server = server_config(&ours).unwrap();
        let mut stranger = creds(&other, Role::Admin, "admin");
        stranger.trusted_pem = ca.cert_pem().to_string();
        connect(server, client_config(&stranger).unwrap())
            .await
            .unwrap();
        let checks = ClientChecks::new(&ours, transport::provider()).unwrap();
        let chain = transport::certs(&stranger.cert_pem, "c").unwrap();
        let why = checks.refusal(&chain).unwrap();
        assert!(why.contains("another CA signed it"), "{why}");
        let member = transport::certs(&creds(&ca, Role::Agent, "n").cert_pem, "c").unwrap();
        assert_eq!(checks.refusal(&member), None);
        // A server of another cluster, to our client.
        let impostor = server_config(&creds(&other, Role::Server, "1")).unwrap();
        let ours = client_config(&creds(&ca, Role::Admin, "admin")).unwrap();
        let err = connect(impostor, ours).await.unwrap_err();
        assert!(err.to_lowercase().contains("unknown"), "{err}");
    }
}
