//! What the daemon does with each request: decode, check, run on the session pool, answer.

use crate::error::{ErrorCode, WireError};
use crate::jose::{self, Alg};
use crate::keyfile;
use crate::protocol::{
    self, Counters, GenerateRequest, ImportRequest, KeyResult, KeysResult, PoolStatus, PubkeyFormat,
    PubkeyResult, Request, SignInputResult, SignRequest, SignResult, StatusResult, StopResult,
};
use crate::token::pool::Pool;
use crate::token::uri::parse_hex;
use crate::token::{NewKey, Token, TokenError};
use cryptoki::session::Session;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The daemon's state shared by every connection.
pub struct Agent {
    pool: Pool,
    started: Instant,
    stop: watch::Sender<bool>,
    signatures: AtomicU64,
    refusals: AtomicU64,
    token_errors: AtomicU64,
}

impl Agent {
    /// An agent signing with `pool`; a `stop` request sets `stop` to true.
    pub fn new(pool: Pool, stop: watch::Sender<bool>) -> Self {
        Agent {
            pool,
            started: Instant::now(),
            stop,
            signatures: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            token_errors: AtomicU64::new(0),
        }
    }

    /// Gives the pool back for shutdown.
    pub fn into_pool(self) -> Pool {
        self.pool
    }

    /// Answers one request line (newline removed) with one answer line (newline included).
    pub async fn handle(&self, line: &[u8]) -> Vec<u8> {
        let incoming = protocol::decode_request(line);
        let id = incoming.id.as_ref();
        let request = match incoming.request {
            Ok(request) => request,
            Err(error) => return self.refuse(id, &error),
        };
        match request {
            Request::SignInput { key, input } => self.answer(id, self.sign_input(key, input).await),
            Request::Sign(request) => self.answer(id, self.sign(request).await),
            Request::Keys {} => self.answer(id, self.keys().await),
            Request::Pubkey { key, format } => self.answer(id, self.pubkey(key, format).await),
            Request::Import(request) => self.answer(id, self.import(request).await),
            Request::Generate(request) => self.answer(id, self.generate(request).await),
            Request::Status {} => self.answer(id, Ok(self.status().await)),
            Request::Stop {} => {
                crate::info!("stop requested by a client");
                self.request_stop();
                self.answer(id, Ok(StopResult { pid: std::process::id() }))
            }
        }
    }

    /// Tells every connection to stop after the request it is on.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// The one answer a peer of another uid gets before the connection closes.
    pub fn forbidden(&self, uid: u32) -> Vec<u8> {
        let message = format!("uid {uid} may not use this agent; it serves its own uid only");
        self.refuse(None, &WireError::new(ErrorCode::Forbidden, message))
    }

    /// The answer to a line longer than the protocol allows.
    pub fn too_large(&self) -> Vec<u8> {
        let message = format!("the request is longer than {} bytes", protocol::MAX_LINE);
        self.refuse(None, &WireError::new(ErrorCode::TooLarge, message))
    }

    fn answer<T: Serialize>(&self, id: Option<&Value>, result: Result<T, WireError>) -> Vec<u8> {
        match result {
            Ok(value) => protocol::encode_ok(id, &value),
            Err(error) => self.refuse(id, &error),
        }
    }

