//! Presets: a service's token rules as one definition. A preset fills in the header and claims
//! the service needs and refuses, before anything is signed, what the service would reject. The
//! built-in ones are in `apple.rs`; a config file defines more with `[presets.NAME]`, of the
//! same form. The same checks serve `sign --preset`, the policy on `sign-input`, and
//! `verify --preset`.

mod apple;
mod services;
pub use services::GOOGLE_TOKEN_URL;

use super::alg::Alg;
use super::time::{MAX_IAT_AHEAD_SECS, Ttl};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use apple::APNS_REUSE;

/// One service's rules. Every field but `name` and `rules` can be written in a config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The name `--preset` takes.
    #[serde(skip)]
    pub name: String,
    /// The `alg` the service takes; without it, the key's.
    pub alg: Option<Alg>,
    /// The header's `typ`, where the service wants one.
    pub typ: Option<String>,
    /// Whether the header carries a `kid` (the key's, unless the request gives one).
    #[serde(default = "yes")]
    pub kid: bool,
    /// Header members the preset sets; a request may not give them other values.
    #[serde(default)]
    pub header: Map<String, Value>,
    /// Claims the preset sets; a request may not give them other values.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Claims a token must carry, as non-empty strings.
    #[serde(default)]
    pub required: Vec<Required>,
    /// Claims a token must not carry.
    #[serde(default)]
    pub forbidden: Vec<String>,
    /// When given, the only claims a token may carry.
    pub only: Option<Vec<String>>,
    /// The lifetime a token gets when the request asks for none.
    pub ttl: Option<Ttl>,
    /// Whether tokens carry an `exp` at all (APNs tokens do not).
    #[serde(default = "yes")]
    pub exp: bool,
    /// The longest lifetime, bounding both `exp - iat` and `exp - now`.
    pub max_ttl: Option<Ttl>,
    /// How far `iat` is set back, against clocks that run a little ahead of the service's.
    pub backdate: Option<Ttl>,
    /// Whether a token may be handed out again while it is fresh (the token cache).
    #[serde(default = "yes")]
    pub cache: bool,
    /// How long a token without `exp` is handed out again; without it, [`APNS_REUSE`].
    pub reuse: Option<Ttl>,
    /// What only code can say: Apple's scopes, WeatherKit's header `id`, ...
    #[serde(skip)]
    pub rules: Vec<Rule>,
}

fn yes() -> bool {
    true
}

/// A claim a preset requires, with what it is for messages ("the bid claim (the app's bundle ID,
/// --bid) is required").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    pub claim: String,
    /// What it holds, in a few words.
    pub what: Option<String>,
}

impl Required {
    fn new(claim: &str, what: Option<&str>) -> Required {
        Required { claim: claim.to_owned(), what: what.map(str::to_owned) }
    }
}

impl<'de> Deserialize<'de> for Required {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Required, D::Error> {
        Ok(Required { claim: String::deserialize(d)?, what: None })
    }
}

/// What some rules take from the key: its fingerprint (Snowflake), its certificate's
/// thumbprint (Entra ID).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyFacts<'a> {
    pub fingerprint: Option<&'a str>,
    pub x5t_s256: Option<&'a str>,
}

/// The rules of the built-in presets that are more than fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// App Store Connect: a team key's tokens carry `iss`, an individual key's `sub: "user"`;
    /// not both, and the key's default `iss` is left out of the second.
    TeamOrIndividual,
    /// App Store Connect: `scope` is a list of requests; when every one is a GET of a
    /// long-lived resource, tokens may live 180 days.
    Scopes,
    /// WeatherKit: the header's `id` is `TEAMID.SERVICEID`, the `iss` and the `sub`.
    IdOfIssAndSub,
    /// `sub` is `iss` (a client or service account speaking for itself): filled in from `iss`.
    SubIsIss,
    /// A `jti` of 128 fresh random bits, so that the service can refuse a replay.
    FreshJti,
    /// Google: an OAuth grant (`scope`, joined by spaces, and the token endpoint as `aud`), or a
    /// self-signed JWT for one API (`aud` its URL, `sub` = `iss`); never both.
    GoogleScopeOrAud,
    /// Snowflake: `sub` is `ACCOUNT.USER` in capitals, `iss` that and the key's fingerprint.
    Snowflake,
    /// `aud` is one of these, or (with `url`) any https URL, as a Salesforce community's.
    AudOneOf {
        /// The audiences the service takes.
        audiences: &'static [&'static str],
        /// Whether another https URL is taken too.
        url: bool,
    },
    /// Firebase: a `uid` of 1 to 128 characters, and `claims`, if given, an object.
    FirebaseUid,
    /// Entra ID: the header's `x5t#S256` is the key's certificate's, `nbf` is `iat`, and `aud`
    /// a tenant's v2.0 token endpoint.
    Entra,
    /// A claim that, when present, is a list of strings (MusicKit's `origin`).
    StringList {
        claim: &'static str,
        /// What its items are, for messages.
        items: &'static str,
    },
}

