//! What can go wrong on the token, in sentences a user can act on.

use crate::jwt::Alg;
use crate::wire::PinCounters;
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// A failure in the PKCS#11 layer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The module could not be loaded.
    #[error("cannot load the PKCS#11 module {path}: {reason}")]
    Module { path: String, reason: String },
    /// No token fits `--token`.
    #[error("no token matches {name:?} (tokens present: {})", list(seen))]
    NoToken { name: String, seen: Vec<String> },
    /// Several tokens fit.
    #[error("more than one token matches {name:?}")]
    AmbiguousToken { name: String },
    /// A token or key name that does not parse.
    #[error("{0}")]
    BadName(String),
    /// A key URI that names another token.
    #[error("{key:?} names a token other than the agent's token {token:?}")]
    OtherToken {
        key: String,
        /// The agent's token label.
        token: String,
    },
    /// A URI with an attribute the agent does not know, which matches nothing (as in p11-kit).
    #[error("{key:?} has the attribute {attribute:?}, which this agent does not know, so it matches nothing")]
    UnknownAttribute { key: String, attribute: String },
    /// Neither the hashing nor the raw mechanism for the algorithm is usable.
    #[error("the token or the key {key:?} allows no mechanism for {alg}")]
    NoMechanism { alg: Alg, key: String },
    /// A label or id already taken, when creating a key.
    #[error("{0}; nothing was created")]
    Exists(String),
    /// A key file or generation request that cannot be honoured.
    #[error("{0}; nothing was created")]
    BadKey(String),
    /// The token rejected the PIN.
    #[error(
        "the token rejected the PIN ({rv:?}; {}); it was tried once and will not be retried",
        counters_sentence(counters)
    )]
    PinRejected {
        rv: RvError,
        /// The token's counters after the rejection.
        counters: PinCounters,
    },
    /// The token rejected the PIN earlier; the agent will not log in by itself again.
    #[error("the token rejected the PIN before, so the agent does not log in again by itself")]
    PinRejectedBefore,
    /// An `unlock` too soon after one the token rejected.
    #[error(
        "the token rejected the last PIN given to unlock; to spare its few tries, the agent tries no other for {wait_secs} s more"
    )]
    UnlockTooSoon {
        /// Seconds left to wait.
        wait_secs: u64,
    },
    /// The token would lock (or has locked) its PIN at the next wrong one.
    #[error("{}", final_try_sentence(counters))]
    FinalTry {
        /// The token's counters.
        counters: PinCounters,
    },
    /// No private key with that label.
    #[error("no private key {0:?} on the token")]
    NoKey(String),
    /// Several private keys carry the label.
    #[error(
        "more than one private key is labelled {0:?}; name one by its id too: pkcs11:object=LABEL;id=%XX, with the id `keys` lists"
    )]
    AmbiguousKey(String),
    /// The key has no public key object to read.
    #[error("the token holds no public key for {0:?}")]
    NoPublicKey(String),
    /// The key is of a type this agent does not sign with.
    #[error(
        "the key {0:?} is of a type this agent does not sign with (it signs with P-256, P-384, P-521, RSA and Ed25519 keys)"
    )]
    UnsupportedKey(String),
    /// The header's `alg` is not what the key signs.
    #[error("the key {key:?} signs {can}, not {asked}")]
    WrongAlg { key: String, asked: Alg, can: String },
    /// The token returned a signature of the wrong size.
    #[error("the token returned a {len}-byte signature for {alg}; it is not used")]
    BadSignature { alg: Alg, len: usize },
    #[error("{}", pkcs11_sentence(*.0, *.1))]
    Pkcs11(RvError, Function),
    /// Another cryptoki failure (conversion, missing symbol).
    #[error("PKCS#11 failure: {0}")]
    Other(String),
    /// The session is not logged in (private objects are invisible).
    #[error("the token is not logged in")]
    NotLoggedIn,
    #[error("the agent is locked")]
    Locked,
    /// `unlock` when the agent is not locked.
    #[error("the agent is not locked")]
    NotLocked,
    /// The session pool is shut down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The client hung up while its request waited in the queue: it was dropped unsigned.
    /// Nobody is left to tell, so this is neither answered, counted nor audited.
    #[error("the client hung up before its turn")]
    Abandoned,
    /// The module must be reloaded to see the token's objects as they are now; the pool does
    /// that and asks again, so this never reaches a client.
    #[error("the module must be reloaded to find the token's new keys")]
    Stale,
    /// A job panicked on a worker (a bug); the worker goes on with a new session.
    #[error("the agent failed on this request ({0}); it goes on serving")]
    Panicked(String),
}

impl From<CkError> for TokenError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, function) => TokenError::Pkcs11(rv, function),
            e => TokenError::Other(e.to_string()),
        }
    }
}

impl TokenError {
    /// Whether the token dropped the session or the login, so that reopening the session and
    /// logging in again may cure it.
    pub fn is_session_fault(&self) -> bool {
        matches!(self, TokenError::NotLoggedIn)
            || matches!(
                self,
                TokenError::Pkcs11(
                    RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::KeyHandleInvalid
                    | RvError::ObjectHandleInvalid
                    // A session an earlier failure left mid-operation is of no more use.
                    | RvError::OperationActive,
                    _
                )
            )
    }
}

fn list(labels: &[String]) -> String {
    if labels.is_empty() {
        "none".to_owned()
    } else {
        labels.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
    }
}

fn final_try_sentence(c: &PinCounters) -> &'static str {
    if c.locked {
        "the token's user PIN is locked, so the agent tries none: unblock it with the SO PIN, then unlock"
    } else {
        "the token says one more wrong PIN locks it, so the agent tries none: log in once with the token's own tool (pkcs11-tool --login --test) to reset its count, then unlock"
    }
}

fn counters_sentence(c: &PinCounters) -> &'static str {
    if c.locked {
        "the PIN is now locked: unblock it with the SO PIN"
    } else if c.final_try {
        "one more wrong PIN locks the token"
    } else if c.count_low {
        "the token counts wrong PINs and has fewer tries left"
    } else {
        "the token reports no low PIN count"
    }
}

fn pkcs11_sentence(rv: RvError, function: Function) -> String {
    let creating = matches!(function, Function::GenerateKeyPair | Function::CreateObject);
    let what = match rv {
        RvError::GeneralError
        | RvError::FunctionFailed
        | RvError::AttributeValueInvalid
        | RvError::AttributeTypeInvalid
        | RvError::TemplateInconsistent
        | RvError::TemplateIncomplete
            if creating =>
        {
            "the token would not create the key as the agent makes every key (sensitive, never extractable, for signing only); the token's own log may say which attribute it refused"
        }
        RvError::DeviceRemoved | RvError::TokenNotPresent => {
            "the token is not there: plug it back in or restart its connector; the agent logs in again on the next request"
        }
        RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn => {
            "the token dropped the session or the login and it could not be restored; check the token, then retry"
        }
        RvError::DeviceError | RvError::GeneralError | RvError::FunctionFailed => {
            "the token reported a failure; check the token or its connector and retry"
        }
        RvError::DeviceMemory | RvError::HostMemory => "the token or host is out of memory",
        RvError::KeyFunctionNotPermitted => "the key is not allowed to sign (CKA_SIGN is false)",
        _ => "the token refused the operation",
    };
    format!("{what} ({function}: {rv:?})")
}
