//! JOSE encoding: JWS algorithms, base64url, and the checks that keep the agent from being a
//! signing oracle for arbitrary bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::alg::Alg;

/// Why a signing input or header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    /// Not two base64url segments.
    #[error("the signing input must be BASE64URL(header).BASE64URL(payload): {0}")]
    Shape(&'static str),
    /// A segment is not canonical unpadded base64url.
    #[error("the {0} segment is not unpadded base64url")]
    Base64(&'static str),
    /// A segment does not decode to a JSON object.
    #[error("the {0} segment is not a JSON object: {1}")]
    Json(&'static str, String),
    /// The header has no usable `alg`.
    #[error("the header has no `alg` string")]
    NoAlg,
    /// `alg` is `none`, an HMAC, or unknown.
    #[error("alg {0:?} is not signed by this agent (it signs {names})", names = Alg::names())]
    UnsupportedAlg(String),
    /// `b64` (RFC 7797): with `false` the payload is not what the checks read.
    #[error("the header has `b64` (RFC 7797 unencoded payloads), which this agent does not sign")]
    UnencodedPayload,
    /// `crit`: extensions a verifier must understand, which this agent does not implement.
    #[error("the header has `crit` (critical extensions), which this agent does not sign")]
    Critical,
}

/// A checked JWS signing input: two base64url segments of JSON objects with a known `alg`.
#[derive(Debug, Clone)]
pub struct SigningInput {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub alg: Alg,
}

/// Checks that `input` is JWT signing input and decodes it. This is what keeps the daemon from
/// signing arbitrary bytes: only `BASE64URL(json object).BASE64URL(json object)` with a JWS `alg`
/// this agent implements passes.
pub fn parse_signing_input(input: &str) -> Result<SigningInput, JoseError> {
    let (header, payload) = input.split_once('.').ok_or(JoseError::Shape("there is no `.`"))?;
    if payload.contains('.') {
        return Err(JoseError::Shape("there is more than one `.`"));
    }
    if header.is_empty() || payload.is_empty() {
        return Err(JoseError::Shape("a segment is empty"));
    }
    let header = decode_object(header, "header")?;
    let claims = decode_object(payload, "payload")?;
    let alg = header_alg(&header)?;
    Ok(SigningInput { header, claims, alg })
}

/// Refuses header members that change what a signature means: `b64` and `crit`. Every path
/// to a signature calls it, `sign` as well as `sign_input`.
pub fn check_header(header: &Map<String, Value>) -> Result<(), JoseError> {
    if header.contains_key("b64") {
        return Err(JoseError::UnencodedPayload);
    }
    if header.contains_key("crit") {
        return Err(JoseError::Critical);
    }
    Ok(())
}

/// The `alg` of a header, refused unless this agent signs with it, after [`check_header`].
pub fn header_alg(header: &Map<String, Value>) -> Result<Alg, JoseError> {
    check_header(header)?;
    let name = header.get("alg").and_then(Value::as_str).ok_or(JoseError::NoAlg)?;
    Alg::from_name(name).ok_or_else(|| JoseError::UnsupportedAlg(name.to_owned()))
}

fn decode_object(segment: &str, which: &'static str) -> Result<Map<String, Value>, JoseError> {
    // The base64 engine refuses padding, `+`, `/` and non-canonical trailing bits.
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| JoseError::Base64(which))?;
    crate::jwt::json::parse_object(&bytes).map_err(|e| JoseError::Json(which, e.to_string()))
}

/// Encodes header and claims as signing input.
pub fn encode_signing_input(header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(256);
    encode_json(header, &mut out);
    out.push('.');
    encode_json(claims, &mut out);
    out
}

fn encode_json(object: &Map<String, Value>, out: &mut String) {
    let json = serde_json::to_vec(object).expect("a map of JSON values serializes");
    URL_SAFE_NO_PAD.encode_string(json, out);
}

/// Appends `.BASE64URL(signature)` to signing input, making the compact JWS.
pub fn compact(signing_input: &str, signature: &[u8]) -> String {
    let mut token = String::with_capacity(signing_input.len() + 1 + signature.len() * 4 / 3 + 2);
    token.push_str(signing_input);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn accepts_jwt_signing_input() {
        let input = format!("{}.{}", b64(r#"{"alg":"ES256","typ":"JWT"}"#), b64(r#"{"iss":"x"}"#));
        let parsed = parse_signing_input(&input).unwrap();
        assert_eq!(parsed.alg, Alg::Es256);
        assert_eq!(parsed.claims["iss"], "x");
    }

    #[test]
    fn refuses_what_is_not_jwt_signing_input() {
        let header = b64(r#"{"alg":"ES256"}"#);
        let claims = b64("{}");
        let cases = [
            String::new(),
            "abc".to_owned(),
            format!("{header}.{claims}.{claims}"),
            format!("{header}."),
            format!(".{claims}"),
            format!("{header}=.{claims}"),
            format!("{}.{claims}", b64(r#"{"alg":"none"}"#)),
            format!("{}.{claims}", b64(r#"{"alg":"HS256"}"#)),
            format!("{}.{claims}", b64(r#"{"typ":"JWT"}"#)),
            format!("{}.{claims}", b64(r#"{"alg":"ES256","alg":"none"}"#)),
            format!("{}.{claims}", b64(r#"{"alg":"ES256","b64":false}"#)),
            format!("{}.{claims}", b64(r#"{"alg":"ES256","b64":true}"#)),
            format!("{}.{claims}", b64(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#)),
            format!("{}.{}", header, b64(r#"{"a":{"b":1,"b":2}}"#)),
            format!("{header}.{}", b64("[1]")),
            format!("{header}.{}", b64("not json")),
            format!("{header}.{}", base64::engine::general_purpose::STANDARD.encode("{\"a\":\"??>\"}")),
        ];
        for case in cases {
            assert!(parse_signing_input(&case).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn compact_appends_the_signature() {
        assert_eq!(compact("a.b", &[0xff, 0xfe]), "a.b.__4");
    }
}

#[cfg(test)]
mod properties {
    //! Signing input generated valid, so each case reaches its assertion, then mutated the ways
    //! a caller fishing for a signature over other bytes would.
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    /// A header with a known `alg` and neither `b64` nor `crit`, and any claims.
    fn valid() -> impl Strategy<Value = (Alg, Map<String, Value>, Map<String, Value>)> {
        (prop::sample::select(Alg::ALL.to_vec()), object(), object()).prop_map(|(alg, mut header, claims)| {
            header.retain(|name, _| name != "b64" && name != "crit");
            header.insert("alg".into(), Value::from(alg.name()));
            (alg, header, claims)
        })
    }

    fn segments(input: &str) -> (String, String) {
        let (header, claims) = input.split_once('.').unwrap();
        (header.to_owned(), claims.to_owned())
    }

    fn json_of(segment: &str) -> String {
        String::from_utf8(URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn what_is_built_is_accepted_as_built((alg, header, claims) in valid()) {
            let input = encode_signing_input(&header, &claims);
            let parsed = parse_signing_input(&input).unwrap();
            prop_assert_eq!(parsed.alg, alg);
            prop_assert_eq!(parsed.header, header);
            prop_assert_eq!(parsed.claims, claims);
        }

        #[test]
        fn a_member_named_twice_in_either_segment_is_refused((_, header, claims) in valid(), in_claims in any::<bool>()) {
            let (h, c) = segments(&encode_signing_input(&header, &claims));
            let twice = |json: String, name: &str| format!("{},\"{name}\":1}}", &json[..json.len() - 1]);
            let (h, c) = if in_claims {
                let json = json_of(&c);
                let json = if claims.is_empty() { "{\"a\":1}".to_owned() } else { json };
                let name = serde_json::from_str::<Map<String, Value>>(&json).unwrap().keys().next().unwrap().clone();
                (h, URL_SAFE_NO_PAD.encode(twice(json, &name)))
            } else {
                (URL_SAFE_NO_PAD.encode(twice(json_of(&h), "alg")), c)
            };
            let error = parse_signing_input(&format!("{h}.{c}")).unwrap_err();
            prop_assert!(matches!(error, JoseError::Json(..)), "{}", error);
        }

        #[test]
        fn b64_crit_and_unknown_algs_are_refused((_, mut header, claims) in valid(), pick in 0..3usize, name in "[A-Za-z0-9]{0,8}") {
            match pick {
                0 => { header.insert("b64".into(), Value::from(false)); }
                1 => { header.insert("crit".into(), Value::from(vec!["exp"])); }
                _ => {
                    prop_assume!(Alg::from_name(&name).is_none());
                    header.insert("alg".into(), Value::from(name));
                }
            }
            prop_assert!(parse_signing_input(&encode_signing_input(&header, &claims)).is_err());
        }

        #[test]
        fn padding_other_alphabets_and_extra_segments_are_refused((_, header, claims) in valid(), pick in 0..4usize) {
            let (h, c) = segments(&encode_signing_input(&header, &claims));
            let mutated = match pick {
                0 => format!("{h}=.{c}"),
                1 => format!("{h}.{}", c.replace('-', "+").replace('_', "/") + "+/"),
                2 => format!("{h}.{c}.{c}"),
                _ => format!("{h}{c}"),
            };
            prop_assert!(parse_signing_input(&mutated).is_err(), "{}", mutated);
        }

        #[test]
        fn any_string_is_refused_or_is_two_json_objects_with_a_known_alg(input in ".{0,200}") {
            if let Ok(parsed) = parse_signing_input(&input) {
                prop_assert_eq!(input.split('.').count(), 2);
                prop_assert!(Alg::from_name(parsed.header["alg"].as_str().unwrap()).is_some());
            }
        }
    }
}
