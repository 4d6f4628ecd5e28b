//! A container's root filesystem: an overlayfs at `<container_dir>/rootfs` whose lower
//! directories are the image's snapshots (top layer first) and whose upper and work
//! directories are `<container_dir>/upper` and `<container_dir>/work`.
//! This is the one place the image store calls mount(2) and umount2(2).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::ImageError;

const ROOTFS: &str = "rootfs";
const UPPER: &str = "upper";
const WORK: &str = "work";

/// Mounts the overlay unless `container_dir/rootfs` already is a mount point.
pub fn mount_overlay(lower_dirs: &[PathBuf], container_dir: &Path) -> Result<PathBuf, ImageError> {
    let rootfs = container_dir.join(ROOTFS);
    let mount_error = |reason: String| ImageError::Mount {
        path: rootfs.clone(),
        reason,
    };
    if lower_dirs.is_empty() {
        return Err(mount_error("the image has no layers".to_owned()));
    }
    for dir in [ROOTFS, UPPER, WORK] {
        let path = container_dir.join(dir);
        fs::create_dir_all(&path).map_err(ImageError::io("create", &path))?;
    }
    if is_mount_point(&rootfs)? {
        return Ok(rootfs);
    }
    for dir in lower_dirs {
        for forbidden in [',', ':'] {
            if dir.to_string_lossy().contains(forbidden) {
                return Err(mount_error(format!(
                    "{} holds a {forbidden:?}",
                    dir.display()
                )));
            }
        }
    }
    // Overlay lists the topmost lower directory first; images list the base layer first.
    let lower = lower_dirs
        .iter()
        .rev()
        .map(|dir| dir.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        container_dir.join(UPPER).display(),
        container_dir.join(WORK).display()
    );
    // mount(2) takes its data in one page.
    if options.len() >= 4096 {
        return Err(mount_error(format!(
            "{} layers make mount options of {} bytes, over the 4096 the kernel takes",
            lower_dirs.len(),
            options.len()
        )));
    }
    let target = c_string(&rootfs)?;
    let options =
        CString::new(options).map_err(|_| mount_error("a NUL byte in a path".to_owned()))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let result = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if result != 0 {
        return Err(mount_error(
            io::Error::last_os_error().to_string().to_lowercase(),
        ));
    }
    Ok(rootfs)
}

/// Unmounts `container_dir/rootfs` (lazily if busy) and removes rootfs, upper and work.
/// Nothing there is not an error.
pub fn unmount_overlay(container_dir: &Path) -> Result<(), ImageError> {
    let rootfs = container_dir.join(ROOTFS);
    while is_mount_point(&rootfs)? {
        let target = c_string(&rootfs)?;
        // SAFETY: target is a valid NUL-terminated string that outlives the call.
        let mut result = unsafe { libc::umount2(target.as_ptr(), 0) };
        if result != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
            // SAFETY: as above.
            result = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if result != 0 {
            return Err(ImageError::Unmount {
                path: rootfs,
                source: io::Error::last_os_error(),
            });
        }
    }
    for dir in [ROOTFS, UPPER, WORK] {
        let path = container_dir.join(dir);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(ImageError::io("remove", &path)(error)),
        }
    }
    Ok(())
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> Result<bool, ImageError> {
    let path = match fs::canonicalize(path) {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(ImageError::io("resolve", path)(error)),
    };
    let mountinfo = "/proc/self/mountinfo";
    let table = fs::read_to_string(mountinfo).map_err(ImageError::io("read", mountinfo))?;
    let wanted = path.as_os_str().as_bytes();
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == wanted))
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn c_string(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ImageError::Mount {
        path: path.to_owned(),
        reason: "a NUL byte in the path".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), b"/end\\04");
    }

    #[test]
    fn root_is_a_mount_point_and_missing_paths_are_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(!is_mount_point(Path::new("/nonexistent-kt-path")).unwrap());
    }
}
