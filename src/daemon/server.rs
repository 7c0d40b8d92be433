//! The accept loop and each connection's read-answer loop: who is let in, how many at once,
//! and how long a client may take to send a request or to read its answer.

use super::agent::Agent;
use super::connection::{Frame, Reader, hung_up};
use super::lanes::{Handles, Lanes};
use super::limits::{Slot, Slots};
use crate::daemon::audit::Peer;
use crate::log::Throttled;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// How long shutdown waits for connections to finish the request they are on.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a connection may sit idle between requests before the daemon closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Warnings a flood of connections would repeat are logged at most once in this long.
const FLOOD_INTERVAL: Duration = Duration::from_secs(10);

/// How much the daemon lets each client take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (another uid than the owner's gets a quarter of them).
    pub max_connections: usize,
    /// Time to finish a request line once started, and to take in an answer.
    pub read_timeout: Duration,
}

/// The warnings a flood of connections would otherwise repeat once each.
struct Floods {
    busy: Throttled,
    forbidden: Throttled,
    stalled: Throttled,
    unread: Throttled,
}

impl Floods {
    const fn new() -> Self {
        Floods {
            busy: Throttled::new(FLOOD_INTERVAL),
            forbidden: Throttled::new(FLOOD_INTERVAL),
            stalled: Throttled::new(FLOOD_INTERVAL),
            unread: Throttled::new(FLOOD_INTERVAL),
        }
    }

    fn flush(&self) {
        self.busy.flush("connections were turned away");
        self.forbidden.flush("connections were refused");
        self.stalled.flush("stalled connections were closed");
        self.unread.flush("connections that did not read their answers were closed");
    }
}

/// What becomes of an accepted connection.
enum Admission {
    Serve(Slot),
    Busy,
    Forbidden,
}

/// What every accept loop shares.
struct Accepting {
    agent: Arc<Agent>,
    limits: Limits,
    slots: Arc<Slots>,
    floods: Arc<Floods>,
    /// Each connection (and accept loop) holds a clone; when all are dropped, all have ended.
    done: mpsc::Sender<()>,
}

/// Serves connections on `listener` until `shutdown` resolves or a client sends `stop`, then
/// waits (at most `DRAIN`) for each connection to finish the request it is on. The daemon
/// passes SIGTERM and SIGINT as `shutdown`; tests pass what they like. Returns whether every
/// connection finished in time: if not, a lane may be inside a token call that never returns,
/// and it is left behind rather than waited for.
///
/// Every lane accepts on the listener itself and serves what it accepted, so a new connection,
/// like each request after it, crosses no thread in the daemon; an idle lane takes it first, a
/// lane busy signing does not hold it up. The price: a new connection wakes every lane that
/// waits on the listener, and all but the one that accepts it find nothing and sleep again
/// (epoll's `EPOLLEXCLUSIVE` does not help reactors: it wakes one waiter only among threads
/// blocked on the epoll instances themselves, not on an epoll nested in a reactor's).
pub async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let (done, mut done_rx) = mpsc::channel::<()>(1);
    let accepting = Arc::new(Accepting {
        slots: Slots::new(limits.max_connections, agent.owner()),
        floods: Arc::new(Floods::new()),
        agent: agent.clone(),
        limits,
        done,
    });
    let floods = accepting.floods.clone();
    let lanes = Lanes::start(agent.sessions())
        .inspect_err(|e| crate::warn!("cannot start the lanes ({e}); serving connections on one thread"))
        .ok();
    // The lanes each take a copy of the listening socket; without lanes, this thread serves.
    tokio::pin!(shutdown);
    match lanes.as_ref() {
        Some(lanes) => match listener.into_std() {
            Ok(listener) => {
                let handles = lanes.handles();
                for lane in 0..handles.len() {
                    let copy = match listener.try_clone() {
                        Ok(copy) => copy,
                        Err(e) => {
                            crate::warn!("cannot give lane {lane} the socket: {e}");
                            continue;
                        }
                    };
                    let (accepting, others) = (accepting.clone(), handles.clone());
                    handles.spawn_on(lane, move || async move {
                        match UnixListener::from_std(copy) {
                            Ok(listener) => accept_loop(listener, &accepting, Some((lane, others))).await,
                            Err(e) => crate::warn!("lane {lane} cannot listen: {e}"),
                        }
                    });
                }
                drop(handles);
                tokio::select! {
                    () = agent.stopping() => {}
                    () = &mut shutdown => {}
                }
            }
            Err(e) => crate::warn!("cannot hand the socket to the lanes: {e}"),
        },
        None => tokio::select! {
            () = accept_loop(listener, &accepting, None) => {}
            () = &mut shutdown => {}
        },
    }
    crate::info!("stopping: no new connections; finishing requests in flight");
    agent.request_stop();
    drop(accepting);
    let drained = tokio::time::timeout(DRAIN, done_rx.recv()).await.is_ok();
    if drained {
        drop(lanes);
    } else {
        crate::warn!("connections still busy after {DRAIN:?}; stopping anyway");
        if let Some(lanes) = lanes {
            lanes.abandon();
        }
    }
    floods.flush();
    drained
}

