//! SIGINT / SIGTERM as a condition to wait on, without a signal handler.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

#[derive(Debug)]
pub struct Termination {
    set: libc::sigset_t,
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
/// stay pending until [`Termination::wait`] takes them.
pub fn block_termination() -> io::Result<Termination> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid
    // pointers to it.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        let set = set.assume_init();
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    Ok(Termination { set })
}

impl Termination {
    /// Waits up to `timeout`; true if SIGINT or SIGTERM arrived.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        // SAFETY: `self.set` is an initialised signal set and `timeout` a valid timespec.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(false),
            _ => Err(error),
        }
    }
}
