//! launchd socket activation on macOS: the socket a LaunchAgent's `Sockets` entry named
//! `Listeners` holds for the daemon, from `launch_activate_socket(3)`.
//!
//! Written against Apple's documented API (`<launch.h>`); the test machine runs Linux, so this
//! is type-checked there (`cargo clippy --target aarch64-apple-darwin`) but runs only on a Mac
//! (docs/macos.md).

use std::ffi::{CString, c_char, c_int};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;

/// The `Sockets` key of the shipped LaunchAgent (contrib/launchd/jwt-agent.plist).
const SOCKETS: &str = "Listeners";

unsafe extern "C" {
    fn launch_activate_socket(name: *const c_char, fds: *mut *mut c_int, cnt: *mut libc::size_t) -> c_int;
}

/// The socket launchd holds for this job, if it runs under launchd with one.
pub fn passed_listener() -> Result<Option<UnixListener>, String> {
    let name = CString::new(SOCKETS).expect("a constant without NUL");
    let mut fds: *mut c_int = std::ptr::null_mut();
    let mut count: libc::size_t = 0;
    // SAFETY: `name` is a C string, `fds` and `count` are valid for writes; on success launchd
    // hands over an array of `count` descriptors, allocated with malloc, that this process owns.
    let rc = unsafe { launch_activate_socket(name.as_ptr(), &mut fds, &mut count) };
    match rc {
        0 => {}
        // Not a launchd job, or one without such a socket: bind the socket ourselves.
        libc::ESRCH | libc::ENOENT => return Ok(None),
        rc => {
            return Err(format!(
                "launchd would not pass the socket {SOCKETS}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
    }
    // SAFETY: launchd wrote `count` descriptors at `fds`.
    let passed = unsafe { std::slice::from_raw_parts(fds, count) }.to_vec();
    // SAFETY: the array came from malloc and is not used after this.
    unsafe { libc::free(fds.cast()) };
    let Some((&first, rest)) = passed.split_first() else { return Ok(None) };
    for &fd in rest {
        crate::warn!("launchd passed more than one socket; serving the first");
        // SAFETY: a descriptor launchd handed to this process, used nowhere else.
        unsafe { libc::close(fd) };
    }
    // SAFETY: as above; from here the listener owns it.
    let listener = unsafe { UnixListener::from_raw_fd(first) };
    // SAFETY: fcntl on a descriptor this process owns; keep it from leaking into children.
    unsafe { libc::fcntl(first, libc::F_SETFD, libc::FD_CLOEXEC) };
    listener.set_nonblocking(true).map_err(|e| format!("cannot use the socket launchd passed: {e}"))?;
    Ok(Some(listener))
}
