//! The cluster CA: a self-signed ECDSA P-256 certificate and its key, and
//! the certificates it signs.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::{check_name, PkiError, Role};

/// How long the CA itself is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a new certificate's validity starts: clocks of members
/// differ by a little.
const BACKDATE: Duration = Duration::from_secs(300);

/// The cluster's certificate authority.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    /// The CA as rcgen signs with it.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate the CA signed, with the key when the CA made that too.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// The private key: only for certificates the CA made whole (its own
    /// server's at bootstrap, the admin's); a member that sent a request
    /// keeps its key to itself.
    pub key_pem: Option<String>,
    /// The serial number, in hex: what revocation names.
    pub serial: String,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
    /// The SHA-256 of the certificate's public key, in hex: a member that
    /// asks again with the same key is the same member.
    pub key_digest: String,
}

impl ClusterCa {
    /// A new CA for the cluster `cluster` (its name goes in the subject).
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("berth cluster CA {cluster}"));
        dn.push(DnType::OrganizationName, "berth");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: issuer.pem(),
            key_pem: key.serialize_pem(),
            issuer,
            key,
        })
    }

    /// The CA as the state keeps it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // rcgen signs with an issuer made of the CA's own parameters and
        // key; the certificate the members trust stays the stored one.
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
            key,
        })
    }

    /// The CA certificate, PEM: what every member trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM: kept in the replicated state only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The SHA-256 of the CA certificate (DER), in hex: what a join token
    /// carries, so that a joiner can tell this cluster from an impostor.
    pub fn digest(&self) -> Result<String, PkiError> {
        digest_of_pem(&self.cert_pem)
    }

    /// Signs a member's certificate request for `role` and `name`, valid
    /// for `validity`. The subject and the subject names come from the
    /// cluster (the role, the name, and for a server its `hosts`), never
    /// from the request: only its public key is used.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        hosts: &[String],
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCertificate(format!("the certificate request: {e}")))?;
        let (params, serial, not_after) = member_params(role, name, hosts, validity)?;
        csr.params = params;
        let key_digest =
            berth_proto::transport::digest_of_der(rcgen::PublicKeyData::der_bytes(&csr.public_key));
        let cert = csr.signed_by(&self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
            serial,
            not_after,
            key_digest,
        })
    }

    /// Makes a key and a certificate for `role` and `name` at once: the
    /// bootstrap server's own, and the admin credential.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        hosts: &[String],
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let (params, serial, not_after) = member_params(role, name, hosts, validity)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial,
            not_after,
            key_digest: berth_proto::transport::digest_of_der(rcgen::PublicKeyData::der_bytes(
                &key,
            )),
        })
    }
}

/// The SHA-256 of the first certificate of a PEM text, in hex.
pub fn digest_of_pem(pem_text: &str) -> Result<String, PkiError> {
    Ok(berth_proto::transport::digest_of_der(&first_der(pem_text)?))
}

/// The DER of the first certificate of a PEM text.
pub fn first_der(pem_text: &str) -> Result<Vec<u8>, PkiError> {
    let mut reader = pem_text.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(PkiError::BadCertificate(e.to_string())),
        None => Err(PkiError::BadCertificate(
            "no certificate in the PEM text".into(),
        )),
    }
}

fn member_params(
    role: Role,
    name: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<(CertificateParams, String, i64), PkiError> {
    check_name(name)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, "berth");
    params.distinguished_name = dn;
    let uri = format!("berth://{role}/{name}");
    params.subject_alt_names = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| PkiError::BadName(name.to_string()))?,
    )];
    // A server's certificate carries the name every client checks (only
    // servers' do), and the addresses and host names it is reached by.
    if role == Role::Server {
        params.subject_alt_names.push(SanType::DnsName(
            berth_proto::transport::SERVER_NAME
                .try_into()
                .map_err(|_| PkiError::BadName(berth_proto::transport::SERVER_NAME.into()))?,
        ));
    }
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.as_str()
                    .try_into()
                    .map_err(|_| PkiError::BadName(h.clone()))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    let not_after = now + validity;
    params.not_after = not_after;
    let serial = random_serial();
    let hex_serial = hex::encode(serial.to_bytes());
    params.serial_number = Some(serial);
    Ok((params, hex_serial, not_after.unix_timestamp()))
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive as DER reads it: the top bit clear.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
