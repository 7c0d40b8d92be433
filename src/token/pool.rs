//! The session pool: N worker threads, each owning one PKCS#11 session (a `Session` is `Send`
//! but not `Sync`, so one session never serves two threads). The async side hands them jobs
//! over a shared queue and awaits the answer; no PKCS#11 call runs on the reactor. The queue
//! needs no bound of its own: each connection has at most one request in flight, and the
//! connections are capped.

use super::{Token, TokenError};
use cryptoki::session::Session;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A fixed set of sessions on one token, each used by one blocking worker thread at a time.
pub struct Pool {
    token: Arc<Token>,
    jobs: crossbeam_channel::Sender<Job>,
    workers: Vec<JoinHandle<Option<Session>>>,
}

/// A worker's view: the token, and its own session, reopened when the token drops it.
pub struct Worker {
    token: Arc<Token>,
    session: Option<Session>,
    /// The module generation the session belongs to.
    generation: u64,
}

impl Pool {
    /// Starts `size` workers. `first` is the session that logged in; the others are opened
    /// now, so that a token with too few sessions fails at start, not on a request.
    pub fn start(token: Arc<Token>, first: Session, size: usize) -> Result<Pool, TokenError> {
        let size = size.max(1);
        let mut sessions = vec![first];
        for _ in 1..size {
            sessions.push(token.open_session()?);
        }
        token.allow_reload();
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
        let mut workers = Vec::with_capacity(size);
        for (n, session) in sessions.into_iter().enumerate() {
            let generation = token.generation();
            let worker = Worker { token: token.clone(), session: Some(session), generation };
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pkcs11-{n}"))
                .spawn(move || worker.run(&receiver))
                .map_err(|e| TokenError::Other(format!("cannot start a worker thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Pool { token, jobs, workers })
    }

    pub fn size(&self) -> usize {
        self.workers.len()
    }

    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    /// Runs `f` on a worker's session. When the token has dropped the session or the login,
    /// the worker reopens the session, logs in again with the PIN that worked, and runs `f`
    /// once more; a second failure is returned.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TokenError>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |worker: &mut Worker| {
            // The caller may have gone away; its answer is then dropped.
            let _ = reply.send(worker.call(&f));
        });
        self.jobs.send(job).map_err(|_| TokenError::ShuttingDown)?;
        answer.await.map_err(|_| TokenError::ShuttingDown)?
    }

    /// Stops taking jobs, lets the workers finish the queue, logs out and finalizes the module.
    pub fn shutdown(self) {
        let Pool { token, jobs, workers } = self;
        drop(jobs);
        let sessions: Vec<Session> = workers.into_iter().filter_map(|w| w.join().ok().flatten()).collect();
        if let Some(session) = sessions.first() {
            token.logout(session);
        }
        drop(sessions);
        match Arc::try_unwrap(token) {
            Ok(token) => token.finalize(),
            Err(_) => crate::warn!("the token is still in use at shutdown; not finalizing the module"),
        }
    }
}

impl Worker {
    fn run(mut self, jobs: &crossbeam_channel::Receiver<Job>) -> Option<Session> {
        // The next idle worker takes the next job; when the pool shuts down, the queue is
        // drained first.
        while let Ok(job) = jobs.recv() {
            job(&mut self);
        }
        self.session.take()
    }

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
