//! jwt-agent: sign JSON Web Tokens with keys that never leave a PKCS#11 token.
//!
//! A daemon ([`daemon`]) holds one logged-in token ([`token`]) and answers signing requests on a
//! Unix socket with newline-delimited JSON ([`protocol`]); [`Client`] is the other end of that
//! socket, used by the CLI ([`cli`]) and by Rust programs. See `docs/architecture.md`.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod audit;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod error;
pub mod files;
pub mod jose;
pub mod json;
pub mod keyfile;
pub mod log;
pub mod memory;
pub mod paths;
pub mod pin;
pub mod policy;
pub mod preset;
pub mod protocol;
pub mod pubkey;
pub mod token;
pub mod trust;
pub mod verify;

pub use client::{Client, ClientError};
pub use error::{ErrorCode, WireError};
