//! An upload (import, load) as it arrives from the cluster in pieces: each
//! piece goes to an unnamed file in the store's staging area at once, held
//! to the store's limits (the bytes of one image, the free space), so that
//! no upload is ever whole in the agent's memory.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use super::limits::{ArchiveLimits, DiskGuard, LimitError};

/// An upload being received.
pub struct Upload {
    file: Option<File>,
    len: u64,
    limit: u64,
    disk: DiskGuard,
    /// Why the upload cannot be used; later pieces are dropped.
    failed: Option<String>,
}

impl Upload {
    /// A new upload staged in `dir` (made if missing). A failure to make
    /// the file is the upload's failure, reported when it is finished.
    pub fn open(dir: &Path, limits: &ArchiveLimits) -> Self {
        let file = std::fs::create_dir_all(dir).and_then(|()| tempfile::tempfile_in(dir));
        let failed = file
            .as_ref()
            .err()
            .map(|e| format!("staging the upload in {}: {e}", dir.display()));
        Self {
            file: file.ok(),
            len: 0,
            limit: limits.max_image_bytes,
            disk: DiskGuard::new(dir, limits.min_free_bytes),
            failed,
        }
    }

    /// Takes the next piece.
    pub fn write(&mut self, data: &[u8]) {
        if self.failed.is_some() || data.is_empty() {
            return;
        }
        self.len = self.len.saturating_add(data.len() as u64);
        let result = if self.len > self.limit {
            Err(format!(
                "the upload: {}",
                LimitError::ImageBytes { limit: self.limit }
            ))
        } else if let Err(e) = self.disk.write(data.len() as u64) {
            Err(format!("the upload: {e}"))
        } else {
            self.file
                .as_mut()
                .map(|f| f.write_all(data))
                .unwrap_or(Ok(()))
                .map_err(|e| format!("staging the upload: {e}"))
        };
        if let Err(why) = result {
            // The file goes now: nothing more is kept of a refused upload.
            self.file = None;
            self.failed = Some(why);
        }
    }

    /// The whole upload, to read from its start; or why it failed.
    pub fn finish(self) -> Result<File, String> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        let mut f = self
            .file
            .ok_or_else(|| "the upload has no file".to_string())?;
        f.rewind().map_err(|e| format!("staging the upload: {e}"))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn an_upload_is_staged_and_held_to_the_image_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ArchiveLimits {
            max_image_bytes: 10,
            min_free_bytes: 0,
            ..Default::default()
        };
        let mut u = Upload::open(dir.path(), &limits);
        u.write(b"hello ");
        u.write(b"you");
        let mut text = String::new();
        u.finish().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello you");
        let mut u = Upload::open(dir.path(), &limits);
        u.write(b"hello ");
        u.write(b"world!");
        let err = u.finish().unwrap_err();
        assert!(err.contains("--max-image-size"), "{err}");
        // Unnamed files: nothing is left in the staging dir.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
