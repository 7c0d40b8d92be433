//! Properties of the request decoder over generated input. Requests of every op are generated
//! valid, so that each case reaches its assertion: they round-trip; then each is mutated the
//! ways a hostile or broken client would, and each mutation gets the answer it must.

use jwt_agent::wire::{
    self, ErrorCode, GenerateRequest, Hex, ImportRequest, PresetName, PubkeyFormat, Request, SecretText,
    SignRequest,
};
use jwt_agent::{Alg, Ttl};
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

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9_-]{1,20}", "pkcs11:object=[a-z]{1,8};type=private".prop_map(String::from)]
}

fn ttl() -> impl Strategy<Value = Option<Ttl>> {
    prop::option::of((1u64..=10 * 365 * 86400).prop_map(|secs| Ttl::from_secs(secs).unwrap()))
}

fn hex() -> impl Strategy<Value = Option<Hex>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 1..8).prop_map(Hex))
}

/// A valid request of any op.
fn request() -> impl Strategy<Value = Request> {
    let preset = prop::option::of("[a-z][a-z0-9-]{0,20}".prop_map(|n| n.parse::<PresetName>().unwrap()));
    prop_oneof![
        (key_name(), "[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,40}")
            .prop_map(|(key, input)| Request::SignInput { key, input }),
        (key_name(), preset, object(), object(), ttl(), any::<bool>()).prop_map(
            |(key, preset, header, claims, ttl, fresh)| {
                Request::Sign(SignRequest { key, preset, header, claims, ttl, fresh })
            }
        ),
        Just(Request::Keys {}),
        (
            prop::option::of(key_name()),
            prop::sample::select(vec![PubkeyFormat::Pem, PubkeyFormat::Jwk, PubkeyFormat::Jwks])
        )
            .prop_map(|(key, format)| Request::Pubkey { key, format }),
        (
            "-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/]{8,64}\n-----END PRIVATE KEY-----\n",
            prop::option::of("[a-z]{1,8}"),
            prop::option::of("[A-Z0-9]{1,10}"),
            hex(),
            prop::option::of("[a-z]{1,8}@[a-z]{1,8}\\.iam\\.gserviceaccount\\.com")
        )
            .prop_map(|(pem, label, kid, id, iss)| Request::Import(ImportRequest {
                pkcs8_pem: SecretText(pem.into()),
                label,
                kid,
                id,
                iss
            })),
        (
            "[a-z]{1,12}",
            prop::option::of(prop::sample::select(Alg::ALL.to_vec())),
            hex(),
            prop::option::of(prop::sample::select(vec![2048u32, 3072, 4096]))
        )
            .prop_map(|(label, alg, id, bits)| Request::Generate(GenerateRequest {
                label,
                alg,
                id,
                bits
            })),
        Just(Request::Status {}),
        Just(Request::Lock {}),
        ".{1,16}".prop_map(|pin| Request::Unlock { pin: SecretText(pin.into()) }),
        Just(Request::Stop {}),
    ]
}

fn line_of(request: &Request, id: Option<u64>) -> Vec<u8> {
    let mut line = wire::encode_request(id, request).unwrap();
    line.pop();
    line
}

fn refused(line: &[u8]) -> Option<(ErrorCode, String)> {
    wire::decode_request(line).request.err().map(|e| (e.code, e.message))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_valid_request_round_trips(request in request(), id in any::<u64>()) {
        let own_id = request.has_own_id();
        let incoming = wire::decode_request(&line_of(&request, (!own_id).then_some(id)));
        if !own_id {
            prop_assert_eq!(incoming.id, Some(Value::from(id)));
        }
        prop_assert_eq!(incoming.request.unwrap(), request);
    }

    #[test]
    fn a_member_named_twice_is_refused(request in request(), value in json_value()) {
        // The op named again, with any value, at the end of the object.
        let mut line = line_of(&request, None);
        line.pop();
        line.extend_from_slice(format!(",\"op\":{value}}}").as_bytes());
        let (code, message) = refused(&line).expect("a duplicate was accepted");
        prop_assert_eq!(code, ErrorCode::BadRequest);
        prop_assert!(message.contains("appears twice"), "{}", message);
    }

    #[test]
    fn an_unknown_field_is_refused(request in request(), name in "[a-z]{1,8}", value in json_value()) {
        let mut object: Map<String, Value> = serde_json::from_slice(&line_of(&request, None)).unwrap();
        let known: &[&str] = match request.op() {
            "sign_input" => &["key", "input"],
            "sign" => &["key", "preset", "header", "claims", "ttl", "fresh"],
            "pubkey" => &["key", "format"],
            "import" => &["pkcs8_pem", "label", "kid", "id", "iss"],
            "generate" => &["label", "alg", "id", "bits"],
            "unlock" => &["pin"],
            _ => &[],
        };
        prop_assume!(!known.contains(&name.as_str()) && name != "id" && name != "op");
        object.insert(name, value);
        let (code, _) = refused(&serde_json::to_vec(&object).unwrap()).expect("an unknown field was accepted");
        prop_assert_eq!(code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_missing_or_mistyped_field_is_refused(request in request(), pick in any::<prop::sample::Index>(), drop_it in any::<bool>()) {
        let object: Map<String, Value> = serde_json::from_slice(&line_of(&request, None)).unwrap();
        let required: Vec<&String> = object
            .keys()
            .filter(|k| match request.op() {
                "sign_input" => ["key", "input"].contains(&k.as_str()),
                "sign" => k.as_str() == "key",
                "pubkey" => k.as_str() == "format",
                "import" => k.as_str() == "pkcs8_pem",
                "generate" => k.as_str() == "label",
                "unlock" => k.as_str() == "pin",
                _ => false,
            })
            .collect();
        prop_assume!(!required.is_empty());
        let field = required[pick.index(required.len())].clone();
        let mut broken = object.clone();
        if drop_it {
            broken.remove(&field);
        } else {
            broken.insert(field.clone(), Value::from(12345));
        }
        let (code, message) = refused(&serde_json::to_vec(&broken).unwrap()).expect("a broken request was accepted");
        prop_assert_eq!(code, ErrorCode::BadRequest);
        prop_assert!(message.contains(&field) || message.contains("invalid"), "{}", message);
    }

    #[test]
    fn a_cut_or_flipped_line_never_panics_and_yields_only_known_ops(request in request(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let line = line_of(&request, Some(1));
        let cut = &line[..at.index(line.len())];
        prop_assert!(wire::decode_request(cut).request.is_err(), "a cut line was accepted");
        let mut flipped = line.clone();
        flipped[at.index(line.len())] = byte;
        if let Ok(request) = wire::decode_request(&flipped).request {
            prop_assert!(Request::OPS.contains(&request.op()));
        }
    }

    #[test]
    fn decoding_any_bytes_never_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = wire::decode_request(&line);
    }
}
