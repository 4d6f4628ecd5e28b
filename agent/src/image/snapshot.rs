//! Snapshots: one directory per unpacked layer at `snapshots/<chain-id-hex>`, each an overlayfs
//! lower directory holding that layer's changes. A layer is unpacked into `snapshots/tmp-*`
//! and renamed into place when complete, so a crash never leaves a half snapshot under its
//! final name; `open` removes what a crash left in `tmp-*`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::blob::digest_hex;
use super::{ImageError, unpack};

static UNPACK_COUNTER: AtomicU64 = AtomicU64::new(0);
const TEMP_PREFIX: &str = "tmp-";

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn open(root: &Path) -> Result<SnapshotStore, ImageError> {
        fs::create_dir_all(root).map_err(ImageError::io("create", root))?;
        for entry in fs::read_dir(root).map_err(ImageError::io("list", root))? {
            let entry = entry.map_err(ImageError::io("list", root))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(ImageError::io("clean", &path))?;
            }
        }
        Ok(SnapshotStore {
            root: root.to_owned(),
        })
    }

    /// The directory of the snapshots (named by the hex of their chain ID).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, chain_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join(digest_hex(chain_id)?))
    }

    pub fn contains(&self, chain_id: &str) -> Result<bool, ImageError> {
        Ok(self.path(chain_id)?.is_dir())
    }

    /// Unpacks the layer blob at `blob` (digest `layer_digest`) as the snapshot `chain_id`,
    /// checking that its uncompressed content has digest `diff_id`. Blocking.
    pub fn unpack(
        &self,
        chain_id: &str,
        layer_digest: &str,
        diff_id: &str,
        blob: &Path,
    ) -> Result<PathBuf, ImageError> {
        let final_path = self.path(chain_id)?;
        if final_path.is_dir() {
            return Ok(final_path);
        }
        let temp = self.root.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            digest_hex(chain_id)?,
            std::process::id(),
            UNPACK_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&temp).map_err(ImageError::io("create", &temp))?;
        let result = self.unpack_into(&temp, &final_path, layer_digest, diff_id, blob);
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result.map(|()| final_path)
    }

    fn unpack_into(
        &self,
        temp: &Path,
        final_path: &Path,
        layer_digest: &str,
        diff_id: &str,
        blob: &Path,
    ) -> Result<(), ImageError> {
        let file = fs::File::open(blob).map_err(ImageError::io("open", blob))?;
        let actual = unpack::unpack_layer(file, temp, layer_digest)?;
        if actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                digest: layer_digest.to_owned(),
                expected: diff_id.to_owned(),
                actual,
            });
        }
        sync_tree(temp)?;
        match fs::rename(temp, final_path) {
            Ok(()) => Ok(()),
            // Someone else finished the same snapshot first; theirs is as good as ours.
            Err(_) if final_path.is_dir() => {
                let _ = fs::remove_dir_all(temp);
                Ok(())
            }
            Err(source) => Err(ImageError::io("rename into place", final_path)(source)),
        }
    }
}

/// Flushes the whole filesystem holding `path` (syncfs), so the rename that publishes a
/// snapshot never lands before its content.
fn sync_tree(path: &Path) -> Result<(), ImageError> {
    use std::os::fd::AsRawFd as _;
    let dir = fs::File::open(path).map_err(ImageError::io("open", path))?;
    // SAFETY: dir is an open file descriptor for the duration of the call.
    let result = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if result != 0 {
        return Err(ImageError::io("sync", path)(std::io::Error::last_os_error()));
    }
    Ok(())
}
