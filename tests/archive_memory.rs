//! The compactor's publish and verification paths hold a bounded amount of memory whatever the
//! size of the file: a 256 MiB part goes up to the archive in 5 MiB parts and comes back
//! streamed, while the process's peak RSS (VmHWM) grows by a small fraction of the file.
//!
//! A test binary of its own: VmHWM is the whole process's, so no other test may run beside it.

use clicktrail::compactor::publish::{download, upload, PARTS_IN_FLIGHT};
use clicktrail::compactor::{open_store, MIN_PART_BYTES};

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test]
async fn a_big_file_is_published_and_read_back_in_bounded_memory() {
    const SIZE: usize = 256 * 1024 * 1024;
    let d = tempfile::tempdir().unwrap();
    let staged = d.path().join("staged.parquet");
    {
        // Written a MiB at a time, so that the test itself does not raise the peak.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&staged).unwrap());
        let mut block = vec![0u8; 1024 * 1024];
        for i in 0..SIZE / block.len() {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i * 31 + j * 7) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let (store, url) =
        open_store(&d.path().join("archive").display().to_string(), d.path()).unwrap();
    let target = object_store::path::Path::from("events/date=2026-01-01/part-1-0.parquet");
    let before = peak_rss_bytes();

    let up = upload(store.as_ref(), &url, &staged, &target, MIN_PART_BYTES)
        .await
        .unwrap();
    let back = d.path().join("verify.parquet");
    let down = download(store.as_ref(), &url, &target, &back)
        .await
        .unwrap();

    let grown = peak_rss_bytes().saturating_sub(before);
    assert_eq!(up.size, SIZE as u64);
    assert_eq!(down.size, up.size);
    assert_eq!(down.crc32c, up.crc32c);
    // The parts in flight, the one being filled, and allocator slack; a whole-file read
    // would add the file's 256 MiB (twice: the upload and the download).
    let bound = (PARTS_IN_FLIGHT as u64 + 1) * MIN_PART_BYTES as u64 + 32 * 1024 * 1024;
    eprintln!(
        "published and read back {} MiB: peak RSS grew by {} KiB (bound {} KiB)",
        SIZE >> 20,
        grown >> 10,
        bound >> 10
    );
    assert!(
        grown < bound,
        "peak RSS grew by {grown} bytes publishing a {SIZE}-byte file (bound {bound})"
    );
}
