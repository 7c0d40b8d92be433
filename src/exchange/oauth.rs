//! OAuth 2.0 grants with a signed assertion (RFC 7523): client credentials authenticated by a
//! `client_assertion` (Entra ID, Okta, Auth0, Keycloak), and the JWT-bearer grant (Google,
//! Salesforce, DocuSign). Errors follow RFC 6749 section 5.2: `error`, `error_description`.

use super::http::{Answer, Body, Https, printable};
use super::{ExchangeError, Issued, answer_object, issued, retry_hint};
use serde_json::Value;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub(super) fn client_credentials(
    https: &Https,
    service: &str,
    endpoint: &str,
    assertion: &str,
    client_id: Option<&str>,
    scope: &[String],
) -> Result<Issued, ExchangeError> {
    let scope = scope.join(" ");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(client_id) = client_id {
        form.push(("client_id", client_id));
    }
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    grant(https, service, endpoint, &form)
}

pub(super) fn jwt_bearer(
    https: &Https,
    service: &str,
    endpoint: &str,
    assertion: &str,
) -> Result<Issued, ExchangeError> {
    grant(https, service, endpoint, &[("grant_type", JWT_BEARER), ("assertion", assertion)])
}

fn grant(
    https: &Https,
    service: &str,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<Issued, ExchangeError> {
    let answer = https.send("POST", endpoint, None, &[("Accept", "application/json")], Body::Form(form))?;
    if answer.status != 200 {
        return Err(refused(service, &answer));
    }
    let object = answer_object(service, &answer)?;
    // RFC 6749 says a number; some services send a string of one.
    let expires_in = match object.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let expires_at = expires_in.map(|secs| crate::jwt::now().saturating_add(secs));
    issued(service, object, "access_token", expires_at)
}

fn refused(service: &str, answer: &Answer) -> ExchangeError {
    let status = answer.status;
    let json = serde_json::from_str::<Value>(&answer.body).ok();
    let field = |name: &str| {
        json.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(|text| printable(text, 300))
    };
    let (error, description) = (field("error"), field("error_description"));
    let said = match (&error, &description) {
        (Some(error), Some(description)) => format!("{status} {error}: {description}"),
        (Some(error), None) => format!("{status} {error}"),
        _ => format!("{status}: {}", printable(&answer.body, 120)),
    };
    let hint = match error.as_deref() {
        Some("invalid_client" | "unauthorized_client") => Some(
            "check --iss (the client ID) and that the client has this key's public key or certificate registered",
        ),
        Some("invalid_scope") => Some("check --scope"),
        Some("invalid_grant") if service == "Salesforce" => Some(
            "check --iss (the consumer key) and --sub (the username), and that the user is pre-authorized for the connected app",
        ),
        Some("consent_required") => {
            Some("the user must grant consent to the integration key once, in a browser")
        }
        Some("invalid_grant") => Some("check --iss, --sub and the key registered with the service"),
        _ => None,
    };
    let retry = (status == 429 || status == 503).then(|| retry_hint(answer)).flatten();
    ExchangeError::Refused(match (hint, retry) {
        (Some(hint), _) => format!("{service} refused the assertion ({said}); {hint}"),
        (None, Some(retry)) => format!("{service} refused the assertion ({said}); {retry}"),
        (None, None) => format!("{service} refused the assertion ({said})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer { status, body: body.to_owned().into(), remaining: None, reset: None, retry_after: None }
    }

    #[test]
    fn errors_quote_the_service_and_say_what_to_check() {
        let e = refused(
            "Entra ID",
            &answer(401, r#"{"error":"invalid_client","error_description":"AADSTS700027: bad"}"#),
        );
        assert_eq!(
            e.to_string(),
            "Entra ID refused the assertion (401 invalid_client: AADSTS700027: bad); check --iss (the client ID) and that the client has this key's public key or certificate registered"
        );
        let e = refused(
            "Salesforce",
            &answer(
                400,
                r#"{"error":"invalid_grant","error_description":"user hasn't approved this consumer"}"#,
            ),
        );
        assert!(e.to_string().contains("pre-authorized"), "{e}");
        let e = refused("Google", &answer(502, "Bad gateway\n"));
        assert_eq!(e.to_string(), "Google refused the assertion (502: Bad gateway)");
    }
}
