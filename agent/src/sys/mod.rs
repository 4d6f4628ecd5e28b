//! The agent's raw kernel calls for pods: network namespaces and mounts. Everything else in the
//! pod path reaches the kernel through these functions, through `ip` (links, addresses, routes)
//! or through cgroupfs files under a root the caller passes in.

pub mod inotify;
pub mod mount;
pub mod netns;

/// Total and free bytes of the filesystem holding `path` (statvfs); `None` when it cannot be
/// read.
pub fn filesystem_bytes(path: &std::path::Path) -> Option<(u64, u64)> {
    let c_path =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated; statvfs writes `stat` only on success.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `stat` is initialised.
    let stat = unsafe { stat.assume_init() };
    Some((stat.f_blocks * stat.f_frsize, stat.f_bfree * stat.f_frsize))
}
