//! A part's file between the staging directory and the archive, in bounded memory whatever
//! the size of the day.
//!
//! - [`upload`]: a file of at most `part_bytes` is one put; a bigger one is a multipart upload
//!   (`put_multipart`, parts of exactly `part_bytes` but the last, at most [`PARTS_IN_FLIGHT`]
//!   in flight), so no day is held in memory whole and none meets S3's 5 GiB limit of one PUT.
//!   On a local archive the parts go to a staged file that is fsynced and renamed into place
//!   on completion, so the file appears whole or not at all there too.
//! - [`download`]: the published object streamed back to a local file, which the synchronous
//!   Parquet reader then reads one row group at a time. (The parquet crate's own
//!   `ParquetObjectReader` would read ranges straight from the store, but parquet 59's
//!   `object_store` feature is built on object_store 0.13, and we use 0.14.)
//!
//! Both compute the size and CRC32C of what passed, which is how the published object is
//! compared byte for byte with the staged file.

use std::path::Path;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CompactError;

/// Parts of a multipart upload sent at once: memory is `(PARTS_IN_FLIGHT + 1) * part_bytes`.
pub const PARTS_IN_FLIGHT: usize = 2;

/// The smallest part S3 accepts (all but the last part of an upload).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// Size and CRC32C of the bytes that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub crc32c: u32,
}

impl Digest {
    fn empty() -> Self {
        Self { size: 0, crc32c: 0 }
    }

    fn add(&mut self, bytes: &[u8]) {
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
        self.size += bytes.len() as u64;
    }
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the file).
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Publishes the local file `staged` at `target`.
pub async fn upload(
    store: &dyn ObjectStore,
    store_url: &str,
    staged: &Path,
    target: &ObjectPath,
    part_bytes: usize,
) -> Result<Digest, CompactError> {
    let store_err = |source| CompactError::Store {
        url: store_url.to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(staged).await?;
    let mut digest = Digest::empty();
    let mut part = vec![0u8; part_bytes];
    let n = read_full(&mut file, &mut part).await?;
    part.truncate(n);
    digest.add(&part);
    let len = file.metadata().await?.len();
    if len <= part_bytes as u64 {
        store
            .put(target, PutPayload::from(part))
            .await
            .map_err(store_err)?;
        return Ok(digest);
    }
    let upload = store.put_multipart(target).await.map_err(store_err)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, part_bytes);
    let result: Result<(), CompactError> = async {
        let mut chunk = part;
        loop {
            // Back-pressure: at most PARTS_IN_FLIGHT parts are uploading while the next fills.
            w.wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(store_err)?;
            w.put(bytes::Bytes::from(chunk));
            chunk = vec![0u8; part_bytes];
            let n = read_full(&mut file, &mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            chunk.truncate(n);
            digest.add(&chunk);
        }
    }
    .await;
    match result {
        Ok(()) => {
            w.finish().await.map_err(store_err)?;
            Ok(digest)
        }
        Err(e) => {
            // Leaves no orphan parts behind (S3 bills them until a lifecycle rule removes them).
            let _ = w.abort().await;
            Err(e)
        }
    }
}

/// Streams the object at `source` into the local file `dest`.
pub async fn download(
    store: &dyn ObjectStore,
    store_url: &str,
    source: &ObjectPath,
    dest: &Path,
) -> Result<Digest, CompactError> {
    let store_err = |source| CompactError::Store {
        url: store_url.to_string(),
        source,
    };
    let mut stream = store.get(source).await.map_err(store_err)?.into_stream();
    let mut out = tokio::fs::File::create(dest).await?;
    let mut digest = Digest::empty();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_err)?;
        digest.add(&chunk);
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file bigger than a part goes up in a multipart upload and comes back identical; one
    /// smaller than a part is a single put. (That the parts have the configured size is shown
    /// on a real S3 API by the ETag, in tests/integration/compactor_safety.rs.)
    #[tokio::test]
    async fn big_files_round_trip_through_a_multipart_upload() {
        let d = tempfile::tempdir().unwrap();
        let staged = d.path().join("staged");
        let data: Vec<u8> = (0..(2 * MIN_PART_BYTES + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&staged, &data).unwrap();
        let (store, _) =
            super::super::open_store(&d.path().join("arch").display().to_string(), d.path())
                .unwrap();
        let target = ObjectPath::from("events/x.parquet");
        let up = upload(store.as_ref(), "arch", &staged, &target, MIN_PART_BYTES)
            .await
            .unwrap();
        assert_eq!(up.size, data.len() as u64);
        assert_eq!(up.crc32c, crc32c::crc32c(&data));
        let back = d.path().join("back");
        let down = download(store.as_ref(), "arch", &target, &back)
            .await
            .unwrap();
        assert_eq!(down, up);
        assert_eq!(std::fs::read(&back).unwrap(), data);

        std::fs::write(&staged, b"small").unwrap();
        let up = upload(store.as_ref(), "arch", &staged, &target, MIN_PART_BYTES)
            .await
            .unwrap();
        assert_eq!(up.size, 5);
        assert_eq!(
            std::fs::read(d.path().join("arch/events/x.parquet")).unwrap(),
            b"small"
        );
    }
}
