//! Any bytes as a key file for `import`: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jwt_agent::fuzzing::parse_pem(text);
    }
    let _ = jwt_agent::fuzzing::parse_der(data);
});
