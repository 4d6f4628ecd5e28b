//! The content-addressed blob store (`blobs/sha256/<hex>`) and [`BlobWriter`], which streams a
//! blob to a temp file in `blobs/ingest/`, hashes it on the way and renames it into place only
//! when its digest and size are right. A blob at its final path is always complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::ImageError;

/// Manifests and configs are read whole; anything bigger than this is not one.
const MAX_METADATA_BLOB: u64 = 4 << 20;

static INGEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The hex part of a `sha256:<hex>` digest; other algorithms are refused.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(ImageError::BadDigest {
            digest: digest.to_owned(),
        }),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Creates `root/sha256` and `root/ingest`; empties `ingest` of what a crash left.
    pub fn open(root: &Path) -> Result<BlobStore, ImageError> {
        let store = BlobStore {
            root: root.to_owned(),
        };
        let ingest = store.ingest_dir();
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(ImageError::io("clean", &ingest))?;
        }
        for dir in [root.join("sha256"), ingest] {
            std::fs::create_dir_all(&dir).map_err(ImageError::io("create", &dir))?;
        }
        Ok(store)
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("sha256").join(digest_hex(digest)?))
    }

    /// The directory of the sha256 blobs (file names are the hex digests).
    pub fn dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    pub fn contains(&self, digest: &str) -> Result<bool, ImageError> {
        Ok(self.path(digest)?.is_file())
    }

    /// Reads a small blob (manifest, config) whole.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        use std::io::Read as _;
        let path = self.path(digest)?;
        let file = std::fs::File::open(&path).map_err(ImageError::io("open", &path))?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_BLOB)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io("read", &path))?;
        Ok(bytes)
    }

    /// Stores `bytes` under `digest` after checking that they hash to it.
    pub async fn put(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, ImageError> {
        let mut writer = self.writer(digest, bytes.len() as u64).await?;
        writer.write(bytes).await?;
        writer.commit().await
    }

    /// A writer for the blob `digest` of `size` bytes.
    pub async fn writer(&self, digest: &str, size: u64) -> Result<BlobWriter, ImageError> {
        let final_path = self.path(digest)?;
        let temp_path = self.ingest_dir().join(format!(
            "{}-{}-{}",
            digest_hex(digest)?,
            std::process::id(),
            INGEST_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = tokio::fs::File::create(&temp_path)
            .await
            .map_err(ImageError::io("create", &temp_path))?;
        Ok(BlobWriter {
            file: tokio::io::BufWriter::with_capacity(256 << 10, file),
            temp_path,
            final_path,
            digest: digest.to_owned(),
            expected_size: size,
            hasher: Sha256::new(),
            written: 0,
            committed: false,
        })
    }
}

/// Streams one blob to disk and verifies it: [`BlobWriter::write`] each chunk, then
/// [`BlobWriter::commit`]. Dropped without a successful commit, it removes its temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    temp_path: PathBuf,
    final_path: PathBuf,
    digest: String,
    expected_size: u64,
    hasher: Sha256,
    written: u64,
    committed: bool,
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if self.written > self.expected_size {
            // A registry that sends more than the descriptor says would fill the disk.
            return Err(self.mismatch());
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(ImageError::io("write", &self.temp_path))
    }

    /// Checks size and digest, syncs, and renames the blob into place.
    pub async fn commit(mut self) -> Result<PathBuf, ImageError> {
        let actual = format!("sha256:{:x}", self.hasher.clone().finalize());
        if actual != self.digest || self.written != self.expected_size {
            return Err(self.mismatch());
        }
        self.file
            .flush()
            .await
            .map_err(ImageError::io("write", &self.temp_path))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .map_err(ImageError::io("sync", &self.temp_path))?;
        tokio::fs::rename(&self.temp_path, &self.final_path)
            .await
            .map_err(ImageError::io("rename into place", &self.final_path))?;
        self.committed = true;
        Ok(self.final_path.clone())
    }

    fn mismatch(&self) -> ImageError {
        ImageError::DigestMismatch {
            digest: self.digest.clone(),
            actual: format!("sha256:{:x}", self.hasher.clone().finalize()),
            expected_size: self.expected_size,
            actual_size: self.written,
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_is_empty(store: &BlobStore) -> bool {
        std::fs::read_dir(store.ingest_dir())
            .unwrap()
            .next()
            .is_none()
    }

    #[tokio::test]
    async fn verified_blobs_land_at_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"hello world");
        let mut writer = store.writer(&digest, 11).await.unwrap();
        writer.write(b"hello ").await.unwrap();
        writer.write(b"world").await.unwrap();
        let path = writer.commit().await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"hello world");
        assert!(store.contains(&digest).unwrap());
        assert!(ingest_is_empty(&store));
    }

    #[tokio::test]
    async fn wrong_content_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"expected");
        let mut writer = store.writer(&digest, 8).await.unwrap();
        writer.write(b"tampered").await.unwrap();
        let error = writer.commit().await.unwrap_err();
        assert!(
            matches!(error, ImageError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&digest), "{error}");
        assert!(!store.contains(&digest).unwrap());
        assert!(ingest_is_empty(&store));
    }

    #[tokio::test]
    async fn oversized_streams_stop_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"abc");
        let mut writer = store.writer(&digest, 3).await.unwrap();
        assert!(writer.write(b"abcd").await.is_err());
        drop(writer);
        assert!(ingest_is_empty(&store));
        assert!(store.put(&digest, b"ab").await.is_err());
        store.put(&digest, b"abc").await.unwrap();
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:../{}", "a".repeat(61))).is_err());
        assert_eq!(
            digest_hex(&format!("sha256:{}", "0".repeat(64))).unwrap(),
            "0".repeat(64)
        );
    }
}
