//! The minting step: from a request, the key's public view, the policy, the peer's uid and the
//! time, the signing input to sign, with what the cache, the audit log and the sinks need to know
//! of it; or why not. It is pure: a daemon worker finds the key, mints, and signs.

use super::alg::Alg;
use super::jws::{self, JoseError};
use super::policy::{Policy, PolicyError};
use super::preset::{KeyFacts, Preset, PresetError};
use super::time::Ttl;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What minting needs to know of a key: no handle, nothing secret.
#[derive(Debug, Clone, Copy)]
pub struct KeyView<'a> {
    /// `CKA_LABEL`, which the policy's `[keys.LABEL]` goes by.
    pub label: &'a str,
    /// The key's kid, which tokens carry unless asked otherwise.
    pub kid: Option<&'a str>,
    /// The algorithm tokens get when nothing else says.
    pub alg: Alg,
    /// Every algorithm the key can sign.
    pub algs: &'a [Alg],
    /// `SHA256:` and the base64 SHA-256 of the public key's SPKI, as `keys` shows it.
    pub fingerprint: Option<&'a str>,
    /// The `iss` stored with the key (a Google service account's `client_email`).
    pub iss: Option<&'a str>,
    /// `x5t#S256` of the key's certificate on the token.
    pub x5t_s256: Option<&'a str>,
}

/// A `sign` request's content.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The preset asked for; without it, the key's default one, if any.
    pub preset: Option<&'a str>,
    pub header: &'a Map<String, Value>,
    pub claims: &'a Map<String, Value>,
    pub ttl: Option<Ttl>,
}

/// Signing input ready for the token, and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Minted {
    pub alg: Alg,
    /// `BASE64URL(header).BASE64URL(claims)`.
    pub input: String,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `iat`, when it is a number of seconds.
    pub iat: Option<u64>,
    /// `exp`, when it is a number of seconds.
    pub exp: Option<u64>,
    /// The preset the token meets, if one was asked for or the policy found one.
    pub preset: Option<Arc<Preset>>,
}

impl Minted {
    /// Whether the token may be handed out again (its preset allows it).
    pub fn cacheable(&self) -> bool {
        self.preset.as_ref().is_none_or(|p| p.cache)
    }
}

