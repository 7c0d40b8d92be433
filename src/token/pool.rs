//! The session pool: N PKCS#11 sessions, each in one `Worker` (a `Session` is `Send` but not
//! `Sync`, so one session never serves two threads at once).
//!
//! A call runs one of two ways, chosen by how long the token's signatures take (a running mean
//! that [`Token::sign`] keeps, of device time alone):
//!
//! - **Inline**, on a fast token (SoftHSM, a local HSM: well under a millisecond): the thread
//!   that asks takes an idle worker and calls the token itself. The daemon's connections are
//!   spread over as many lanes (threads with their own reactor) as there are sessions, so a lane
//!   blocks only its own connections, for as long as a session would make them wait anyway, and
//!   a request costs no thread wake-up between reading it and answering it.
//! - **Queued**, on a slow token (a YubiHSM 2 at 20 ms, a TPM, a network HSM): the call goes to
//!   a FIFO queue that N pool threads take from, each with an idle worker, and the asking task
//!   awaits the answer, so no reactor waits on the device and every connection another session
//!   could serve is served. A job whose asker has gone (its client closed the connection) is
//!   dropped before it reaches the token. While pool threads wait for a session, inline callers
//!   queue behind them too, so that the queue stays first come first served.
//!
//! Calls that take long on any token (making a key, a certificate) always go to the queue
//! ([`Pool::queue`]): an RSA key made inline would hold up a lane's connections for seconds.
//!
//! The queue needs no bound of its own: each connection has at most one request in flight, and
//! the connections are capped.

use super::{Token, TokenError};
use cryptoki::session::Session;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Signatures that take less than this on the device, on average, run inline.
pub const INLINE_BELOW: Duration = Duration::from_millis(1);

tokio::task_local! {
    /// Set when the client of the request being served has hung up (see [`watched`]).
    static ABANDONED: Arc<AtomicBool>;
}

/// Runs `request` so that its queued calls are dropped unsigned once `abandoned` is set (its
/// client hung up), while a call already on the token finishes: what it signs is not lost, and
/// requests waiting for the same token get it instead of signing again.
pub async fn watched<F: Future>(abandoned: Arc<AtomicBool>, request: F) -> F::Output {
    ABANDONED.scope(abandoned, request).await
}

/// A fixed set of sessions on one token.
pub struct Pool {
    token: Arc<Token>,
    shared: Arc<Shared>,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    size: usize,
}

/// What the askers and the pool threads share: the idle workers.
struct Shared {
    idle: Mutex<Idle>,
    returned: Condvar,
}

/// The workers no call holds, and how many pool threads wait for one.
struct Idle {
    workers: Vec<Worker>,
    /// Pool threads waiting on `returned`: a worker given back wakes one only if there is one,
    /// so that the inline path makes no `futex` call per request.
    waiting: usize,
}

/// A worker's view: the token, and its own session, reopened when the token drops it.
pub struct Worker {
    token: Arc<Token>,
    session: Option<Session>,
    /// The module generation the session belongs to.
    generation: u64,
}

impl Pool {
    /// Opens `size` sessions and starts the pool threads. `first` is the session that logged
    /// in; the others are opened now, so that a token with too few sessions fails at start, not
    /// on a request.
    pub fn start(token: Arc<Token>, first: Session, size: usize) -> Result<Pool, TokenError> {
        let size = size.max(1);
        let mut sessions = vec![first];
        for _ in 1..size {
            sessions.push(token.open_session()?);
        }
        token.allow_reload();
        let workers = sessions
            .into_iter()
            .map(|session| Worker {
                token: token.clone(),
                session: Some(session),
                generation: token.generation(),
            })
            .collect();
        let shared =
            Arc::new(Shared { idle: Mutex::new(Idle { workers, waiting: 0 }), returned: Condvar::new() });
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(size);
        for n in 0..size {
            let (shared, receiver) = (shared.clone(), receiver.clone());
            let handle = std::thread::Builder::new()
                .name(format!("pkcs11-{n}"))
                .spawn(move || shared.serve(&receiver))
                .map_err(|e| TokenError::Other(format!("cannot start a worker thread: {e}")))?;
            threads.push(handle);
        }
        Ok(Pool { token, shared, jobs: Some(jobs), threads, size })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    /// Whether calls run inline now: the token signs fast.
    pub fn inline(&self) -> bool {
        self.token.signing_micros() < INLINE_BELOW.as_micros() as u64
    }

    /// Runs `f` on a worker's session: inline when the token is fast and a worker is idle,
    /// else through the queue. When the token has dropped the session or the login, the worker
    /// reopens the session, logs in again with the PIN that worked, and runs `f` once more; a
    /// second failure is returned.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TokenError>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        if self.inline()
            && let Some(mut worker) = self.shared.try_take()
        {
            let result = worker.call(&f);
            self.shared.give_back(worker);
            return result;
        }
        self.queue(f).await
    }

