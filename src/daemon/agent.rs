//! The daemon's state, and the one place every request ends: [`Agent::answer`] dispatches it,
//! writes its audit line (a decision that cannot be recorded is not handed out), counts it, and
//! gives the reply or the error. The ops are in `ops.rs` and `signing.rs`.

use super::access::AccessCache;
use super::audit::{AuditLog, Outcome, Peer, Record};
use super::cache::TokenCache;
use super::outcome::{Done, Failed, Reply, Signed};
use crate::jwt::policy::Policy;
use crate::token::pool::Pool;
use crate::token::{Token, TokenError};
use crate::wire::{self, ErrorCode, KeyCounters, LockResult, Request, StopResult, WireError};
use cryptoki::session::Session;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Keys counted separately in `status`, at most; names beyond are counted in the totals only.
const MAX_COUNTED_KEYS: usize = 256;

/// The daemon's state shared by every connection.
pub struct Agent {
    pub(super) pool: Pool,
    pub(super) policy: Arc<Policy>,
    pub(super) cache: TokenCache,
    pub(super) access: AccessCache,
    audit: Option<AuditLog>,
    pub(super) audit_path: Option<String>,
    pub(super) started: Instant,
    stop: watch::Sender<bool>,
    pub(super) counters: Counters,
    pub(super) per_key: Mutex<BTreeMap<String, KeyCounters>>,
    last_used: AtomicU64,
}

/// What the daemon has done, for `status`.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub signatures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub refusals: AtomicU64,
    pub token_errors: AtomicU64,
}

impl Agent {
    /// An agent signing with `pool` under `policy`, auditing to `audit` (with its path) if
    /// given.
    pub fn new(pool: Pool, policy: Policy, audit: Option<(AuditLog, String)>) -> Self {
        let (audit, audit_path) = audit.map_or((None, None), |(log, path)| (Some(log), Some(path)));
        let (stop, _) = watch::channel(false);
        Agent {
            pool,
            policy: Arc::new(policy),
            cache: TokenCache::new(),
            access: AccessCache::default(),
            audit,
            audit_path,
            started: Instant::now(),
            stop,
            counters: Counters::default(),
            per_key: Mutex::new(BTreeMap::new()),
            last_used: AtomicU64::new(crate::jwt::now()),
        }
    }

    /// Gives the pool back for shutdown.
    pub fn into_pool(self) -> Pool {
        self.pool
    }

    /// Whether a peer of this uid may connect.
    pub fn admits(&self, uid: u32) -> bool {
        self.policy.admits(uid)
    }

    /// How many sessions the pool has (and lanes the server runs).
    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    /// Whether requests are audited (and so whether a peer's executable is worth reading).
    pub fn audits(&self) -> bool {
        self.audit.is_some()
    }

    /// The uid the daemon runs as.
    pub fn owner(&self) -> u32 {
        self.policy.owner()
    }

    /// Answers one request (a line as `wire::decode_request` decoded it) from `peer` with one
    /// answer line (newline included).
    pub async fn handle(&self, incoming: wire::Incoming, peer: &Peer) -> Vec<u8> {
        match self.answer(incoming.request, peer).await {
            Ok(reply) => wire::encode_ok(incoming.id.as_ref(), &reply),
            Err(error) => wire::encode_error(incoming.id.as_ref(), &error),
        }
    }

    /// Where every request ends: dispatched, its decision audited, counted, answered.
    pub(super) async fn answer(
        &self,
        request: Result<Request, WireError>,
        peer: &Peer,
    ) -> Result<Reply, WireError> {
        let mut record = Record::new(peer, self.audit.is_some());
        let done = match request {
            Ok(request) => {
                record.op = Some(request.op());
                self.dispatch(request, peer, &mut record).await
            }
            Err(error) => Err(Failed::Wire(error)),
        };
        let done = match done {
            Ok(done) => done,
            // Its client has gone and nothing was done for it: nothing to audit or count.
            Err(Failed::Token(TokenError::Abandoned)) => {
                return Err(WireError::new(ErrorCode::Internal, TokenError::Abandoned.to_string()));
            }
            Err(failed) => return Err(self.refuse(failed, record)),
        };
        if let Some(outcome) = done.audit {
            record.outcome = Some(outcome);
            if let Err(e) = self.commit(&record) {
                return Err(self.refuse(Failed::Audit(e), record));
            }
        }
        if let Some(used) = done.signed {
            self.count_use(&used.label, used.cached);
            // Only what was handed out counts as use for --lock-after.
            self.touch();
        }
        Ok(done.reply)
    }

