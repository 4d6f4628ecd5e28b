//! Layer unpacking: one layer tar (plain or gzip) becomes one snapshot directory, usable as an
//! overlayfs lower directory. Whiteouts `.wh.<name>` become overlay whiteouts (character
//! devices 0/0), `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`).
//! Paths are confined to the snapshot: `..` is refused, and no entry is written through a
//! symlink. The uncompressed stream is hashed on the way and must match the layer's diff ID.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Chain IDs of a layer stack: the first is the first diff ID, each next one is
/// `sha256(parent_chain_id + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => {
                format!("sha256:{:x}", Sha256::digest(format!("{parent} {diff_id}")))
            }
        };
        chain.push(next);
    }
    chain
}

/// The path of a tar entry relative to the snapshot root: `/`, `.` dropped; `..` refused.
pub fn sanitize_entry_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("`..` leaves the snapshot"),
            Component::Prefix(_) => return Err("not a unix path"),
            Component::Normal(part) => relative.push(part),
        }
    }
    Ok(relative)
}

/// Unpacks the layer read from `layer` (tar, or gzip-compressed tar) into the existing empty
/// directory `dest` and returns the digest of the uncompressed tar (the diff ID).
pub fn unpack_layer(layer: impl Read, dest: &Path, digest: &str) -> Result<String, ImageError> {
    let mut buffered = BufReader::with_capacity(256 << 10, layer);
    let magic = buffered
        .fill_buf()
        .map_err(|source| unpack_error(digest, "", source))?;
    let uncompressed: Box<dyn Read> = if magic.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(ZSTD_MAGIC) {
        return Err(ImageError::UnsupportedLayer {
            digest: digest.to_owned(),
            media_type: "zstd-compressed tar (not supported yet)".to_owned(),
        });
    } else {
        Box::new(buffered)
    };
    let mut hashing = HashingReader {
        inner: uncompressed,
        hasher: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        archive.set_mask(0);
        let entries = archive
            .entries()
            .map_err(|source| unpack_error(digest, "", source))?;
        for entry in entries {
            let entry = entry.map_err(|source| unpack_error(digest, "", source))?;
            unpack_entry(entry, dest, digest)?;
        }
    }
    // Whatever follows the end-of-archive blocks is part of the diff ID too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| unpack_error(digest, "", source))?;
    Ok(format!("sha256:{:x}", hashing.hasher.finalize()))
}

fn unpack_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    dest: &Path,
    digest: &str,
) -> Result<(), ImageError> {
    let raw_path = entry
        .path()
        .map_err(|source| unpack_error(digest, "", source))?
        .into_owned();
    let shown = raw_path.to_string_lossy().into_owned();
    let unsafe_path = |reason: &str| ImageError::UnsafePath {
        digest: digest.to_owned(),
        path: shown.clone(),
        reason: reason.to_owned(),
    };
    let relative = sanitize_entry_path(&raw_path).map_err(unsafe_path)?;
    let io_error = |source| unpack_error(digest, &shown, source);
    if let Some(extensions) = entry.pax_extensions().map_err(io_error)? {
        for extension in extensions {
            let key = extension.map_err(io_error)?.key().unwrap_or_default();
            // Overlay keeps its own metadata (whiteouts, redirects) in trusted.overlay.*;
            // an image must not set it.
            if key.starts_with("SCHILY.xattr.trusted.") {
                return Err(unsafe_path("sets a trusted.* xattr"));
            }
        }
    }
    let kind = entry.header().entry_type();

    let Some(name) = relative
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
    else {
        // The archive's root ("./"): its owner and mode are the snapshot root's.
        if kind.is_dir() {
            entry.unpack(dest).map_err(io_error)?;
        }
        return Ok(());
    };
    let parent = relative.parent().unwrap_or(Path::new(""));
    let parent_dir = ensure_directories(dest, parent).map_err(unsafe_path)?;

    if name == OPAQUE_MARKER {
        return set_opaque(&parent_dir).map_err(io_error);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other aufs metadata (`.wh..wh.plnk` and such) has no meaning for overlayfs.
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(unsafe_path("whiteout of nothing"));
        }
        let target = parent_dir.join(hidden);
        remove_existing(&target).map_err(io_error)?;
        return make_node(&target, libc::S_IFCHR, 0, 0).map_err(io_error);
    }

    let target = parent_dir.join(&name);
    if let Ok(existing) = fs::symlink_metadata(&target)
        && !(existing.is_dir() && kind.is_dir())
    {
        remove_existing(&target).map_err(io_error)?;
    }
    let header = entry.header();
    match kind {
        tar::EntryType::Link => {
            let link = entry
                .link_name()
                .map_err(io_error)?
                .ok_or_else(|| unsafe_path("hard link without a target"))?;
            let link = sanitize_entry_path(&link).map_err(unsafe_path)?;
            let link_parent = link.parent().unwrap_or(Path::new(""));
            let link_name = link
                .file_name()
                .ok_or_else(|| unsafe_path("hard link to the root"))?;
            let source = ensure_directories(dest, link_parent)
                .map_err(unsafe_path)?
                .join(link_name);
            fs::hard_link(&source, &target).map_err(io_error)
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let file_type = match kind {
                tar::EntryType::Char => libc::S_IFCHR,
                tar::EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            // FIFOs carry no device number; some writers leave those fields blank.
            let (major, minor) = if kind == tar::EntryType::Fifo {
                (0, 0)
            } else {
                (
                    header.device_major().map_err(io_error)?.unwrap_or(0),
                    header.device_minor().map_err(io_error)?.unwrap_or(0),
                )
            };
            let (uid, gid, mode) = (
                header.uid().map_err(io_error)?,
                header.gid().map_err(io_error)?,
                header.mode().map_err(io_error)?,
            );
            make_node(&target, file_type, major, minor).map_err(io_error)?;
            std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))
                .map_err(io_error)?;
            fs::set_permissions(
                &target,
                std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
            )
            .map_err(io_error)
        }
        tar::EntryType::XGlobalHeader => Ok(()),
        _ => entry.unpack(&target).map(drop).map_err(io_error),
    }
}

