//! `sign` and `sign_input`: presets, policy, the token cache and the audit record around one
//! signature made inside the token.

use super::agent::Agent;
use crate::daemon::audit::{Outcome, Peer, Record};
use crate::daemon::cache::{Entry, TokenCache};
use crate::jwt;
use crate::jwt::preset::Preset;
use crate::token::TokenError;
use crate::token::uri::redact;
use crate::wire::WireError;
use crate::wire::{SignInputResult, SignRequest, SignResult};
use serde_json::{Map, Value};

/// A token just signed, with what it was made of.
struct Minted {
    token: String,
    label: String,
    preset: Option<Preset>,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl Agent {
    pub(super) async fn sign_input(
        &self,
        key: String,
        input: String,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<SignInputResult, WireError> {
        record.key = Some(redact(&key).into_owned());
        self.check_unlocked()?;
        let parsed = jwt::parse_signing_input(&input).map_err(|e| WireError::bad_request(e.to_string()))?;
        record.token(&parsed.header, &parsed.claims, &input);
        let (policy, uid) = (self.policy.clone(), peer.uid);
        let (token, label, preset) = self
            .on_token(move |token, session| {
                let key = token.key(session, &key)?;
                let label = &key.info.label;
                // The policy reads the claims of what it is asked to sign.
                let preset = policy
                    .check(label, uid, None, &parsed.header, &parsed.claims, jwt::now())
                    .map_err(TokenError::Denied)?;
                let signature = token.sign(session, &key, parsed.alg, input.as_bytes())?;
                Ok((jwt::compact(&input, &signature), label.clone(), preset))
            })
            .await?;
        record.preset = preset.map(Preset::name);
        record.outcome = Some(Outcome::Signed);
        self.commit(record)?;
        self.count_signature(&label, false);
        // Only what was signed counts as use for --lock-after, not refused or malformed asks.
        self.touch();
        Ok(SignInputResult { token })
    }

    pub(super) async fn sign(
        &self,
        request: SignRequest,
        peer: &Peer,
        record: &mut Record,
    ) -> Result<SignResult, WireError> {
        let SignRequest { key, preset, header, claims, ttl, fresh } = request;
        record.key = Some(redact(&key).into_owned());
        self.check_unlocked()?;
        let preset = preset.map(|name| name.parse::<Preset>()).transpose().map_err(WireError::bad_request)?;
        record.preset = preset.map(Preset::name);
        let ttl_secs = ttl
            .as_deref()
            .map(crate::jwt::time::parse)
            .transpose()
            .map_err(WireError::bad_request)?
            .map(|d| d.as_secs());
        // The key's default preset counts as given, so that `sign --key K` and
        // `sign --key K --preset P` share their tokens.
        let cached_preset = preset.or_else(|| self.policy.key(&key).and_then(|k| k.preset));
        let cache_key = TokenCache::key(&key, cached_preset, &header, &claims, ttl.as_deref());
        let now = jwt::now();
        if !fresh && let Some(entry) = cache_key.as_deref().and_then(|k| self.cache.get(k, now)) {
            // Shared across clients, so the asking uid is checked against the key's policy anew.
            let (input, _) = entry.token.rsplit_once('.').unwrap_or_default();
            record.token(&entry.header, &entry.claims, input);
            self.policy
                .check(&entry.label, peer.uid, entry.preset, &entry.header, &entry.claims, now)
                .map_err(WireError::denied)?;
            record.preset = entry.preset.map(Preset::name);
            record.outcome = Some(Outcome::Cached);
            self.commit(record)?;
            self.count_signature(&entry.label, true);
            self.touch();
            return Ok(SignResult { token: entry.token, cached: true });
        }

        let (policy, uid) = (self.policy.clone(), peer.uid);
        let minted = self
            .on_token(move |token, session| {
                let key = token.key(session, &key)?;
                let label = key.info.label.clone();
                let defaults = policy.key(&label);
                let preset = preset.or(defaults.and_then(|d| d.preset));
                let (mut header, mut claims) = (header.clone(), claims.clone());
                if let Some(defaults) = defaults {
                    if let Some(kid) = &defaults.kid {
                        header.entry("kid").or_insert_with(|| Value::from(kid.as_str()));
                    }
                    // An individual App Store Connect key has sub "user" and no iss.
                    if let Some(iss) = &defaults.iss
                        && claims.get("sub").and_then(Value::as_str) != Some("user")
                    {
                        claims.entry("iss").or_insert_with(|| Value::from(iss.as_str()));
                    }
                }
                match preset {
                    Some(preset) => preset
                        .fill(&mut header, &mut claims, ttl_secs, key.info.kid.as_deref(), jwt::now())
                        .map_err(|e| TokenError::Refused(e.to_string()))?,
                    None => plain(&mut header, &mut claims, ttl_secs).map_err(TokenError::Refused)?,
                }
                let alg = match header.get("alg") {
                    None => key.alg,
                    Some(_) => jwt::header_alg(&header).map_err(|e| TokenError::Refused(e.to_string()))?,
                };
                header.insert("alg".into(), Value::from(alg.name()));
                jwt::check_header(&header).map_err(|e| TokenError::Refused(e.to_string()))?;
                let preset = policy
                    .check(&label, uid, preset, &header, &claims, jwt::now())
                    .map_err(TokenError::Denied)?;
                let input = jwt::encode_signing_input(&header, &claims);
                let signature = token.sign(session, &key, alg, input.as_bytes())?;
                Ok(Minted { token: jwt::compact(&input, &signature), label, preset, header, claims })
            })
            .await?;
        let (input, _) = minted.token.rsplit_once('.').unwrap_or_default();
        record.token(&minted.header, &minted.claims, input);
        record.preset = minted.preset.map(Preset::name);
        record.outcome = Some(Outcome::Signed);
        self.commit(record)?;
        self.count_signature(&minted.label, false);
        self.touch();
        if let Some(cache_key) = cache_key {
            let (iat, exp) = (
                minted.claims.get("iat").and_then(Value::as_u64),
                minted.claims.get("exp").and_then(Value::as_u64),
            );
            let entry = Entry {
                token: minted.token.clone(),
                label: minted.label,
                preset: minted.preset,
                header: minted.header,
                claims: minted.claims,
                iat: iat.unwrap_or(now),
                exp,
            };
            self.cache.put(cache_key, entry, now);
        }
        Ok(SignResult { token: minted.token, cached: false })
    }
}

/// A plain JWT: `typ: JWT` unless given, `iat` now unless given, `exp` = `iat` + ttl.
fn plain(
    header: &mut Map<String, Value>,
    claims: &mut Map<String, Value>,
    ttl: Option<u64>,
) -> Result<(), String> {
    header.entry("typ").or_insert_with(|| Value::from("JWT"));
    let iat = match claims.get("iat") {
        None => {
            let now = jwt::now();
            claims.insert("iat".into(), Value::from(now));
            now
        }
        Some(value) => value.as_u64().ok_or("`iat` must be a whole number of seconds since 1970")?,
    };
    if let Some(ttl) = ttl {
        if claims.contains_key("exp") {
            return Err("give either `exp` or a ttl, not both".into());
        }
        let exp = iat.checked_add(ttl).ok_or("`iat` plus the ttl is past the end of time")?;
        claims.insert("exp".into(), Value::from(exp));
    }
    Ok(())
}
