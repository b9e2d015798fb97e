//! The archive's store: a local directory (fsynced) or an object store URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;

use super::CompactError;

/// Opens the archive: a local directory (the default `<data_dir>/archive`, or a path), or an
/// object store URL (`s3://`, `gs://`, `az://`, `file://`) configured from the environment
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
pub fn open_store(
    url: &str,
    data_dir: &Path,
) -> Result<(Arc<dyn ObjectStore>, String), CompactError> {
    let err = |source| CompactError::Store {
        url: url.to_string(),
        source,
    };
    // `file://` URLs are local directories too, and need the same fsync.
    let local = url.strip_prefix("file://");
    if url.is_empty() || !url.contains("://") || local.is_some() {
        let dir = match local {
            _ if url.is_empty() => data_dir.join("archive"),
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(url),
        };
        std::fs::create_dir_all(&dir)?;
        // fsync: rows leave ClickHouse once their file is verified, so the file (and the
        // manifest) must survive a power loss by then; object_store's default is not to sync.
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(err)?
            .with_fsync(true);
        return Ok((Arc::new(store), dir.display().to_string()));
    }
    let parsed = url::Url::parse(url).map_err(|e| {
        err(object_store::Error::Generic {
            store: "archive",
            source: Box::new(e),
        })
    })?;
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(err)?;
    let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
        Arc::from(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    };
    Ok((store, url.to_string()))
}
