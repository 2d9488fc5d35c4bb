//! Ingesting one layer: decompress (plain, gzip or zstd), check it against
//! what its descriptor and config declare (digest, size, diff id), keep the
//! uncompressed tar as a blob, and unpack it once into a snapshot.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::limits::{DiskGuard, LimitError, TarScan};
use super::{ImageError, ImageStore};
use crate::snapshot::Snapshots;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognizes gzip and zstd by their magic numbers.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What the archive declares of a layer; each given value is checked.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// A name for messages (a path in the archive, or a digest).
    pub what: String,
    /// The digest of the blob as stored (compressed).
    pub digest: Option<String>,
    /// The size of the blob as stored.
    pub size: Option<u64>,
    /// The digest of the uncompressed tar, from the image config.
    pub diff_id: Option<String>,
}

/// What one load (or import) has done so far: the bytes of the image being
/// loaded, held to the per-image limit, and the layers it unpacked, which a
/// failed load deletes again.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Uncompressed bytes of the current image's layers already ingested.
    pub image_bytes: u64,
    /// Diff ids of the layers this load unpacked (not those already there).
    pub unpacked: Vec<String>,
}

/// What ingesting produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
}

/// Hashes and counts what passes through, and refuses to read past a
/// declared size.
struct Counting<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(limit) = self.limit {
            if self.count > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the blob is larger than its declared size of {limit} bytes"),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex_digest(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Ingests one layer from `src`, staging in `staging`: the decompressed
/// tar is checked against the store's limits as it streams (its headers,
/// entries and sizes, and the image's total in `progress`), and the free
/// space before it is unpacked.
pub fn ingest(
    store: &ImageStore,
    snapshots: &Snapshots,
    src: impl Read,
    expected: &Expected,
    staging: &Path,
    progress: &mut Progress,
) -> Result<Ingested, ImageError> {
    let what = &expected.what;
    let bad = |why: String| ImageError::Archive(format!("layer {what}: {why}"));
    let limit = |source: LimitError| ImageError::Limit {
        what: format!("layer {what}"),
        source,
    };
    let limits = store.limits().clone();
    let mut scan = TarScan::new(limits.layer());
    let mut disk = DiskGuard::new(staging, limits.min_free_bytes);
    let mut counted = BufReader::new(Counting {
        inner: src,
        hasher: Sha256::new(),
        count: 0,
        limit: expected.size,
    });
    let head = counted.fill_buf().map_err(|e| bad(e.to_string()))?.to_vec();
    let compression = Compression::detect(&head);
    let tmp_path = staging.join(format!("layer-{}", rand_suffix()));
    let mut tmp = File::create(&tmp_path).map_err(|e| bad(format!("staging: {e}")))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    {
        let mut decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut counted),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut counted)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut counted)
                    .map_err(|e| bad(format!("zstd: {e}")))?,
            ),
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = decoder.read(&mut buf).map_err(|e| {
                bad(match compression {
                    Compression::None => e.to_string(),
                    _ => format!("the compressed stream is damaged or truncated: {e}"),
                })
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if progress.image_bytes.saturating_add(size) > limits.max_image_bytes {
                return Err(limit(LimitError::ImageBytes {
                    limit: limits.max_image_bytes,
                }));
            }
            scan.feed(&buf[..n]).map_err(limit)?;
            disk.write(n as u64).map_err(limit)?;
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| bad(format!("staging: {e}")))?;
        }
    }
    // Whatever follows the compressed stream still counts toward the blob.
    std::io::copy(&mut counted, &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
    let counting = counted.into_inner();
    if let Some(declared) = expected.size {
        if counting.count != declared {
            return Err(bad(format!(
                "it is {} bytes, but its descriptor declares {declared}",
                counting.count
            )));
        }
    }
    let blob_digest = hex_digest(counting.hasher);
    if let Some(d) = &expected.digest {
        if *d != blob_digest {
            return Err(ImageError::DigestMismatch {
                digest: d.clone(),
                actual: blob_digest,
            });
        }
    }
    let diff_id = hex_digest(hasher);
    if let Some(d) = &expected.diff_id {
        if *d != diff_id {
            return Err(bad(format!(
                "its content has diff id {diff_id}, but the image config says {d}"
            )));
        }
    }
    tmp.sync_all().map_err(|e| bad(format!("staging: {e}")))?;
    drop(tmp);
    // The unpacked layer takes about what its tar holds, beside the tar,
    // which is kept as the blob.
    disk.need(size).map_err(limit)?;
    progress.image_bytes = progress.image_bytes.saturating_add(size);
    let (_, created) = snapshots.unpack(
        &diff_id,
        File::open(&tmp_path).map_err(|e| bad(e.to_string()))?,
    )?;
    if created {
        progress.unpacked.push(diff_id.clone());
    }
    store.put_blob_file(&tmp_path, &diff_id)?;
    Ok(Ingested { diff_id, size })
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
