//! Access tokens from exchanges (`jwt-agent token`): the client trades the assertion at the
//! service (the daemon, which holds the login, opens no network connection) and reports what
//! came of it here. The report is audited; an issued token is kept for the reporting uid until
//! 5 minutes before it expires, so that a job's next step reuses it instead of asking again.
//! Tokens are kept per uid: one uid never sees another's.

use super::agent::Agent;
use super::audit::{Outcome, Peer, Record};
use super::outcome::{Done, Failed, Reply};
use crate::token::uri::redact;
use crate::wire::{AccessToken, AccessTokenResult, ExchangeOutcome, ExchangedReport, ExchangedResult};
use std::collections::HashMap;
use std::sync::Mutex;

/// How many access tokens are kept at most, over every uid.
pub const CAPACITY: usize = 1024;

/// A token is handed out again until this many seconds before it expires.
pub const MARGIN: u64 = 5 * 60;

/// The longest request name kept (a client sends a digest; this bounds what a client can make
/// the daemon hold).
const MAX_REQUEST: usize = 256;

/// Access tokens by uid and request.
#[derive(Debug, Default)]
pub struct AccessCache {
    entries: Mutex<HashMap<(u32, String), AccessToken>>,
}

impl AccessCache {
    /// The token kept for `uid` and `request`, while more than [`MARGIN`] is left of it.
    pub fn get(&self, uid: u32, request: &str, now: u64) -> Option<AccessToken> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&(uid, request.to_owned())).filter(|t| usable(t, now)).cloned()
    }

    /// Keeps `token` for `uid` and `request` if it has more than [`MARGIN`] left; when full,
    /// drops what is no longer usable, then what expires first. Returns whether it was kept.
    pub fn put(&self, uid: u32, request: String, token: AccessToken, now: u64) -> bool {
        if !usable(&token, now) || request.len() > MAX_REQUEST {
            return false;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (uid, request);
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, t| usable(t, now));
            if entries.len() >= CAPACITY
                && let Some(first) = entries.iter().min_by_key(|(_, t)| t.expires_at).map(|(k, _)| k.clone())
            {
                entries.remove(&first);
            }
        }
        entries.insert(key, token);
        true
    }

    /// Forgets the token kept for `uid` and `request` (it was revoked).
    pub fn remove(&self, uid: u32, request: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&(uid, request.to_owned()));
    }

    /// Forgets every token (on `lock`). Each wipes itself as it is dropped.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many tokens are kept for `uid`.
    pub fn count(&self, uid: u32) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).keys().filter(|(u, _)| *u == uid).count()
    }
}

fn usable(token: &AccessToken, now: u64) -> bool {
    token.expires_at > now.saturating_add(MARGIN)
}

impl Agent {
    /// `access_token`: the token this uid got for `request`, if one is kept. A hit is audited
    /// as served from the cache; a miss is a read.
    pub(super) fn access_token(
        &self,
        key: &str,
        request: &str,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<Done, Failed> {
        record.key = Some(redact(key).into_owned());
        if !self.policy.may_use(key, peer.uid) {
            return Err(Failed::NotYours { uid: peer.uid, label: key.to_owned() });
        }
        self.check_unlocked()?;
        let kept = self.access.get(peer.uid, request, crate::jwt::now());
        let outcome = kept.as_ref().map(|_| Outcome::Cached);
        let reply = Reply::AccessToken(AccessTokenResult { access_token: kept });
        Ok(Done { reply, audit: outcome, signed: None })
    }

    /// `exchanged`: audits a client's report of an exchange; keeps an issued token for the
    /// reporting uid, forgets a revoked one.
    pub(super) fn exchanged(
        &self,
        report: ExchangedReport,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<Done, Failed> {
        let ExchangedReport { preset, key, client_id, endpoint, outcome, reason, request, token } = report;
        record.key = Some(redact(&key).into_owned());
        if !self.policy.may_use(&key, peer.uid) {
            return Err(Failed::NotYours { uid: peer.uid, label: key });
        }
        record.preset = Some(preset.as_str().to_owned());
        record.iss = client_id.map(serde_json::Value::from);
        record.endpoint = Some(endpoint);
        record.reason = reason;
        let mut kept = false;
        let audit = match outcome {
            ExchangeOutcome::Issued => {
                if let (Some(request), Some(token)) = (request, token) {
                    self.check_unlocked()?;
                    kept = self.access.put(peer.uid, request, token, crate::jwt::now());
                }
                Outcome::Exchanged
            }
            ExchangeOutcome::Failed => Outcome::ExchangeFailed,
            ExchangeOutcome::Revoked => {
                if let Some(request) = request {
                    self.access.remove(peer.uid, &request);
                }
                Outcome::Revoked
            }
        };
        Ok(Done::audited(Reply::Exchanged(ExchangedResult { kept }), audit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SecretText;

    fn token(text: &str, expires_at: u64) -> AccessToken {
        AccessToken { token: SecretText(text.to_owned().into()), expires_at, fields: serde_json::Map::new() }
    }

    #[test]
    fn kept_per_uid_until_five_minutes_before_expiry() {
        let cache = AccessCache::default();
        assert!(cache.put(1000, "r".into(), token("a", 10_000), 1000));
        assert_eq!(cache.get(1000, "r", 1000).map(|t| t.token), Some(SecretText("a".to_owned().into())));
        assert!(cache.get(1001, "r", 1000).is_none(), "another uid saw the token");
        assert!(cache.get(1000, "other", 1000).is_none());
        assert!(cache.get(1000, "r", 10_000 - MARGIN - 1).is_some());
        assert!(cache.get(1000, "r", 10_000 - MARGIN).is_none());
        assert!(
            !cache.put(1000, "s".into(), token("b", 1000 + MARGIN), 1000),
            "kept a token about to expire"
        );
        cache.remove(1000, "r");
        assert!(cache.get(1000, "r", 1000).is_none());
    }

    #[test]
    fn bounded_by_count_and_request_length() {
        let cache = AccessCache::default();
        for i in 0..(CAPACITY as u64 + 10) {
            assert!(cache.put(1, format!("r{i}"), token("t", 100_000 + i), 1000));
        }
        assert_eq!(cache.count(1), CAPACITY);
        assert!(cache.get(1, "r0", 1000).is_none(), "the first to expire went first");
        assert!(!cache.put(1, "x".repeat(MAX_REQUEST + 1), token("t", 100_000), 1000));
        cache.clear();
        assert_eq!(cache.count(1), 0);
    }
}
