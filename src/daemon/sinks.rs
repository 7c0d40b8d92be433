//! Token file sinks (`[[sinks]]` in the config): files the daemon keeps holding a valid token,
//! for tools that read their bearer token from a file. Each is renewed when half its lifetime
//! is gone (an APNs token when it is 50 minutes old), replaced atomically, and made 0600.

use super::agent::Agent;
use super::outcome::Times;
use crate::config::Sink;
use crate::wire::SignRequest;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait before trying again when a token could not be had or written.
const RETRY: Duration = Duration::from_secs(30);

/// Keeps `sink`'s file holding a valid token until the daemon stops.
pub async fn keep(agent: Arc<Agent>, sink: Sink) {
    loop {
        let request = SignRequest {
            key: sink.key.clone(),
            preset: sink.preset.clone(),
            header: sink.header.clone(),
            claims: sink.claims.clone(),
            ttl: sink.ttl,
            fresh: false,
        };
        let wait = match agent.sign_as_daemon(request).await {
            Ok(signed) => {
                let path = sink.path.clone();
                let line = format!("{}\n", signed.result.token);
                match tokio::task::spawn_blocking(move || {
                    crate::files::replace_private(&path, line.as_bytes())
                })
                .await
                {
                    Ok(Ok(())) => renew_in(signed.times),
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

/// When the cache would stop handing out the token: half its lifetime after `iat`, or its
/// reuse time for a token without `exp`; then a new one is signed.
fn renew_in(times: Times) -> Duration {
    let now = crate::jwt::now();
    let renew_at = match (times.iat, times.exp) {
        (Some(iat), Some(exp)) => (exp - exp.saturating_sub(iat) / 2).saturating_add(1),
        (Some(iat), None) => iat.saturating_add(times.reuse),
        _ => now.saturating_add(RETRY.as_secs()),
    };
    Duration::from_secs(renew_at.saturating_sub(now).max(1))
}
