//! `jwt-agent token` and `exec` with an exchange: the agent signs the preset's assertion, this
//! process trades it at the service (the daemon opens no network connection), reports the
//! exchange to the agent for the audit log, and prints the access token. The agent keeps the
//! token for this uid until 5 minutes before it expires, so the next ask gets it back without a
//! signature or a round trip to the service.

use super::{Failure, SignArgs, SocketArgs, connect, print_line};
use crate::client::Client;
use crate::exchange::{Ask, ExchangeError, Https, Service};
use crate::wire::{self, AccessToken, ExchangeOutcome, ExchangedReport, PresetName, SecretText, SignRequest};
use clap::Args;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// `jwt-agent token`'s flags.
#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    #[command(flatten)]
    pub sign: SignArgs,
    #[command(flatten)]
    pub exchange: ExchangeArgs,
    /// Print the token, its expiry and the service's other fields as JSON
    #[arg(long)]
    pub json: bool,
}

/// The service flags of `token` and `exec`.
#[derive(Debug, Clone, Default, Args)]
pub(super) struct ExchangeArgs {
    /// GitHub: the installation to get a token for
    #[arg(long, value_name = "ID")]
    installation: Option<u64>,
    /// GitHub: find the installation from a repository it covers
    #[arg(long, value_name = "OWNER/REPO")]
    repo: Option<String>,
    /// GitHub: narrow the token to this repository, by name without the owner (repeatable)
    #[arg(long = "repository", value_name = "NAME")]
    repositories: Vec<String>,
    /// GitHub: narrow the token to this permission, such as contents=read (repeatable)
    #[arg(long = "permission", value_name = "NAME=LEVEL", value_parser = crate::exchange::parse_permission)]
    permissions: Vec<(String, String)>,
    /// GitHub's API; for GitHub Enterprise Server https://HOST/api/v3
    /// [default: https://api.github.com]
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// Post the assertion here instead of where its aud points (a private or regional endpoint)
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// PEM certificates to trust besides Mozilla's roots (GitHub Enterprise Server, a private CA)
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

impl ExchangeArgs {
    /// Whether a flag asks for a GitHub installation token (which `exec` then trades for).
    pub fn names_installation(&self) -> bool {
        self.installation.is_some() || self.repo.is_some()
    }
}

/// An exchange to make: the assertion to sign and what to ask the service.
pub(super) struct Plan {
    pub service: Service,
    preset: PresetName,
    sign: SignRequest,
    ask: Ask,
    https: Https,
    /// Names the exchange for the agent's cache: a digest of preset, key, assertion and flags.
    request: String,
}

/// An access token, as it is printed.
pub(super) struct Obtained {
    pub token: Zeroizing<String>,
    expires_at: Option<u64>,
    fields: Map<String, Value>,
    cached: bool,
    endpoint: Option<String>,
}

impl Plan {
    /// Checks the flags and makes the plan; nothing is signed or sent yet.
    pub fn new(sign: SignArgs, exchange: ExchangeArgs) -> Result<Plan, Failure> {
        let preset = sign
            .preset
            .clone()
            .ok_or_else(|| Failure::usage(format!("give --preset, one of {}", crate::exchange::PRESETS)))?;
        let service = Service::for_preset(preset.as_str()).ok_or_else(|| {
            Failure::usage(format!(
                "the preset {} has no exchange; jwt-agent token trades {}",
                preset.as_str(),
                crate::exchange::PRESETS
            ))
        })?;
        let (aud_given, scope_given) = (!sign.aud.is_empty(), !sign.scope.is_empty());
        let mut sign = sign;
        let mut ask = Ask {
            installation: exchange.installation,
            repo: exchange.repo,
            repositories: exchange.repositories,
            permissions: exchange.permissions.into_iter().collect(),
            api_url: exchange.api_url,
            token_url: exchange.token_url,
            scope: Vec::new(),
        };
        // Client credentials ask for scopes in the grant; Google's go in the assertion.
        if matches!(service, Service::ClientCredentials { .. }) {
            ask.scope = std::mem::take(&mut sign.scope);
        }
        service.check(
            &ask,
            aud_given,
            scope_given && !matches!(service, Service::ClientCredentials { .. }),
        )?;
        let https = Https::new(exchange.ca_file.as_deref())?;
        let sign = sign.into_request()?;
        let named = (preset.as_str(), SignRequest { fresh: false, ..sign.clone() }, &ask);
        let named = serde_json::to_vec(&named).map_err(|e| Failure::new(1, e.to_string()))?;
        let request = wire::hex(&Sha256::digest(&named));
        Ok(Plan { service, preset, sign, ask, https, request })
    }

