//! Large files written at the pace of the disk. A snapshot is tens of MiB
//! written at once; left to the kernel, all of it sits dirty in the page
//! cache until writeback starts, and then every small fsync the Raft log
//! makes (a follower's append, a vote) can wait behind it in the disk's
//! queue and in the ext4 journal's commit. A [`Paced`] file starts
//! writeback of each chunk as soon as it is full and waits for the chunk
//! before it, so a writer holds at most two chunks dirty and the log's
//! fsyncs queue behind little. (This is a precaution: on this project's
//! test VM no fsync of the log was ever measured over 100 ms, with or
//! without it; raft/wal.rs warns when one is.)

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

/// How many bytes a [`Paced`] file hands to writeback at once.
pub const CHUNK: u64 = 4 << 20;

/// A file written front to back whose dirty pages stay bounded.
pub struct Paced {
    file: File,
    /// Bytes written so far.
    written: u64,
    /// Where the chunk not yet handed to writeback begins.
    flushed: u64,
}

impl Paced {
    pub fn new(file: File) -> Self {
        Self {
            file,
            written: 0,
            flushed: 0,
        }
    }

    /// The file, with every byte written (not yet synced).
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Starts writeback of the chunk just filled and waits for the one
    /// before it.
    fn pace(&mut self) -> std::io::Result<()> {
        while self.written - self.flushed >= CHUNK {
            let start = self.flushed;
            sync_range(&self.file, start, CHUNK, libc::SYNC_FILE_RANGE_WRITE)?;
            if let Some(prev) = start.checked_sub(CHUNK) {
                sync_range(
                    &self.file,
                    prev,
                    CHUNK,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )?;
            }
            self.flushed += CHUNK;
        }
        Ok(())
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.pace()?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// sync_file_range(2) of `len` bytes at `offset`.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::other("offset past what a file can hold"));
    };
    // SAFETY: sync_file_range(2) only reads its integer arguments; the fd is
    // borrowed from `file` and open for the whole call. It is how writeback
    // of one range is started or awaited without the journal commit an
    // fdatasync would force (nix 0.29 has no wrapper).
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_file_holds_every_byte_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = std::io::BufWriter::new(Paced::new(File::create(&path).unwrap()));
        let mut expected = Vec::new();
        // Writes of odd sizes across several chunk boundaries.
        for i in 0..3000u32 {
            let piece = vec![(i % 251) as u8; 7919];
            w.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        let paced = w.into_inner().map_err(|e| e.into_error()).unwrap();
        assert!(
            paced.flushed >= 4 * CHUNK,
            "writeback was started for each full chunk"
        );
        paced.into_inner().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
