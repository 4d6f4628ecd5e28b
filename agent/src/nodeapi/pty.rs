//! A pseudo-terminal for `exec` with a TTY (`kubectl exec -it`).
//!
//! `runc exec --tty` in the foreground makes the container's own terminal and relays it to the
//! terminal on runc's stdio, copying the window size from there on `SIGWINCH`. So the node API
//! gives runc a terminal of its own: the slave end as runc's stdio and controlling terminal
//! (runc leads a new session), the master end here, relayed to and from the WebSocket. A resize
//! from kubectl (channel 4) sets the master's window size, the kernel sends `SIGWINCH` to runc,
//! and runc passes the size on to the container's terminal.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::process::Stdio;

use tokio::io::unix::AsyncFd;

/// The master end of a pseudo-terminal, non-blocking, and (until the child has it) the slave.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<OwnedFd>,
    slave: Option<OwnedFd>,
}

impl Pty {
    /// Opens a new pseudo-terminal pair.
    pub fn open() -> io::Result<Pty> {
        let (master, slave) = open_pair()?;
        set_flags(&master, libc::O_NONBLOCK | libc::O_CLOEXEC)?;
        // SAFETY: `master` owns a valid descriptor that is neither replaced nor closed while
        // the AsyncFd holds it.
        let master = unsafe { AsyncFd::register(master)? };
        Ok(Pty {
            master,
            slave: Some(slave),
        })
    }

    /// A copy of the slave end, for one of the child's standard streams.
    pub fn slave_stdio(&self) -> io::Result<Stdio> {
        let slave = self
            .slave
            .as_ref()
            .ok_or_else(|| io::Error::other("the terminal's slave end is already closed"))?;
        Ok(Stdio::from(slave.try_clone()?))
    }

    /// Closes this process's copy of the slave end (once the child holds it), so that reads
    /// from the master end with EOF when the child is gone.
    pub fn close_slave(&mut self) {
        self.slave = None;
    }

    /// Sets the window size; the kernel sends `SIGWINCH` to the terminal's foreground group.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_window_size(self.master.get_ref().as_fd(), rows, cols)
    }

    /// Reads what the terminal printed; `Ok(0)` once nobody holds the slave end any more
    /// (Linux reports that as `EIO`).
    pub async fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.master.readable().await?;
            match ready.try_io(|fd| {
                // SAFETY: reads into `buffer`, which is valid for its length.
                let n =
                    unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `data` into the terminal.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|fd| {
                // SAFETY: writes from `data`, which is valid for its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// A new pseudo-terminal: master and slave ends (blocking, close-on-exec).
pub fn open_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the out-parameters; name, termios and
    // window size are optional and passed as null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if opened != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_flags(&slave, libc::O_CLOEXEC)?;
    set_flags(&master, libc::O_CLOEXEC)?;
    Ok((master, slave))
}

/// Sets the window size of the terminal `fd` (either end) belongs to.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_flags(fd: &OwnedFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let current = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if current < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, current | flags) < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_CLOEXEC != 0
            && libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In a child about to exec: lead a new session whose controlling terminal is stdin (the
/// slave end), so the terminal's signals (`SIGWINCH`, `SIGHUP`) reach it.
///
/// # Safety
/// Only async-signal-safe calls: fit for `pre_exec`.
pub unsafe fn become_terminal_leader() -> io::Result<()> {
    // SAFETY: setsid and ioctl are async-signal-safe and touch only this process.
    unsafe {
        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_on_the_slave_end_sees_the_size_and_its_output_comes_back() {
        let mut pty = Pty::open().unwrap();
        pty.resize(31, 97).unwrap();
        let mut command = tokio::process::Command::new("sh");
        command
            .args(["-c", "stty size; read line; echo got $line"])
            .stdin(pty.slave_stdio().unwrap())
            .stdout(pty.slave_stdio().unwrap())
            .stderr(pty.slave_stdio().unwrap());
        // SAFETY: become_terminal_leader is async-signal-safe.
        unsafe { command.pre_exec(|| become_terminal_leader()) };
        let mut child = command.spawn().unwrap();
        // The command keeps copies of the slave end until it is dropped.
        drop(command);
        pty.close_slave();
        pty.write_all(b"hello\n").await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0_u8; 256];
        loop {
            let n = pty.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
        }
        assert!(child.wait().await.unwrap().success());
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains("31 97"), "{seen:?}");
        assert!(seen.contains("got hello"), "{seen:?}");
    }
}
