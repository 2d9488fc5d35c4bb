//! Join tokens: `BERTH1-<CA digest>-<role>-<secret>`.
//!
//! The digest (64 hex digits, the SHA-256 of the CA certificate) lets a
//! joiner check, before it sends anything, that the servers it reached
//! hold the cluster's CA. The secret (32 random bytes, 64 hex digits)
//! proves to the cluster that the joiner was given the token; the
//! cluster keeps it per role in the replicated state (as Swarm does, so
//! that `join-token` can print it again), and `--rotate` replaces it.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{PkiError, Role};

const PREFIX: &str = "BERTH1";

/// A join token for one role: agents, or servers.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The SHA-256 of the CA certificate (DER), hex.
    pub ca_digest: String,
    pub role: Role,
    /// The secret, hex.
    pub secret: String,
}

impl JoinToken {
    /// A new token for `role` with a fresh secret.
    pub fn generate(ca_digest: &str, role: Role) -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            ca_digest: ca_digest.to_string(),
            role,
            secret: hex::encode(secret),
        }
    }

    /// The hash of the secret, as the cluster keeps it.
    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret)
    }
}

/// The hash the cluster keeps of a token's secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time that does not depend on where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{}-{}-{}",
            self.ca_digest, self.role, self.secret
        )
    }
}

/// Tokens are secrets: their debug form hides the secret.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{}-{}-…", self.ca_digest, self.role)
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = berth_proto::transport::token_parts(s).map_err(|e| match e {
            berth_proto::transport::TransportError::BadToken(why) => PkiError::BadToken(why),
            other => PkiError::BadToken(other.to_string()),
        })?;
        let role: Role = parts.role.parse()?;
        if role == Role::Admin {
            return Err(PkiError::BadToken(
                "there are join tokens for agents and servers only".into(),
            ));
        }
        Ok(Self {
            ca_digest: parts.ca_digest,
            role,
            secret: parts.secret,
        })
    }
}
