//! `sign` and `sign_input`: the token cache in front, and one job on a worker behind it that
//! finds the key, mints (`jwt::mint`, which applies presets and policy), and signs.

use super::agent::Agent;
use super::audit::{Outcome, Peer, Record};
use super::cache::{Entry, TokenCache};
use super::outcome::{Done, Failed, Reply, Signed, Times, Use};
use crate::jwt::mint::{self, Ask, KeyView, MintError, Minted};
use crate::jwt::policy::Policy;
use crate::jwt::{self, preset};
use crate::token::uri::redact;
use crate::wire::{SignInputResult, SignRequest, SignResult};

impl Agent {
    pub(super) async fn sign_input(
        &self,
        key: String,
        input: String,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<Done, Failed> {
        record.key = Some(redact(&key).into_owned());
        self.check_unlocked()?;
        let (minted, token, label) = self
            .mint_and_sign(key, peer.uid, move |key, policy, uid, now| {
                mint::admit(input.clone(), key, policy, uid, now)
            })
            .await?;
        note(record, &minted);
        Ok(Done {
            reply: Reply::SignInput(SignInputResult { token }),
            audit: Some(Outcome::Signed),
            signed: Some(Use { label, cached: false }),
        })
    }

    pub(super) async fn sign(
        &self,
        request: SignRequest,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<Done, Failed> {
        let SignRequest { key, preset, header, claims, ttl, fresh } = request;
        record.key = Some(redact(&key).into_owned());
        record.preset = preset.as_ref().map(|p| p.as_str().to_owned());
        self.check_unlocked()?;
        // The key's default preset counts as given, so that `sign --key K` and
        // `sign --key K --preset P` share their tokens.
        let cached_preset = preset
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .or_else(|| self.policy.key(&key).and_then(|k| k.preset.clone()));
        // A preset whose tokens are never handed out twice (a fresh jti each) shares nothing:
        // no cache lookup and no single flight, so that such requests sign side by side.
        let shares = cached_preset
            .as_deref()
            .is_none_or(|name| self.policy.presets().get(name).map_or(true, |p| p.cache));
        let cache_key =
            TokenCache::key(&key, cached_preset.as_deref(), &header, &claims, ttl).filter(|_| shares);
        let now = jwt::now();
        if !fresh && let Some(entry) = cache_key.as_deref().and_then(|k| self.cache.get(k, now)) {
            return self.serve_cached(entry, peer, record, now);
        }
        // A miss: wait for any request signing the same thing now, then look again.
        let _flight = match cache_key.as_deref() {
            Some(k) if !fresh => {
                let flight = self.cache.flight(k).await;
                let now = jwt::now();
                if let Some(entry) = self.cache.get(k, now) {
                    return self.serve_cached(entry, peer, record, now);
                }
                Some(flight)
            }
            _ => None,
        };

        let (minted, token, label) = self
            .mint_and_sign(key, peer.uid, move |key, policy, uid, now| {
                let ask = Ask {
                    preset: preset.as_ref().map(|p| p.as_str()),
                    header: &header,
                    claims: &claims,
                    ttl,
                };
                mint::mint(ask, key, policy, uid, now)
            })
            .await?;
        note(record, &minted);
        let times = times(&minted);
        if let Some(cache_key) = cache_key.filter(|_| minted.cacheable()) {
            let entry = Entry {
                token: token.clone(),
                label: label.clone(),
                preset: minted.preset.clone(),
                header: minted.header,
                claims: minted.claims,
                iat: times.iat.unwrap_or(now),
                exp: times.exp,
                reuse: times.reuse,
            };
            self.cache.put(cache_key, entry, now);
        }
        Ok(Done {
            reply: Reply::Sign(Signed { result: SignResult { token, cached: false }, times }),
            audit: Some(Outcome::Signed),
            signed: Some(Use { label, cached: false }),
        })
    }

    /// The one worker job of both signing ops: find the key, mint, sign. Returns what was
    /// minted, the compact token and the key's label.
    async fn mint_and_sign<M>(
        &self,
        key: String,
        uid: u32,
        mint: M,
    ) -> Result<(Minted, String, String), Failed>
    where
        M: Fn(&KeyView, &Policy, u32, u64) -> Result<Minted, MintError> + Send + 'static,
    {
        let policy = self.policy.clone();
        let signed = self
            .on_token(move |token, session| {
                let key = token.key(session, &key)?;
                let minted = match mint(&key.view(), &policy, uid, jwt::now()) {
                    Ok(minted) => minted,
                    Err(refused) => return Ok(Err(refused)),
                };
                let signature = token.sign(session, &key, minted.alg, minted.input.as_bytes())?;
                let token = jwt::compact(&minted.input, &signature);
                Ok(Ok((minted, token, key.info.label.clone())))
            })
            .await?;
        Ok(signed?)
    }

    /// A cache hit. The cache is shared, so the asking uid is checked against the key's policy
    /// anew.
    fn serve_cached(&self, entry: Entry, peer: &Peer, record: &mut Record, now: u64) -> Result<Done, Failed> {
        let (input, _) = entry.token.rsplit_once('.').unwrap_or((&entry.token, ""));
        record.token(&entry.header, &entry.claims, input);
        let preset = self
            .policy
            .check(&entry.label, peer.uid, entry.preset.as_ref(), &entry.header, &entry.claims, now)
            .map_err(MintError::from)?;
        record.preset = preset.map(|p| p.name.clone());
        let times = Times { iat: Some(entry.iat), exp: entry.exp, reuse: entry.reuse };
        Ok(Done {
            reply: Reply::Sign(Signed { result: SignResult { token: entry.token, cached: true }, times }),
            audit: Some(Outcome::Cached),
            signed: Some(Use { label: entry.label, cached: true }),
        })
    }
}

/// Notes in the audit record what was signed.
fn note(record: &mut Record, minted: &Minted) {
    record.token(&minted.header, &minted.claims, &minted.input);
    record.preset = minted.preset.as_ref().map(|p| p.name.clone());
}

fn times(minted: &Minted) -> Times {
    let reuse = minted.preset.as_ref().map_or(preset::APNS_REUSE, |p| p.reuse()).secs();
    Times { iat: minted.iat, exp: minted.exp, reuse }
}
