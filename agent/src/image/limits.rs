//! Archive quotas: what an image archive or a layer may cost this host.
//!
//! Every tar stream the agent unpacks (the outer archive of `load`, each
//! layer once decompressed) passes through a [`TarScan`] as it streams, so
//! that a hostile header is refused from its 512 bytes, before the tar
//! reader would read the body it announces into memory. The scan reads the
//! stream as the `tar` crate does (the same header parser, the same rules
//! for PAX sizes and GNU sparse maps), so both see the same entries.
//! A [`DiskGuard`] keeps the store's filesystem from filling up.

use std::path::{Path, PathBuf};

/// The limits on what an archive may unpack to. Each is an agent flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// The most bytes one layer may unpack to (its uncompressed tar, and
    /// the apparent sizes of its files).
    pub max_layer_bytes: u64,
    /// The most bytes an image's layers (or one loaded archive) may
    /// unpack to together.
    pub max_image_bytes: u64,
    /// The most entries one layer (or one archive) may hold.
    pub max_entries: u64,
    /// The most bytes of one GNU long-name or long-link header, or of one
    /// PAX header (Go's archive/tar, which Docker uses, allows 1 MiB).
    pub max_header_bytes: u64,
    /// The most layers one image may have (Docker's limit is 125).
    pub max_layers: usize,
    /// The largest apparent size of a sparse file.
    pub max_sparse_bytes: u64,
    /// The bytes that must stay free on the filesystem of the store while
    /// an image is written to it.
    pub min_free_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 32 << 30,
            max_image_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_header_bytes: 1 << 20,
            max_layers: 125,
            max_sparse_bytes: 32 << 30,
            min_free_bytes: 256 << 20,
        }
    }
}

/// A limit of [`ArchiveLimits`] that an archive passed. Each message names
/// the limit and the agent flag that sets it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("a {kind} header of {size} bytes passes the limit of {limit} bytes on such headers (berth-agent --max-archive-header)")]
    Header {
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("it holds more than {limit} entries, the limit (berth-agent --max-layer-entries)")]
    Entries { limit: u64 },
    #[error(
        "it unpacks to more than {limit} bytes, the limit per layer (berth-agent --max-layer-size)"
    )]
    LayerBytes { limit: u64 },
    #[error("the image unpacks to more than {limit} bytes, the limit per image (berth-agent --max-image-size)")]
    ImageBytes { limit: u64 },
    #[error("the sparse file {path:?} claims {size} bytes, past the limit of {limit} bytes on a sparse file's size (berth-agent --max-sparse-size)")]
    Sparse { path: String, size: u64, limit: u64 },
    #[error("the image has {count} layers, more than the limit of {limit} (berth-agent --max-image-layers)")]
    Layers { count: usize, limit: usize },
    #[error("{dir} has {free} bytes free; unpacking needs {needed} more and keeps {reserve} free (berth-agent --min-free-space)")]
    Disk {
        dir: PathBuf,
        free: u64,
        needed: u64,
        reserve: u64,
    },
}

/// What one scan counts against: a layer's limits, or an archive's.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub max_bytes: u64,
    pub bytes_error: fn(u64) -> LimitError,
    pub max_entries: u64,
    pub max_header_bytes: u64,
    pub max_sparse_bytes: u64,
}

impl ArchiveLimits {
    /// The limits of one layer's tar.
    pub fn layer(&self) -> ScanLimits {
        ScanLimits {
            max_bytes: self.max_layer_bytes,
            bytes_error: |limit| LimitError::LayerBytes { limit },
            max_entries: self.max_entries,
            max_header_bytes: self.max_header_bytes,
            max_sparse_bytes: self.max_sparse_bytes,
        }
    }

    /// The limits of a whole archive as `load` reads it.
    pub fn archive(&self) -> ScanLimits {
        ScanLimits {
            max_bytes: self.max_image_bytes,
            bytes_error: |limit| LimitError::ImageBytes { limit },
            max_entries: self.max_entries,
            max_header_bytes: self.max_header_bytes,
            max_sparse_bytes: self.max_sparse_bytes,
        }
    }
}

const BLOCK: u64 = 512;

/// A tar stream as it is read: each byte passes a [`TarScan`] and a
/// [`DiskGuard`] before the tar reader sees it. A refusal reaches the
/// reader as an I/O error (which the tar crate wraps in its own); the
/// typed refusal is kept for [`Checked::refused`].
pub struct Checked<R> {
    inner: R,
    scan: TarScan,
    disk: DiskGuard,
    refused: Option<LimitError>,
}

