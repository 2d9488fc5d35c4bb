//! The files credentials live in, shared by the server that writes them
//! and the clients that read them: the admin credential's format, and how
//! a private file is written.

use std::path::Path;

use crate::transport::ClientCredentials;

/// The admin credential file (`DATA_DIR/admin.conf` of a bootstrap
/// server, `~/.berth/config` of a CLI), like a kubeconfig.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdminConf {
    /// The servers to reach, HOST:PORT.
    pub endpoints: Vec<String>,
    /// The CA certificates to trust, PEM (two during a CA rotation).
    pub ca: String,
    /// The admin certificate, then the CA's that signed it, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
    /// When the certificate was signed and when it ends (Unix seconds; 0
    /// if unknown): the CLI renews it once a third of that is left.
    #[serde(default)]
    pub issued_at_s: i64,
    #[serde(default)]
    pub not_after_s: i64,
}

impl AdminConf {
    /// What the TLS connection presents and trusts.
    pub fn credentials(&self) -> ClientCredentials {
        ClientCredentials {
            trusted_pem: self.ca.clone(),
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }

    /// True once a third of the certificate's validity is left.
    pub fn renewal_due(&self, now_s: i64) -> bool {
        if self.not_after_s <= self.issued_at_s || self.issued_at_s == 0 {
            return false;
        }
        now_s >= self.not_after_s - (self.not_after_s - self.issued_at_s) / 3
    }
}

/// Writes a file only its owner reads (`mode`, 0600 for keys), whole or
/// not at all: a new file beside it, synced, renamed over the old one,
/// and the directory synced.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A new file each time: the mode applies only to a file being made,
    // so a leftover one (of another mode) must not be reused.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Now, in Unix seconds.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
