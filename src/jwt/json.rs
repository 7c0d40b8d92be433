//! JSON as the agent reads it: every object's members are named once, at every depth, because
//! a duplicate `alg`, `aud` or `key` lets two parsers read one text two ways; and a parsed tree
//! can be wiped when it may have held a secret.

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;
use zeroize::Zeroize;

/// Why a text is not a JSON object the agent reads.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Invalid(serde_json::Error),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// An object names a member twice.
    #[error("refused: {0}")]
    Duplicate(serde_json::Error),
}

/// Parses `bytes` as one JSON object whose members, and those of every object inside it, have
/// distinct names.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ParseError> {
    // The visitor's own errors (a name seen twice) are the only data errors a parse can give.
    let parsed = serde_json::from_slice::<Unique>(bytes)
        .map_err(|e| if e.is_data() { ParseError::Duplicate(e) } else { ParseError::Invalid(e) })?;
    match parsed.0 {
        Value::Object(object) => Ok(object),
        other => {
            wipe(other);
            Err(ParseError::NotObject)
        }
    }
}

/// Overwrites every string in `value` (names and values) before it is freed.
pub fn wipe(value: Value) {
    fn wipe_in_place(value: &mut Value) {
        match value {
            Value::String(s) => s.zeroize(),
            Value::Array(items) => items.iter_mut().for_each(wipe_in_place),
            Value::Object(object) => {
                // Taken out of the map, so that the names can be wiped too.
                for (mut name, mut member) in std::mem::take(object) {
                    name.zeroize();
                    wipe_in_place(&mut member);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let mut value = value;
    wipe_in_place(&mut value);
}

/// A JSON value built by [`UniqueVisitor`].
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

/// Builds a `serde_json::Value` as serde_json's own visitor does, refusing a member name seen
/// twice in one object.
struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(Value::Number(v.into())))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Unique, E> {
        Number::from_f64(v)
            .map(|n| Unique(Value::Number(n)))
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = access.next_element()? {
            items.push(item);
        }
        Ok(Unique(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Unique, A::Error> {
        let mut object = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(A::Error::custom(format!("member {name:?} appears twice")));
            }
            let Unique(member) = access.next_value()?;
            object.insert(name, member);
        }
        Ok(Unique(Value::Object(object)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":[{"d":true,"e":null}]}}"#).is_ok());
        for text in [
            r#"{"key":"a","key":"b"}"#,
            r#"{"claims":{"aud":"x","aud":"y"}}"#,
            r#"{"a":[{"x":1,"x":2}]}"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let error = parse_object(text.as_bytes()).unwrap_err();
            assert!(matches!(error, ParseError::Duplicate(_)), "{text}: {error}");
            assert!(error.to_string().contains("appears twice"), "{text}: {error}");
        }
        assert!(matches!(parse_object(b"[1]"), Err(ParseError::NotObject)));
        assert!(matches!(parse_object(b"{} {}"), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn values_are_those_serde_json_reads() {
        let text = br#"{"n":-5,"u":18446744073709551615,"f":1.5,"s":"\u00e9\n","l":[1,"x"],"z":null}"#;
        assert_eq!(
            Value::Object(parse_object(text).unwrap()),
            serde_json::from_slice::<Value>(text).unwrap()
        );
    }
}
