//! The cluster's identity (DESIGN.md, Security): its certificate
//! authority, the certificates it signs, and the join tokens that let a
//! new member ask for one.
//!
//! - `ca.rs`: the cluster CA (rcgen): made once at `--bootstrap`, kept in
//!   the replicated state so that any leader signs; it signs a member's
//!   request with the role and the name the cluster chose, never the ones
//!   the request names.
//! - `enroll.rs`: the Join service: a joiner's certificate for its token
//!   (on the leader, recorded in the state), renewals, join tokens.
//! - `rotation.rs`: `berth cluster ca --rotate`: a new CA signs, the old
//!   one is trusted until every server and node holds a certificate of the
//!   new one, then the leader ends the rotation.
//! - `identity.rs`: who a peer is, read from its certificate: a role
//!   (admin, agent, server) and a name (the node's or the server's id),
//!   carried as the URI `berth://ROLE/NAME` among its subject names.
//! - `setup.rs`: makes the CA once (any leader that finds none) and keeps
//!   this server's certificate, and the bootstrap server's admin
//!   credential, in the data dir.
//! - `token.rs`: join tokens, `BERTH1-<CA digest>-<role>-<secret>`, like
//!   Swarm's: the digest lets the joiner check the cluster before it
//!   trusts it.

mod ca;
pub mod enroll;
mod identity;
pub mod rotation;
pub mod setup;
mod token;

pub use ca::{digest_of_pem, first_der, ClusterCa, Issued};
pub use identity::{identity_of, Identity};
pub use token::{same_hash, secret_hash, JoinToken};

use std::fmt;
use std::str::FromStr;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The operator: the Cluster API.
    Admin,
    /// A node's agent: its own session, about its own containers.
    Agent,
    /// A server: Raft and membership.
    Server,
}

impl Role {
    /// The role's name in certificates and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Server => "server",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "agent" => Ok(Role::Agent),
            "server" => Ok(Role::Server),
            other => Err(PkiError::UnknownRole(other.to_string())),
        }
    }
}

/// Why a certificate, a request or a token was not made or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("unknown role {0:?} (admin, agent or server)")]
    UnknownRole(String),
    #[error("a member's name must be 1 to 63 letters, digits, '-', '_' or '.', not {0:?}")]
    BadName(String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a certificate: {0}")]
    BadCertificate(String),
    #[error("the certificate names no berth identity (berth://ROLE/NAME)")]
    NoIdentity,
    #[error("not a join token: {0}")]
    BadToken(String),
}

/// The CA certificates every member trusts: the one that signs, and
/// during a rotation the one before it.
pub fn trusted_pem(pki: &berth_proto::records::Pki) -> String {
    let mut out = pki.ca_cert_pem.trim_end().to_string();
    out.push('\n');
    if !pki.previous_ca_cert_pem.is_empty() {
        out.push_str(pki.previous_ca_cert_pem.trim_end());
        out.push('\n');
    }
    out
}

/// The CA agents and CLIs should hold a certificate of (SHA-256, hex):
/// the one that signs (from a rotation's start on: every server trusts
/// it once the rotation is committed).
pub fn renew_to(pki: &berth_proto::records::Pki) -> String {
    digest_of_pem(&pki.ca_cert_pem).unwrap_or_default()
}

/// The host of HOST:PORT (the brackets of an IPv6 address taken off):
/// what a server's certificate names besides its role.
pub fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_string()
}

