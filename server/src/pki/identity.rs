//! Who a peer is, from the certificate it presented.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{check_name, PkiError, Role};

/// A member as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// The node's name, the server's id, or the admin's name.
    pub name: String,
    /// The certificate's serial number, in hex.
    pub serial: String,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
}

/// Reads the identity of a certificate (DER): its `berth://ROLE/NAME`
/// subject name, its serial number and its expiry. The chain was checked
/// by TLS before; this only reads what the cluster wrote into it.
pub fn identity_of(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?
        .ok_or(PkiError::NoIdentity)?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("berth://") => Some(*u),
            _ => None,
        })
        .ok_or(PkiError::NoIdentity)?;
    let (role, name) = uri
        .trim_start_matches("berth://")
        .split_once('/')
        .ok_or(PkiError::NoIdentity)?;
    let role: Role = role.parse()?;
    check_name(name)?;
    Ok(Identity {
        role,
        name: name.to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}
