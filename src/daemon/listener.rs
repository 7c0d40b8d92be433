//! The listening socket: a private folder, a 0600 socket, stale sockets replaced and live ones
//! respected.

use super::SocketAccess;
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

/// Binds the socket, replacing a stale one, and gives it `access` (0600 unless the config
/// opens it to a group or to all; then its folder gets the search permission they need).
pub fn bind(socket: &Path, access: SocketAccess) -> Result<UnixListener, String> {
    check_free(socket)?;
    match fs::remove_file(socket) {
        Ok(()) => crate::info!("replaced the stale socket {}", socket.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the stale socket {}: {e}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(access.mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", socket.display()))?;
    if access.mode != 0o600 || access.group.is_some() {
        open_to(socket, access)?;
    }
    Ok(listener)
}

/// Gives the socket its group, and its folder the search permission (never more) that the
/// socket's group and other bits need: clients reach the socket, and still cannot list or
/// change the folder.
fn open_to(socket: &Path, access: SocketAccess) -> Result<(), String> {
    let folder = socket.parent().unwrap_or(Path::new("."));
    if let Some(gid) = access.group {
        for path in [socket, folder] {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| format!("cannot give {} the group {gid}: {e}", path.display()))?;
        }
    }
    let search = (if access.mode & 0o060 != 0 { 0o010 } else { 0 })
        | (if access.mode & 0o006 != 0 { 0o001 } else { 0 });
    let mode = fs::metadata(folder)
        .map_err(|e| format!("cannot inspect {}: {e}", folder.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & search != search {
        fs::set_permissions(folder, fs::Permissions::from_mode(mode | search))
            .map_err(|e| format!("cannot open {} to the socket's clients: {e}", folder.display()))?;
    }
    crate::info!(
        "the socket is mode {:04o}{}",
        access.mode,
        access.group.map(|g| format!(", group {g}")).unwrap_or_default()
    );
    Ok(())
}

/// Removes the socket file at shutdown.
pub fn remove(socket: &Path) {
    if let Err(e) = fs::remove_file(socket)
        && e.kind() != ErrorKind::NotFound
    {
        crate::warn!("cannot remove {}: {e}", socket.display());
    }
}
