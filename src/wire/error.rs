//! Error codes shared by the wire protocol and the CLI's exit status.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an error answer. One definition for daemon and client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request line is not valid JSON or not a valid request.
    BadRequest,
    /// The `op` is not one this daemon knows.
    UnknownOp,
    /// No signing key with that name on the token.
    UnknownKey,
    /// The request is valid but refused by policy or by the key's capabilities.
    PolicyDenied,
    /// The agent is locked.
    Locked,
    /// The token failed (PKCS#11 error, removed device, ...).
    TokenError,
    /// The token rejected the PIN, now or before.
    PinRejected,
    /// The request line is longer than the protocol allows.
    TooLarge,
    /// A key with that label or id is already on the token.
    Exists,
    /// The peer's uid may not use this agent.
    Forbidden,
    /// The agent serves as many connections as it may.
    Busy,
    /// Anything else: a bug or an exhausted resource on the daemon's side.
    Internal,
    /// A code this client does not know (a newer daemon).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::Locked => "locked",
            ErrorCode::TokenError => "token_error",
            ErrorCode::PinRejected => "pin_rejected",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Exists => "exists",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the daemon answers it: a code for programs, a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What kind of failure, for programs.
    pub code: ErrorCode,
    /// One sentence that says what went wrong and what to do.
    pub message: String,
}

impl WireError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A `policy_denied` error.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PolicyDenied, message)
    }
}
