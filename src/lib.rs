//! jwt-agent: sign JSON Web Tokens with keys that never leave a PKCS#11 token.
//!
//! A daemon ([`daemon`]) holds one logged-in token ([`token`]) and answers signing requests on a
//! Unix socket with newline-delimited JSON ([`protocol`]); [`Client`] is the other end of that
//! socket, used by the CLI ([`cli`]) and by Rust programs. See `docs/architecture.md`.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod files;
pub mod jwt;
pub mod key;
pub mod log;
pub mod memory;
pub mod paths;
pub mod pin;
pub mod token;
pub mod wire;

pub use client::{Client, ClientError};
pub use wire::{ErrorCode, WireError};
