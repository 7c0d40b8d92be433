//! The token cache: tokens minted by `sign`, shared by every client, reused while Apple would
//! still take them. Apple asks callers to reuse tokens, and APNs answers 429 to tokens refreshed
//! more often than every 20 minutes. `sign-input` is never cached.
//!
//! Misses fly single: while one request for a cache key is being signed, the others for that
//! key wait for it ([`TokenCache::flight`]) and are then answered from the cache, so fifty
//! runners starting together cost a slow HSM one signature.

use crate::jwt::Ttl;
use crate::jwt::preset::Preset;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many tokens the cache holds at most.
pub const CAPACITY: usize = 1024;

/// A cached token and what it was made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub token: String,
    /// The signing key's label (its policy is checked again on every hit).
    pub label: String,
    /// The preset it was made for.
    pub preset: Option<Arc<Preset>>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub iat: u64,
    /// `exp`, if it has one.
    pub exp: Option<u64>,
    /// Without `exp`, how many seconds after `iat` it is handed out.
    pub reuse: u64,
}

impl Entry {
    /// Whether the token may still be handed out at `now`: while at least half its lifetime is
    /// left; a token without `exp` (APNs) until it is `reuse` old.
    pub fn fresh(&self, now: u64) -> bool {
        match self.exp {
            Some(exp) => now < exp && exp - now >= (exp.saturating_sub(self.iat)).div_ceil(2),
            None => now.saturating_sub(self.iat) < self.reuse,
        }
    }
}

/// Tokens by what was asked for: key, preset, header and claims other than `iat`/`exp`, ttl.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, Entry>>,
    /// The cache keys being signed now, each with the lock its waiters queue on (in order).
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to sign for one cache key: held by one request at a time; the next one waiting
/// gets it when this is dropped.
pub struct Flight<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: String,
    flights: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Nobody else waits (only the map holds the lock): the flight is over.
        if flights.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            flights.remove(&self.key);
        }
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cache key of a request, or `None` when the request cannot share tokens (it sets
    /// `iat` or `exp` itself).
    pub fn key(
        name: &str,
        preset: Option<&str>,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
        ttl: Option<Ttl>,
    ) -> Option<String> {
        if claims.contains_key("iat") || claims.contains_key("exp") {
            return None;
        }
        let key = (name, preset, header, claims, ttl);
        Some(serde_json::to_string(&key).expect("strings, JSON values and a ttl always serialize"))
    }

    /// The cached token for `key`, if it is still fresh at `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|entry| entry.fresh(now)).cloned()
    }

    /// Keeps `entry`; when full, drops what has gone stale, then the oldest.
    pub fn put(&self, key: String, entry: Entry, now: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, e| e.fresh(now));
            if entries.len() >= CAPACITY
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.iat).map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, entry);
    }

    /// Waits until no other request is signing for `key`, and takes the turn. The caller looks
    /// in the cache again once it has it: the request before may have filled it. Waiters are
    /// served in the order they came (tokio's mutex is fair).
    pub async fn flight(&self, key: &str) -> Flight<'_> {
        let lock = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(key.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Flight { guard: Some(guard), key: key.to_owned(), flights: &self.flights }
    }

    /// Forgets every token (on `lock`).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(iat: u64, exp: Option<u64>) -> Entry {
        Entry {
            token: format!("t{iat}"),
            label: "k".into(),
            preset: None,
            header: Map::new(),
            claims: Map::new(),
            iat,
            exp,
            reuse: 50 * 60,
        }
    }

    #[test]
    fn reused_while_half_the_lifetime_is_left() {
        let e = entry(1000, Some(2200));
        assert!(e.fresh(1000));
        assert!(e.fresh(1600));
        assert!(!e.fresh(1601));
        assert!(!e.fresh(2200));
        // APNs: until 50 minutes old.
        let apns = entry(1000, None);
        assert!(apns.fresh(1000 + 50 * 60 - 1));
        assert!(!apns.fresh(1000 + 50 * 60));
    }

    #[test]
    fn keys_ignore_nothing_but_refuse_explicit_times() {
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from("a"));
        let ttl = |text: &str| Some(text.parse::<Ttl>().unwrap());
        let k1 = TokenCache::key("k", None, &Map::new(), &claims, ttl("20m")).unwrap();
        let k2 = TokenCache::key("k", None, &Map::new(), &claims, ttl("10m")).unwrap();
        let k3 = TokenCache::key("k", Some("apns"), &Map::new(), &claims, ttl("20m")).unwrap();
        assert!(k1 != k2 && k1 != k3);
        assert_eq!(
            k1,
            TokenCache::key("k", None, &Map::new(), &claims, ttl("1200s")).unwrap(),
            "one lifetime, one key"
        );
        claims.insert("exp".into(), Value::from(5));
        assert_eq!(TokenCache::key("k", None, &Map::new(), &claims, None), None);
    }

    #[tokio::test]
    async fn one_flight_per_key_at_a_time_and_none_left_after() {
        let cache = TokenCache::new();
        let first = cache.flight("k").await;
        let other_key = cache.flight("j").await;
        // A second request for "k" waits for the first.
        let mut second = std::pin::pin!(cache.flight("k"));
        assert!(futures_poll(second.as_mut()).is_none(), "two flights for one key");
        drop(first);
        let second = futures_poll(second.as_mut()).expect("the next in line got its turn");
        drop((second, other_key));
        assert!(cache.flights.lock().unwrap().is_empty(), "a finished flight was kept");
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new();
        for i in 0..(CAPACITY as u64 + 10) {
            cache.put(format!("k{i}"), entry(1000 + i, Some(100_000)), 1000);
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get("k0", 1000).is_none(), "the oldest went first");
        assert!(cache.get(&format!("k{}", CAPACITY + 9), 1000).is_some());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
