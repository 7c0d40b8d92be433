//! The daemon: loads the token, listens on the socket, serves connections until told to stop.

mod access;
mod agent;
pub mod audit;
pub mod cache;
mod connection;
mod harden;
mod lanes;
#[cfg(target_os = "macos")]
mod launchd;
mod limits;
mod listener;
mod ops;
mod outcome;
mod server;
mod signing;
mod sinks;
mod systemd;
#[cfg(test)]
mod tests;

pub use agent::Agent;
pub use server::{Limits, serve};

use crate::daemon::audit::AuditLog;
use crate::jwt::policy::Policy;
use crate::pin::{self, PinSource};
use crate::token::Token;
use crate::token::pool::Pool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub module: PathBuf,
    pub token: String,
    pub pin_file: Option<PathBuf>,
    /// Read the PIN from one line of stdin (how `start` passes a prompted PIN).
    pub pin_from_stdin: bool,
    /// The socket path, already resolved.
    pub socket: PathBuf,
    /// Sessions in the pool; default: the CPU count, capped by the token.
    pub sessions: Option<usize>,
    /// Where to append the audit log, if anywhere.
    pub audit_log: Option<PathBuf>,
    /// Who may connect, and what each key may sign.
    pub policy: Policy,
    /// Lock after this long without a signature.
    pub lock_after: Option<Duration>,
    /// Connections served at once; more are told the agent is busy.
    pub max_connections: usize,
    /// How long a client may take to finish a request line it started.
    pub read_timeout: Duration,
    /// Files to keep holding a valid token.
    pub sinks: Vec<crate::config::Sink>,
    /// Who besides the daemon's uid may reach the socket: its mode and group.
    pub socket_access: SocketAccess,
}

/// The socket's mode and group (`[daemon] socket_mode`, `socket_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// The socket's mode; 0600 unless the config opens it.
    pub mode: u32,
    /// Its group, if the config names one.
    pub group: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess { mode: 0o600, group: None }
    }
}

/// Default for [`Options::max_connections`].
pub const MAX_CONNECTIONS: usize = 256;
/// Default for [`Options::read_timeout`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its socket, files, config, PIN or runtime could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The token could not be opened or logged in to.
    #[error("{0}")]
    Token(#[from] crate::token::TokenError),
}

/// The listening socket a service manager passed, and which one: systemd (`LISTEN_FDS`) or,
/// on macOS, launchd (`launch_activate_socket`).
fn passed_listener() -> Result<Option<(std::os::unix::net::UnixListener, &'static str)>, String> {
    #[cfg(target_os = "macos")]
    if let Some(listener) = launchd::passed_listener()? {
        return Ok(Some((listener, "launchd")));
    }
    Ok(systemd::passed_listener()?.map(|listener| (listener, "systemd")))
}