/// A rule a token broke, named so the caller knows what the service would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{preset}: {rule}")]
pub struct PresetError {
    pub preset: String,
    /// The rule, as a sentence.
    pub rule: String,
}

impl Preset {
    fn error(&self, rule: impl Into<String>) -> PresetError {
        PresetError { preset: self.name.clone(), rule: rule.into() }
    }

    /// A preset called `name` with the defaults a `[presets.NAME]` table has: the key's alg and
    /// kid, `iat` now, an `exp`, cached; the built-in definitions start from it.
    fn named(name: &str) -> Preset {
        Preset {
            name: name.to_owned(),
            alg: None,
            typ: None,
            kid: true,
            header: Map::new(),
            claims: Map::new(),
            required: Vec::new(),
            forbidden: Vec::new(),
            only: None,
            ttl: None,
            exp: true,
            max_ttl: None,
            backdate: None,
            cache: true,
            reuse: None,
            rules: Vec::new(),
        }
    }

    /// How long a token without `exp` is handed out again.
    pub fn reuse(&self) -> Ttl {
        self.reuse.unwrap_or(APNS_REUSE)
    }

    /// Whether a key's configured default `iss` goes into these claims.
    pub fn takes_default_iss(&self, claims: &Map<String, Value>) -> bool {
        !(self.rules.contains(&Rule::TeamOrIndividual)
            && claims.get("sub").and_then(Value::as_str) == Some("user"))
    }

    /// Completes a token from what the request gave: `alg` (refusing another), `kid` (`key_kid`
    /// unless given), `typ`, the fixed header members and claims, `iat` (now, less the
    /// backdate) and `exp` (from `ttl`, else the preset's); then [`check`](Self::check)s it.
    pub fn fill(
        &self,
        header: &mut Map<String, Value>,
        claims: &mut Map<String, Value>,
        ttl: Option<Ttl>,
        key_kid: Option<&str>,
        key: KeyFacts<'_>,
        now: u64,
    ) -> Result<(), PresetError> {
        if let Some(alg) = self.alg {
            match header.get("alg") {
                Some(given) if *given != alg.name() => {
                    return Err(self.error(format!("tokens are signed with {alg}, not {given}")));
                }
                _ => {
                    header.insert("alg".into(), Value::from(alg.name()));
                }
            }
        }
        if self.kid && !header.contains_key("kid") {
            let kid = key_kid.ok_or_else(|| self.error("the token needs a kid (--kid)"))?;
            header.insert("kid".into(), Value::from(kid));
        }
        if let Some(typ) = &self.typ {
            header.entry("typ").or_insert_with(|| Value::from(typ.as_str()));
        }
        for (name, value) in &self.header {
            header.entry(name.as_str()).or_insert_with(|| value.clone());
        }
        for time in ["iat", "exp"] {
            if claims.contains_key(time) {
                return Err(self.error(format!("the agent sets {time}; give a ttl instead")));
            }
        }
        let iat = now.saturating_sub(self.backdate.map_or(0, Ttl::secs));
        claims.insert("iat".into(), Value::from(iat));
        match (ttl.or(self.ttl), self.exp) {
            (Some(_), false) => {
                return Err(self.error(format!(
                    "{} tokens have no exp; the agent hands out each for up to {}",
                    self.name,
                    self.reuse()
                )));
            }
            (Some(ttl), true) => {
                let exp = iat
                    .checked_add(ttl.secs())
                    .ok_or_else(|| self.error("iat + ttl is past the end of time"))?;
                claims.insert("exp".into(), Value::from(exp));
            }
            (None, _) => {}
        }
        for (name, value) in &self.claims {
            claims.entry(name.as_str()).or_insert_with(|| value.clone());
        }
        for rule in &self.rules {
            rule.fill(header, claims, key).map_err(|rule| self.error(rule))?;
        }
        self.check(header, claims, now)
    }

