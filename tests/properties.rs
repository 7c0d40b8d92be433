//! Properties of the request decoder and the signing-input check, over generated input: they
//! never panic, accept exactly what they should, and round-trip what they produce.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_agent::jwt::{self as jose, Alg};
use jwt_agent::wire::{self as protocol, Request, SignRequest};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_any_bytes_never_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = protocol::decode_request(&line);
    }

    #[test]
    fn decoding_any_json_answers_with_a_request_or_an_error(value in json_value()) {
        let line = serde_json::to_vec(&value).unwrap();
        let incoming = protocol::decode_request(&line);
        if let Ok(request) = incoming.request {
            prop_assert!(Request::OPS.contains(&request.op()));
        }
    }

    #[test]
    fn sign_requests_round_trip(key in "[a-zA-Z0-9_]{1,20}", header in object(), claims in object(),
                               ttl in prop::option::of("[1-9][0-9]{0,3}[smhd]"), fresh in any::<bool>(), id in any::<u64>()) {
        let request = Request::Sign(SignRequest { key, preset: None, header, claims, ttl, fresh });
        let line = protocol::encode_request(Some(id), &request).unwrap();
        let incoming = protocol::decode_request(&line[..line.len() - 1]);
        prop_assert_eq!(incoming.id, Some(Value::from(id)));
        prop_assert_eq!(incoming.request.unwrap(), request);
    }

    #[test]
    fn checking_any_string_never_panics(input in ".{0,200}") {
        let _ = jose::parse_signing_input(&input);
    }

    #[test]
    fn what_passes_is_two_base64url_json_objects_with_a_known_alg(input in "[A-Za-z0-9_.=+/-]{0,120}") {
        if let Ok(parsed) = jose::parse_signing_input(&input) {
            let segments: Vec<&str> = input.split('.').collect();
            prop_assert_eq!(segments.len(), 2);
            for segment in &segments {
                let bytes = URL_SAFE_NO_PAD.decode(segment).unwrap();
                prop_assert!(serde_json::from_slice::<Map<String, Value>>(&bytes).is_ok());
            }
            prop_assert!(Alg::from_name(parsed.header["alg"].as_str().unwrap()).is_some());
        }
    }

    #[test]
    fn built_signing_input_is_accepted_as_built(alg in prop::sample::select(Alg::ALL.to_vec()),
                                                mut header in object(), claims in object()) {
        header.insert("alg".into(), Value::from(alg.name()));
        header.remove("b64");
        let input = jose::encode_signing_input(&header, &claims);
        let parsed = jose::parse_signing_input(&input).unwrap();
        prop_assert_eq!(parsed.alg, alg);
        prop_assert_eq!(parsed.header, header);
        prop_assert_eq!(parsed.claims, claims);
    }

    #[test]
    fn an_unknown_alg_is_never_accepted(name in "[A-Za-z0-9]{0,8}", claims in object()) {
        prop_assume!(Alg::from_name(&name).is_none());
        let mut header = Map::new();
        header.insert("alg".into(), Value::from(name));
        let input = jose::encode_signing_input(&header, &claims);
        prop_assert!(jose::parse_signing_input(&input).is_err());
    }
}