impl<R> Checked<R> {
    /// Checks `inner` against `limits`, and the filesystem of `dir`
    /// against keeping `reserve` bytes free.
    pub fn new(inner: R, limits: ScanLimits, dir: &Path, reserve: u64) -> Self {
        Self {
            inner,
            scan: TarScan::new(limits),
            disk: DiskGuard::new(dir, reserve),
            refused: None,
        }
    }

    /// The limit the stream passed, if it passed one.
    pub fn refused(&mut self) -> Option<LimitError> {
        self.refused.take()
    }
}

impl<R: std::io::Read> std::io::Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.refused {
            return Err(std::io::Error::other(e.to_string()));
        }
        let n = self.inner.read(buf)?;
        let checked = self
            .scan
            .feed(&buf[..n])
            .and_then(|()| self.disk.write(n as u64));
        if let Err(e) = checked {
            let io = std::io::Error::other(e.to_string());
            self.refused = Some(e);
            return Err(io);
        }
        Ok(n)
    }
}

/// A streaming check of a tar archive against [`ScanLimits`]: fed the
/// archive's bytes in order, in pieces of any size.
pub struct TarScan {
    limits: ScanLimits,
    block: Box<[u8; 512]>,
    fill: usize,
    state: State,
    /// Entries a tar reader yields (extension headers are not entries).
    entries: u64,
    /// Bytes of the stream, and the apparent sizes of sparse files beyond
    /// their data.
    bytes: u64,
    /// The size a PAX header gave the next entry.
    pax_size: Option<u64>,
}

enum State {
    Header,
    /// Data and padding of an entry, passed over.
    Skip(u64),
    /// The body of a PAX header, kept to read its size record.
    Pax {
        body: Vec<u8>,
        left: u64,
        pad: u64,
    },
    /// The extension blocks of a GNU sparse map, then the entry's data.
    SparseMap {
        data: u64,
    },
    /// After the end-of-archive block: the tar reader stops here too.
    End,
}

impl TarScan {
    pub fn new(limits: ScanLimits) -> Self {
        Self {
            limits,
            block: Box::new([0; 512]),
            fill: 0,
            state: State::Header,
            entries: 0,
            bytes: 0,
            pax_size: None,
        }
    }

