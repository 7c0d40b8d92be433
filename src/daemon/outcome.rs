//! What a request comes to: a reply with the audit outcome it records, or why it failed. The
//! daemon is the one layer that knows both the lower layers' errors and the wire's codes; the
//! mapping between them is here and nowhere else.

use super::audit::Outcome;
use crate::jwt::mint::MintError;
use crate::token::TokenError;
use crate::wire::{
    AccessTokenResult, CertResult, ErrorCode, ExchangedResult, KeyResult, KeysResult, LockResult,
    PubkeyResult, SignInputResult, SignResult, StatusResult, StopResult, WireError,
};
use serde::Serialize;

/// A request's result, before the envelope.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Reply {
    SignInput(SignInputResult),
    Sign(Signed),
    Keys(KeysResult),
    Pubkey(PubkeyResult),
    Key(KeyResult),
    Cert(CertResult),
    Status(Box<StatusResult>),
    Lock(LockResult),
    Stop(StopResult),
    AccessToken(AccessTokenResult),
    Exchanged(ExchangedResult),
}

/// A `sign` result, with the times the sinks renew by (they stay off the wire).
#[derive(Debug, Serialize)]
pub(super) struct Signed {
    #[serde(flatten)]
    pub result: SignResult,
    #[serde(skip)]
    pub times: Times,
}

/// A token's `iat` and `exp`, as minted, and how long one without `exp` is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Times {
    pub iat: Option<u64>,
    pub exp: Option<u64>,
    pub reuse: u64,
}

/// A request that succeeded: its reply, the audit outcome to record (none for reads), and the
/// key that signed (counted once the audit line is written).
#[derive(Debug)]
pub(super) struct Done {
    pub reply: Reply,
    pub audit: Option<Outcome>,
    pub signed: Option<Use>,
}

/// A signature made or a token handed out from the cache, by key label.
#[derive(Debug)]
pub(super) struct Use {
    pub label: String,
    pub cached: bool,
}

impl Done {
    /// A read: answered, not audited.
    pub fn read(reply: Reply) -> Done {
        Done { reply, audit: None, signed: None }
    }

    /// A decision the audit log records.
    pub fn audited(reply: Reply, outcome: Outcome) -> Done {
        Done { reply, audit: Some(outcome), signed: None }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failed {
    /// Refused before it was understood: a malformed line, a bad field, too large, forbidden.
    #[error("{0}")]
    Wire(WireError),
    /// The minting step refused it.
    #[error("{0}")]
    Mint(#[from] MintError),
    /// The token failed or refused.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// A request only the daemon's own uid may make.
    #[error("only the agent's own uid may {0}")]
    OwnerOnly(&'static str),
    /// Another uid asked for a key it may not use.
    #[error("uid {uid} may not use the key {label:?}")]
    NotYours { uid: u32, label: String },
    /// The audit log cannot be written; nothing is handed out until it can.
    #[error("the audit log cannot be written ({0}); the agent signs nothing until it can")]
    Audit(std::io::Error),
}

impl Failed {
    pub fn bad_request(message: impl Into<String>) -> Failed {
        Failed::Wire(WireError::bad_request(message))
    }

    /// The wire code this failure is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Failed::Wire(e) => e.code,
            Failed::Mint(MintError::Policy(_)) | Failed::OwnerOnly(_) | Failed::NotYours { .. } => {
                ErrorCode::PolicyDenied
            }
            Failed::Mint(_) => ErrorCode::BadRequest,
            Failed::Token(e) => token_code(e),
            Failed::Audit(_) => ErrorCode::Internal,
        }
    }

    pub fn to_wire(&self) -> WireError {
        match self {
            Failed::Wire(e) => e.clone(),
            other => WireError::new(other.code(), other.to_string()),
        }
    }
}

fn token_code(e: &TokenError) -> ErrorCode {
    match e {
        TokenError::NoKey(_) | TokenError::OtherToken { .. } | TokenError::UnknownAttribute { .. } => {
            ErrorCode::UnknownKey
        }
        TokenError::Exists(_) => ErrorCode::Exists,
        TokenError::Locked | TokenError::UnlockTooSoon { .. } | TokenError::FinalTry { .. } => {
            ErrorCode::Locked
        }
        TokenError::PinRejected { .. } | TokenError::PinRejectedBefore => ErrorCode::PinRejected,
        TokenError::NotLocked
        | TokenError::AmbiguousKey(_)
        | TokenError::UnsupportedKey(_)
        | TokenError::WrongAlg { .. }
        | TokenError::BadName(_)
        | TokenError::BadKey(_)
        | TokenError::NoPublicKey(_)
        | TokenError::NoMechanism { .. } => ErrorCode::BadRequest,
        TokenError::Panicked(_) | TokenError::Stale => ErrorCode::Internal,
        _ => ErrorCode::TokenError,
    }
}
