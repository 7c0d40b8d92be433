//! How a command fails: the exit status (the spec's exit codes) and one sentence on stderr that
//! says what went wrong and, where there is one, what to do next. The layers below say what
//! happened; the hints, which name commands and flags, live here.

use crate::client::ClientError;
use crate::daemon::DaemonError;
use crate::exchange::ExchangeError;
use crate::token::TokenError;
use crate::wire::ErrorCode;

/// Any other failure.
pub const EXIT_OTHER: u8 = 1;
/// A usage error (clap uses the same).
pub const EXIT_USAGE: u8 = 2;
/// The agent cannot be reached (or is not one this client trusts).
pub const EXIT_UNREACHABLE: u8 = 3;
/// A refusal: validation, preset or policy.
pub const EXIT_REFUSED: u8 = 4;
/// The token failed: PKCS#11 error, wrong PIN, key not found.
pub const EXIT_TOKEN: u8 = 5;

/// A failed command: what to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub(super) status: u8,
    message: String,
    code: Option<ErrorCode>,
    hint: Option<String>,
}

impl Failure {
    pub(crate) fn new(status: u8, message: impl Into<String>) -> Self {
        Failure { status, message: message.into(), code: None, hint: None }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }

    /// Exits with `status` and prints nothing (the status of `exec`'s command).
    pub(crate) fn silent(status: u8) -> Self {
        Self::new(status, "")
    }

    pub(super) fn is_silent(&self) -> bool {
        self.message.is_empty()
    }

    fn hinted(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The line for stderr, with the hint for `command` (the subcommand's name) if there is one.
    pub(super) fn line(&self, command: &str) -> String {
        let hint = self
            .hint
            .clone()
            .or_else(|| self.code.and_then(|code| code_hint(code, command)).map(str::to_owned));
        match hint {
            Some(hint) => format!("jwt-agent: {}; {hint}", self.message),
            None => format!("jwt-agent: {}", self.message),
        }
    }
}

/// The exit status of an answer with this code.
pub fn status(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::PolicyDenied
        | ErrorCode::Locked
        | ErrorCode::TooLarge
        | ErrorCode::Exists
        | ErrorCode::Forbidden => EXIT_REFUSED,
        ErrorCode::UnknownKey | ErrorCode::TokenError | ErrorCode::PinRejected => EXIT_TOKEN,
        ErrorCode::UnknownOp | ErrorCode::Internal | ErrorCode::Busy | ErrorCode::Unknown => EXIT_OTHER,
    }
}

fn code_hint(code: ErrorCode, command: &str) -> Option<&'static str> {
    Some(match (code, command) {
        (ErrorCode::UnknownKey, _) => "`jwt-agent keys` lists the keys",
        (ErrorCode::Locked, "unlock") | (ErrorCode::PinRejected, "unlock") => return None,
        (ErrorCode::Locked, _) => "`jwt-agent unlock` lets it sign again",
        (ErrorCode::PinRejected, _) => "give it the right PIN with `jwt-agent unlock`",
        (ErrorCode::Busy, _) => "retry shortly",
        (ErrorCode::Forbidden, _) => "the agent serves the uids its config lists in allowed_uids",
        _ => return None,
    })
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let message = e.to_string();
        match e {
            ClientError::Unreachable { .. } => Failure::new(EXIT_UNREACHABLE, message).hinted(
                "start one with `eval \"$(jwt-agent start --module MODULE --token LABEL)\"` or set JWT_AGENT_SOCK",
            ),
            ClientError::Untrusted { why, .. } => {
                let failure = Failure::new(EXIT_UNREACHABLE, message);
                match why.uid {
                    Some(uid) => failure.hinted(format!("if uid {uid} runs your agent, set JWT_AGENT_UID={uid}")),
                    None => failure,
                }
            }
            ClientError::Io(_) => Failure::new(EXIT_OTHER, message),
            ClientError::Agent(wire) => Failure { status: status(wire.code), message, code: Some(wire.code), hint: None },
        }
    }
}

impl From<ExchangeError> for Failure {
    fn from(e: ExchangeError) -> Self {
        let status = match e {
            ExchangeError::Usage(_) => EXIT_USAGE,
            ExchangeError::Unreachable { .. } | ExchangeError::Refused(_) => EXIT_OTHER,
        };
        Failure::new(status, e.to_string())
    }
}

impl From<DaemonError> for Failure {
    fn from(e: DaemonError) -> Self {
        let message = e.to_string();
        match e {
            DaemonError::Setup(_) => Failure::new(EXIT_OTHER, message),
            DaemonError::Token(token) => {
                let failure = Failure::new(EXIT_TOKEN, message);
                match token {
                    TokenError::Module { .. } => failure.hinted("check --module"),
                    TokenError::NoToken { .. } => failure.hinted("check --token"),
                    TokenError::AmbiguousToken { .. } => {
                        failure.hinted("name one by serial (--token serial=...) or by URI")
                    }
                    _ => failure,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireError;

    #[test]
    fn hints_name_what_to_do_next() {
        let locked =
            Failure::from(ClientError::Agent(WireError::new(ErrorCode::Locked, "the agent is locked")));
        assert_eq!(locked.status, EXIT_REFUSED);
        assert_eq!(
            locked.line("sign"),
            "jwt-agent: the agent is locked; `jwt-agent unlock` lets it sign again"
        );
        assert_eq!(locked.line("unlock"), "jwt-agent: the agent is locked");
        let unknown =
            Failure::from(ClientError::Agent(WireError::new(ErrorCode::UnknownKey, "no key \"x\"")));
        assert_eq!(unknown.status, EXIT_TOKEN);
        assert!(unknown.line("sign").ends_with("`jwt-agent keys` lists the keys"));
        let plain = Failure::new(EXIT_OTHER, "cannot read stdin");
        assert_eq!(plain.line("sign"), "jwt-agent: cannot read stdin");
    }

    #[test]
    fn every_code_has_the_spec_exit_status() {
        for (code, want) in [
            (ErrorCode::BadRequest, 4),
            (ErrorCode::PolicyDenied, 4),
            (ErrorCode::Locked, 4),
            (ErrorCode::UnknownKey, 5),
            (ErrorCode::TokenError, 5),
            (ErrorCode::PinRejected, 5),
            (ErrorCode::Busy, 1),
            (ErrorCode::Internal, 1),
        ] {
            assert_eq!(status(code), want, "{code}");
        }
    }
}