    /// Checks the next bytes of the archive.
    pub fn feed(&mut self, mut buf: &[u8]) -> Result<(), LimitError> {
        self.bytes = self.bytes.saturating_add(buf.len() as u64);
        if self.bytes > self.limits.max_bytes {
            return Err((self.limits.bytes_error)(self.limits.max_bytes));
        }
        while !buf.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Skip(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    buf = &buf[n as usize..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Pax { body, left, pad } => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    body.extend_from_slice(&buf[..n]);
                    *left -= n as u64;
                    buf = &buf[n..];
                    if *left == 0 {
                        let pad = *pad;
                        self.pax_size = pax_size(body);
                        self.state = if pad == 0 {
                            State::Header
                        } else {
                            State::Skip(pad)
                        };
                    }
                }
                State::Header | State::SparseMap { .. } => {
                    let n = (512 - self.fill).min(buf.len());
                    self.block[self.fill..self.fill + n].copy_from_slice(&buf[..n]);
                    self.fill += n;
                    buf = &buf[n..];
                    if self.fill == 512 {
                        self.fill = 0;
                        self.block_done()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn block_done(&mut self) -> Result<(), LimitError> {
        if let State::SparseMap { data } = self.state {
            // The last byte of a GNU sparse extension block's 21 entries of
            // 24 bytes says whether another block follows.
            if self.block[504] == 0 {
                self.state = skip(data);
            }
            return Ok(());
        }
        let block: &[u8] = &self.block[..];
        if block.iter().all(|b| *b == 0) {
            self.state = State::End;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(block);
        let (Ok(cksum), Ok(size)) = (header.cksum(), header.entry_size()) else {
            // The tar reader refuses this header; nothing after it is read.
            self.state = State::End;
            return Ok(());
        };
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(8 * 32u32, |a, b| a + u32::from(*b));
        if sum != cksum {
            self.state = State::End;
            return Ok(());
        }
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let special = if kind.is_gnu_longname() {
            Some("GNU long-name")
        } else if kind.is_gnu_longlink() {
            Some("GNU long-link")
        } else if kind.is_pax_local_extensions() {
            Some("PAX")
        } else if kind.is_pax_global_extensions() {
            Some("PAX global")
        } else {
            None
        };
        if let Some(kind_name) = special {
            if size > self.limits.max_header_bytes {
                return Err(LimitError::Header {
                    kind: kind_name,
                    size,
                    limit: self.limits.max_header_bytes,
                });
            }
        }
        if recognized && (kind.is_gnu_longname() || kind.is_gnu_longlink()) {
            // Read whole by the tar reader; the PAX size still waits for
            // the entry they name.
            self.state = skip(size + padding(size));
            return Ok(());
        }
        if recognized && kind.is_pax_local_extensions() {
            let pad = padding(size);
            self.state = if size == 0 {
                self.pax_size = None;
                State::Header
            } else {
                State::Pax {
                    body: Vec::with_capacity(size as usize),
                    left: size,
                    pad,
                }
            };
            return Ok(());
        }
        // An entry the tar reader yields: it takes the pending PAX header,
        // whose size replaces the header's unless the entry is itself an
        // extension header.
        let pax = self.pax_size.take();
        let size = match pax {
            Some(s) if special.is_none() => s,
            _ => size,
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(LimitError::Entries {
                limit: self.limits.max_entries,
            });
        }
        if size > self.limits.max_bytes.saturating_sub(self.bytes) {
            return Err((self.limits.bytes_error)(self.limits.max_bytes));
        }
        if kind.is_gnu_sparse() {
            let Some(gnu) = header.as_gnu() else {
                self.state = State::End;
                return Ok(());
            };
            let Ok(real) = gnu.real_size() else {
                self.state = State::End;
                return Ok(());
            };
            if real > self.limits.max_sparse_bytes {
                return Err(LimitError::Sparse {
                    path: header
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    size: real,
                    limit: self.limits.max_sparse_bytes,
                });
            }
            // The holes count as what the file unpacks to.
            self.bytes = self.bytes.saturating_add(real.saturating_sub(size));
            if self.bytes > self.limits.max_bytes {
                return Err((self.limits.bytes_error)(self.limits.max_bytes));
            }
            let data = size.saturating_add(padding(size));
            self.state = if gnu.is_extended() {
                State::SparseMap { data }
            } else {
                skip(data)
            };
            return Ok(());
        }
        self.state = skip(size.saturating_add(padding(size)));
        Ok(())
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn skip(n: u64) -> State {
    if n == 0 {
        State::Header
    } else {
        State::Skip(n)
    }
}

/// The size record of a PAX header, read as the tar reader reads it: the
/// first `size` record, if every record before it is well formed and its
/// value a number.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

/// Keeps the store's filesystem from filling: checked as bytes are written
/// (every few MiB) and before a layer is unpacked.
pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    written: u64,
    next_check: u64,
}

/// How many bytes may be written between two checks of the free space.
const CHECK_EVERY: u64 = 4 << 20;

impl DiskGuard {
    pub fn new(dir: &Path, reserve: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            reserve,
            written: 0,
            next_check: 0,
        }
    }

    /// Counts bytes about to be written, refusing them when the free space
    /// would fall below the reserve.
    pub fn write(&mut self, n: u64) -> Result<(), LimitError> {
        self.written = self.written.saturating_add(n);
        if self.written >= self.next_check {
            self.next_check = self.written.saturating_add(CHECK_EVERY);
            self.need(CHECK_EVERY)?;
        }
        Ok(())
    }

    /// Refuses unless `needed` bytes fit with the reserve left free.
    pub fn need(&self, needed: u64) -> Result<(), LimitError> {
        let Some(free) = free_bytes(&self.dir) else {
            return Ok(());
        };
        if free < needed.saturating_add(self.reserve) {
            return Err(LimitError::Disk {
                dir: self.dir.clone(),
                free,
                needed,
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

/// The bytes an unprivileged writer could still put on the filesystem of
/// `dir`; None if it cannot be told.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    // statvfs(2) only reads the filesystem's counters.
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ScanLimits {
        ArchiveLimits {
            max_entries: 3,
            max_header_bytes: 200,
            max_layer_bytes: 1 << 20,
            max_sparse_bytes: 4096,
            ..Default::default()
        }
        .layer()
    }

    fn header(kind: tar::EntryType, path: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn scan_all(data: &[u8], piece: usize) -> Result<TarScan, LimitError> {
        let mut s = TarScan::new(limits());
        for chunk in data.chunks(piece) {
            s.feed(chunk)?;
        }
        Ok(s)
    }

    #[test]
    fn counts_entries_as_the_tar_reader_yields_them() {
        let mut b = tar::Builder::new(Vec::new());
        // A long name makes an extension header, which is not an entry.
        let long = format!("{}/f", "d".repeat(150));
        b.append_data(
            &mut header(tar::EntryType::Regular, "a", 3),
            long,
            &b"abc"[..],
        )
        .unwrap();
        b.append(&header(tar::EntryType::Regular, "b", 700), &[1u8; 700][..])
            .unwrap();
        let data = b.into_inner().unwrap();
        for piece in [1, 7, 512, 100_000] {
            let s = scan_all(&data, piece).unwrap();
            assert_eq!(s.entries, 2, "pieces of {piece}");
            assert!(matches!(s.state, State::End));
        }
    }

    /// Archives as GNU tar writes them (gnu, pax and ustar formats, long
    /// names, links, a sparse file with a map longer than its header
    /// holds): the scan sees the entries the tar reader yields, whatever
    /// the pieces it is fed in.
    #[test]
    fn agrees_with_the_tar_reader_on_gnu_tar_archives() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let deep = src.join("d".repeat(90)).join("e".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f".repeat(120)), b"deep").unwrap();
        std::fs::write(src.join("small"), vec![3u8; 1000]).unwrap();
        std::os::unix::fs::symlink("x".repeat(150), src.join("long-link")).unwrap();
        std::fs::hard_link(src.join("small"), src.join("hard")).unwrap();
        // Forty islands of data in holes: more than the four map entries
        // a GNU header holds, so the map continues in extension blocks.
        let mut f = std::fs::File::create(src.join("sparse")).unwrap();
        for i in 0..40u64 {
            f.seek(SeekFrom::Start(i << 20)).unwrap();
            f.write_all(&[i as u8 + 1; 4096]).unwrap();
        }
        drop(f);
        let limits = ArchiveLimits::default().layer();
        for format in ["gnu", "pax", "ustar"] {
            let out = dir.path().join(format!("{format}.tar"));
            let mut cmd = std::process::Command::new("tar");
            cmd.arg(format!("--format={format}"))
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(&src);
            if format != "ustar" {
                cmd.arg("--sparse");
            }
            // GNU tar says on stderr why ustar cannot hold the long names.
            let st = cmd
                .arg(".")
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            if format == "ustar" && !st.success() {
                // ustar cannot hold the long names: tar refuses, which is
                // its business, not the scan's.
                continue;
            }
            assert!(st.success(), "tar --format={format}");
            let data = std::fs::read(&out).unwrap();
            let yielded = tar::Archive::new(data.as_slice())
                .entries()
                .unwrap()
                .inspect(|e| assert!(e.is_ok(), "{format}: {:?}", e.as_ref().err()))
                .count() as u64;
            for piece in [1, 511, 512, 4096, 1 << 20] {
                let mut scan = TarScan::new(limits);
                for chunk in data.chunks(piece) {
                    scan.feed(chunk).unwrap();
                }
                assert_eq!(scan.entries, yielded, "{format} in pieces of {piece}");
                assert!(matches!(scan.state, State::End), "{format}: {piece}");
            }
        }
    }

    #[test]
    fn refuses_each_limit_by_name() {
        let big_name = header(tar::EntryType::GNULongName, "././@LongLink", 1 << 30);
        let err = scan_all(big_name.as_bytes(), 512).err().unwrap();
        assert!(
            matches!(err, LimitError::Header { kind: "GNU long-name", size, limit: 200 } if size == 1 << 30)
        );
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..4 {
            b.append(
                &header(tar::EntryType::Regular, &format!("f{i}"), 0),
                &[][..],
            )
            .unwrap();
        }
        let err = scan_all(&b.into_inner().unwrap(), 512).err().unwrap();
        assert_eq!(err, LimitError::Entries { limit: 3 });
        let huge = header(tar::EntryType::Regular, "huge", 1 << 40);
        let err = scan_all(huge.as_bytes(), 512).err().unwrap();
        assert_eq!(err, LimitError::LayerBytes { limit: 1 << 20 });
    }

    #[test]
    fn a_pax_size_replaces_the_header_size_of_the_next_entry() {
        let record = "16 size=1048577\n";
        let mut b = tar::Builder::new(Vec::new());
        b.append(
            &header(tar::EntryType::XHeader, "pax", record.len() as u64),
            record.as_bytes(),
        )
        .unwrap();
        b.append(&header(tar::EntryType::Regular, "f", 0), &[][..])
            .unwrap();
        let err = scan_all(&b.into_inner().unwrap(), 512).err().unwrap();
        assert_eq!(err, LimitError::LayerBytes { limit: 1 << 20 });
    }
}