    async fn dispatch(&self, request: Request, peer: &Peer, record: &mut Record) -> Result<Done, Failed> {
        let owner_only = matches!(
            request,
            Request::Import(_)
                | Request::Generate(_)
                | Request::Cert(_)
                | Request::Lock {}
                | Request::Unlock { .. }
                | Request::Stop {}
        );
        if owner_only && !self.policy.is_owner(peer.uid) {
            return Err(Failed::OwnerOnly(request.op()));
        }
        match request {
            Request::SignInput { key, input } => self.sign_input(key, input, peer, record).await,
            Request::Sign(request) => self.sign(request, peer, record).await,
            Request::Keys {} => self.keys(peer).await.map(Reply::Keys).map(Done::read),
            Request::Pubkey { key, format } => {
                self.pubkey(key, format, peer).await.map(Reply::Pubkey).map(Done::read)
            }
            Request::Import(request) => self.import(request, record).await,
            Request::Generate(request) => self.generate(request, record).await,
            Request::Cert(request) => self.cert(request, record).await,
            Request::Status {} => Ok(Done::read(Reply::Status(Box::new(self.status(peer).await)))),
            Request::Lock {} => {
                self.lock("a client asked").await?;
                Ok(Done::audited(Reply::Lock(LockResult { locked: true }), Outcome::Locked))
            }
            Request::Unlock { pin } => {
                self.unlock(pin).await?;
                Ok(Done::audited(Reply::Lock(LockResult { locked: false }), Outcome::Unlocked))
            }
            Request::AccessToken { key, request } => self.access_token(&key, &request, peer, record),
            Request::Exchanged(report) => self.exchanged(report, peer, record),
            Request::Stop {} => {
                crate::info!("stop requested by uid {} (pid {:?})", peer.uid, peer.pid);
                self.request_stop();
                Ok(Done::audited(Reply::Stop(StopResult { pid: std::process::id() }), Outcome::Stopped))
            }
        }
    }

    /// Signs for the daemon itself (a token sink), under its own uid and audited as such.
    pub(super) async fn sign_as_daemon(&self, request: wire::SignRequest) -> Result<Signed, WireError> {
        let peer = Peer {
            uid: crate::paths::euid(),
            pid: i32::try_from(std::process::id()).ok(),
            exe: Some("jwt-agent (token sink)".into()),
        };
        match self.answer(Ok(Request::Sign(request)), &peer).await? {
            Reply::Sign(signed) => Ok(signed),
            other => Err(WireError::new(
                ErrorCode::Internal,
                format!("a sign request was answered with {other:?}"),
            )),
        }
    }

