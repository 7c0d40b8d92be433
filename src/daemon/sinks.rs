//! Token file sinks (`[[sinks]]` in the config): files the daemon keeps holding a valid token,
//! for tools that read their bearer token from a file. Each is renewed when half its lifetime
//! is gone (an APNs token when it is 50 minutes old), replaced atomically, and made 0600.

use super::agent::Agent;
use crate::config::Sink;
use crate::jwt::preset::APNS_REUSE_SECS;
use crate::wire::SignRequest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait before trying again when a token could not be had or written.
const RETRY: Duration = Duration::from_secs(30);

/// Keeps `sink`'s file holding a valid token until the daemon stops.
pub async fn keep(agent: Arc<Agent>, sink: Sink) {
    loop {
        let request = SignRequest {
            key: sink.key.clone(),
            preset: sink.preset.map(|p| p.name().to_owned()),
            header: sink.header.clone(),
            claims: sink.claims.clone(),
            ttl: sink.ttl.clone(),
            fresh: false,
        };
        let wait = match agent.sign_as_daemon(request).await {
            Ok(token) => {
                let path = sink.path.clone();
                let line = format!("{token}\n");
                match tokio::task::spawn_blocking(move || {
                    crate::files::replace_private(&path, line.as_bytes())
                })
                .await
                {
                    Ok(Ok(())) => renew_in(&token),
                    Ok(Err(e)) => {
                        crate::warn!("cannot write the token sink {}: {e}", sink.path.display());
                        RETRY
                    }
                    Err(_) => RETRY,
                }
            }
            Err(e) => {
                crate::warn!("no token for the sink {}: {e}", sink.path.display());
                RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// When the cache would stop handing out `token`: half its lifetime after `iat`, or 50
/// minutes for a token without `exp`; then a new one is signed.
fn renew_in(token: &str) -> Duration {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    let time = |name: &str| claims.as_ref().and_then(|c| c.get(name)).and_then(serde_json::Value::as_u64);
    let now = crate::jwt::now();
    let renew_at = match (time("iat"), time("exp")) {
        (Some(iat), Some(exp)) => exp - (exp.saturating_sub(iat)) / 2 + 1,
        (Some(iat), None) => iat + APNS_REUSE_SECS,
        _ => now + RETRY.as_secs(),
    };
    Duration::from_secs(renew_at.saturating_sub(now).max(1))
}