    /// Runs `f` like [`run`](Self::run), but always through the queue, whatever the token's
    /// speed: for calls that take long on any token.
    pub async fn queue<T, F>(&self, f: F) -> Result<T, TokenError>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let abandoned = ABANDONED.try_with(Arc::clone).unwrap_or_default();
        let gone = abandoned.clone();
        let job: Job = Box::new(move |worker: &mut Worker| {
            // The asker has gone (its client closed the connection): nothing is done for it.
            if reply.is_closed() || gone.load(Ordering::SeqCst) {
                return;
            }
            let _ = reply.send(worker.call(&f));
        });
        let jobs = self.jobs.as_ref().ok_or(TokenError::ShuttingDown)?;
        jobs.send(job).map_err(|_| TokenError::ShuttingDown)?;
        answer.await.map_err(|_| {
            if abandoned.load(Ordering::SeqCst) { TokenError::Abandoned } else { TokenError::ShuttingDown }
        })?
    }

    /// Stops taking jobs, lets the pool threads finish the queue, logs out and finalizes the
    /// module.
    pub fn shutdown(mut self) {
        drop(self.jobs.take());
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
        let Pool { token, shared, .. } = self;
        let workers = std::mem::take(&mut shared.idle.lock().unwrap_or_else(|e| e.into_inner()).workers);
        let sessions: Vec<Session> = workers.into_iter().filter_map(|mut w| w.session.take()).collect();
        if let Some(session) = sessions.first() {
            token.logout(session);
        }
        drop(sessions);
        drop(shared);
        match Arc::try_unwrap(token) {
            Ok(token) => token.finalize(),
            Err(_) => crate::warn!("the token is still in use at shutdown; not finalizing the module"),
        }
    }
}

impl Shared {
    /// An idle worker, unless none is or pool threads are waiting for one (they came first).
    fn try_take(&self) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.waiting > 0 { None } else { idle.workers.pop() }
    }

    /// An idle worker, waiting for one to come back if none is.
    fn take(&self) -> Worker {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(worker) = idle.workers.pop() {
                return worker;
            }
            idle.waiting += 1;
            idle = self.returned.wait(idle).unwrap_or_else(|e| e.into_inner());
            idle.waiting -= 1;
        }
    }

    fn give_back(&self, worker: Worker) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.workers.push(worker);
        if idle.waiting > 0 {
            self.returned.notify_one();
        }
    }

    /// A pool thread: takes the next job in order, and an idle worker to run it on. When the
    /// pool shuts down, the queue is drained first.
    fn serve(&self, jobs: &crossbeam_channel::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let mut worker = self.take();
            job(&mut worker);
            self.give_back(worker);
        }
    }
}

impl Worker {
    fn call<T>(&mut self, f: &dyn Fn(&Token, &Session) -> Result<T, TokenError>) -> Result<T, TokenError> {
        // A job that panics (a bug) fails its request, not the worker: the session it may have
        // left mid-operation is dropped, and the next job opens a new one.
        let guarded = |token: &Token, session: &Session| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(token, session)))
                .unwrap_or_else(|panic| Err(TokenError::Panicked(panic_message(&*panic))))
        };
        let mut result = self.run_current(&guarded);
        if matches!(result, Err(TokenError::Stale)) {
            // The module must be reloaded to see keys made since it was loaded: with no other
            // call under way, unless another worker has just done it; then once more.
            let token = self.token.clone();
            let reloaded = {
                let _alone = token.gate().write().unwrap_or_else(|e| e.into_inner());
                if token.generation() == self.generation { token.reload() } else { Ok(()) }
            };
            result = match reloaded {
                Ok(()) => self.run_current(&guarded),
                Err(e) => Err(e),
            };
        }
        if matches!(result, Err(TokenError::Panicked(_))) {
            crate::warn!("a job panicked on a worker; its session is closed and the worker goes on");
            self.session = None;
        }
        result
    }

    /// Runs `f` under the shared gate, on a session of the module's current generation.
    fn run_current<T>(
        &mut self,
        f: &dyn Fn(&Token, &Session) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let token = self.token.clone();
        let _shared = token.gate().read().unwrap_or_else(|e| e.into_inner());
        if token.generation() != self.generation {
            // The session died with the old module state, and its handle may now be another
            // session's: forget it without closing it.
            if let Some(old) = self.session.take() {
                std::mem::forget(old);
            }
            self.generation = token.generation();
        }
        self.run_job(f)
    }

    fn run_job<T>(&mut self, f: &dyn Fn(&Token, &Session) -> Result<T, TokenError>) -> Result<T, TokenError> {
        if let Some(session) = &self.session {
            match f(&self.token, session) {
                Err(e) if e.is_session_fault() => {
                    crate::warn!("the token dropped a session ({e}); reopening it and logging in again");
                }
                result => return result,
            }
        }
        // Either the session faulted just now, or reopening it failed on an earlier request.
        // One reopen and one login per fault: nothing here loops.
        self.session = None;
        self.token.forget_keys();
        let session = self.session.insert(self.token.open_session()?);
        let login = self.token.login(session);
        match login {
            // Locked, or holding a PIN the token refused: nothing logs in, but what needs no
            // login (status, unlock) still runs on the new session.
            Err(TokenError::Locked | TokenError::PinRejectedBefore) | Ok(()) => {}
            Err(e) => return Err(e),
        }
        match f(&self.token, session) {
            // Then the login failure is the reason the request failed.
            Err(e) if e.is_session_fault() => Err(login.err().unwrap_or(e)),
            result => result,
        }
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}
