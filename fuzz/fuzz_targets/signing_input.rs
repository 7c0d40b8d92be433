//! Any string as JWS signing input: the check accepts only two base64url segments of JSON
//! objects with a known `alg`, and never panics.
#![no_main]

use jwt_agent::Alg;
use jwt_agent::fuzzing as jose;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(parsed) = jose::parse_signing_input(input) {
        assert_eq!(input.split('.').count(), 2);
        let alg = parsed.header["alg"].as_str().expect("alg is a string");
        assert_eq!(Alg::from_name(alg), Some(parsed.alg));
        // What passed re-encodes to signing input that passes again.
        let again = jose::encode_signing_input(&parsed.header, &parsed.claims);
        assert!(jose::parse_signing_input(&again).is_ok());
    }
});
