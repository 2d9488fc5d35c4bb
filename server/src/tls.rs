//! The server's one TLS setup place (DESIGN.md, Security): the rustls
//! configurations of its listener and of its own connections to other
//! servers, from the credentials in its data dir.
//!
//! The listener asks every client for a certificate of the cluster's CA
//! but also lets a client without one finish the handshake: such a client
//! may only join (with a token), and every other call gets a clear
//! refusal from the authorization layer rather than a broken handshake.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// A member's credentials: its certificate and key, and the CA
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
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
    #[error("no private key in the key file")]
    NoKey,
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

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = certs(&self.cert_pem)?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate("the certificate file"));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        rustls_pemfile::private_key(&mut BufReader::new(self.key_pem.as_bytes()))
            .map_err(|e| TlsError::Read {
                path: "the key file".into(),
                reason: e.to_string(),
            })?
            .ok_or(TlsError::NoKey)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let trusted = certs(&self.trusted_pem)?;
        if trusted.is_empty() {
            return Err(TlsError::NoCertificate("the trusted CA file"));
        }
        for c in trusted {
            roots.add(c).map_err(|e| TlsError::Trust(e.to_string()))?;
        }
        Ok(roots)
    }
}

/// The listener's configuration: its own certificate, and clients'
/// certificates checked against the trusted CAs when they present one.
pub fn server_config(creds: &Credentials) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(creds.roots()?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Trust(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain()?, creds.key()?)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// The configuration of a connection this member makes (to another
/// server): the peer checked against the trusted CAs, and this member's
/// certificate presented.
pub fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(creds.roots()?)
        .with_client_auth_cert(creds.chain()?, creds.key()?)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

fn certs(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    rustls_pemfile::certs(&mut BufReader::new(pem_text.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            path: "a PEM file".into(),
            reason: e.to_string(),
        })
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
        client: rustls::ClientConfig,
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
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
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
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs(ca.cert_pem()).unwrap().remove(0)).unwrap();
        let mut anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
        assert_eq!(connect(server, anonymous).await.unwrap(), None);
    }

    #[tokio::test]
    async fn another_clusters_certificate_is_refused_both_ways() {
        let ca = ClusterCa::generate("t").unwrap();
        let other = ClusterCa::generate("other").unwrap();
        // A client of another cluster, presenting its certificate.
        let server = server_config(&creds(&ca, Role::Server, "1")).unwrap();
        let mut stranger = creds(&other, Role::Admin, "admin");
        stranger.trusted_pem = ca.cert_pem().to_string();
        let err = connect(server, client_config(&stranger).unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_lowercase().contains("unknown") || err.contains("alert"),
            "{err}"
        );
        // A server of another cluster, to our client.
        let impostor = server_config(&creds(&other, Role::Server, "1")).unwrap();
        let ours = client_config(&creds(&ca, Role::Admin, "admin")).unwrap();
        let err = connect(impostor, ours).await.unwrap_err();
        assert!(err.to_lowercase().contains("unknown"), "{err}");
    }
}
