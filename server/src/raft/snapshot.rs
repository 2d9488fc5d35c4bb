//! Snapshots as files, built, sent and installed as streams of pieces,
//! never held whole in memory or sent as one message. A snapshot file is a
//! `SnapshotHeader` and then every state-machine row, each a
//! length-delimited protobuf record. Files live in `DATA_DIR/snapshots`,
//! named by snapshot id; the newest is the member's current snapshot (its
//! header is kept in the store's metadata).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::writeback::Paced;
use berth_proto::records::{self, SCHEMA_VERSION};
use prost::Message;

/// The most bytes of rows one write batch of an install holds.
pub const INSTALL_BATCH: usize = 4 << 20;
/// The size of one piece of a snapshot on the wire.
pub const PIECE: usize = 1 << 20;

/// Errors of reading or writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a snapshot file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The file of snapshot `id` in `dir`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    // Ids are made here ("term-index-ms"); anything else names no file.
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.snap"))
}

/// Writes a snapshot file: the header, then each row.
pub struct Writer {
    out: BufWriter<Paced>,
    tmp: PathBuf,
    dest: PathBuf,
    rows: u64,
}

impl Writer {
    /// Starts the file of snapshot `header.snapshot_id` in `dir` (under a
    /// temporary name until [`Writer::finish`]).
    pub fn create(dir: &Path, header: &records::SnapshotHeader) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let dest = path(dir, &header.snapshot_id);
        let tmp = dest.with_extension("snap.tmp");
        let file = File::create(&tmp).map_err(|source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        })?;
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 20, Paced::new(file)),
            tmp,
            dest,
            rows: 0,
        };
        w.record(header)?;
        Ok(w)
    }

    /// Appends one row.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        self.rows += 1;
        self.record(&records::KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    fn record(&mut self, m: &impl Message) -> Result<(), SnapshotError> {
        self.out
            .write_all(&m.encode_length_delimited_to_vec())
            .map_err(|source| SnapshotError::Io {
                path: self.tmp.clone(),
                source,
            })
    }

    /// Makes the file durable under its name and returns its path and the
    /// number of rows.
    pub fn finish(self) -> Result<(PathBuf, u64), SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        let file = self
            .out
            .into_inner()
            .map_err(|e| SnapshotError::Io {
                path: self.tmp.clone(),
                source: e.into_error(),
            })?
            .into_inner();
        file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        if let Some(dir) = self.dest.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok((self.dest, self.rows))
    }
}

/// Reads a snapshot file: its header, then its rows one by one.
pub struct Reader {
    input: BufReader<File>,
    path: PathBuf,
    pub header: records::SnapshotHeader,
}

impl Reader {
    pub fn open(mut file: File, path: &Path) -> Result<Self, SnapshotError> {
        // The header is at the start, wherever the file's offset is (a
        // clone shares it: a reader opened through one after another read
        // the file would begin mid-way).
        std::io::Seek::rewind(&mut file).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = Self {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            header: records::SnapshotHeader::default(),
        };
        r.header = r
            .next_record::<records::SnapshotHeader>()?
            .ok_or_else(|| r.corrupt("it is empty"))?;
        if r.header.schema != SCHEMA_VERSION {
            return Err(r.corrupt(&format!(
                "schema {} is not {SCHEMA_VERSION}",
                r.header.schema
            )));
        }
        Ok(r)
    }

    /// The next row, or `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<records::KeyValue>, SnapshotError> {
        self.next_record()
    }

    fn next_record<M: Message + Default>(&mut self) -> Result<Option<M>, SnapshotError> {
        // A varint length (at most 10 bytes), then the record.
        let mut len: u64 = 0;
        for i in 0..10 {
            let mut b = [0u8; 1];
            match self.input.read(&mut b) {
                Ok(0) if i == 0 => return Ok(None),
                Ok(0) => return Err(self.corrupt("it ends inside a record length")),
                Ok(_) => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
            len |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        if len > berth_proto::limits::MAX_MESSAGE as u64 {
            return Err(self.corrupt(&format!("a record of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.input
            .read_exact(&mut buf)
            .map_err(|_| self.corrupt("it ends inside a record"))?;
        M::decode(buf.as_slice())
            .map(Some)
            .map_err(|e| self.corrupt(&e.to_string()))
    }

    fn corrupt(&self, reason: &str) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Copies a snapshot file to `dest` (durably, under a temporary name until
/// done) and returns the copy, opened.
pub fn keep_copy(mut file: File, dest: &Path) -> Result<File, SnapshotError> {
    use std::io::Seek;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = dest.with_extension("snap.tmp");
    file.rewind().map_err(io(dest))?;
    let mut out = Paced::new(File::create(&tmp).map_err(io(&tmp))?);
    std::io::copy(&mut file, &mut out).map_err(io(&tmp))?;
    out.into_inner().sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    File::open(dest).map_err(io(dest))
}

/// Deletes every snapshot file in `dir` but the one at `keep`.
pub fn remove_others(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p != keep && p.extension().is_some_and(|x| x == "snap" || x == "tmp") {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_holds_its_header_and_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let header = records::SnapshotHeader {
            schema: SCHEMA_VERSION,
            snapshot_id: "3-40-1000".into(),
            ..Default::default()
        };
        let mut w = Writer::create(dir.path(), &header).unwrap();
        for i in 0..1000u32 {
            w.row(format!("k{i:04}").as_bytes(), &vec![7u8; i as usize])
                .unwrap();
        }
        let (p, rows) = w.finish().unwrap();
        assert_eq!((p.clone(), rows), (path(dir.path(), "3-40-1000"), 1000));
        let mut r = Reader::open(File::open(&p).unwrap(), &p).unwrap();
        assert_eq!(r.header.snapshot_id, "3-40-1000");
        let mut n = 0;
        while let Some(kv) = r.next_row().unwrap() {
            assert_eq!(kv.key, format!("k{n:04}").as_bytes());
            assert_eq!(kv.value.len(), n as usize);
            n += 1;
        }
        assert_eq!(n, 1000);
        // A truncated file is named as such, not read as fewer rows.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let mut r = Reader::open(File::open(&p).unwrap(), &p).unwrap();
        let err = loop {
            match r.next_row() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a truncated file read to its end"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("ends inside a record"), "{err}");
        assert!(path(dir.path(), "../x").starts_with(dir.path()));
    }
}
