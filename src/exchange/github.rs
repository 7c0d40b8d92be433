//! GitHub Apps: the app's JWT for an installation access token
//! (`POST /app/installations/{id}/access_tokens`), the installation found from a repository
//! when asked (`GET /repos/{owner}/{repo}/installation`), and the token revoked when `exec`'s
//! command ends (`DELETE /installation/token`).

use super::http::{Answer, Body, Https, printable};
use super::{Ask, ExchangeError, Issued, answer_object, issued, retry_hint};
use serde_json::{Map, Value};

/// GitHub.com's API.
pub const API: &str = "https://api.github.com";

/// The headers GitHub asks REST clients to send.
const HEADERS: &[(&str, &str)] =
    &[("Accept", "application/vnd.github+json"), ("X-GitHub-Api-Version", "2022-11-28")];

/// The permission levels GitHub knows.
const LEVELS: &[&str] = &["read", "write", "admin"];

pub(super) fn check(ask: &Ask, scope_given: bool) -> Result<(), ExchangeError> {
    let usage = |text: &str| Err(ExchangeError::Usage(text.to_owned()));
    if scope_given {
        return usage("--scope is not for GitHub; narrow the token with --repository and --permission");
    }
    if ask.token_url.is_some() {
        return usage("GitHub's token comes from its API; give --api-url for GitHub Enterprise Server");
    }
    match (&ask.installation, &ask.repo) {
        (Some(_), Some(_)) => return usage("give --installation or --repo, not both"),
        (None, None) => {
            return usage("give the installation: --installation ID, or --repo OWNER/REPO to look it up");
        }
        (None, Some(repo)) if !owner_repo(repo) => {
            return Err(ExchangeError::Usage(format!("--repo wants OWNER/REPO, not {repo:?}")));
        }
        _ => {}
    }
    if let Some(bad) = ask.repositories.iter().find(|name| !plain_name(name)) {
        return Err(ExchangeError::Usage(format!(
            "--repository wants a repository's name without its owner, not {bad:?}"
        )));
    }
    Ok(())
}