    /// Checks a finished token's header and claims against the service's rules at `now`: an
    /// `iat` at most [`MAX_IAT_AHEAD_SECS`] ahead, and a cap on both `exp - iat` and `exp - now`,
    /// so that a caller's `iat` cannot stretch a token's life.
    pub fn check(
        &self,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(), PresetError> {
        if let Some(alg) = self.alg
            && header.get("alg").and_then(Value::as_str) != Some(alg.name())
        {
            return Err(self.error(format!("the header's alg must be {alg}")));
        }
        if self.kid && non_empty(header, "kid").is_none() {
            return Err(self.error("the header needs a kid: the key's ID at the service"));
        }
        for (name, value) in &self.header {
            if header.get(name) != Some(value) {
                return Err(self.error(format!("the header's {name} must be {value}")));
            }
        }
        let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| self.error("iat must be set"))?;
        if iat > now.saturating_add(MAX_IAT_AHEAD_SECS) {
            return Err(self.error(format!(
                "iat is {} s ahead of the agent's clock; at most {MAX_IAT_AHEAD_SECS} s is allowed",
                iat - now
            )));
        }
        let exp = claims.get("exp").map(|exp| exp.as_u64().ok_or_else(|| self.error("exp must be a number")));
        let exp = exp.transpose()?;
        if exp.is_some_and(|exp| exp <= iat) {
            return Err(self.error("exp must be after iat"));
        }
        for Required { claim, what } in &self.required {
            if non_empty(claims, claim).is_none() {
                return Err(self.error(match what {
                    Some(what) => format!("the {claim} claim ({what}) is required"),
                    None => format!("the {claim} claim is required"),
                }));
            }
        }
        for (name, value) in &self.claims {
            if claims.get(name) != Some(value) {
                return Err(self.error(format!("{name} must be {value}")));
            }
        }
        if !self.exp && claims.contains_key("exp") {
            return Err(self.error(format!("{} tokens have no exp", self.name)));
        }
        if let Some(name) = self.forbidden.iter().find(|name| claims.contains_key(name.as_str())) {
            return Err(self.error(format!("{} tokens have no {name}", self.name)));
        }
        if let Some(only) = &self.only
            && let Some(extra) = claims.keys().find(|k| !only.contains(k))
        {
            return Err(self.error(format!("{} tokens carry {} only, not {extra}", self.name, list(only))));
        }
        let mut cap = self.max_ttl.map(|max| (max.secs(), None));
        for rule in &self.rules {
            rule.check(header, claims).map_err(|rule| self.error(rule))?;
            if let Some(raised) = rule.cap(claims) {
                cap = Some(raised);
            }
        }
        if self.exp && exp.is_none() {
            return Err(self.error("the token needs an exp"));
        }
        if let (Some((max, why)), Some(exp)) = (cap, exp) {
            // The longer of exp - iat and exp - now: an iat in the past makes the first longer, one
            // in the future the second.
            let lifetime = exp.saturating_sub(iat).max(exp.saturating_sub(now));
            if lifetime > max {
                return Err(self.error(format!(
                    "the lifetime (exp - iat, or exp - now if longer) is {} and may be at most {}{}",
                    human(lifetime),
                    human(max),
                    why.map(|why| format!(" ({why})")).unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

impl Rule {
    fn fill(
        self,
        header: &mut Map<String, Value>,
        claims: &mut Map<String, Value>,
        key: KeyFacts<'_>,
    ) -> Result<(), String> {
        match self {
            Rule::IdOfIssAndSub => {
                if let (Some(iss), Some(sub)) = (non_empty(claims, "iss"), non_empty(claims, "sub")) {
                    header.entry("id").or_insert_with(|| Value::from(format!("{iss}.{sub}")));
                }
            }
            Rule::SubIsIss => {
                if let Some(iss) = non_empty(claims, "iss").map(str::to_owned) {
                    claims.entry("sub").or_insert_with(|| Value::from(iss));
                }
            }
            Rule::FreshJti => {
                if claims.contains_key("jti") {
                    return Err("the agent sets jti, fresh for every assertion".into());
                }
                claims.insert("jti".into(), Value::from(services::fresh_jti()?));
            }
            Rule::GoogleScopeOrAud => services::google_fill(claims),
            Rule::Snowflake => services::snowflake_fill(claims, key.fingerprint)?,
            Rule::Entra => services::entra_fill(header, claims, key.x5t_s256)?,
            _ => {}
        }
        Ok(())
    }

    fn check(self, header: &Map<String, Value>, claims: &Map<String, Value>) -> Result<(), String> {
        match self {
            Rule::TeamOrIndividual => match (claims.get("iss"), claims.get("sub")) {
                (Some(_), None) if non_empty(claims, "iss").is_some() => Ok(()),
                (Some(_), None) => Err("the iss claim (issuer ID) must not be empty".into()),
                (None, Some(sub)) if sub == "user" => Ok(()),
                (None, Some(_)) => Err("sub may only be \"user\" (individual keys)".into()),
                (Some(_), Some(_)) => {
                    Err("team keys have iss, individual keys sub \"user\"; not both".into())
                }
                (None, None) => Err("the iss claim (issuer ID) is required, or --sub user".into()),
            },
            Rule::Scopes => apple::scopes(claims).map(drop),
            Rule::IdOfIssAndSub => {
                let want = format!(
                    "{}.{}",
                    non_empty(claims, "iss").unwrap_or(""),
                    non_empty(claims, "sub").unwrap_or("")
                );
                if non_empty(header, "id") == Some(want.as_str()) {
                    Ok(())
                } else {
                    Err(format!("the header's id must be TEAMID.SERVICEID, {want:?}"))
                }
            }
            Rule::SubIsIss => match (non_empty(claims, "iss"), non_empty(claims, "sub")) {
                (Some(iss), Some(sub)) if iss == sub => Ok(()),
                (Some(_), Some(_)) => Err("sub must be the same as iss (the client's own ID)".into()),
                _ => Err("iss and sub (the client ID) are required".into()),
            },
            Rule::FreshJti => match non_empty(claims, "jti") {
                Some(jti) if jti.len() >= 16 => Ok(()),
                _ => Err("the token needs a jti of at least 16 characters, unique per assertion".into()),
            },
            Rule::GoogleScopeOrAud => services::google_check(claims),
            Rule::Snowflake => services::snowflake_check(claims),
            Rule::Entra => services::entra_check(header, claims),
            Rule::AudOneOf { audiences, url } => services::aud_one_of(claims, audiences, url),
            Rule::FirebaseUid => services::firebase_check(claims),
            Rule::StringList { claim, items } => match claims.get(claim) {
                Some(value) if !value.as_array().is_some_and(|v| v.iter().all(Value::is_string)) => {
                    Err(format!("{claim} must be a list of {items}"))
                }
                _ => Ok(()),
            },
        }
    }

    /// A cap this rule sets instead of the preset's, with why.
    fn cap(self, claims: &Map<String, Value>) -> Option<(u64, Option<&'static str>)> {
        match self {
            Rule::Scopes => Some(apple::scope_cap(claims)),
            _ => None,
        }
    }
}

/// The presets a daemon knows: the built-in ones and those its config defines.
#[derive(Debug, Clone)]
pub struct Presets {
    by_name: BTreeMap<String, Arc<Preset>>,
}

impl Default for Presets {
    fn default() -> Self {
        Presets::builtin()
    }
}

impl Presets {
    pub fn builtin() -> Presets {
        let all = apple::presets().into_iter().chain(services::presets());
        let by_name = all.map(|p| (p.name.clone(), Arc::new(p))).collect();
        Presets { by_name }
    }

    /// The built-in presets and `defined` (`[presets.NAME]` of a config file), checked.
    pub fn with(defined: BTreeMap<String, Preset>) -> Result<Presets, String> {
        let mut presets = Presets::builtin();
        for (name, mut preset) in defined {
            check_name(&name)?;
            if presets.by_name.contains_key(&name) {
                return Err(format!("presets.{name}: a built-in preset has that name; pick another"));
            }
            if let (Some(ttl), Some(max)) = (preset.ttl, preset.max_ttl)
                && ttl > max
            {
                return Err(format!("presets.{name}: ttl {ttl} is longer than max_ttl {max}"));
            }
            if !preset.exp && (preset.ttl.is_some() || preset.max_ttl.is_some()) {
                return Err(format!("presets.{name}: exp = false, so neither ttl nor max_ttl applies"));
            }
            preset.name = name.clone();
            presets.by_name.insert(name, Arc::new(preset));
        }
        Ok(presets)
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Preset>, String> {
        self.by_name.get(name).ok_or_else(|| format!("unknown preset {name:?} (presets: {})", self.names()))
    }

    /// Every name, for messages.
    pub fn names(&self) -> String {
        self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Refuses a preset name that is not lowercase letters, digits and dashes (what `--preset` and
/// the wire take).
pub fn check_name(name: &str) -> Result<(), String> {
    let good = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if good {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a preset name: lowercase letters, digits and dashes, as app-store-connect"
        ))
    }
}

const fn ttl(secs: u64) -> Ttl {
    Ttl::of(secs)
}

/// Claims of fixed string values, for the built-in definitions.
fn fixed(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), Value::from(*value))).collect()
}

fn non_empty<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn list(names: &[String]) -> String {
    match names {
        [] => "nothing".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn human(secs: u64) -> String {
    Ttl::from_secs(secs).map_or_else(|| format!("{secs}s"), |ttl| ttl.to_string())
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_defines_a_preset_of_the_same_form() {
        let toml = r#"
            alg = "RS256"
            typ = "JWT"
            kid = false
            claims = { aud = "https://auth.example.com/token" }
            required = ["iss", "sub"]
            forbidden = ["nbf"]
            ttl = "5m"
            max_ttl = "1h"
            backdate = "60s"
            cache = false
        "#;
        let preset: Preset = toml::from_str(toml).unwrap();
        let presets = Presets::with(BTreeMap::from([("example".to_owned(), preset)])).unwrap();
        let preset = presets.get("example").unwrap();
        let (mut header, mut claims) = (Map::new(), Map::new());
        claims.insert("iss".into(), Value::from("client"));
        claims.insert("sub".into(), Value::from("client"));
        let now = 1_800_000_000;
        preset.fill(&mut header, &mut claims, None, Some("k"), KeyFacts::default(), now).unwrap();
        assert_eq!(Value::Object(header), serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(claims["iat"], now - 60);
        assert_eq!(claims["exp"], now - 60 + 300);
        assert_eq!(claims["aud"], "https://auth.example.com/token");
        assert!(!preset.cache);
        let (mut header, mut claims) = (Map::new(), Map::new());
        claims.insert("iss".into(), Value::from("client"));
        let error = preset.fill(&mut header, &mut claims, None, None, KeyFacts::default(), now).unwrap_err();
        assert_eq!(error.to_string(), "example: the sub claim is required");
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from("c"));
        claims.insert("sub".into(), Value::from("c"));
        let error = preset.fill(
            &mut Map::new(),
            &mut claims,
            Some(Ttl::from_secs(7200).unwrap()),
            None,
            KeyFacts::default(),
            now,
        );
        assert!(error.unwrap_err().to_string().contains("at most 1h"));
    }

    #[test]
    fn config_presets_are_checked() {
        let preset = |toml: &str| toml::from_str::<Preset>(toml).unwrap();
        let with = |name: &str, p: Preset| Presets::with(BTreeMap::from([(name.to_owned(), p)]));
        assert!(with("apns", preset("")).unwrap_err().contains("built-in"));
        assert!(with("Bad Name", preset("")).unwrap_err().contains("not a preset name"));
        assert!(with("x", preset("ttl = \"2h\"\nmax_ttl = \"1h\"")).unwrap_err().contains("longer than"));
        assert!(with("x", preset("exp = false\nttl = \"1h\"")).unwrap_err().contains("exp = false"));
        assert!(toml::from_str::<Preset>("colour = 1").unwrap_err().to_string().contains("unknown field"));
        assert!(toml::from_str::<Preset>("alg = \"HS256\"").unwrap_err().to_string().contains("HS256"));
    }
}