/// Why nothing is minted. Each is a refusal of the request, not a failure of the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The signing input or a header is not what the agent signs.
    #[error("{0}")]
    Input(#[from] JoseError),
    #[error("{0}")]
    Preset(#[from] PresetError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The request contradicts itself or names what does not exist.
    #[error("{0}")]
    Request(String),
    /// The key cannot make signatures of the `alg` asked for.
    #[error("the key {key:?} signs {can}, not {asked}")]
    WrongAlg {
        key: String,
        asked: Alg,
        /// The algorithms the key signs.
        can: String,
    },
}

/// Mints a `sign` request for `uid` at `now`: the key's configured defaults (preset, kid, iss),
/// the preset's fill and check (or a plain JWT's `typ`, `iat` and `exp`), the algorithm, the
/// header checks, and the policy.
pub fn mint(ask: Ask, key: &KeyView, policy: &Policy, uid: u32, now: u64) -> Result<Minted, MintError> {
    let defaults = policy.key(key.label);
    let preset = match ask.preset.or(defaults.and_then(|d| d.preset.as_deref())) {
        Some(name) => Some(policy.presets().get(name).map_err(MintError::Request)?.clone()),
        None => None,
    };
    let (mut header, mut claims) = (ask.header.clone(), ask.claims.clone());
    if let Some(kid) = defaults.and_then(|d| d.kid.as_deref()) {
        header.entry("kid").or_insert_with(|| Value::from(kid));
    }
    // An individual App Store Connect key has sub "user" and no iss; so has a plain token
    // asked for with that sub.
    let takes_iss = match &preset {
        Some(preset) => preset.takes_default_iss(&claims),
        None => claims.get("sub").and_then(Value::as_str) != Some("user"),
    };
    // The config's iss, else the one stored with the key (a Google service account's email).
    if let Some(iss) = defaults.and_then(|d| d.iss.as_deref()).or(key.iss)
        && takes_iss
    {
        claims.entry("iss").or_insert_with(|| Value::from(iss));
    }
    match &preset {
        Some(preset) => {
            let facts = KeyFacts { fingerprint: key.fingerprint, x5t_s256: key.x5t_s256 };
            preset.fill(&mut header, &mut claims, ask.ttl, key.kid, facts, now)?
        }
        None => {
            // The kid `keys` shows and the JWKS publishes, so verifiers can find the key.
            if let Some(kid) = key.kid {
                header.entry("kid").or_insert_with(|| Value::from(kid));
            }
            plain(&mut header, &mut claims, ask.ttl, now)?
        }
    }
    let alg = match header.get("alg") {
        None => key.alg,
        Some(_) => jws::header_alg(&header)?,
    };
    signs(key, alg)?;
    header.insert("alg".into(), Value::from(alg.name()));
    jws::check_header(&header)?;
    let preset = policy.check(key.label, uid, preset.as_ref(), &header, &claims, now)?;
    let input = jws::encode_signing_input(&header, &claims);
    Ok(finish(alg, input, header, claims, preset))
}

/// Admits `sign_input` built by the caller for `uid` at `now`: JWT signing input whose `alg` the
/// key signs, that the policy allows (it reads the claims).
pub fn admit(input: String, key: &KeyView, policy: &Policy, uid: u32, now: u64) -> Result<Minted, MintError> {
    let parsed = jws::parse_signing_input(&input)?;
    let preset = policy.check(key.label, uid, None, &parsed.header, &parsed.claims, now)?;
    signs(key, parsed.alg)?;
    Ok(finish(parsed.alg, input, parsed.header, parsed.claims, preset))
}

fn signs(key: &KeyView, alg: Alg) -> Result<(), MintError> {
    if key.algs.contains(&alg) {
        return Ok(());
    }
    let can = key.algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
    Err(MintError::WrongAlg { key: key.label.to_owned(), asked: alg, can })
}

fn finish(
    alg: Alg,
    input: String,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    preset: Option<Arc<Preset>>,
) -> Minted {
    let time = |name: &str| claims.get(name).and_then(Value::as_u64);
    let (iat, exp) = (time("iat"), time("exp"));
    Minted { alg, input, header, claims, iat, exp, preset }
}

/// A plain JWT: `typ: JWT` unless given, `iat` now unless given, `exp` = `iat` + ttl.
fn plain(
    header: &mut Map<String, Value>,
    claims: &mut Map<String, Value>,
    ttl: Option<Ttl>,
    now: u64,
) -> Result<(), MintError> {
    let refuse = |why: &str| MintError::Request(why.to_owned());
    header.entry("typ").or_insert_with(|| Value::from("JWT"));
    let iat = match claims.get("iat") {
        None => {
            claims.insert("iat".into(), Value::from(now));
            now
        }
        Some(value) => {
            value.as_u64().ok_or_else(|| refuse("`iat` must be a whole number of seconds since 1970"))?
        }
    };
    if let Some(ttl) = ttl {
        if claims.contains_key("exp") {
            return Err(refuse("give either `exp` or a ttl, not both"));
        }
        let exp = iat
            .checked_add(ttl.secs())
            .ok_or_else(|| refuse("`iat` plus the ttl is past the end of time"))?;
        claims.insert("exp".into(), Value::from(exp));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! One test per rule, on a fixed clock.
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const P256: &[Alg] = &[Alg::Es256];
    const RSA: &[Alg] = &[Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512];

    fn key(label: &'static str) -> KeyView<'static> {
        KeyView {
            label,
            kid: Some("KID1"),
            alg: Alg::Es256,
            algs: P256,
            fingerprint: None,
            iss: None,
            x5t_s256: None,
        }
    }

    fn policy(toml: &str) -> Policy {
        Policy::new(0, &toml::from_str(toml).unwrap()).unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn ask<'a>(header: &'a Map<String, Value>, claims: &'a Map<String, Value>) -> Ask<'a> {
        Ask { preset: None, header, claims, ttl: None }
    }

    fn ttl(secs: u64) -> Option<Ttl> {
        Ttl::from_secs(secs)
    }

    #[test]
    fn a_plain_token_gets_typ_iat_and_exp_from_the_ttl() {
        let (header, claims) = (Map::new(), object(json!({"iss": "x"})));
        let minted =
            mint(Ask { ttl: ttl(90), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW).unwrap();
        assert_eq!(
            Value::Object(minted.header.clone()),
            json!({"typ": "JWT", "alg": "ES256", "kid": "KID1"})
        );
        assert_eq!((minted.iat, minted.exp), (Some(NOW), Some(NOW + 90)));
        assert_eq!(minted.input, jws::encode_signing_input(&minted.header, &minted.claims));
        assert!(minted.cacheable() && minted.preset.is_none());
    }

    #[test]
    fn a_given_iat_is_kept_and_must_be_a_number() {
        let header = Map::new();
        let claims = object(json!({"iat": 1_700_000_000}));
        let minted =
            mint(Ask { ttl: ttl(60), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW).unwrap();
        assert_eq!(minted.exp, Some(1_700_000_060));
        let claims = object(json!({"iat": "yesterday"}));
        let error = mint(ask(&header, &claims), &key("k"), &policy(""), 0, NOW).unwrap_err();
        assert!(error.to_string().contains("`iat` must be"), "{error}");
    }

    #[test]
    fn exp_and_a_ttl_together_are_refused() {
        let (header, claims) = (Map::new(), object(json!({"exp": 5})));
        let error =
            mint(Ask { ttl: ttl(60), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW).unwrap_err();
        assert!(error.to_string().contains("either `exp` or a ttl"), "{error}");
    }

    #[test]
    fn an_iat_at_the_end_of_time_does_not_wrap() {
        let (header, claims) = (Map::new(), object(json!({"iat": u64::MAX})));
        let error =
            mint(Ask { ttl: ttl(60), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW).unwrap_err();
        assert!(error.to_string().contains("past the end of time"), "{error}");
    }

    #[test]
    fn the_keys_config_supplies_preset_kid_and_iss() {
        let policy = policy("[keys.k]\npreset = \"app-store-connect\"\nkid = \"CONFKID\"\niss = \"team\"\n");
        let (header, claims) = (Map::new(), Map::new());
        let minted = mint(ask(&header, &claims), &key("k"), &policy, 0, NOW).unwrap();
        assert_eq!(minted.header["kid"], "CONFKID");
        assert_eq!(minted.claims["iss"], "team");
        assert_eq!(minted.preset.as_ref().map(|p| p.name.as_str()), Some("app-store-connect"));
        assert_eq!(minted.exp, Some(NOW - 30 + 1200));
        // An individual key's token (sub "user") gets no iss.
        let claims = object(json!({"sub": "user"}));
        let minted = mint(ask(&header, &claims), &key("k"), &policy, 0, NOW).unwrap();
        assert!(minted.claims.get("iss").is_none());
    }

    #[test]
    fn a_preset_fills_and_refuses() {
        let (header, claims) = (Map::new(), object(json!({"iss": "TEAM"})));
        let minted =
            mint(Ask { preset: Some("apns"), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW)
                .unwrap();
        assert_eq!(minted.header["kid"], "KID1", "the key's kid");
        assert_eq!((minted.iat, minted.exp), (Some(NOW - 30), None));
        let error = mint(
            Ask { preset: Some("apns"), ttl: ttl(60), ..ask(&header, &claims) },
            &key("k"),
            &policy(""),
            0,
            NOW,
        );
        assert!(matches!(error, Err(MintError::Preset(_))));
        let error =
            mint(Ask { preset: Some("nope"), ..ask(&header, &claims) }, &key("k"), &policy(""), 0, NOW);
        assert!(error.unwrap_err().to_string().contains("unknown preset \"nope\""));
    }

    #[test]
    fn the_alg_is_the_keys_or_one_it_signs() {
        let rsa = KeyView {
            label: "r",
            kid: None,
            alg: Alg::Rs256,
            algs: RSA,
            fingerprint: None,
            iss: None,
            x5t_s256: None,
        };
        let claims = Map::new();
        let header = object(json!({"alg": "PS384"}));
        assert_eq!(mint(ask(&header, &claims), &rsa, &policy(""), 0, NOW).unwrap().alg, Alg::Ps384);
        assert_eq!(mint(ask(&Map::new(), &claims), &rsa, &policy(""), 0, NOW).unwrap().alg, Alg::Rs256);
        let header = object(json!({"alg": "ES256"}));
        let error = mint(ask(&header, &claims), &rsa, &policy(""), 0, NOW).unwrap_err();
        assert!(error.to_string().contains("signs RS256"), "{error}");
        for (header, want) in [(json!({"alg": "HS256"}), "HS256"), (json!({"alg": "none"}), "none")] {
            let error = mint(ask(&object(header), &claims), &key("k"), &policy(""), 0, NOW).unwrap_err();
            assert!(error.to_string().contains(want), "{error}");
        }
    }

    #[test]
    fn b64_and_crit_are_refused() {
        for header in [json!({"b64": false}), json!({"crit": ["exp"]})] {
            let error = mint(ask(&object(header), &Map::new()), &key("k"), &policy(""), 0, NOW).unwrap_err();
            assert!(matches!(error, MintError::Input(_)), "{error}");
        }
    }

    #[test]
    fn the_policy_has_the_last_word() {
        let policy = policy("[keys.k]\nallowed_aud = [\"a\"]\n");
        let (header, claims) = (Map::new(), object(json!({"aud": "b"})));
        assert!(matches!(mint(ask(&header, &claims), &key("k"), &policy, 0, NOW), Err(MintError::Policy(_))));
        let claims = object(json!({"aud": "a"}));
        assert!(mint(ask(&header, &claims), &key("k"), &policy, 0, NOW).is_ok());
        assert!(matches!(
            mint(ask(&header, &claims), &key("k"), &policy, 1234, NOW),
            Err(MintError::Policy(_))
        ));
    }

    #[test]
    fn a_preset_that_may_not_be_cached_says_so() {
        let policy = policy("[presets.once]\ncache = false\nkid = false\nttl = \"5m\"\n");
        let (header, claims) = (Map::new(), Map::new());
        let minted =
            mint(Ask { preset: Some("once"), ..ask(&header, &claims) }, &key("k"), &policy, 0, NOW).unwrap();
        assert!(!minted.cacheable());
    }

    #[test]
    fn signing_input_is_admitted_when_the_key_and_policy_allow_it() {
        let input = jws::encode_signing_input(&object(json!({"alg": "ES256"})), &object(json!({"iat": NOW})));
        let minted = admit(input.clone(), &key("k"), &policy(""), 0, NOW).unwrap();
        assert_eq!((minted.input, minted.iat, minted.alg), (input, Some(NOW), Alg::Es256));
        let input = jws::encode_signing_input(&object(json!({"alg": "ES384"})), &Map::new());
        assert!(matches!(admit(input, &key("k"), &policy(""), 0, NOW), Err(MintError::WrongAlg { .. })));
        assert!(matches!(admit("a.b".into(), &key("k"), &policy(""), 0, NOW), Err(MintError::Input(_))));
        let capped = policy("[keys.k]\nmax_ttl = \"20m\"\n");
        let later = NOW + 3650 * 86400;
        let input = jws::encode_signing_input(
            &object(json!({"alg": "ES256"})),
            &object(json!({"iat": later, "exp": later + 1200})),
        );
        assert!(matches!(admit(input, &key("k"), &capped, 0, NOW), Err(MintError::Policy(_))));
    }
}