/// Parses `--permission NAME=LEVEL`.
pub fn parse_permission(pair: &str) -> Result<(String, String), String> {
    let (name, level) = pair
        .split_once('=')
        .filter(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .ok_or_else(|| format!("--permission wants NAME=LEVEL, such as contents=read, not {pair:?}"))?;
    if !LEVELS.contains(&level) {
        return Err(format!("the level of {name} must be {}, not {level:?}", LEVELS.join(", ")));
    }
    Ok((name.to_owned(), level.to_owned()))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn owner_repo(repo: &str) -> bool {
    repo.split_once('/').is_some_and(|(owner, name)| plain_name(owner) && plain_name(name))
}

pub(super) fn installation_token(
    https: &Https,
    api: &str,
    jwt: &str,
    ask: &Ask,
) -> Result<Issued, ExchangeError> {
    let installation = match (ask.installation, &ask.repo) {
        (Some(id), _) => id,
        (None, Some(repo)) => find_installation(https, api, jwt, repo)?,
        (None, None) => return Err(ExchangeError::Usage("give --installation or --repo".into())),
    };
    let mut body = Map::new();
    if !ask.repositories.is_empty() {
        body.insert("repositories".into(), Value::from(ask.repositories.clone()));
    }
    if !ask.permissions.is_empty() {
        let permissions = ask.permissions.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        body.insert("permissions".into(), Value::Object(permissions));
    }
    let body = Value::Object(body).to_string();
    let url = format!("{api}/app/installations/{installation}/access_tokens");
    let answer = https.send("POST", &url, Some(jwt), HEADERS, Body::Json(&body))?;
    if answer.status != 201 {
        return Err(refused(&answer, &format!("installation {installation}"), || {
            format!(
                "GitHub has no installation {installation} of this app; check --installation, or give --repo OWNER/REPO"
            )
        }));
    }
    let object = answer_object("GitHub", &answer)?;
    let expires_at = object.get("expires_at").and_then(Value::as_str).and_then(crate::log::parse_rfc3339);
    if expires_at.is_none() {
        return Err(ExchangeError::Refused("GitHub's answer has no expires_at time".into()));
    }
    let mut token = issued("GitHub", object, "token", expires_at)?;
    token.fields.insert("installation_id".into(), Value::from(installation));
    Ok(token)
}

fn find_installation(https: &Https, api: &str, jwt: &str, repo: &str) -> Result<u64, ExchangeError> {
    let url = format!("{api}/repos/{repo}/installation");
    let answer = https.send("GET", &url, Some(jwt), HEADERS, Body::None)?;
    if answer.status != 200 {
        return Err(refused(&answer, repo, || {
            format!(
                "the app is not installed on {repo}, or there is no such repository; install the app there, or check --repo"
            )
        }));
    }
    answer_object("GitHub", &answer)?
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| ExchangeError::Refused(format!("GitHub's answer for {repo}'s installation has no id")))
}

pub(super) fn revoke(https: &Https, api: &str, token: &str) -> Result<(), ExchangeError> {
    let url = format!("{api}/installation/token");
    let answer = https.send("DELETE", &url, Some(token), HEADERS, Body::None)?;
    match answer.status {
        204 => Ok(()),
        _ => Err(refused(&answer, "the installation token", || {
            "GitHub does not know the token any more".into()
        })),
    }
}

/// GitHub's error answers, in one sentence each. `what` names what was asked for; `not_found`
/// says what a 404 means there.
fn refused(answer: &Answer, what: &str, not_found: impl FnOnce() -> String) -> ExchangeError {
    let message = serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(|m| printable(m, 200)))
        .unwrap_or_else(|| printable(&answer.body, 120));
    let status = answer.status;
    let limited = answer.remaining.as_deref() == Some("0") || answer.retry_after.is_some();
    ExchangeError::Refused(match status {
        401 => format!(
            "GitHub refused the app's JWT (401: {message}); check that --iss is the app's client ID or app ID and that the app has this key's public key"
        ),
        403 | 429 if limited => match retry_hint(answer) {
            Some(when) => format!("GitHub's rate limit for the app is spent ({status}: {message}); {when}"),
            None => format!("GitHub's rate limit for the app is spent ({status}: {message})"),
        },
        404 => format!("{} (404: {message})", not_found()),
        422 => format!(
            "GitHub refused the token asked for {what} (422: {message}); check --repository and --permission"
        ),
        _ => format!("GitHub answered {status} for {what}: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_before_anything_is_signed() {
        let ask = |installation: Option<u64>, repo: Option<&str>| Ask {
            installation,
            repo: repo.map(str::to_owned),
            ..Ask::default()
        };
        assert!(check(&ask(Some(1), None), false).is_ok());
        assert!(check(&ask(None, Some("octo-org/app.rs")), false).is_ok());
        for bad in
            [ask(None, None), ask(Some(1), Some("a/b")), ask(None, Some("ab")), ask(None, Some("a/b/c"))]
        {
            assert!(check(&bad, false).is_err(), "{bad:?}");
        }
        assert!(check(&ask(Some(1), None), true).is_err(), "--scope taken");
        let repositories = Ask { repositories: vec!["owner/name".into()], ..ask(Some(1), None) };
        assert!(check(&repositories, false).is_err());
    }

    #[test]
    fn permissions_name_a_level() {
        assert_eq!(parse_permission("contents=read"), Ok(("contents".into(), "read".into())));
        assert_eq!(parse_permission("pull_requests=write").unwrap().0, "pull_requests");
        for bad in ["contents", "=read", "contents=all", "Contents=read", "a b=read"] {
            assert!(parse_permission(bad).is_err(), "{bad}");
        }
    }

    fn answer(status: u16, body: &str, remaining: Option<&str>, reset: Option<&str>) -> Answer {
        Answer {
            status,
            body: body.to_owned().into(),
            remaining: remaining.map(str::to_owned),
            reset: reset.map(str::to_owned),
            retry_after: None,
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = refused(
            &answer(401, r#"{"message":"A JSON web token could not be decoded"}"#, None, None),
            "x",
            String::new,
        );
        assert!(
            e.to_string().contains("401: A JSON web token could not be decoded")
                && e.to_string().contains("--iss")
        );
        let reset = (crate::jwt::now() + 600).to_string();
        let e = refused(
            &answer(403, r#"{"message":"API rate limit exceeded"}"#, Some("0"), Some(&reset)),
            "x",
            String::new,
        );
        assert!(e.to_string().contains("rate limit") && e.to_string().contains("resets at"), "{e}");
        let e =
            refused(&answer(404, r#"{"message":"Not Found"}"#, None, None), "o/r", || "not installed".into());
        assert_eq!(e.to_string(), "not installed (404: Not Found)");
        let e = refused(&answer(403, "<html>", Some("10"), None), "x", String::new);
        assert_eq!(e.to_string(), "GitHub answered 403 for x: <html>");
    }
}
