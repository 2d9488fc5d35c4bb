//! Layer unpack throughput: berth's unpacker beside `tar -xzf` of the same
//! gzip layer, in the same run. Run as root (ownership is kept):
//!
//!     cargo bench -p berth-agent --bench unpack
//!
//! Prints a table; docs/benchmarks.md keeps the latest.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_agent::image::layer::{ingest, Expected};
use berth_agent::image::ImageStore;
use berth_agent::snapshot::{unpack_layer, Snapshots};
use berth_chaos::images::{busybox_layer, gzip, TarBuilder};

const RUNS: usize = 5;

/// A layer like a small distribution's: busybox, a few thousand files from
/// 1 KiB to 64 KiB in nested directories, and a few large files.
fn sample_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for d in 0..40 {
        t.dir(&format!("usr/share/d{d}/"));
        for f in 0..100 {
            let size = 1024 + (next() % (63 * 1024)) as usize;
            // Text-like content, so that gzip has something to do.
            let data: Vec<u8> = (0..size)
                .map(|i| b"abcdefghij klmnop\n"[(i + f) % 18])
                .collect();
            t.file(&format!("usr/share/d{d}/f{f}.txt"), &data);
        }
    }
    for i in 0..4 {
        let data: Vec<u8> = (0..8 << 20).map(|_| (next() & 0xff) as u8).collect();
        t.file(&format!("usr/lib/big{i}.bin"), &data);
    }
    let mut layer = t.finish();
    // Drop the two zero blocks that end the archive, then add busybox's
    // entries (which end with their own).
    layer.truncate(layer.len() - 1024);
    layer.extend(busybox_layer().expect("busybox-static is installed"));
    layer
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times one run in a fresh directory, after flushing dirty pages so that
/// no run pays for an earlier one's writeback.
fn time_once(f: &mut dyn FnMut(&Path)) -> Duration {
    let dir = tempfile::tempdir_in("/var/tmp").expect("a scratch directory");
    nix::unistd::sync();
    let start = Instant::now();
    f(dir.path());
    start.elapsed()
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: layers keep their ownership"
    );
    let layer = sample_layer();
    let gz = gzip(&layer);
    let scratch = tempfile::tempdir_in("/var/tmp").expect("a scratch directory");
    let gz_path = scratch.path().join("layer.tar.gz");
    std::fs::write(&gz_path, &gz).expect("writing the layer");
    let mb = layer.len() as f64 / 1e6;

    let mut tar_fn = |dir: &Path| {
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(&gz_path)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("running tar");
        assert!(st.success());
    };
    let mut unpack_fn = |dir: &Path| {
        let f = std::fs::File::open(&gz_path).expect("the layer");
        let root = dir.join("root");
        std::fs::create_dir(&root).expect("a root");
        unpack_layer(
            flate2::read::GzDecoder::new(std::io::BufReader::new(f)),
            &root,
        )
        .expect("unpacking");
    };
    let mut ingest_fn = |dir: &Path| {
        let store = ImageStore::open(&dir.join("images")).expect("a store");
        let snaps = Snapshots::open(&dir.join("snapshots")).expect("snapshots");
        let staging = store.staging_dir().expect("staging");
        let f = std::fs::File::open(&gz_path).expect("the layer");
        ingest(
            &store,
            &snaps,
            std::io::BufReader::new(f),
            &Expected::default(),
            staging.path(),
            &mut Default::default(),
        )
        .expect("ingesting");
    };
    // Interleaved, so that a noisy moment hurts all three alike.
    let (mut t1, mut t2, mut t3) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        t1.push(time_once(&mut tar_fn));
        t2.push(time_once(&mut unpack_fn));
        t3.push(time_once(&mut ingest_fn));
    }
    let (tar, unpack, full) = (median(t1), median(t2), median(t3));

    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "layer: {:.1} MB uncompressed, {:.1} MB gzip, {} files; median of {RUNS} runs",
        mb,
        gz.len() as f64 / 1e6,
        4000 + 4 + 400
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "what", "time", "MB/s", "vs tar -xzf"
    );
    for (what, d) in [
        ("tar -xzf (GNU tar)", tar),
        ("berth unpack (gunzip + checks + whiteouts)", unpack),
        ("berth ingest (+ sha256, blob copy, fsync)", full),
    ] {
        println!(
            "{:<44} {:>8.0}ms {:>10.1} {:>11.2}x",
            what,
            d.as_secs_f64() * 1e3,
            rate(d),
            tar.as_secs_f64() / d.as_secs_f64()
        );
    }
}