/// Accepts connections until the agent stops, serving each on this thread's runtime, or, when
/// this is lane `me` of `lanes` and another lane serves fewer, on that one.
async fn accept_loop(listener: UnixListener, accepting: &Arc<Accepting>, lanes: Option<(usize, Handles)>) {
    let Accepting { agent, limits, slots, floods, done } = &**accepting;
    loop {
        let accepted = tokio::select! {
            () = agent.stopping() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait, then go on serving.
                crate::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Read at accept, before the client can exec something else: the audit's pid and
        // executable are advisory all the same (docs/security.md).
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer::new(cred.uid(), cred.pid(), agent.audits()),
            Err(e) => {
                crate::warn!("cannot read a peer's credentials ({e}); closing the connection");
                continue;
            }
        };
        let admission = if !agent.admits(peer.uid) {
            Admission::Forbidden
        } else {
            slots.take(peer.uid).map_or(Admission::Busy, Admission::Serve)
        };
        let (agent, done, floods, timeout) =
            (agent.clone(), done.clone(), floods.clone(), limits.read_timeout);
        // Counted on the lane that serves it; handed to another lane serving fewer.
        let load = match (&admission, &lanes) {
            (Admission::Serve(_), Some((me, lanes))) => {
                let (lane, load) = lanes.place(*me);
                if lane != *me {
                    if let Ok(stream) = stream.into_std() {
                        // That lane's reactor takes the socket over from this one.
                        lanes.spawn_on(lane, move || async move {
                            if let Ok(stream) = UnixStream::from_std(stream) {
                                serve_connection(stream, &agent, &peer, timeout, &floods).await;
                            }
                            drop((admission, load, done));
                        });
                    }
                    continue;
                }
                Some(load)
            }
            _ => None,
        };
        tokio::spawn(async move {
            match admission {
                Admission::Serve(slot) => {
                    serve_connection(stream, &agent, &peer, timeout, &floods).await;
                    drop((slot, load));
                }
                Admission::Busy => {
                    floods
                        .busy
                        .warn(format_args!("too many connections; turned away one of uid {}", peer.uid));
                    say_and_close(stream, &agent.busy(), timeout).await;
                }
                Admission::Forbidden => {
                    floods.forbidden.warn(format_args!(
                        "refused a connection from uid {} (pid {:?})",
                        peer.uid, peer.pid
                    ));
                    say_and_close(stream, &agent.forbidden(&peer), timeout).await;
                }
            }
            drop(done);
        });
    }
}

/// Writes the one answer a turned-away client gets, if it takes it in time, and closes.
async fn say_and_close(mut stream: UnixStream, answer: &[u8], timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    })
    .await;
}

async fn serve_connection(
    stream: UnixStream,
    agent: &Agent,
    peer: &Peer,
    read_timeout: Duration,
    floods: &Floods,
) {
    let (read, write) = stream.into_split();
    let mut writer = BufWriter::new(write);
    let mut reader = Reader::new(read);
    // Set once the client hangs up; the connection ends then, so one flag serves every request.
    let abandoned = Arc::new(AtomicBool::new(false));
    loop {
        let frame = tokio::select! {
            frame = reader.read_frame_within(IDLE_TIMEOUT, read_timeout) => frame,
            () = agent.stopping() => break,
        };
        let answer = match frame {
            Ok(Frame::Line) => {
                // A client that hangs up while its request waits (for a slow token, for the
                // request ahead with the same cache key) has it dropped unsigned; a request
                // that changes something is carried out and audited all the same.
                let incoming = crate::wire::decode_request(reader.line());
                let watch = !reader.has_buffered()
                    && incoming.request.as_ref().is_ok_and(crate::wire::Request::abandonable);
                let handled = crate::token::pool::watched(abandoned.clone(), agent.handle(incoming, peer));
                tokio::pin!(handled);
                let answer = tokio::select! {
                    biased;
                    answer = &mut handled => answer,
                    () = hung_up(reader.get_ref()), if watch => {
                        // Queued, its call is dropped when its turn comes; on the token, it
                        // finishes, and a token it signs is cached for those who ask next.
                        abandoned.store(true, Ordering::SeqCst);
                        let _ = handled.await;
                        reader.wipe_line();
                        break;
                    }
                };
                reader.wipe_line();
                answer
            }
            Ok(Frame::TooLarge) => agent.too_large(peer),
            Ok(Frame::Stalled) => {
                floods
                    .stalled
                    .warn(format_args!("closed a connection of uid {} that stalled mid-request", peer.uid));
                break;
            }
            // A client that keeps its connection and asks nothing more is closed in silence.
            Ok(Frame::Eof | Frame::Idle) | Err(_) => break,
        };
        // Pipelined requests already read get their answers in one write. A client that does
        // not take its answers in time (it pipelines and never reads) is closed, not waited for.
        let pipelined = reader.has_buffered_line();
        let written = tokio::time::timeout(read_timeout, async {
            writer.write_all(&answer).await?;
            if !pipelined {
                writer.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                floods.unread.warn(format_args!(
                    "closed a connection of uid {} that did not read its answers within {read_timeout:?}",
                    peer.uid
                ));
                return;
            }
        }
        // A request already read waits its turn behind the lane's other connections (and
        // those waiting to be accepted): signed inline, a client's pipelined stream would
        // otherwise keep the lane to itself until its buffer ran dry.
        if pipelined {
            tokio::task::yield_now().await;
        }
    }
    let _ = tokio::time::timeout(read_timeout, writer.flush()).await;
}
