//! systemd integration: a listening socket passed by socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`), and readiness notification (`NOTIFY_SOCKET`, for `Type=notify`).

use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The socket systemd passed to this process, if it passed one.
pub fn passed_listener() -> Result<Option<UnixListener>, String> {
    let ours =
        std::env::var("LISTEN_PID").ok().and_then(|pid| pid.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !ours || count < 1 {
        return Ok(None);
    }
    if count > 1 {
        crate::warn!("systemd passed {count} sockets; serving the first");
    }
    // SAFETY: with LISTEN_PID naming this process, systemd hands it fd 3 onwards, open and
    // owned by no one else in the process.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FDS_START) };
    // SAFETY: fcntl on a descriptor this process owns; keep it from leaking into children.
    unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) };
    listener.local_addr().map_err(|e| format!("the socket systemd passed is not a Unix socket: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("cannot use the socket systemd passed: {e}"))?;
    Ok(Some(listener))
}

/// Sends `state` (`READY=1`, `STOPPING=1`) to systemd when it asked to be told.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let path = path.to_string_lossy();
    let sent = match path.strip_prefix('@') {
        // An abstract socket name (Linux has them; elsewhere systemd does not run).
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        _ => socket.send_to(state.as_bytes(), &*path),
    };
    if let Err(e) = sent {
        crate::warn!("cannot notify systemd ({state}): {e}");
    }
}
