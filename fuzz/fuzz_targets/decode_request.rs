//! Any bytes as a request line: the decoder answers with a request or an error, never a panic,
//! and a request it accepts re-encodes to a line it accepts again.
#![no_main]

use jwt_agent::wire as protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let incoming = protocol::decode_request(line);
    if let Ok(request) = incoming.request {
        let again = protocol::encode_request(None, &request).expect("an accepted request encodes");
        let decoded = protocol::decode_request(&again[..again.len() - 1]);
        assert_eq!(decoded.request.expect("a re-encoded request decodes"), request);
    }
});
