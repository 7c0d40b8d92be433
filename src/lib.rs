//! jwt-agent: sign JSON Web Tokens with keys that never leave a PKCS#11 token.
//!
//! The binary is a daemon that holds one logged-in token and a CLI that talks to it over a Unix
//! socket. This library is the other end of that socket for Rust programs: [`Client`] speaks the
//! protocol whose types are in [`wire`], and [`verify`] checks a token against a [`PublicKey`]
//! without an agent. `docs/architecture.md` maps the code.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

mod cli;
mod client;
mod config;
mod daemon;
mod exchange;
mod files;
mod jwt;
mod key;
mod log;
mod memory;
mod paths;
mod pin;
mod token;
pub mod wire;

pub use client::trust::Distrust;
pub use client::{Client, ClientError};
pub use jwt::verify::{Verified, VerifyError, verify};
pub use jwt::{Alg, Ttl};
pub use key::{KeyError, PublicKey};
pub use wire::{ErrorCode, WireError};

/// The command line, as `main` runs it.
#[doc(hidden)]
pub use cli::main;

/// The global allocator of the binary: it zeroes each block it frees.
#[doc(hidden)]
pub use memory::ZeroOnFree;

/// Entry points for the fuzz targets in `fuzz/`; not a stable interface.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::jwt::{encode_signing_input, parse_signing_input};
    pub use crate::key::file::{parse_der, parse_pem};
}