    /// The access token: the one the agent keeps for this request (`keep`, and not `--fresh`),
    /// else a new one, which the agent keeps when `keep`.
    pub fn obtain(&self, agent: &mut Client, keep: bool) -> Result<Obtained, Failure> {
        let key = self.sign.key.clone();
        if keep
            && !self.sign.fresh
            && let Some(kept) = agent.access_token(&key, &self.request)?
        {
            let AccessToken { token, expires_at, fields } = kept;
            let token = Zeroizing::new(token.0.as_str().to_owned());
            return Ok(Obtained {
                token,
                expires_at: Some(expires_at),
                fields,
                cached: true,
                endpoint: None,
            });
        }
        let assertion = Zeroizing::new(agent.sign(self.sign.clone())?.token);
        let claims = claims_of(&assertion)?;
        let endpoint = self.service.endpoint(&self.ask, &claims)?;
        let mut report = ExchangedReport {
            preset: self.preset.clone(),
            key,
            client_id: claims.get("iss").and_then(Value::as_str).map(str::to_owned),
            endpoint: endpoint.clone(),
            outcome: ExchangeOutcome::Issued,
            reason: None,
            request: keep.then(|| self.request.clone()),
            token: None,
        };
        let issued = match self.service.exchange(&self.https, &endpoint, &assertion, &claims, &self.ask) {
            Ok(issued) => issued,
            Err(e) => {
                report.outcome = ExchangeOutcome::Failed;
                report.reason = Some(e.to_string());
                report.request = None;
                // The service's refusal is the error to show, whether or not the report lands.
                let _ = agent.exchanged(report);
                return Err(e.into());
            }
        };
        if keep && let Some(expires_at) = issued.expires_at {
            let token = SecretText(Zeroizing::new(issued.token.as_str().to_owned()));
            report.token = Some(AccessToken { token, expires_at, fields: issued.fields.clone() });
        }
        // An exchange the audit log cannot record is not handed out (and, where the service
        // allows, is revoked): the agent fails closed, and so does its client.
        if let Err(e) = agent.exchanged(report) {
            if let Err(revoke) = self.service.revoke(&self.https, &endpoint, &issued.token) {
                crate::warn!("cannot revoke the unrecorded token: {revoke}");
            }
            return Err(e.into());
        }
        Ok(Obtained {
            token: issued.token,
            expires_at: issued.expires_at,
            fields: issued.fields,
            cached: false,
            endpoint: Some(endpoint),
        })
    }

    /// Revokes a token `obtain` got (GitHub's, when `exec`'s command ends) and reports it.
    pub fn revoke(&self, agent: Option<&mut Client>, obtained: &Obtained) -> Result<(), ExchangeError> {
        let Some(endpoint) = obtained.endpoint.as_deref().filter(|_| self.service.revocable()) else {
            return Ok(());
        };
        let revoked = self.service.revoke(&self.https, endpoint, &obtained.token);
        if let Some(agent) = agent {
            let report = ExchangedReport {
                preset: self.preset.clone(),
                key: self.sign.key.clone(),
                client_id: None,
                endpoint: endpoint.to_owned(),
                outcome: if revoked.is_ok() { ExchangeOutcome::Revoked } else { ExchangeOutcome::Failed },
                reason: revoked.as_ref().err().map(|e| format!("revoking: {e}")),
                request: None,
                token: None,
            };
            if let Err(e) = agent.exchanged(report) {
                crate::warn!("cannot report the revocation to the agent: {e}");
            }
        }
        revoked
    }
}

/// `jwt-agent token`.
pub(super) fn token(args: TokenArgs) -> Result<(), Failure> {
    let socket = SocketArgs { socket: args.sign.socket.socket.clone() };
    let plan = Plan::new(args.sign, args.exchange)?;
    let mut agent = connect(&socket)?;
    let obtained = plan.obtain(&mut agent, true)?;
    if args.json {
        let json = obtained.json();
        let line = Zeroizing::new(json.to_string());
        crate::jwt::json::wipe(json);
        print_line(&line)
    } else {
        print_line(&obtained.token)
    }
}

impl Obtained {
    fn json(&self) -> Value {
        let mut out = Map::new();
        out.insert("token".into(), Value::from(self.token.as_str()));
        let expires = self
            .expires_at
            .map(|at| crate::log::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at)));
        out.insert("expires_at".into(), Value::from(expires));
        out.insert("cached".into(), Value::from(self.cached));
        for (name, value) in &self.fields {
            out.entry(name.clone()).or_insert_with(|| value.clone());
        }
        Value::Object(out)
    }
}

/// The claims of a compact JWS the agent returned, read as the agent reads signing input.
fn claims_of(token: &str) -> Result<Map<String, Value>, Failure> {
    let input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    crate::jwt::parse_signing_input(input)
        .map(|parsed| parsed.claims)
        .map_err(|e| Failure::new(1, format!("the agent returned something that is not a JWT: {e}")))
}
