//! Mount calls: bind mounts (namespace files), tmpfs (secret and memory volumes), and
//! unmounting what the agent mounted.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount --bind source target`.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    // SAFETY: both strings are NUL-terminated and outlive the call; a null fstype and data
    // are allowed for bind mounts.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// A tmpfs at `target` with the given `size=` option in bytes (0: the kernel default).
pub fn tmpfs(target: &Path, size: u64) -> io::Result<()> {
    let target = c_path(target)?;
    let options = if size > 0 {
        format!("mode=0755,size={size}")
    } else {
        "mode=0755".to_owned()
    };
    let options = CString::new(options).expect("no NUL in the options");
    let fstype = c"tmpfs";
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    })
}

/// Unmounts `target`; `detach` falls back to a lazy unmount when it is busy. Not mounted is
/// not an error.
pub fn unmount(target: &Path, detach: bool) -> io::Result<()> {
    let c_target = c_path(target)?;
    // SAFETY: `c_target` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_target.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::ENOENT) => Ok(()),
        Some(libc::EBUSY) if detach => {
            // SAFETY: as above.
            check(unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) })
        }
        _ => Err(error),
    }
}

/// Whether mountinfo lists `path` as a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&mountinfo).any(|point| point == path))
}

/// Whether `path` has a namespace file bind-mounted on it.
pub fn is_nsfs_mount(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
        Ok(_) => {}
    }
    is_mount_point(path)
}

/// The mount points of a `/proc/self/mountinfo` text (a path holding a space stays octal-escaped
/// as the kernel writes it; the agent's own paths hold none).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = &Path> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(Path::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_the_fifth_field() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    900 30 0:4 net:[4026532] /var/lib/keel/netns/a rw - nsfs nsfs rw\n";
        let points: Vec<_> = mount_points(info).collect();
        assert_eq!(
            points,
            [Path::new("/proc"), Path::new("/var/lib/keel/netns/a")]
        );
    }
}
