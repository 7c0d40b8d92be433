//! Verifying a JWT: its signature against a public key, and its times. What `jwt-agent verify`
//! does, so that a token can be checked without a third-party tool.

use crate::jwt::Alg;
use crate::key::{KeyError, PublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// How far `exp`, `nbf` and `iat` may be off, for clocks that disagree a little.
pub const LEEWAY_SECS: u64 = 60;

/// A token that verified: its header and claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The JOSE header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not three base64url segments of JSON.
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    /// `none`, an HMAC, or an unknown algorithm.
    #[error("alg {0:?} is not accepted (accepted: {names})", names = Alg::names())]
    Alg(String),
    /// The signature is wrong, or made with another kind of key.
    #[error("{0}")]
    Signature(KeyError),
    /// `exp` has passed.
    #[error("the token expired at {exp} ({ago} s ago)")]
    Expired {
        /// `exp`.
        exp: u64,
        /// Seconds since.
        ago: u64,
    },
    /// `nbf` is in the future.
    #[error("the token is not valid before {0}")]
    NotYetValid(u64),
    /// `iat` is in the future.
    #[error("the token was issued in the future (iat {0})")]
    IssuedInFuture(u64),
    /// A time claim that is not a number.
    #[error("the claim {0:?} is not a number of seconds")]
    BadTime(&'static str),
}

/// Checks the token's signature with `key` for the header's `alg`, then `exp`, `nbf` and `iat`
/// against `now` (seconds since 1970), allowing 60 s of clock skew.
pub fn verify(token: &str, key: &PublicKey, now: u64) -> Result<Verified, VerifyError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("it does not have three segments".into()));
    };
    let header = object(header, "header")?;
    let claims = object(payload, "payload")?;
    let name = header.get("alg").and_then(Value::as_str).unwrap_or("(missing)");
    let alg = Alg::from_name(name).ok_or_else(|| VerifyError::Alg(name.to_owned()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyError::Malformed("the signature is not base64url".into()))?;
    let input_len = token.trim().len() - token.trim().rsplit('.').next().map_or(0, str::len) - 1;
    key.verify(alg, &token.trim().as_bytes()[..input_len], &signature).map_err(VerifyError::Signature)?;
    check_times(&claims, now)?;
    Ok(Verified { header, claims })
}

fn object(segment: &str, which: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed(format!("the {which} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(VerifyError::Malformed(format!("the {which} is not a JSON object"))),
    }
}

fn check_times(claims: &Map<String, Value>, now: u64) -> Result<(), VerifyError> {
    let time = |name: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            value.as_f64().filter(|t| *t >= 0.0).map(|t| Some(t as u64)).ok_or(VerifyError::BadTime(name))
        }
    };
    if let Some(exp) = time("exp")?
        && now >= exp + LEEWAY_SECS
    {
        return Err(VerifyError::Expired { exp, ago: now - exp });
    }
    if let Some(nbf) = time("nbf")?
        && nbf > now + LEEWAY_SECS
    {
        return Err(VerifyError::NotYetValid(nbf));
    }
    if let Some(iat) = time("iat")?
        && iat > now + LEEWAY_SECS
    {
        return Err(VerifyError::IssuedInFuture(iat));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{compact, encode_signing_input};
    use p256::ecdsa::signature::Signer;
    use serde_json::json;

    fn token(header: Value, claims: Value, key: &p256::ecdsa::SigningKey) -> String {
        let input = encode_signing_input(header.as_object().unwrap(), claims.as_object().unwrap());
        let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
        compact(&input, &signature.to_bytes())
    }

    #[test]
    fn accepts_good_tokens_and_refuses_the_rest() {
        let signing = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let public = PublicKey::P256(p256::PublicKey::from(signing.verifying_key()));
        let now = 1_800_000_000;
        let good = token(json!({"alg": "ES256"}), json!({"iat": now, "exp": now + 60}), &signing);
        assert_eq!(verify(&good, &public, now).unwrap().claims["exp"], now + 60);

        let expired = token(json!({"alg": "ES256"}), json!({"exp": now - 61}), &signing);
        assert!(matches!(verify(&expired, &public, now), Err(VerifyError::Expired { .. })));
        let early = token(json!({"alg": "ES256"}), json!({"nbf": now + 3600}), &signing);
        assert!(matches!(verify(&early, &public, now), Err(VerifyError::NotYetValid(_))));

        let (input, _) = good.rsplit_once('.').unwrap();
        let tampered = format!("{}.{}", input.replace('e', "f"), good.rsplit('.').next().unwrap());
        assert!(verify(&tampered, &public, now).is_err());
        let unsigned =
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode("{}"));
        assert_eq!(verify(&unsigned, &public, now), Err(VerifyError::Alg("none".into())));
        let wrong_alg = token(json!({"alg": "ES384"}), json!({}), &signing);
        assert!(matches!(
            verify(&wrong_alg, &public, now),
            Err(VerifyError::Signature(KeyError::WrongAlg { .. }))
        ));
    }
}
