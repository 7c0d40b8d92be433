//! The pure part of the agent: JWS encoding and the checks that keep it from being a signing
//! oracle, algorithms, times, the presets, the policy, and the minting step that turns a request
//! into signing input. Nothing here does I/O, touches the token or knows the socket.

pub mod alg;
pub mod json;
pub mod jws;
pub mod mint;
pub mod policy;
pub mod preset;
pub mod time;
pub mod verify;

pub use alg::{Alg, Family, Hash};
pub use jws::{compact, encode_signing_input, parse_signing_input};
pub use time::{Ttl, now};
