//! Exchanges: trading an assertion the agent signed for the access token a job needs (a GitHub
//! installation token, an OAuth access token). This runs in the client process, never in the
//! daemon: the daemon holds the token's login and opens no network connection.
//!
//! One [`Service`] per kind of grant: what flags it takes, where the assertion goes, how the
//! answer reads. `cli/token.rs` puts it together with the agent (signing, the per-uid cache,
//! the audit report).

mod github;
mod http;
mod oauth;

pub use github::parse_permission;
pub use http::Https;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The presets `jwt-agent token` can trade, as the errors list them.
pub const PRESETS: &str =
    "github-app, oauth-client-assertion, entra, google-service-account, salesforce or docusign";

/// A kind of exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A GitHub App's JWT for an installation access token.
    GitHub,
    /// OAuth 2.0 client credentials with a `client_assertion` (RFC 7523 section 2.2):
    /// `oauth-client-assertion` and `entra`.
    ClientCredentials { entra: bool },
    /// The JWT-bearer grant (RFC 7523 section 2.1) at Google's token endpoint.
    Google,
    /// Salesforce's OAuth 2.0 JWT bearer flow.
    Salesforce,
    /// DocuSign's JWT grant.
    DocuSign,
}

/// What the service is asked for beyond the assertion: the service flags.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ask {
    /// GitHub: the installation, by id...
    pub installation: Option<u64>,
    /// ...or looked up from OWNER/REPO.
    pub repo: Option<String>,
    /// GitHub: narrow the token to these repositories (names, without the owner).
    pub repositories: Vec<String>,
    /// GitHub: narrow the token to these permissions (`contents` = `read`).
    pub permissions: BTreeMap<String, String>,
    /// GitHub's API (GitHub Enterprise Server: `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// Where the assertion is posted, when not where the service's `aud` says.
    pub token_url: Option<String>,
    /// OAuth client credentials: the scopes asked for (Google's go in the assertion instead).
    pub scope: Vec<String>,
}

/// An access token a service issued.
pub struct Issued {
    pub token: Zeroizing<String>,
    /// When it expires, Unix seconds; `None` when the service does not say (Salesforce).
    pub expires_at: Option<u64>,
    /// The service's other fields (GitHub's `permissions`, OAuth's `token_type`, `scope`,
    /// Salesforce's `instance_url`), without anything secret.
    pub fields: Map<String, Value>,
}

/// Why an exchange did not give a token.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The flags do not make an exchange (nothing was signed or sent).
    #[error("{0}")]
    Usage(String),
    /// The service could not be reached, or did not answer.
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    /// The service answered with an error.
    #[error("{0}")]
    Refused(String),
}

impl Service {
    /// The exchange for a preset, if it has one.
    pub fn for_preset(preset: &str) -> Option<Service> {
        Some(match preset {
            "github-app" => Service::GitHub,
            "oauth-client-assertion" => Service::ClientCredentials { entra: false },
            "entra" => Service::ClientCredentials { entra: true },
            "google-service-account" => Service::Google,
            "salesforce" => Service::Salesforce,
            "docusign" => Service::DocuSign,
            _ => return None,
        })
    }

    /// Whether its tokens are revoked when `exec`'s command ends.
    pub fn revocable(self) -> bool {
        self == Service::GitHub
    }

    /// Checks the flags, before anything is signed. `aud_given` and `scope_given` are whether
    /// the assertion's `--aud` and `--scope` were given.
    pub fn check(self, ask: &Ask, aud_given: bool, scope_given: bool) -> Result<(), ExchangeError> {
        let usage = |text: String| Err(ExchangeError::Usage(text));
        let github_only = [
            ("--installation", ask.installation.is_some()),
            ("--repo", ask.repo.is_some()),
            ("--repository", !ask.repositories.is_empty()),
            ("--permission", !ask.permissions.is_empty()),
            ("--api-url", ask.api_url.is_some()),
        ];
        if self != Service::GitHub
            && let Some((flag, _)) = github_only.iter().find(|(_, given)| *given)
        {
            return usage(format!("{flag} is for --preset github-app only"));
        }
        for url in [&ask.api_url, &ask.token_url].into_iter().flatten() {
            http::check_https(url)?;
        }
        match self {
            Service::GitHub => github::check(ask, scope_given),
            Service::ClientCredentials { entra: true } if ask.scope.is_empty() => usage(
                "an Entra ID token needs --scope, such as https://graph.microsoft.com/.default".into(),
            ),
            Service::ClientCredentials { .. } => Ok(()),
            Service::Google if aud_given => usage(
                "a self-signed JWT for one API (--aud) is itself the bearer token, print it with jwt-agent sign; give --scope to trade an assertion for an access token"
                    .into(),
            ),
            Service::Google if !scope_given => {
                usage("give --scope, the OAuth scopes the access token is for".into())
            }
            Service::Google => Ok(()),
            Service::Salesforce | Service::DocuSign if scope_given => {
                usage("--scope is not for this grant: the connected app's settings say what the token may do".into())
            }
            Service::Salesforce | Service::DocuSign => Ok(()),
        }
    }

