//! A pseudo-terminal for jobs that ask for one (`pty = true`): programs
//! that colour or buffer differently when they see a terminal behave as
//! they would interactively. Standard output and error both go to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// Both ends of a new terminal.
#[derive(Debug)]
pub(crate) struct Pty {
    /// The end the agent reads.
    pub(crate) master: OwnedFd,
    slave: OwnedFd,
}

/// Opens a terminal, 120 columns by 40 rows.
pub(crate) fn open() -> io::Result<Pty> {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the given integers; the
    // name pointer may be null and the settings and size pointers are
    // valid for the call.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are open descriptors owned by no
    // one else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // openpty sets no close-on-exec: without it every process started
    // meanwhile (another job) would hold this terminal open.
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Pty { master, slave })
}

impl Pty {
    /// Makes the terminal the command's output (and input, with `stdin`)
    /// and its controlling terminal, in a new session, so the job is still
    /// a process group of its own.
    pub(crate) fn attach(&self, cmd: &mut std::process::Command, stdin: bool) -> io::Result<()> {
        cmd.stdout(self.slave.try_clone()?);
        cmd.stderr(self.slave.try_clone()?);
        if stdin {
            cmd.stdin(self.slave.try_clone()?);
        }
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (setsid, ioctl) and nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Standard output is the terminal: make it the controlling one.
                if libc::ioctl(1, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}
