//! The listening socket: a private folder, a 0600 socket, stale sockets replaced and live ones
//! respected.

use crate::paths;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use tokio::net::UnixListener;

/// Fails when an agent answers on `socket` or the path holds something that is not a socket.
/// Prepares the socket's folder.
pub fn check_free(socket: &Path) -> Result<(), String> {
    paths::prepare_socket_dir(socket).map_err(|e| format!("cannot prepare the socket folder: {e}"))?;
    match fs::symlink_metadata(socket) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot inspect {}: {e}", socket.display())),
        Ok(meta) if !meta.file_type().is_socket() => Err(format!(
            "{} exists and is not a socket; remove it or give another --socket",
            socket.display()
        )),
        Ok(_) => match UnixStream::connect(socket) {
            Ok(_) => Err(format!(
                "an agent is already listening on {}; stop it with `jwt-agent stop` or give another --socket",
                socket.display()
            )),
            Err(_) => Ok(()),
        },
    }
}

/// Binds the socket, replacing a stale one, and makes it 0600.
pub fn bind(socket: &Path) -> Result<UnixListener, String> {
    check_free(socket)?;
    match fs::remove_file(socket) {
        Ok(()) => crate::info!("replaced the stale socket {}", socket.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the stale socket {}: {e}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {} private: {e}", socket.display()))?;
    Ok(listener)
}

/// Removes the socket file at shutdown.
pub fn remove(socket: &Path) {
    if let Err(e) = fs::remove_file(socket)
        && e.kind() != ErrorKind::NotFound
    {
        crate::warn!("cannot remove {}: {e}", socket.display());
    }
}
