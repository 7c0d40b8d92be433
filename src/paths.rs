//! Where the agent's socket lives, and the checks on its folder.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable that names the agent's socket.
pub const SOCK_ENV: &str = "JWT_AGENT_SOCK";

/// The socket path: `explicit` (from `--socket`), else `$JWT_AGENT_SOCK`, else the default
/// folder's `agent.sock` ([`default_socket`]). Made absolute, so that the path `start` prints
/// works from any folder.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    let env_path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = explicit.map(Path::to_path_buf).or_else(|| env_path(SOCK_ENV)).unwrap_or_else(|| {
        default_socket(cfg!(target_os = "macos"), env_path("XDG_RUNTIME_DIR"), env_path("TMPDIR"), euid())
    });
    std::path::absolute(&path).unwrap_or(path)
}

/// `$XDG_RUNTIME_DIR/jwt-agent/agent.sock`; without it on macOS `$TMPDIR/jwt-agent/agent.sock`
/// (a per-user folder there, as `/var/folders/.../T/`), elsewhere and else
/// `/tmp/jwt-agent-$UID/agent.sock`.
pub fn default_socket(macos: bool, runtime: Option<PathBuf>, tmpdir: Option<PathBuf>, uid: u32) -> PathBuf {
    match (runtime, tmpdir) {
        (Some(runtime), _) => runtime.join("jwt-agent/agent.sock"),
        (None, Some(tmpdir)) if macos => tmpdir.join("jwt-agent/agent.sock"),
        _ => PathBuf::from(format!("/tmp/jwt-agent-{uid}/agent.sock")),
    }
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A uid given as a number or a user name.
pub fn uid_of(text: &str) -> Option<u32> {
    if let Ok(uid) = text.parse() {
        return Some(uid);
    }
    let name = std::ffi::CString::new(text).ok()?;
    // SAFETY: `passwd` is plain data (integers and pointers), for which all zeros is valid.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer's length is passed with it.
    let rc =
        unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some(entry.pw_uid)
}

/// A gid given as a number or a group name.
pub fn gid_of(text: &str) -> Option<u32> {
    if let Ok(gid) = text.parse() {
        return Some(gid);
    }
    let name = std::ffi::CString::new(text).ok()?;
    // SAFETY: `group` is plain data (integers and pointers), for which all zeros is valid.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer's length is passed with it.
    let rc =
        unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
}

/// Makes sure the socket's folder exists and is private: created 0700 when missing; when it
/// exists it must be a folder of this uid that no one else can write to.
pub fn prepare_socket_dir(socket: &Path) -> io::Result<()> {
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // The umask may have narrowed the mode, never widened it; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
        Ok(meta) if !meta.is_dir() => Err(io::Error::other(format!(
            "{} is not a folder; give --socket a path in a private folder",
            dir.display()
        ))),
        Ok(meta) if meta.uid() != euid() => Err(io::Error::other(format!(
            "the socket folder {} belongs to uid {}, not to this user; give --socket a path in a folder of your own",
            dir.display(),
            meta.uid()
        ))),
        Ok(meta) if meta.mode() & 0o022 != 0 => Err(io::Error::other(format!(
            "the socket folder {} is writable by others; give --socket a path in a private (0700) folder",
            dir.display()
        ))),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_socket_is_in_the_users_own_runtime_or_temp_folder() {
        let some = |p: &str| Some(PathBuf::from(p));
        let tmpdir = some("/var/folders/zz/abc/T");
        assert_eq!(
            default_socket(false, some("/run/user/501"), tmpdir.clone(), 501),
            Path::new("/run/user/501/jwt-agent/agent.sock")
        );
        // macOS has no XDG_RUNTIME_DIR; its TMPDIR is the user's own.
        assert_eq!(
            default_socket(true, None, tmpdir.clone(), 501),
            Path::new("/var/folders/zz/abc/T/jwt-agent/agent.sock")
        );
        // Elsewhere TMPDIR may be shared (/tmp), so it is not taken.
        assert_eq!(default_socket(false, None, tmpdir, 501), Path::new("/tmp/jwt-agent-501/agent.sock"));
        assert_eq!(default_socket(true, None, None, 501), Path::new("/tmp/jwt-agent-501/agent.sock"));
    }

    #[test]
    fn ids_by_number_or_name() {
        assert_eq!(uid_of("1001"), Some(1001));
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("no-such-user-here"), None);
        assert_eq!(gid_of("1001"), Some(1001));
        assert_eq!(gid_of("root"), Some(0));
        assert_eq!(gid_of("no-such-group-here"), None);
    }
}
