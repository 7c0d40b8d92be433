//! What the daemon does with each request: decode, check, run on the session pool, audit,
//! answer. Signing itself is in `signing.rs`.

use crate::daemon::audit::{AuditLog, Outcome, Peer, Record};
use crate::daemon::cache::TokenCache;
use crate::jwt::Alg;
use crate::jwt::policy::Policy;
use crate::token::pool::Pool;
use crate::token::uri::parse_hex;
use crate::token::{NewKey, Token, TokenError};
use crate::wire::{
    self, CacheStatus, Counters, GenerateRequest, ImportRequest, KeyCounters, KeyResult, KeysResult,
    LockResult, PoolStatus, PubkeyFormat, PubkeyResult, Request, SecretText, StatusResult, StopResult,
};
use crate::wire::{ErrorCode, WireError};
use cryptoki::session::Session;
use serde::Serialize;
use serde_json::{Value, json};
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
    audit: Option<AuditLog>,
    audit_path: Option<String>,
    started: Instant,
    stop: watch::Sender<bool>,
    signatures: AtomicU64,
    cache_hits: AtomicU64,
    refusals: AtomicU64,
    token_errors: AtomicU64,
    per_key: Mutex<BTreeMap<String, KeyCounters>>,
    last_used: AtomicU64,
}

/// What a request's answer carries, before the envelope.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Reply {
    SignInput(wire::SignInputResult),
    Sign(wire::SignResult),
    Keys(KeysResult),
    Pubkey(PubkeyResult),
    Key(KeyResult),
    Status(Box<StatusResult>),
    Lock(LockResult),
    Stop(StopResult),
}

