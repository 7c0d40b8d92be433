//! The ops that are not signing: `keys`, `pubkey`, `import`, `generate` and `status`.

use super::agent::Agent;
use super::audit::{Outcome, Peer, Record};
use super::outcome::{Done, Failed, Reply};
use crate::jwt::Alg;
use crate::token::NewKey;
use crate::token::TokenError;
use crate::token::uri::key_uri_hex;
use crate::wire::{
    CacheStatus, CertRequest, CertResult, Counters, GenerateRequest, ImportRequest, KeyResult, KeysResult,
    PoolStatus, PubkeyFormat, PubkeyResult, StatusResult,
};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

impl Agent {
    pub(super) async fn keys(&self, peer: &Peer) -> Result<KeysResult, Failed> {
        self.check_unlocked()?;
        let mut keys = self.on_token(|token, session| token.list_keys(session)).await?;
        keys.retain(|k| self.policy.may_use(&k.label, peer.uid));
        Ok(KeysResult { keys })
    }

    pub(super) async fn pubkey(
        &self,
        key: Option<String>,
        format: PubkeyFormat,
        peer: &Peer,
    ) -> Result<PubkeyResult, Failed> {
        self.check_unlocked()?;
        let (policy, uid) = (self.policy.clone(), peer.uid);
        let names = match (key, format) {
            (Some(key), _) => vec![key],
            (None, PubkeyFormat::Jwks) => Vec::new(),
            (None, _) => return Err(Failed::bad_request("give the key: only a JWKS can hold every key")),
        };
        let keys = self
            .on_token(move |token, session| {
                let names = if names.is_empty() {
                    // Every key this agent signs with (those with an algorithm) that uid may use.
                    token
                        .list_keys(session)?
                        .into_iter()
                        .filter(|k| k.alg.is_some() && policy.may_use(&k.label, uid))
                        // By label and id: another tool may have given two keys one label.
                        .map(|k| key_uri_hex(&k.label, &k.id))
                        .collect()
                } else {
                    names.clone()
                };
                let mut keys = Vec::with_capacity(names.len());
                for name in &names {
                    let key = token.key(session, name)?;
                    let public = key.public.as_ref().ok_or_else(|| TokenError::NoPublicKey(name.clone()))?;
                    let jwk = public.jwk(key.info.kid.as_deref(), key.jwk_alg());
                    keys.push((key.info.label.clone(), public.to_pem(), jwk));
                }
                Ok(keys)
            })
            .await?;
        if let Some((label, ..)) = keys.iter().find(|(label, ..)| !self.policy.may_use(label, uid)) {
            return Err(Failed::NotYours { uid, label: label.clone() });
        }
        let mut result = PubkeyResult { pem: None, jwk: None, jwks: None };
        match format {
            PubkeyFormat::Pem => result.pem = keys.into_iter().next().map(|(_, pem, _)| pem),
            PubkeyFormat::Jwk => result.jwk = keys.into_iter().next().map(|(.., jwk)| jwk),
            PubkeyFormat::Jwks => {
                let keys: Vec<Value> = keys.into_iter().map(|(.., jwk)| jwk).collect();
                result.jwks = Some(json!({ "keys": keys }));
            }
        }
        Ok(result)
    }

    pub(super) async fn import(&self, request: ImportRequest, record: &mut Record) -> Result<Done, Failed> {
        let ImportRequest { pkcs8_pem, label, kid, id, iss } = request;
        record.key = label.clone().or_else(|| kid.clone());
        let key = crate::key::file::parse_pem(&pkcs8_pem.0)
            .map_err(|e| Failed::bad_request(format!("{e}; nothing was created")))?;
        drop(pkcs8_pem);
        let label =
            label.or_else(|| kid.clone()).ok_or_else(|| Failed::bad_request("give the key a label"))?;
        self.create(NewKey::Import { key, label, id: id.map(|id| id.0), kid, iss }, record).await
    }

    pub(super) async fn generate(
        &self,
        request: GenerateRequest,
        record: &mut Record,
    ) -> Result<Done, Failed> {
        let GenerateRequest { label, alg, id, bits } = request;
        record.key = Some(label.clone());
        let new = NewKey::Generate { alg: alg.unwrap_or(Alg::Es256), bits, label, id: id.map(|id| id.0) };
        self.create(new, record).await
    }

    async fn create(&self, new: NewKey, record: &mut Record) -> Result<Done, Failed> {
        self.check_unlocked()?;
        let info = self.on_token_queued(move |token, _| token.create(&new)).await?;
        crate::info!("created key {:?} ({})", info.label, info.alg.as_deref().unwrap_or("?"));
        record.alg = info.alg.clone().map(Value::from);
        record.kid = info.kid.clone().map(Value::from);
        Ok(Done::audited(Reply::Key(KeyResult { key: info }), Outcome::Created))
    }

    pub(super) async fn cert(&self, request: CertRequest, record: &mut Record) -> Result<Done, Failed> {
        let CertRequest { key, subject, days } = request;
        record.key = Some(crate::token::uri::redact(&key).into_owned());
        self.check_unlocked()?;
        let der = self
            .on_token_queued(move |token, session| {
                let key = token.key(session, &key)?;
                let subject = subject.clone().unwrap_or_else(|| format!("CN={}", key.info.label));
                token.make_cert(session, &key, &subject, days.unwrap_or(365))
            })
            .await?;
        let pem = pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, &der)
            .map_err(|e| Failed::bad_request(format!("the certificate does not encode: {e}")))?;
        let x5t_s256 = crate::key::cert::thumbprint_s256(&der);
        crate::info!(
            "made a certificate for key {:?} (x5t#S256 {x5t_s256})",
            record.key.as_deref().unwrap_or("")
        );
        Ok(Done::audited(Reply::Cert(CertResult { pem, x5t_s256 }), Outcome::Created))
    }

    pub(super) async fn status(&self, peer: &Peer) -> StatusResult {
        let found = self
            .pool
            .run(|token, session| {
                // A token that cannot list its keys still says what state it is in.
                let keys = token.list_keys(session).unwrap_or_default();
                Ok((token.status(Some(session)), keys))
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
        let c = &self.counters;
        let cache_hits = c.cache_hits.load(Ordering::Relaxed);
        let mut status = StatusResult {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            token,
            keys,
            pool: PoolStatus { sessions: self.pool.size(), inline: self.pool.inline() },
            counters: Counters {
                signatures: c.signatures.load(Ordering::Relaxed),
                cache_hits,
                refusals: c.refusals.load(Ordering::Relaxed),
                token_errors: c.token_errors.load(Ordering::Relaxed),
            },
            cache: CacheStatus {
                size: self.cache.len(),
                hits: cache_hits,
                access_tokens: self.access.count(peer.uid),
            },
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
