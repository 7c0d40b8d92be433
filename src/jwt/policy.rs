//! Who may use the agent and what each key may sign: the `[daemon] allowed_uids`, `[keys.LABEL]`
//! and `[presets.NAME]` rules of the config, enforced on every request, `sign-input` included.

use super::preset::{Preset, Presets};
use super::time::MAX_IAT_AHEAD_SECS;
use crate::config::{Config, KeyPolicy};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    own_uid: u32,
    allowed_uids: Vec<u32>,
    keys: BTreeMap<String, KeyPolicy>,
    presets: Presets,
}

/// Why the policy refuses a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl Policy {
    /// The rules of `config` for a daemon running as `own_uid`.
    pub fn new(own_uid: u32, config: &Config) -> Result<Policy, String> {
        let presets = Presets::with(config.presets.clone())?;
        for (label, key) in &config.keys {
            for name in key.preset.iter().chain(key.presets.iter().flatten()) {
                presets.get(name).map_err(|e| format!("keys.{label}: {e}"))?;
            }
        }
        for sink in &config.sinks {
            if let Some(name) = &sink.preset {
                presets.get(name.as_str()).map_err(|e| format!("the sink {}: {e}", sink.path.display()))?;
            }
        }
        Ok(Policy {
            own_uid,
            allowed_uids: config.daemon.allowed_uids.clone(),
            keys: config.keys.clone(),
            presets,
        })
    }

    /// Whether a peer of this uid may connect at all: the daemon's own uid, the daemon's
    /// `allowed_uids`, or a uid some key allows.
    pub fn admits(&self, uid: u32) -> bool {
        uid == self.own_uid
            || self.allowed_uids.contains(&uid)
            || self.keys.values().any(|k| k.allowed_uids.as_ref().is_some_and(|uids| uids.contains(&uid)))
    }

    pub fn owner(&self) -> u32 {
        self.own_uid
    }

    /// Whether this uid is the daemon's own, which alone may create keys and stop the agent.
    pub fn is_owner(&self, uid: u32) -> bool {
        uid == self.own_uid
    }

    /// Whether `uid` may use the key labelled `label` at all: the owner any key, another uid
    /// one whose `allowed_uids` (else the daemon's) list it. Others do not even see the key.
    pub fn may_use(&self, label: &str, uid: u32) -> bool {
        uid == self.own_uid
            || match self.keys.get(label).and_then(|k| k.allowed_uids.as_ref()) {
                Some(uids) => uids.contains(&uid),
                None => self.allowed_uids.contains(&uid),
            }
    }

    /// The config of the key labelled `label`, if it has one.
    pub fn key(&self, label: &str) -> Option<&KeyPolicy> {
        self.keys.get(label)
    }

    /// The presets known: built in, and defined by the config.
    pub fn presets(&self) -> &Presets {
        &self.presets
    }

    /// Checks a token the key labelled `label` is about to sign for `uid` at `now`. `preset` is
    /// the one the request used; for `sign-input` (`None`) the token must meet one the key
    /// allows. Returns the preset the token meets, if any was asked or found.
    pub fn check(
        &self,
        label: &str,
        uid: u32,
        preset: Option<&Arc<Preset>>,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Option<Arc<Preset>>, PolicyError> {
        let refuse = |why: String| Err(PolicyError(why));
        if !self.may_use(label, uid) {
            return refuse(format!("uid {uid} may not use the key {label:?}"));
        }
        let Some(key) = self.keys.get(label) else { return Ok(preset.cloned()) };
        let preset = match (&key.presets, preset) {
            (None, preset) => preset.cloned(),
            (Some(allowed), Some(preset)) if allowed.contains(&preset.name) => Some(preset.clone()),
            (Some(allowed), Some(preset)) => {
                return refuse(format!(
                    "the key {label:?} may not sign {preset} tokens, only {}",
                    allowed.join(", ")
                ));
            }
            (Some(allowed), None) => {
                let mut first_error = None;
                let met = allowed.iter().filter_map(|name| self.presets.get(name).ok()).find(|p| {
                    match p.check(header, claims, now) {
                        Ok(()) => true,
                        Err(e) => {
                            first_error.get_or_insert(e);
                            false
                        }
                    }
                });
                match met {
                    Some(preset) => Some(preset.clone()),
                    None => {
                        let why = first_error.map(|e| e.to_string()).unwrap_or_default();
                        return refuse(format!(
                            "the key {label:?} signs only {} tokens, and this is not one ({why})",
                            allowed.join(", ")
                        ));
                    }
                }
            }
        };
        if let Some(allowed) = &key.allowed_aud {
            let auds: Vec<&str> = match claims.get("aud") {
                Some(Value::String(aud)) => vec![aud.as_str()],
                Some(Value::Array(auds)) => auds.iter().map(|a| a.as_str().unwrap_or("")).collect(),
                _ => Vec::new(),
            };
            if auds.is_empty() || auds.iter().any(|aud| !allowed.iter().any(|a| a == aud)) {
                return refuse(format!("the key {label:?} signs only for aud {}", allowed.join(", ")));
            }
        }
        if let Some(max) = key.max_ttl {
            check_lifetime(label, max.secs(), claims, now).map_err(PolicyError)?;
        }
        Ok(preset)
    }
}