    /// Tells the server to stop accepting, and every connection to stop after the request it is
    /// on (a `stop` request, or shutdown).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once [`request_stop`](Self::request_stop) has been called.
    pub async fn stopping(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stopping| *stopping).await;
    }

    /// The one answer a peer the policy does not admit gets before the connection closes.
    pub fn forbidden(&self, peer: &Peer) -> Vec<u8> {
        let error = WireError::new(ErrorCode::Forbidden, format!("uid {} may not use this agent", peer.uid));
        wire::encode_error(None, &self.refuse(Failed::Wire(error), Record::new(peer, self.audit.is_some())))
    }

    /// The one answer a client over the connection limit gets (not audited: no request came).
    pub fn busy(&self) -> Vec<u8> {
        let message = "the agent serves as many connections as it may";
        wire::encode_error(None, &WireError::new(ErrorCode::Busy, message))
    }

    /// The answer to a line longer than the protocol allows.
    pub fn too_large(&self, peer: &Peer) -> Vec<u8> {
        let error = WireError::new(
            ErrorCode::TooLarge,
            format!("the request is longer than {} bytes", wire::MAX_LINE),
        );
        wire::encode_error(None, &self.refuse(Failed::Wire(error), Record::new(peer, self.audit.is_some())))
    }

    fn commit(&self, record: &Record) -> std::io::Result<()> {
        let Some(audit) = &self.audit else { return Ok(()) };
        audit.write(record).inspect_err(|e| crate::warn!("cannot write the audit log: {e}"))
    }

    /// Counts, logs (token failures) and audits a failure; the answer goes out whether or not
    /// the audit line could be written.
    fn refuse(&self, failed: Failed, mut record: Record) -> WireError {
        let error = failed.to_wire();
        let counter = match error.code {
            ErrorCode::TokenError | ErrorCode::Internal | ErrorCode::PinRejected => {
                &self.counters.token_errors
            }
            _ => &self.counters.refusals,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = &record.key {
            self.count(key, |c| c.refusals += 1);
        }
        if matches!(error.code, ErrorCode::TokenError | ErrorCode::PinRejected | ErrorCode::Internal) {
            crate::warn!("{}", error.message);
        }
        record.outcome = Some(Outcome::Refused);
        record.code = Some(error.code.as_str());
        record.reason = Some(error.message.clone());
        let _ = self.commit(&record);
        error
    }

    fn count_use(&self, label: &str, cached: bool) {
        let c = &self.counters;
        if cached {
            c.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.count(label, |c| c.cache_hits += 1);
        } else {
            c.signatures.fetch_add(1, Ordering::Relaxed);
            self.count(label, |c| c.signatures += 1);
        }
    }

    fn count(&self, key: &str, f: impl FnOnce(&mut KeyCounters)) {
        let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counters) = per_key.get_mut(key) {
            f(counters);
        } else if per_key.len() < MAX_COUNTED_KEYS {
            f(per_key.entry(key.to_owned()).or_default());
        }
    }

    /// Runs `f` on a pooled session.
    pub(super) async fn on_token<T, F>(&self, f: F) -> Result<T, Failed>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        Ok(self.pool.run(f).await?)
    }

    /// Runs `f` on a pooled session through the queue, whatever the token's speed: for calls
    /// that take long on any token (making a key or a certificate), which would hold up a
    /// lane's other connections if made inline.
    pub(super) async fn on_token_queued<T, F>(&self, f: F) -> Result<T, Failed>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        Ok(self.pool.queue(f).await?)
    }

    /// Refuses with `locked` while the agent is locked.
    pub(super) fn check_unlocked(&self) -> Result<(), Failed> {
        if self.is_locked() { Err(TokenError::Locked.into()) } else { Ok(()) }
    }

    /// Locks the agent: the token logs out, the PIN and the cached tokens are forgotten.
    pub(super) async fn lock(&self, why: &str) -> Result<(), Failed> {
        self.cache.clear();
        self.access.clear();
        self.on_token(|token, session| {
            token.lock(session);
            Ok(())
        })
        .await?;
        crate::info!("locked: {why}");
        Ok(())
    }

    async fn unlock(&self, pin: wire::SecretText) -> Result<(), Failed> {
        self.on_token(move |token, session| {
            token.unlock(session, cryptoki::types::AuthPin::from(pin.0.as_str()))
        })
        .await?;
        self.touch();
        crate::info!("unlocked");
        Ok(())
    }

    pub fn is_locked(&self) -> bool {
        self.pool.token().is_locked()
    }

    fn touch(&self) {
        self.last_used.store(crate::jwt::now(), Ordering::Relaxed);
    }

    /// Seconds since a key was last used.
    pub fn idle_secs(&self) -> u64 {
        crate::jwt::now().saturating_sub(self.last_used.load(Ordering::Relaxed))
    }
}
