//! The daemon: loads the token, listens on the socket, serves connections until told to stop.

mod connection;
mod handler;
mod listener;
mod signing;
mod sinks;
mod systemd;

pub use handler::Agent;

use crate::audit::{AuditLog, Peer};
use crate::error::{EXIT_OTHER, EXIT_TOKEN};
use crate::pin::{self, PinSource};
use crate::policy::Policy;
use crate::token::Token;
use crate::token::pool::Pool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};

/// How long shutdown waits for connections to finish the request they are on.
const DRAIN: Duration = Duration::from_secs(10);

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// A file holding the PIN.
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
}

/// Default for [`Options::max_connections`].
pub const MAX_CONNECTIONS: usize = 256;
/// Default for [`Options::read_timeout`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit idle between requests before the daemon closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the daemon could not start or run, with its exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    /// One sentence for stderr.
    pub message: String,
    /// The process exit status.
    pub status: u8,
}

impl DaemonError {
    fn new(status: u8, message: impl Into<String>) -> Self {
        DaemonError { message: message.into(), status }
    }
}

/// Runs the daemon in the foreground until SIGTERM, SIGINT or a `stop` request.
pub fn run(options: Options) -> Result<(), DaemonError> {
    // A socket systemd passed is used as it is; it stays when the daemon stops.
    let passed = systemd::passed_listener().map_err(|e| DaemonError::new(EXIT_OTHER, e))?;
    if passed.is_none() {
        // Refuse a live socket before touching the token, so a second daemon costs no PIN try.
        listener::check_free(&options.socket).map_err(|e| DaemonError::new(EXIT_OTHER, e))?;
    }
    let activated = passed.is_some();
    let audit = match &options.audit_log {
        Some(path) => {
            let log = AuditLog::open(path).map_err(|e| {
                DaemonError::new(EXIT_OTHER, format!("cannot open the audit log {}: {e}", path.display()))
            })?;
            Some((log, path.display().to_string()))
        }
        None => None,
    };
    let source = match (&options.pin_file, options.pin_from_stdin) {
        (Some(file), _) => PinSource::File(file),
        (None, true) => PinSource::Stdin,
        (None, false) => PinSource::EnvOrPrompt,
    };
    let pin = pin::read_pin(source, &format!("PIN for token {:?}: ", options.token))
        .map_err(|e| DaemonError::new(EXIT_OTHER, e.to_string()))?;
    let (token, session) = Token::open(&options.module, &options.token, pin)
        .map_err(|e| DaemonError::new(EXIT_TOKEN, e.to_string()))?;
    let token = Arc::new(token);
    let sessions = pool_size(options.sessions, token.max_sessions());
    let pool =
        Pool::start(token, session, sessions).map_err(|e| DaemonError::new(EXIT_TOKEN, e.to_string()))?;
    crate::info!("logged in to token {:?} with {sessions} sessions", options.token);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::new(EXIT_OTHER, format!("cannot start the runtime: {e}")))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = Arc::new(Agent::new(pool, options.policy.clone(), audit, stop_tx));
    let served = runtime.block_on(async {
        let listener = match passed {
            Some(listener) => {
                let listener = UnixListener::from_std(listener).map_err(|e| e.to_string())?;
                let path =
                    listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
                crate::info!(
                    "listening on {} (passed by systemd)",
                    path.as_deref().unwrap_or("a passed socket")
                );
                listener
            }
            None => {
                let listener = listener::bind(&options.socket)?;
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
        serve(listener, agent.clone(), stop_rx, limits).await;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        Ok::<(), String>(())
    });
    systemd::notify("STOPPING=1");
    if !activated {
        listener::remove(&options.socket);
    }
    drop(runtime);
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.into_pool().shutdown(),
        Err(_) => crate::warn!("a connection outlived shutdown; not finalizing the module"),
    }
    crate::info!("stopped");
    served.map_err(|e| DaemonError::new(EXIT_OTHER, e))
}

fn pool_size(asked: Option<usize>, token_max: Option<usize>) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let size = asked.unwrap_or(cpus);
    token_max.map_or(size, |max| size.min(max)).max(1)
}

/// How much the daemon lets each client take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to finish a request line once started.
    pub read_timeout: Duration,
}

/// Serves connections on `listener` until `stop` turns true (a `stop` request) or a signal
/// comes, then waits for each connection to finish the request it is on.
pub async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection holds a clone; when all are dropped, every connection has ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let signals = shutdown_signal();
    tokio::pin!(signals);
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => break,
            () = &mut signals => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (agent, stop, done) = (agent.clone(), for_connections.clone(), done_tx.clone());
                    let slot = slots.clone().try_acquire_owned();
                    tokio::spawn(async move {
                        match slot {
                            Ok(_slot) => serve_connection(stream, &agent, stop, limits.read_timeout).await,
                            Err(_) => turn_away(stream, &agent).await,
                        }
                        drop(done);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait, then go on serving.
                    crate::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    crate::info!("stopping: no new connections; finishing requests in flight");
    drop(listener);
    agent.request_stop();
    drop(done_tx);
    if tokio::time::timeout(DRAIN, done_rx.recv()).await.is_err() {
        crate::warn!("connections still busy after {DRAIN:?}; stopping anyway");
    }
}

/// Tells a client over the connection limit that the agent is busy, and closes.
async fn turn_away(mut stream: UnixStream, agent: &Agent) {
    crate::warn!("too many connections; turning one away");
    let _ = stream.write_all(&agent.busy()).await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(
    stream: UnixStream,
    agent: &Agent,
    mut stop: watch::Receiver<bool>,
    read_timeout: Duration,
) {
    let (read, write) = stream.into_split();
    let mut writer = BufWriter::new(write);
    let peer = match read.as_ref().peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            crate::warn!("cannot read the peer's credentials ({e}); closing the connection");
            return;
        }
    };
    let peer = Peer::new(peer.uid(), peer.pid());
    if !agent.admits(peer.uid) {
        crate::warn!("refused a connection from uid {} (pid {:?})", peer.uid, peer.pid);
        let _ = writer.write_all(&agent.forbidden(&peer)).await;
        let _ = writer.flush().await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    loop {
        let frame = tokio::select! {
            frame = connection::read_frame_within(&mut reader, &mut line, IDLE_TIMEOUT, read_timeout) => frame,
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        let answer = match frame {
            Ok(connection::Frame::Line) => agent.handle(&line, &peer).await,
            Ok(connection::Frame::TooLarge) => agent.too_large(&peer),
            Ok(connection::Frame::Stalled) => {
                crate::warn!("closing a connection of uid {} that stalled mid-request", peer.uid);
                break;
            }
            Ok(connection::Frame::Eof) | Err(_) => break,
        };
        if writer.write_all(&answer).await.is_err() {
            break;
        }
        // Pipelined requests already read get their answers in one write.
        if reader.buffer().is_empty() && writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.flush().await;
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