/// `max_ttl`: an `exp` at most `max` after both `iat` and now, and an `iat` at most
/// [`MAX_IAT_AHEAD_SECS`] ahead; a caller's `iat` cannot stretch a token's life.
fn check_lifetime(label: &str, max: u64, claims: &Map<String, Value>, now: u64) -> Result<(), String> {
    let seconds = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            format!("the key {label:?} signs only tokens whose {name} is a whole number of seconds")
        }),
    };
    let Some(exp) = seconds("exp")? else {
        return Err(format!("the key {label:?} signs only tokens with an exp (at most {max} s)"));
    };
    let iat = seconds("iat")?;
    if let Some(iat) = iat
        && iat > now.saturating_add(MAX_IAT_AHEAD_SECS)
    {
        return Err(format!(
            "the key {label:?} signs no token issued in the future: iat is {} s ahead (at most {MAX_IAT_AHEAD_SECS})",
            iat - now
        ));
    }
    let lifetime = exp.saturating_sub(now).max(iat.map_or(0, |iat| exp.saturating_sub(iat)));
    if lifetime > max {
        return Err(format!(
            "the key {label:?} signs tokens of at most {max} s; this one lives {lifetime} s"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 500;

    fn policy(toml: &str) -> Policy {
        Policy::new(0, &toml::from_str(toml).unwrap()).unwrap()
    }

    fn asc_policy() -> Policy {
        policy(
            r#"
            [daemon]
            allowed_uids = [1001]
            [keys.asc]
            presets = ["app-store-connect"]
            allowed_aud = ["appstoreconnect-v1"]
            max_ttl = "20m"
            allowed_uids = [1002]
        "#,
        )
    }

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn uids() {
        let p = asc_policy();
        assert!(p.admits(0) && p.admits(1001) && p.admits(1002) && !p.admits(1003));
        let header = object(json!({"alg": "ES256", "kid": "k", "typ": "JWT"}));
        let claims = object(json!({"iss": "t", "iat": 100, "exp": 1000, "aud": "appstoreconnect-v1"}));
        assert!(p.check("asc", 1002, None, &header, &claims, NOW).is_ok());
        assert!(p.check("asc", 1001, None, &header, &claims, NOW).unwrap_err().0.contains("uid 1001"));
        assert!(p.check("other", 1001, None, &header, &claims, NOW).is_ok());
        assert!(p.check("other", 1002, None, &header, &claims, NOW).is_err());
    }

    #[test]
    fn presets_audiences_and_lifetimes() {
        let p = asc_policy();
        let header = object(json!({"alg": "ES256", "kid": "k", "typ": "JWT"}));
        let good = object(json!({"iss": "t", "iat": 100, "exp": 1000, "aud": "appstoreconnect-v1"}));
        let met = p.check("asc", 0, None, &header, &good, NOW).unwrap();
        assert_eq!(met.map(|p| p.name.clone()).as_deref(), Some("app-store-connect"));
        let apns = p.presets().get("apns").unwrap();
        assert!(
            p.check("asc", 0, Some(apns), &header, &good, NOW).unwrap_err().0.contains("may not sign apns")
        );
        let long = object(json!({"iss": "t", "iat": 100, "exp": 100 + 1201, "aud": "appstoreconnect-v1"}));
        assert!(p.check("asc", 0, None, &header, &long, NOW).is_err());
        let plain = object(json!({"iss": "t", "iat": 100}));
        assert!(
            p.check("asc", 0, None, &header, &plain, NOW)
                .unwrap_err()
                .0
                .contains("signs only app-store-connect")
        );
        let other_aud =
            object(json!({"iss": "t", "iat": 100, "exp": 1000, "aud": ["appstoreconnect-v1", "x"]}));
        let only_aud = policy("[keys.k]\nallowed_aud = [\"appstoreconnect-v1\"]");
        assert!(only_aud.check("k", 0, None, &header, &other_aud, NOW).unwrap_err().0.contains("aud"));
        assert!(only_aud.check("k", 0, None, &header, &plain, NOW).unwrap_err().0.contains("aud"));
    }

    #[test]
    fn a_callers_iat_cannot_stretch_a_lifetime() {
        let p = policy("[keys.k]\nmax_ttl = \"20m\"");
        let header = object(json!({"alg": "ES256"}));
        let now: u64 = 1_800_000_000;
        let check = |claims: Value| p.check("k", 0, None, &header, &object(claims), now).map_err(|e| e.0);
        assert!(check(json!({"iat": now, "exp": now + 1200})).is_ok());
        assert!(check(json!({"iat": now + 30, "exp": now + 1200})).is_ok(), "a little clock skew");
        // Ten years ahead, with exp = iat + 20m.
        let later = now + 10 * 365 * 86400;
        assert!(check(json!({"iat": later, "exp": later + 1200})).unwrap_err().contains("in the future"));
        // iat at the end of time and exp in 2100: exp - iat saturates to 0.
        let error = check(json!({"iat": u64::MAX, "exp": 4_102_444_800u64})).unwrap_err();
        assert!(error.contains("in the future"), "{error}");
        assert!(check(json!({"exp": 4_102_444_800u64})).unwrap_err().contains("at most 1200 s"));
        assert!(check(json!({"iat": 1.5, "exp": now + 60})).unwrap_err().contains("whole number"));
        assert!(check(json!({"iat": -1, "exp": now + 60})).unwrap_err().contains("whole number"));
    }

    #[test]
    fn a_key_may_name_only_known_presets() {
        let error = Policy::new(0, &toml::from_str("[keys.k]\npresets = [\"nope\"]").unwrap()).unwrap_err();
        assert!(error.contains("keys.k") && error.contains("unknown preset \"nope\""), "{error}");
        let with_own = "[presets.mine]\nalg = \"ES256\"\n[keys.k]\npreset = \"mine\"\npresets = [\"mine\"]";
        assert!(Policy::new(0, &toml::from_str(with_own).unwrap()).is_ok());
    }
}