/// Checks a member's name: what goes into `berth://ROLE/NAME` and into
/// node and server names.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ca::first_der;
    use super::token::same_hash;
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// True if `cert_pem` carries a signature of `ca`'s key.
    fn signed_by(cert_pem: &str, ca: &ClusterCa) -> bool {
        let ca_der = first_der(ca.cert_pem()).unwrap();
        let der = first_der(cert_pem).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).is_ok()
    }

    #[test]
    fn the_ca_signs_certificates_that_name_a_role_and_a_name() {
        let ca = ClusterCa::generate("test").unwrap();
        assert_eq!(ca.digest().unwrap().len(), 64);
        // Kept and loaded again, it is the same CA and still signs.
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.digest().unwrap(), ca.digest().unwrap());
        let admin = again.issue(Role::Admin, "admin", &[], 90 * DAY).unwrap();
        assert!(admin.key_pem.is_some());
        assert!(signed_by(&admin.cert_pem, &ca));
        let id = identity_of(&first_der(&admin.cert_pem).unwrap()).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Admin, "admin"));
        assert_eq!(id.serial, admin.serial);
        let expected = time::OffsetDateTime::now_utc().unix_timestamp() + 90 * 24 * 3600;
        assert!((id.not_after - expected).abs() < 60, "{id:?}");
        // A server certificate also names the server's addresses.
        let server = ca
            .issue(
                Role::Server,
                "1",
                &["127.0.0.1".into(), "berth-1".into()],
                DAY,
            )
            .unwrap();
        let der = first_der(&server.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let names = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            names.contains("127.0.0.1") || names.contains("[127, 0, 0, 1]"),
            "{names}"
        );
        assert!(names.contains("berth-1"), "{names}");
    }

    #[test]
    fn a_request_is_signed_with_the_clusters_names_not_its_own() {
        let ca = ClusterCa::generate("test").unwrap();
        let other = ClusterCa::generate("other").unwrap();
        let (_key, csr) = berth_proto::transport::new_key_and_request().unwrap();
        let issued = ca
            .sign_request(&csr, Role::Agent, "node1", &[], DAY)
            .unwrap();
        assert!(issued.key_pem.is_none());
        assert!(signed_by(&issued.cert_pem, &ca));
        assert!(!signed_by(&issued.cert_pem, &other));
        let id = identity_of(&first_der(&issued.cert_pem).unwrap()).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Agent, "node1"));
        // A request that asks for a server's name gets the role and the
        // name the cluster gives it.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("berth://server/1".try_into().unwrap()));
        let sly = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .sign_request(&sly, Role::Agent, "node2", &[], DAY)
            .unwrap();
        let id = identity_of(&first_der(&issued.cert_pem).unwrap()).unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Agent, "node2"));
        // Names are checked; garbage is no request.
        for bad in ["", "a/b", "node 1", &"x".repeat(64)] {
            assert!(matches!(
                ca.sign_request(&csr, Role::Agent, bad, &[], DAY),
                Err(PkiError::BadName(_))
            ));
        }
        assert!(matches!(
            ca.sign_request("not a request", Role::Agent, "n", &[], DAY),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn a_certificate_without_a_berth_name_has_no_identity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let plain = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            identity_of(plain.der()),
            Err(PkiError::NoIdentity)
        ));
        assert!(matches!(
            identity_of(b"garbage"),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn join_tokens_read_back_and_bad_ones_are_named() {
        let ca = ClusterCa::generate("test").unwrap();
        let t = JoinToken::generate(&ca.digest().unwrap(), Role::Agent);
        let text = t.to_string();
        assert!(text.starts_with("BERTH1-"));
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back, t);
        assert!(same_hash(&back.secret_hash(), &secret_hash(&t.secret)));
        assert!(!same_hash(&back.secret_hash(), &secret_hash("other")));
        // The debug form keeps the secret out of logs.
        assert!(!format!("{t:?}").contains(&t.secret));
        let digest = ca.digest().unwrap();
        let secret = "ab".repeat(32);
        for (bad, why) in [
            ("SWMTKN-1-x".to_string(), "BERTH1-"),
            ("BERTH1-abc".to_string(), "BERTH1-DIGEST-ROLE-SECRET"),
            (
                format!("BERTH1-{}-agent-{secret}", "zz".repeat(32)),
                "CA digest",
            ),
            (format!("BERTH1-{digest}-agent-1234"), "secret"),
            (
                format!("BERTH1-{digest}-admin-{secret}"),
                "agents and servers",
            ),
            (format!("BERTH1-{digest}-king-{secret}"), "unknown role"),
        ] {
            let err = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
