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

/// The command line, as `main` runs it: returns the exit status.
#[doc(hidden)]
pub use cli::run_command_line as run;

/// What std's start-up would do that the binary relies on, for a `main` without it: fds 0, 1
/// and 2 open (on /dev/null if they were closed, so that no file or socket opened later takes
/// their place), and SIGPIPE ignored (a write to a closed pipe or socket fails instead of
/// killing the process).
#[doc(hidden)]
pub fn start_up() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a NUL-terminated path; the descriptor returned is the lowest free, `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The global allocator of the binary: it zeroes each block it frees.
#[doc(hidden)]
pub use memory::ZeroOnFree;

/// Entry points for the fuzz targets in `fuzz/`; not a stable interface.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::jwt::{encode_signing_input, parse_signing_input};
    pub use crate::key::file::{parse_der, parse_pem};
}