/// Makes sure every component of `relative` under `root` is a real directory (creating missing
/// ones) and returns the full path. A symlink or file on the way is refused: following it could
/// write outside the snapshot.
fn ensure_directories(root: &Path, relative: &Path) -> Result<PathBuf, &'static str> {
    let mut path = root.to_owned();
    for component in relative.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => return Err("a parent is a symlink"),
            Ok(_) => return Err("a parent is not a directory"),
            Err(_) => fs::create_dir(&path).map_err(|_| "cannot create a parent directory")?,
        }
    }
    Ok(path)
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path holds a NUL byte"))
}

fn make_node(path: &Path, file_type: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c_path = c_path(path)?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            file_type | 0o600,
            libc::makedev(major, minor),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let c_path = c_path(dir)?;
    let name = c"trusted.overlay.opaque";
    let value = b"y";
    // SAFETY: c_path and name are valid NUL-terminated strings and value points to
    // value.len() readable bytes, all outliving the call.
    let result = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unpack_error(digest: &str, path: &str, source: io::Error) -> ImageError {
    ImageError::Unpack {
        digest: digest.to_owned(),
        path: path.to_owned(),
        source,
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    /// Appends an entry with `path` written as raw bytes, so tests can make paths that
    /// `tar::Builder` itself would refuse (`..`).
    fn append(
        builder: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        mode: u32,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            let link_name = &mut header.as_gnu_mut().unwrap().linkname;
            link_name[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    /// Path, type, link target, mode, content.
    type TestEntry<'a> = (&'a str, tar::EntryType, Option<&'a str>, u32, &'a [u8]);

    fn layer(entries: &[TestEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link, mode, data) in entries {
            append(&mut builder, path, *kind, *link, *mode, data);
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    use tar::EntryType::{Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn chain_ids_follow_the_oci_formula() {
        let diff_ids = ["a", "b", "c"].map(|c| format!("sha256:{}", c.repeat(64)));
        assert_eq!(
            chain_ids(&diff_ids),
            vec![
                diff_ids[0].clone(),
                "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
                    .to_owned(),
                "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588"
                    .to_owned(),
            ]
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn entry_paths_are_made_relative_and_dotdot_is_refused() {
        let ok = |path: &str| sanitize_entry_path(Path::new(path)).unwrap();
        assert_eq!(ok("./bin/sh"), PathBuf::from("bin/sh"));
        assert_eq!(ok("/etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(ok("./"), PathBuf::new());
        for bad in ["../x", "a/../../b", "a/.."] {
            assert!(sanitize_entry_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn unpacks_files_links_devices_and_whiteouts() {
        keel_testhost::require_root();
        let tar = layer(&[
            ("./", Directory, None, 0o755, b""),
            ("bin/", Directory, None, 0o755, b""),
            ("bin/tool", Regular, None, 0o4755, b"#!tool"),
            ("bin/sh", Symlink, Some("tool"), 0o777, b""),
            ("bin/tool2", Link, Some("./bin/tool"), 0o4755, b""),
            ("dev/null", Char, None, 0o666, b""),
            ("run/pipe", Fifo, None, 0o600, b""),
            ("etc/.wh.gone", Regular, None, 0o644, b""),
            ("data/.wh..wh..opq", Regular, None, 0o644, b""),
            ("data/kept", Regular, None, 0o600, b"kept"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let diff_id = unpack_layer(&gzip(&tar)[..], dir.path(), "sha256:layer").unwrap();
        assert_eq!(diff_id, format!("sha256:{:x}", Sha256::digest(&tar)));
        let root = dir.path();
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"#!tool");
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            PathBuf::from("tool")
        );
        assert_eq!(
            fs::metadata(root.join("bin/tool2")).unwrap().ino(),
            tool.ino()
        );
        let null = fs::metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        assert!(
            fs::metadata(root.join("run/pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let whiteout = fs::symlink_metadata(root.join("etc/gone")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(!root.join("data/.wh..wh..opq").exists());
        let mut value = [0u8; 4];
        let path = c_path(&root.join("data")).unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer of value.len() bytes.
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!(len, 1, "{}", io::Error::last_os_error());
        assert_eq!(value[0], b'y');
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        keel_testhost::require_root();
        let tar = layer(&[
            ("a", Regular, None, 0o644, b"first"),
            ("a", Symlink, Some("b"), 0o777, b""),
            ("d/x", Regular, None, 0o644, b"x"),
            ("d", Regular, None, 0o644, b"now a file"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&tar[..], dir.path(), "sha256:layer").unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("a")).unwrap(),
            PathBuf::from("b")
        );
        assert_eq!(fs::read(dir.path().join("d")).unwrap(), b"now a file");
    }

    #[test]
    fn nothing_escapes_the_snapshot() {
        keel_testhost::require_root();
        let outside = tempfile::tempdir().unwrap();
        let outside_path = outside.path().to_str().unwrap().to_owned();
        let cases: Vec<Vec<u8>> = vec![
            layer(&[("../escaped", Regular, None, 0o644, b"x")]),
            layer(&[
                ("link", Symlink, Some(&outside_path), 0o777, b""),
                ("link/escaped", Regular, None, 0o644, b"x"),
            ]),
            layer(&[
                ("link", Symlink, Some(&outside_path), 0o777, b""),
                ("link/.wh.escaped", Regular, None, 0o644, b""),
            ]),
            layer(&[("hard", Link, Some("../../../etc/passwd"), 0o644, b"")]),
            layer(&[
                ("link", Symlink, Some("/etc"), 0o777, b""),
                ("hard", Link, Some("link/passwd"), 0o644, b""),
            ]),
        ];
        for (index, tar) in cases.iter().enumerate() {
            let snapshot = tempfile::tempdir().unwrap();
            let error = unpack_layer(&tar[..], snapshot.path(), "sha256:evil").unwrap_err();
            assert!(
                matches!(error, ImageError::UnsafePath { .. }),
                "case {index}: {error}"
            );
            assert!(
                fs::read_dir(outside.path()).unwrap().next().is_none(),
                "case {index}"
            );
            assert!(!snapshot.path().join("hard").exists(), "case {index}");
        }
    }

    #[test]
    fn overlay_xattrs_from_the_image_are_refused() {
        let body = "SCHILY.xattr.trusted.overlay.redirect=/etc\n";
        // A PAX record's length counts its own digits and the space after them.
        let record = format!("{} {body}", body.len() + 3);
        let tar = layer(&[
            (
                "PaxHeader/x",
                tar::EntryType::XHeader,
                None,
                0o644,
                record.as_bytes(),
            ),
            ("x", Directory, None, 0o755, b""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let error = unpack_layer(&tar[..], dir.path(), "sha256:layer").unwrap_err();
        assert!(error.to_string().contains("trusted.* xattr"), "{error}");
    }

    #[test]
    fn zstd_layers_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            unpack_layer(&[0x28, 0xb5, 0x2f, 0xfd, 0][..], dir.path(), "sha256:z").unwrap_err();
        assert!(error.to_string().contains("zstd"), "{error}");
    }
}