    fn refuse(&self, id: Option<&Value>, error: &WireError) -> Vec<u8> {
        let counter = match error.code {
            ErrorCode::TokenError | ErrorCode::Internal => &self.token_errors,
            _ => &self.refusals,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if error.code == ErrorCode::TokenError {
            crate::warn!("{}", error.message);
        }
        protocol::encode_error(id, error)
    }

    /// Runs `f` on a pooled session and turns token failures into wire errors.
    async fn on_token<T, F>(&self, f: F) -> Result<T, WireError>
    where
        T: Send + 'static,
        F: Fn(&Token, &Session) -> Result<T, TokenError> + Send + 'static,
    {
        self.pool.run(f).await.map_err(|e| e.to_wire())
    }

    async fn sign_input(&self, key: String, input: String) -> Result<SignInputResult, WireError> {
        let alg = jose::parse_signing_input(&input).map_err(|e| WireError::bad_request(e.to_string()))?.alg;
        let token = self
            .on_token(move |token, session| {
                let key = token.key(session, &key)?;
                let signature = token.sign(session, &key, alg, input.as_bytes())?;
                Ok(jose::compact(&input, &signature))
            })
            .await?;
        self.signatures.fetch_add(1, Ordering::Relaxed);
        Ok(SignInputResult { token })
    }

    async fn sign(&self, request: SignRequest) -> Result<SignResult, WireError> {
        let SignRequest { key, preset, mut header, mut claims, ttl, fresh: _ } = request;
        if let Some(preset) = preset {
            return Err(WireError::bad_request(format!("unknown preset {preset:?}")));
        }
        let asked = match header.get("alg") {
            None => None,
            Some(_) => Some(jose::header_alg(&header).map_err(|e| WireError::bad_request(e.to_string()))?),
        };
        header.entry("typ").or_insert_with(|| Value::from("JWT"));
        set_times(&mut claims, ttl.as_deref())?;
        let token = self
            .on_token(move |token, session| {
                let key = token.key(session, &key)?;
                let alg = asked.unwrap_or(key.alg);
                let mut header = header.clone();
                header.insert("alg".into(), Value::from(alg.name()));
                let input = jose::encode_signing_input(&header, &claims);
                let signature = token.sign(session, &key, alg, input.as_bytes())?;
                Ok(jose::compact(&input, &signature))
            })
            .await?;
        self.signatures.fetch_add(1, Ordering::Relaxed);
        Ok(SignResult { token, cached: false })
    }

    async fn keys(&self) -> Result<KeysResult, WireError> {
        let keys = self.on_token(|token, session| token.list_keys(session)).await?;
        Ok(KeysResult { keys })
    }

    async fn pubkey(&self, key: Option<String>, format: PubkeyFormat) -> Result<PubkeyResult, WireError> {
        let names = match (key, format) {
            (Some(key), _) => vec![key],
            (None, PubkeyFormat::Jwks) => Vec::new(),
            (None, _) => return Err(WireError::bad_request("give the key: only a JWKS can hold every key")),
        };
        let jwks = self
            .on_token(move |token, session| {
                let names = if names.is_empty() {
                    // Every key this agent signs with: those with an algorithm.
                    token
                        .list_keys(session)?
                        .into_iter()
                        .filter(|k| k.alg.is_some())
                        .map(|k| k.label)
                        .collect()
                } else {
                    names.clone()
                };
                let mut keys = Vec::with_capacity(names.len());
                for name in &names {
                    let key = token.key(session, name)?;
                    let public = key.public.as_ref().ok_or_else(|| TokenError::NoPublicKey(name.clone()))?;
                    keys.push((public.to_pem(), public.jwk(key.info.kid.as_deref(), key.alg)));
                }
                Ok(keys)
            })
            .await?;
        Ok(match format {
            PubkeyFormat::Pem => {
                PubkeyResult { pem: jwks.into_iter().next().map(|(pem, _)| pem), jwk: None, jwks: None }
            }
            PubkeyFormat::Jwk => {
                PubkeyResult { pem: None, jwk: jwks.into_iter().next().map(|(_, jwk)| jwk), jwks: None }
            }
            PubkeyFormat::Jwks => {
                let keys: Vec<Value> = jwks.into_iter().map(|(_, jwk)| jwk).collect();
                PubkeyResult { pem: None, jwk: None, jwks: Some(json!({ "keys": keys })) }
            }
        })
    }

    async fn import(&self, request: ImportRequest) -> Result<KeyResult, WireError> {
        let ImportRequest { pkcs8_pem, label, kid, id } = request;
        let key = keyfile::parse_pem(&pkcs8_pem.0)
            .map_err(|e| WireError::bad_request(format!("{e}; nothing was created")))?;
        drop(pkcs8_pem);
        let label =
            label.or_else(|| kid.clone()).ok_or_else(|| WireError::bad_request("give the key a label"))?;
        let id = id.as_deref().map(parse_hex).transpose().map_err(WireError::bad_request)?;
        let new = NewKey::Import { key, label, id, kid };
        let info = self.on_token(move |token, _| token.create(&new)).await?;
        crate::info!("imported key {:?} ({})", info.label, info.alg.as_deref().unwrap_or("?"));
        Ok(KeyResult { key: info })
    }

    async fn generate(&self, request: GenerateRequest) -> Result<KeyResult, WireError> {
        let GenerateRequest { label, alg, id, bits } = request;
        let alg = match alg.as_deref() {
            None => Alg::Es256,
            Some(name) => Alg::from_name(name).ok_or_else(|| {
                WireError::bad_request(format!("alg {name:?} is not one of {}", Alg::names()))
            })?,
        };
        let id = id.as_deref().map(parse_hex).transpose().map_err(WireError::bad_request)?;
        let new = NewKey::Generate { alg, bits, label, id };
        let info = self.on_token(move |token, _| token.create(&new)).await?;
        crate::info!("generated key {:?} ({})", info.label, info.alg.as_deref().unwrap_or("?"));
        Ok(KeyResult { key: info })
    }

    async fn status(&self) -> StatusResult {
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
        StatusResult {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            token,
            keys,
            pool: PoolStatus { sessions: self.pool.size() },
            counters: Counters {
                signatures: self.signatures.load(Ordering::Relaxed),
                cache_hits: 0,
                refusals: self.refusals.load(Ordering::Relaxed),
                token_errors: self.token_errors.load(Ordering::Relaxed),
            },
        }
    }
}

/// Sets `iat` to now unless given, and `exp` to `iat + ttl` when a ttl is given.
fn set_times(claims: &mut Map<String, Value>, ttl: Option<&str>) -> Result<(), WireError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let iat = match claims.get("iat") {
        None => {
            claims.insert("iat".into(), Value::from(now));
            now
        }
        Some(value) => value
            .as_u64()
            .ok_or_else(|| WireError::bad_request("`iat` must be a whole number of seconds since 1970"))?,
    };
    if let Some(ttl) = ttl {
        if claims.contains_key("exp") {
            return Err(WireError::bad_request("give either `exp` or a ttl, not both"));
        }
        let ttl = crate::duration::parse(ttl).map_err(WireError::bad_request)?;
        claims.insert("exp".into(), Value::from(iat + ttl.as_secs()));
    }
    Ok(())
}
