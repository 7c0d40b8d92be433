//! What a client checks before it sends a byte: the socket's folder is one that only it (or
//! root, or the uid named in `$JWT_AGENT_UID`) can change, and the process listening on it runs
//! as one of those uids, as the kernel reports it (`SO_PEERCRED`, `getpeereid`). Anyone can
//! create `/tmp/jwt-agent-UID/` before its owner does, or point a symlink there; a client that
//! skipped these checks would send that user its private keys, PINs and signing input.

use crate::files::Unsafe;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The environment variable naming the uid (or user name) an agent runs as when it is not the
/// client's own, as when one agent serves several users.
pub const AGENT_UID_ENV: &str = "JWT_AGENT_UID";

/// The uids a client talks to: its own, root, and the one `$JWT_AGENT_UID` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    uids: Vec<u32>,
}

impl Trusted {
    /// This process's uid and root, plus `$JWT_AGENT_UID` when it is set.
    pub fn from_env() -> Result<Trusted, String> {
        let mut uids = vec![crate::paths::euid(), 0];
        if let Some(named) = std::env::var_os(AGENT_UID_ENV).filter(|v| !v.is_empty()) {
            let named = named.to_string_lossy();
            uids.push(crate::paths::uid_of(&named).ok_or_else(|| {
                format!("{AGENT_UID_ENV}={named:?} is neither a uid nor a user on this machine")
            })?);
        }
        Ok(Trusted { uids })
    }

    /// Checks the folder of the socket at `path`.
    pub fn check_folder(&self, path: &Path) -> Result<(), Distrust> {
        let folder = path.parent().unwrap_or(Path::new("."));
        crate::files::check_folder(folder, &self.uids).map(drop).map_err(|e| {
            let uid = match e {
                Unsafe::Owner { uid, .. } => Some(uid),
                _ => None,
            };
            Distrust { reason: e.to_string(), uid }
        })
    }

    /// Checks who listens on the other end of `stream`.
    pub fn check_peer(&self, stream: &UnixStream) -> Result<(), Distrust> {
        let uid = peer_uid(stream).map_err(|e| Distrust {
            reason: format!("cannot read the credentials of the socket's owner: {e}"),
            uid: None,
        })?;
        self.check_uid(uid)
    }

    /// Checks a peer uid the caller read itself.
    pub fn check_uid(&self, uid: u32) -> Result<(), Distrust> {
        if self.uids.contains(&uid) {
            Ok(())
        } else {
            let me = self.uids[0];
            Err(Distrust {
                reason: format!(
                    "the process listening on it runs as uid {uid}, not as you (uid {me}) or root"
                ),
                uid: Some(uid),
            })
        }
    }
}

/// Why a client does not trust a socket, and the uid behind it when another uid is the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrust {
    /// What is wrong, as a sentence.
    pub reason: String,
    /// The uid that owns the folder or listens on the socket, when that is the problem.
    pub uid: Option<u32>,
}

/// The uid of the process on the other end of a connected Unix socket, as the kernel says.
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let fd = stream.as_raw_fd();
    #[cfg(target_os = "linux")]
    {
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes and `len` is `cred`'s size.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(cred.uid)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (mut uid, mut gid) = (0, 0);
        // SAFETY: `uid` and `gid` are valid for writes.
        if unsafe { libc::getpeereid(fd, &mut uid, &mut gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a).unwrap(), crate::paths::euid());
        let trusted = Trusted { uids: vec![crate::paths::euid(), 0] };
        assert!(trusted.check_peer(&a).is_ok());
        assert_eq!(trusted.check_uid(4242).unwrap_err().uid, Some(4242));
    }
}