/// Runs the daemon in the foreground until SIGTERM, SIGINT or a `stop` request.
pub fn run(mut options: Options) -> Result<(), DaemonError> {
    harden::process();
    // A socket systemd or launchd passed is used as it is; it stays when the daemon stops.
    let passed = passed_listener().map_err(DaemonError::Setup)?;
    if passed.is_none() {
        // Refuse a live socket before touching the token, so a second daemon costs no PIN try.
        listener::check_free(&options.socket).map_err(DaemonError::Setup)?;
    }
    let activated = passed.is_some();
    let audit = match &options.audit_log {
        Some(path) => {
            let log = AuditLog::open(path)
                .map_err(|e| DaemonError::Setup(format!("unsafe or unusable audit log: {e}")))?;
            Some((log, path.display().to_string()))
        }
        None => None,
    };
    // A sink in a folder others can change could be swapped for a symlink to any file the
    // daemon may write: refuse to start rather than find out at the first renewal.
    for sink in &mut options.sinks {
        sink.path = crate::files::check_private_path(&sink.path)
            .map_err(|e| DaemonError::Setup(format!("unsafe token sink: {e}")))?;
    }
    let source = match (&options.pin_file, options.pin_from_stdin) {
        (Some(file), _) => PinSource::File(file),
        (None, true) => PinSource::Stdin,
        (None, false) => PinSource::EnvOrPrompt,
    };
    let pin = pin::read_pin(source, &format!("PIN for token {:?}: ", options.token));
    // SAFETY: no thread has started yet: the module, the pool and the runtime come next.
    unsafe { pin::forget_env_pin() };
    let pin = pin.map_err(|e| DaemonError::Setup(e.to_string()))?;
    let (token, session) = Token::open(&options.module, &options.token, pin)?;
    let token = Arc::new(token);
    let sessions = pool_size(options.sessions, token.max_sessions());
    let pool = Pool::start(token, session, sessions)?;
    crate::info!("logged in to token {:?} with {sessions} sessions", options.token);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Setup(format!("cannot start the runtime: {e}")))?;
    let agent = Arc::new(Agent::new(pool, options.policy.clone(), audit));
    let served = runtime.block_on(async {
        let listener = match passed {
            Some((listener, by)) => {
                let listener = UnixListener::from_std(listener).map_err(|e| e.to_string())?;
                let path =
                    listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
                crate::info!(
                    "listening on {} (passed by {by})",
                    path.as_deref().unwrap_or("a passed socket")
                );
                listener
            }
            None => {
                let listener = listener::bind(&options.socket, options.socket_access)?;
                crate::info!("listening on {}", options.socket.display());
                listener
            }
        };
        systemd::notify("READY=1");
        let limits = Limits { max_connections: options.max_connections, read_timeout: options.read_timeout };
        let mut tasks: Vec<_> = options
            .lock_after
            .map(|after| tokio::spawn(lock_when_idle(agent.clone(), after)))
            .into_iter()
            .collect();
        tasks.extend(options.sinks.iter().map(|sink| tokio::spawn(sinks::keep(agent.clone(), sink.clone()))));
        let drained = serve(listener, agent.clone(), limits, shutdown_signal()).await;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        Ok::<bool, String>(drained)
    });
    systemd::notify("STOPPING=1");
    if !activated {
        listener::remove(&options.socket);
    }
    drop(runtime);
    if served == Ok(false) {
        // A token call has not come back: joining its thread would wait for ever, and
        // finalizing the module under it, or running its destructors at exit, is undefined.
        // What the agent owns is done (socket removed, logs written); the process ends here.
        crate::warn!("a token call is still running; stopping without finalizing the module");
        crate::info!("stopped");
        // SAFETY: _exit has no memory-safety preconditions; it ends every thread at once.
        unsafe { libc::_exit(0) }
    }
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.into_pool().shutdown(),
        Err(_) => crate::warn!("a connection outlived shutdown; not finalizing the module"),
    }
    crate::info!("stopped");
    served.map(drop).map_err(DaemonError::Setup)
}

fn pool_size(asked: Option<usize>, token_max: Option<usize>) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let size = asked.unwrap_or(cpus);
    token_max.map_or(size, |max| size.min(max)).max(1)
}

/// Locks the agent once no key has been used for `after` (`--lock-after`).
async fn lock_when_idle(agent: Arc<Agent>, after: Duration) {
    loop {
        let idle = Duration::from_secs(agent.idle_secs());
        if idle >= after
            && !agent.is_locked()
            && let Err(e) = agent.lock(&format!("no signature for {}s", after.as_secs())).await
        {
            crate::warn!("could not lock the idle agent: {e}");
        }
        let wait = if agent.is_locked() || idle >= after { after } else { after - idle };
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        crate::warn!("cannot install signal handlers; stop the agent with `jwt-agent stop`");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { crate::info!("SIGTERM"); return; }
            _ = int.recv() => { crate::info!("SIGINT"); return; }
            // A closed terminal must not take a background agent with it.
            _ = hup.recv() => crate::info!("SIGHUP ignored"),
        }
    }
}