impl Agent {
    /// An agent signing with `pool` under `policy`, auditing to `audit` if given; a `stop`
    /// request sets `stop` to true.
    pub fn new(
        pool: Pool,
        policy: Policy,
        audit: Option<(AuditLog, String)>,
        stop: watch::Sender<bool>,
    ) -> Self {
        let (audit, audit_path) = audit.map_or((None, None), |(log, path)| (Some(log), Some(path)));
        Agent {
            pool,
            policy: Arc::new(policy),
            cache: TokenCache::new(),
            audit,
            audit_path,
            started: Instant::now(),
            stop,
            signatures: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            token_errors: AtomicU64::new(0),
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

    /// The uid the daemon runs as.
    pub fn owner(&self) -> u32 {
        self.policy.owner()
    }

    /// Answers one request line (newline removed) from `peer` with one answer line (newline
    /// included), and writes the decision to the audit log.
    pub async fn handle(&self, line: &[u8], peer: &Peer) -> Vec<u8> {
        let incoming = wire::decode_request(line);
        let id = incoming.id.as_ref();
        let mut record = Record::new(peer, self.audit.is_some());
        let result = match incoming.request {
            Ok(request) => self.dispatch(request, peer, &mut record).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(reply) => wire::encode_ok(id, &reply),
            Err(error) => self.refuse(id, &error, record),
        }
    }

    async fn dispatch(&self, request: Request, peer: &Peer, record: &mut Record) -> Result<Reply, WireError> {
        record.op = Some(request.op());
        let owner_only = matches!(
            request,
            Request::Import(_)
                | Request::Generate(_)
                | Request::Lock {}
                | Request::Unlock { .. }
                | Request::Stop {}
        );
        if owner_only && !self.policy.is_owner(peer.uid) {
            return Err(WireError::denied(format!("only the agent's own uid may {}", request.op())));
        }
        match request {
            Request::SignInput { key, input } => {
                self.sign_input(key, input, peer, record).await.map(Reply::SignInput)
            }
            Request::Sign(request) => self.sign(request, peer, record).await.map(Reply::Sign),
            Request::Keys {} => self.keys(peer).await.map(Reply::Keys),
            Request::Pubkey { key, format } => self.pubkey(key, format, peer).await.map(Reply::Pubkey),
            Request::Import(request) => self.import(request, record).await.map(Reply::Key),
            Request::Generate(request) => self.generate(request, record).await.map(Reply::Key),
            Request::Status {} => Ok(Reply::Status(Box::new(self.status(peer).await))),
            Request::Lock {} => {
                self.lock("a client asked").await?;
                record.outcome = Some(Outcome::Locked);
                self.commit(record)?;
                Ok(Reply::Lock(LockResult { locked: true }))
            }
            Request::Unlock { pin } => {
                self.unlock(pin).await?;
                record.outcome = Some(Outcome::Unlocked);
                self.commit(record)?;
                Ok(Reply::Lock(LockResult { locked: false }))
            }
            Request::Stop {} => {
                crate::info!("stop requested by uid {} (pid {:?})", peer.uid, peer.pid);
                record.outcome = Some(Outcome::Stopped);
                self.commit(record)?;
                self.request_stop();
                Ok(Reply::Stop(StopResult { pid: std::process::id() }))
            }
        }
    }

    /// Locks the agent: the token logs out, the PIN and the cached tokens are forgotten.
    pub async fn lock(&self, why: &str) -> Result<(), WireError> {
        self.cache.clear();
        self.on_token(|token, session| {
            token.lock(session);
            Ok(())
        })
        .await?;
        crate::info!("locked: {why}");
        Ok(())
    }

    async fn unlock(&self, pin: SecretText) -> Result<(), WireError> {
        self.on_token(move |token, session| {
            token.unlock(session, cryptoki::types::AuthPin::from(pin.0.as_str()))
        })
        .await?;
        self.touch();
        crate::info!("unlocked");
        Ok(())
    }

    /// Whether the agent is locked.
    pub fn is_locked(&self) -> bool {
        self.pool.token().is_locked()
    }

    /// Notes that a key was used now (for `--lock-after`).
    pub(super) fn touch(&self) {
        self.last_used.store(crate::jwt::now(), Ordering::Relaxed);
    }

    /// Seconds since a key was last used.
    pub fn idle_secs(&self) -> u64 {
        crate::jwt::now().saturating_sub(self.last_used.load(Ordering::Relaxed))
    }

    /// Signs for the daemon itself (a token sink), under its own uid and audited as such.
    pub(super) async fn sign_as_daemon(&self, request: wire::SignRequest) -> Result<String, WireError> {
        let peer = Peer {
            uid: crate::paths::euid(),
            pid: i32::try_from(std::process::id()).ok(),
            exe: Some("jwt-agent (token sink)".into()),
        };
        let mut record = Record::new(&peer, self.audit.is_some());
        record.op = Some("sign");
        match self.sign(request, &peer, &mut record).await {
            Ok(result) => Ok(result.token),
            Err(error) => {
                // Answered to no one, but counted and audited like any refusal.
                let _ = self.refuse(None, &error, record);
                Err(error)
            }
        }
    }

    /// Tells every connection to stop after the request it is on.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// The one answer a peer the policy does not admit gets before the connection closes.
    pub fn forbidden(&self, peer: &Peer) -> Vec<u8> {
        let message = format!("uid {} may not use this agent", peer.uid);
        self.refuse(
            None,
            &WireError::new(ErrorCode::Forbidden, message),
            Record::new(peer, self.audit.is_some()),
        )
    }

    /// The one answer a client over the connection limit gets.
    pub fn busy(&self) -> Vec<u8> {
        let message = "the agent serves as many connections as it may; retry shortly";
        wire::encode_error(None, &WireError::new(ErrorCode::Busy, message))
    }

    /// The answer to a line longer than the protocol allows.
    pub fn too_large(&self, peer: &Peer) -> Vec<u8> {
        let message = format!("the request is longer than {} bytes", wire::MAX_LINE);
        self.refuse(
            None,
            &WireError::new(ErrorCode::TooLarge, message),
            Record::new(peer, self.audit.is_some()),
        )
    }

    /// Writes a decision to the audit log. On failure nothing may be handed out: the caller
    /// answers with the error instead.
    pub(super) fn commit(&self, record: &Record) -> Result<(), WireError> {
        let Some(audit) = &self.audit else { return Ok(()) };
        audit.write(record).map_err(|e| {
            crate::warn!("cannot write the audit log: {e}");
            WireError::new(
                ErrorCode::Internal,
                format!("the audit log cannot be written ({e}); the agent signs nothing until it can"),
            )
        })
    }

    fn refuse(&self, id: Option<&Value>, error: &WireError, mut record: Record) -> Vec<u8> {
        let counter = match error.code {
            ErrorCode::TokenError | ErrorCode::Internal => &self.token_errors,
            _ => &self.refusals,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = &record.key {
            self.count(key, |c| c.refusals += 1);
        }
        if error.code == ErrorCode::TokenError {
            crate::warn!("{}", error.message);
        }
        record.outcome = Some(Outcome::Refused);
        record.code = Some(error.code.as_str());
        record.reason = Some(error.message.clone());
        // A refusal is answered whether or not it could be logged; commit already warned.
        let _ = self.commit(&record);
        wire::encode_error(id, error)
    }

    pub(super) fn count_signature(&self, label: &str, cached: bool) {
        if cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.count(label, |c| c.cache_hits += 1);
        } else {
            self.signatures.fetch_add(1, Ordering::Relaxed);
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

    /// Runs `f` on a pooled session and turns token failures into wire errors.
    pub(super) async fn on_token<T, F>(&self, f: F) -> Result<T, WireError>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        self.pool.run(f).await.map_err(|e| e.to_wire())
    }

    /// Refuses with `locked` while the agent is locked.
    pub(super) fn check_unlocked(&self) -> Result<(), WireError> {
        if self.is_locked() { Err(TokenError::Locked.to_wire()) } else { Ok(()) }
    }

    async fn keys(&self, peer: &Peer) -> Result<KeysResult, WireError> {
        self.check_unlocked()?;
        let mut keys = self.on_token(|token, session| token.list_keys(session)).await?;
        keys.retain(|k| self.policy.may_use(&k.label, peer.uid));
        Ok(KeysResult { keys })
    }

    async fn pubkey(
        &self,
        key: Option<String>,
        format: PubkeyFormat,
        peer: &Peer,
    ) -> Result<PubkeyResult, WireError> {
        self.check_unlocked()?;
        let (policy, uid) = (self.policy.clone(), peer.uid);
        let names = match (key, format) {
            (Some(key), _) => vec![key],
            (None, PubkeyFormat::Jwks) => Vec::new(),
            (None, _) => return Err(WireError::bad_request("give the key: only a JWKS can hold every key")),
        };
        let keys = self
            .on_token(move |token, session| {
                let names = if names.is_empty() {
                    // Every key this agent signs with: those with an algorithm.
                    token
                        .list_keys(session)?
                        .into_iter()
                        .filter(|k| k.alg.is_some() && policy.may_use(&k.label, uid))
                        .map(|k| k.label)
                        .collect()
                } else {
                    names.clone()
                };
                let mut keys = Vec::with_capacity(names.len());
                for name in &names {
                    let key = token.key(session, name)?;
                    if !policy.may_use(&key.info.label, uid) {
                        return Err(TokenError::Denied(format!(
                            "uid {uid} may not use the key {:?}",
                            key.info.label
                        )));
                    }
                    let public = key.public.as_ref().ok_or_else(|| TokenError::NoPublicKey(name.clone()))?;
                    keys.push((public.to_pem(), public.jwk(key.info.kid.as_deref(), key.alg)));
                }
                Ok(keys)
            })
            .await?;
        let mut result = PubkeyResult { pem: None, jwk: None, jwks: None };
        match format {
            PubkeyFormat::Pem => result.pem = keys.into_iter().next().map(|(pem, _)| pem),
            PubkeyFormat::Jwk => result.jwk = keys.into_iter().next().map(|(_, jwk)| jwk),
            PubkeyFormat::Jwks => {
                let keys: Vec<Value> = keys.into_iter().map(|(_, jwk)| jwk).collect();
                result.jwks = Some(json!({ "keys": keys }));
            }
        }
        Ok(result)
    }

    async fn import(&self, request: ImportRequest, record: &mut Record) -> Result<KeyResult, WireError> {
        let ImportRequest { pkcs8_pem, label, kid, id } = request;
        record.key = label.clone().or_else(|| kid.clone());
        let key = crate::key::file::parse_pem(&pkcs8_pem.0)
            .map_err(|e| WireError::bad_request(format!("{e}; nothing was created")))?;
        drop(pkcs8_pem);
        let label =
            label.or_else(|| kid.clone()).ok_or_else(|| WireError::bad_request("give the key a label"))?;
        let id = id.as_deref().map(parse_hex).transpose().map_err(WireError::bad_request)?;
        let new = NewKey::Import { key, label, id, kid };
        self.create(new, record).await
    }

    async fn generate(&self, request: GenerateRequest, record: &mut Record) -> Result<KeyResult, WireError> {
        let GenerateRequest { label, alg, id, bits } = request;
        record.key = Some(label.clone());
        let alg = match alg.as_deref() {
            None => Alg::Es256,
            Some(name) => Alg::from_name(name).ok_or_else(|| {
                WireError::bad_request(format!("alg {name:?} is not one of {}", Alg::names()))
            })?,
        };
        let id = id.as_deref().map(parse_hex).transpose().map_err(WireError::bad_request)?;
        self.create(NewKey::Generate { alg, bits, label, id }, record).await
    }

    async fn create(&self, new: NewKey, record: &mut Record) -> Result<KeyResult, WireError> {
        self.check_unlocked()?;
        let info = self.on_token(move |token, _| token.create(&new)).await?;
        crate::info!("created key {:?} ({})", info.label, info.alg.as_deref().unwrap_or("?"));
        record.alg = info.alg.clone().map(Value::from);
        record.kid = info.kid.clone().map(Value::from);
        record.outcome = Some(Outcome::Created);
        self.commit(record)?;
        Ok(KeyResult { key: info })
    }

    async fn status(&self, peer: &Peer) -> StatusResult {
        let found = self
            .pool
            .run(|token, session| {
                Ok((token.status(Some(session)), token.list_keys(session).unwrap_or_default()))
            })
            .await;
        let (token, keys) = match found {
            Ok(found) => found,
            Err(e) => {
                // The pool could not reach the token; ask it directly, off the reactor.
                let token = self.pool.token().clone();
                let mut status =
                    tokio::task::spawn_blocking(move || token.status(None)).await.unwrap_or_default();
                status.state = format!("unavailable: {e}");
                (status, Vec::new())
            }
        };
        let cache_hits = self.cache_hits.load(Ordering::Relaxed);
        let mut status = StatusResult {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            token,
            keys,
            pool: PoolStatus { sessions: self.pool.size() },
            counters: Counters {
                signatures: self.signatures.load(Ordering::Relaxed),
                cache_hits,
                refusals: self.refusals.load(Ordering::Relaxed),
                token_errors: self.token_errors.load(Ordering::Relaxed),
            },
            cache: CacheStatus { size: self.cache.len(), hits: cache_hits },
            per_key: self.per_key.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            audit_log: self.audit_path.clone(),
            locked: self.is_locked(),
        };
        // Another uid sees the keys it may use, and not where the audit log is.
        if !self.policy.is_owner(peer.uid) {
            status.keys.retain(|k| self.policy.may_use(&k.label, peer.uid));
            status.per_key.retain(|label, _| self.policy.may_use(label, peer.uid));
            status.audit_log = None;
        }
        status
    }
}