    /// Where the assertion is traded: `--token-url` (`--api-url` for GitHub), else what the
    /// service's `aud` says.
    pub fn endpoint(self, ask: &Ask, claims: &Map<String, Value>) -> Result<String, ExchangeError> {
        if let Some(url) = &ask.token_url {
            return Ok(url.clone());
        }
        let aud = claims.get("aud").and_then(Value::as_str).map(|aud| aud.trim_end_matches('/'));
        let url = match (self, aud) {
            (Service::GitHub, _) => {
                let api = ask.api_url.as_deref().unwrap_or(github::API).trim_end_matches('/');
                return Ok(api.to_owned());
            }
            (Service::Google, _) => crate::jwt::preset::GOOGLE_TOKEN_URL.to_owned(),
            (Service::ClientCredentials { .. }, Some(aud)) => aud.to_owned(),
            (Service::Salesforce, Some(aud)) => format!("{aud}/services/oauth2/token"),
            (Service::DocuSign, Some(aud)) => format!("https://{aud}/oauth/token"),
            (_, None) => {
                return Err(ExchangeError::Usage(
                    "the assertion has no single aud to find the token endpoint by; give --token-url".into(),
                ));
            }
        };
        http::check_https(&url)?;
        Ok(url)
    }

    /// Trades `assertion` (with its `claims`) at `endpoint`.
    pub fn exchange(
        self,
        https: &Https,
        endpoint: &str,
        assertion: &str,
        claims: &Map<String, Value>,
        ask: &Ask,
    ) -> Result<Issued, ExchangeError> {
        let client_id = claims.get("iss").and_then(Value::as_str);
        match self {
            Service::GitHub => github::installation_token(https, endpoint, assertion, ask),
            Service::ClientCredentials { entra } => {
                let service = if entra { "Entra ID" } else { "the token endpoint" };
                oauth::client_credentials(https, service, endpoint, assertion, client_id, &ask.scope)
            }
            Service::Google => oauth::jwt_bearer(https, "Google", endpoint, assertion),
            Service::Salesforce => oauth::jwt_bearer(https, "Salesforce", endpoint, assertion),
            Service::DocuSign => oauth::jwt_bearer(https, "DocuSign", endpoint, assertion),
        }
    }

    /// Revokes `token` at `endpoint` (GitHub's API); other services' tokens simply expire.
    pub fn revoke(self, https: &Https, endpoint: &str, token: &str) -> Result<(), ExchangeError> {
        match self {
            Service::GitHub => github::revoke(https, endpoint, token),
            _ => Ok(()),
        }
    }
}

/// The JSON object of an answer, or an error that quotes what came instead.
fn answer_object(service: &str, answer: &http::Answer) -> Result<Map<String, Value>, ExchangeError> {
    match serde_json::from_str::<Value>(&answer.body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(ExchangeError::Refused(format!(
            "{service} answered {} with something that is not a JSON object: {:?}",
            answer.status,
            http::printable(&answer.body, 120)
        ))),
    }
}

/// Takes the token out of `object` (wiping the copy serde made) and keeps the other fields,
/// less those that are secret or stale once cached.
fn issued(
    service: &str,
    mut object: Map<String, Value>,
    token_field: &str,
    expires_at: Option<u64>,
) -> Result<Issued, ExchangeError> {
    let token = match object.remove(token_field) {
        Some(Value::String(token)) if !token.is_empty() => Zeroizing::new(token),
        other => {
            if let Some(value) = other {
                crate::jwt::json::wipe(value);
            }
            crate::jwt::json::wipe(Value::Object(object));
            return Err(ExchangeError::Refused(format!("{service}'s answer has no {token_field}")));
        }
    };
    for secret in ["refresh_token", "id_token", "expires_in", "expires_at", "ext_expires_in"] {
        if let Some(value) = object.remove(secret) {
            crate::jwt::json::wipe(value);
        }
    }
    Ok(Issued { token, expires_at, fields: object })
}

/// A `Retry-After` or rate-limit reset, said for people.
fn retry_hint(answer: &http::Answer) -> Option<String> {
    if let Some(secs) = answer.retry_after.as_deref().and_then(|s| s.parse::<u64>().ok()) {
        return Some(format!("retry after {secs} s"));
    }
    let reset = answer.reset.as_deref().and_then(|s| s.parse::<u64>().ok())?;
    let when = crate::log::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(reset));
    let wait = reset.saturating_sub(crate::jwt::now());
    Some(format!("it resets at {when} (in {wait} s)"))
}
