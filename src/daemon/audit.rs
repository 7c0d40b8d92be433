//! The audit log: one JSON line per decision (signed, served from cache, refused), appended to a
//! 0600 file. When a line cannot be written the agent signs nothing: it fails closed.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The executable of process `pid`: `/proc/PID/exe` on Linux, `proc_pidpath` on macOS.
#[cfg(not(target_os = "macos"))]
fn executable(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(target_os = "macos")]
fn executable(pid: i32) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buffer = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: the buffer is valid for writes of its length, which is what proc_pidpath is told.
    let len = unsafe { libc::proc_pidpath(pid, buffer.as_mut_ptr().cast(), buffer.len() as u32) };
    let len = usize::try_from(len).ok().filter(|&len| len > 0)?;
    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&buffer[..len])))
}

/// Who sent a request, from the peer credentials (`SO_PEERCRED`; `getpeereid` and
/// `LOCAL_PEERPID` on macOS) and the executable's path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    /// Its pid, when the kernel says.
    pub pid: Option<i32>,
    /// Its executable, when it can be read.
    pub exe: Option<String>,
}

impl Peer {
    /// The peer of a connection: uid and pid as the kernel reported them, and, when `audited`
    /// (only the audit log records it), the executable behind the pid. Resolving that link is a
    /// path walk through `/proc`, about a third of the CPU that accepting a connection costs.
    pub fn new(uid: u32, pid: Option<i32>, audited: bool) -> Peer {
        let exe = pid.filter(|_| audited).and_then(executable).map(|path| path.display().to_string());
        Peer { uid, pid, exe }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The token signed a new token.
    Signed,
    /// A cached token was handed out.
    Cached,
    Created,
    Stopped,
    Locked,
    Unlocked,
    /// A client traded an assertion for an access token (its report).
    Exchanged,
    /// A client's exchange was refused by the service, or did not reach it (its report).
    ExchangeFailed,
    /// A client revoked an access token (its report).
    Revoked,
    /// The request was refused or failed.
    Refused,
}

/// One audit line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// Whether anything is audited: without an audit log the record stays empty, and costs
    /// nothing on the request path.
    #[serde(skip)]
    pub enabled: bool,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The op, when the request got that far.
    pub op: Option<&'static str>,
    pub uid: u32,
    pub pid: Option<i32>,
    pub exe: Option<String>,
    pub key: Option<String>,
    pub preset: Option<String>,
    pub alg: Option<Value>,
    pub kid: Option<Value>,
    pub iss: Option<Value>,
    pub sub: Option<Value>,
    pub aud: Option<Value>,
    pub iat: Option<Value>,
    pub exp: Option<Value>,
    /// Where an exchange traded its assertion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Hex SHA-256 of the JWS signing input.
    pub input_sha256: Option<String>,
    pub outcome: Option<Outcome>,
    pub code: Option<&'static str>,
    pub reason: Option<String>,
}

impl Record {
    /// A record for a request from `peer`; an empty one when nothing is audited.
    pub fn new(peer: &Peer, enabled: bool) -> Record {
        if !enabled {
            return Record::default();
        }
        Record {
            enabled,
            time: crate::log::rfc3339(std::time::SystemTime::now()),
            uid: peer.uid,
            pid: peer.pid,
            exe: peer.exe.clone(),
            ..Record::default()
        }
    }

    /// Notes the token's header, claims and signing input.
    pub fn token(&mut self, header: &Map<String, Value>, claims: &Map<String, Value>, input: &str) {
        if !self.enabled {
            return;
        }
        self.alg = header.get("alg").cloned();
        self.kid = header.get("kid").cloned();
        self.iss = claims.get("iss").cloned();
        self.sub = claims.get("sub").cloned();
        self.aud = claims.get("aud").cloned();
        self.iat = claims.get("iat").cloned();
        self.exp = claims.get("exp").cloned();
        self.input_sha256 =
            Some(Sha256::digest(input.as_bytes()).iter().map(|b| format!("{b:02x}")).collect());
    }
}

/// The open log file.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, 0600) `path` for appending. A symlink, a file of another uid or one
    /// others may read, or a folder others can change is refused ([`crate::files`]).
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        let file = crate::files::open_private_append(path)?;
        Ok(AuditLog { file: Mutex::new(file) })
    }

    /// Appends one line. The line goes out in one write, so lines never interleave.
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line)
    }
}
