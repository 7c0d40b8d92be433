//! The daemon's flags, shared by `daemon` and `start`, and how they combine with the config file.

use super::Failure;
use crate::cli::{EXIT_OTHER, EXIT_USAGE};
use crate::config::Config;
use crate::daemon::{MAX_CONNECTIONS, Options, READ_TIMEOUT, SocketAccess};
use crate::jwt::policy::Policy;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon's flags. Each overrides the config file's `[daemon]` table.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// PKCS#11 module (.so), e.g. /usr/lib/softhsm/libsofthsm2.so
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// The token: its label, serial=SERIAL, or a PKCS#11 URI
    #[arg(long, value_name = "LABEL")]
    token: Option<String>,
    /// File holding the user PIN (else $JWT_AGENT_PIN, else a prompt on the terminal)
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Socket path (else $JWT_AGENT_SOCK, $XDG_RUNTIME_DIR/jwt-agent/agent.sock, /tmp/jwt-agent-$UID/agent.sock)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file (TOML) [default: $XDG_CONFIG_HOME/jwt-agent/config.toml when present]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Append one JSON line per decision to this file (created 0600)
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Lock (log out, forget the PIN) after this long without a signature, like ssh-add -t
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lock_after: Option<u64>,
    /// Connections served at once; more are told the agent is busy [default: 256]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    max_connections: Option<u16>,
    /// How long a client may take to finish a request line it started [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    read_timeout: Option<u64>,
    /// PKCS#11 sessions in the pool [default: the CPU count, capped by the token]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    sessions: Option<u16>,
    /// Read the PIN from one line of stdin (how `start` passes a PIN it prompted for)
    #[arg(long, hide = true)]
    pub(super) pin_from_stdin: bool,
}

impl DaemonArgs {
    /// The daemon's options: the flags, else the config file; and the config file's path.
    pub fn resolve(self) -> Result<(Options, Option<PathBuf>), Failure> {
        let path = self.config.clone().or_else(Config::default_path);
        let config = match &path {
            Some(path) => Config::load(path).map_err(|e| Failure::new(EXIT_OTHER, e))?,
            None => Config::default(),
        };
        let d = &config.daemon;
        let module = self.module.or_else(|| d.module.clone()).ok_or_else(|| missing("--module", "module"))?;
        let token = self.token.or_else(|| d.token.clone()).ok_or_else(|| missing("--token", "token"))?;
        let socket = self.socket.or_else(|| d.socket.clone());
        let options = Options {
            socket: crate::paths::socket_path(socket.as_deref()),
            module: absolute(&module)?,
            token,
            pin_file: self.pin_file.or_else(|| d.pin_file.clone()).as_deref().map(absolute).transpose()?,
            pin_from_stdin: self.pin_from_stdin,
            sessions: self.sessions.or(d.sessions).map(usize::from),
            audit_log: self.audit_log.or_else(|| d.audit_log.clone()).as_deref().map(absolute).transpose()?,
            policy: Policy::new(crate::paths::euid(), &config).map_err(|e| Failure::new(EXIT_OTHER, e))?,
            lock_after: self.lock_after.or(d.lock_after).map(Duration::from_secs),
            max_connections: self.max_connections.or(d.max_connections).map_or(MAX_CONNECTIONS, usize::from),
            read_timeout: self.read_timeout.or(d.read_timeout).map_or(READ_TIMEOUT, Duration::from_secs),
            sinks: config.sinks.clone(),
            socket_access: SocketAccess {
                mode: d.socket_mode.unwrap_or(0o600),
                group: d
                    .socket_group
                    .as_deref()
                    .map(|group| {
                        crate::paths::gid_of(group).ok_or_else(|| {
                            Failure::new(
                                EXIT_OTHER,
                                format!("socket_group {group:?} is not a group on this machine"),
                            )
                        })
                    })
                    .transpose()?,
            },
        };
        let path = path.as_deref().map(absolute).transpose()?;
        Ok((options, path))
    }
}

fn parse_duration(text: &str) -> Result<u64, String> {
    crate::jwt::time::parse(text).map(|d| d.as_secs())
}

fn missing(flag: &str, field: &str) -> Failure {
    Failure::new(EXIT_USAGE, format!("give {flag}, or set {field} in the [daemon] table of the config file"))
}

/// Absolute, so that the daemon `start` runs in `/` finds it.
fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("bad path {}: {e}", path.display())))
}
