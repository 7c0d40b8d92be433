//! The services beyond Apple that CI runners sign assertions for: GitHub Apps, Google service
//! accounts, OAuth client assertions (RFC 7523), Snowflake, Salesforce, DocuSign and Firebase.
//! docs/services.md gives each one's rules and their sources.

use super::{Preset, Required, Rule, fixed, non_empty, ttl};
use crate::jwt::alg::Alg;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
/// Google's OAuth token endpoint, the `aud` of its JWT-bearer grant.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const FIREBASE_AUDIENCE: &str =
    "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit";

/// What these presets share: `typ: JWT`, no kid unless the service looks keys up by it, `iat`
/// now, and RS256 unless the preset says otherwise.
fn service(name: &str) -> Preset {
    Preset { alg: Some(Alg::Rs256), typ: Some("JWT".into()), kid: false, ..Preset::named(name) }
}

fn required(claim: &str, what: &str) -> Required {
    Required::new(claim, Some(what))
}

pub(super) fn presets() -> Vec<Preset> {
    vec![
        Preset {
            required: vec![required("iss", "the app's client ID or app ID, --iss")],
            // GitHub: "set this 60 seconds in the past to allow for clock drift", and an exp
            // "no more than 10 minutes into the future".
            backdate: Some(ttl(60)),
            ttl: Some(ttl(9 * MINUTE)),
            max_ttl: Some(ttl(10 * MINUTE)),
            ..service("github-app")
        },
        Preset {
            kid: true,
            required: vec![required("iss", "the service account's client_email, --iss")],
            ttl: Some(ttl(HOUR)),
            max_ttl: Some(ttl(HOUR)),
            rules: vec![Rule::GoogleScopeOrAud],
            ..service("google-service-account")
        },
        Preset {
            alg: None,
            kid: true,
            required: vec![
                required("iss", "the client ID, --iss"),
                required("aud", "the token endpoint or the issuer, --aud"),
            ],
            ttl: Some(ttl(5 * MINUTE)),
            max_ttl: Some(ttl(HOUR)),
            cache: false,
            rules: vec![Rule::SubIsIss, Rule::FreshJti],
            ..service("oauth-client-assertion")
        },
        Preset {
            required: vec![required("sub", "ACCOUNT.USER, --sub")],
            ttl: Some(ttl(59 * MINUTE)),
            max_ttl: Some(ttl(HOUR)),
            rules: vec![Rule::Snowflake],
            ..service("snowflake")
        },
        Preset {
            typ: None,
            required: vec![
                required("iss", "the connected app's consumer key, --iss"),
                required("sub", "the username, --sub"),
                required(
                    "aud",
                    "https://login.salesforce.com, https://test.salesforce.com or a community URL, --aud",
                ),
            ],
            ttl: Some(ttl(3 * MINUTE)),
            max_ttl: Some(ttl(3 * MINUTE)),
            rules: vec![Rule::AudOneOf {
                audiences: &["https://login.salesforce.com", "https://test.salesforce.com"],
                url: true,
            }],
            ..service("salesforce")
        },
        Preset {
            claims: fixed(&[("scope", "signature impersonation")]),
            required: vec![
                required("iss", "the integration key, --iss"),
                required("sub", "the user ID, --sub"),
                required("aud", "account-d.docusign.com (demo) or account.docusign.com, --aud"),
            ],
            ttl: Some(ttl(HOUR)),
            max_ttl: Some(ttl(HOUR)),
            rules: vec![Rule::AudOneOf {
                audiences: &["account-d.docusign.com", "account.docusign.com"],
                url: false,
            }],
            ..service("docusign")
        },
        Preset {
            alg: Some(Alg::Ps256),
            kid: false,
            required: vec![
                required("iss", "the application (client) ID, --iss"),
                required("aud", "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token, --aud"),
            ],
            ttl: Some(ttl(10 * MINUTE)),
            max_ttl: Some(ttl(HOUR)),
            cache: false,
            rules: vec![Rule::SubIsIss, Rule::FreshJti, Rule::Entra],
            ..service("entra")
        },
        Preset {
            claims: fixed(&[("aud", FIREBASE_AUDIENCE)]),
            required: vec![required("iss", "the service account's email, --iss")],
            ttl: Some(ttl(HOUR)),
            max_ttl: Some(ttl(HOUR)),
            rules: vec![Rule::SubIsIss, Rule::FirebaseUid],
            ..service("firebase-custom-token")
        },
    ]
}

/// 128 random bits, base64url: a `jti` no other assertion has.
pub(super) fn fresh_jti() -> Result<String, String> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).map_err(|e| format!("no randomness for the jti: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bits))
}

pub(super) fn google_fill(claims: &mut Map<String, Value>) {
    // --scope gives a list; Google takes the scopes joined by spaces.
    if let Some(Value::Array(items)) = claims.get("scope")
        && items.iter().all(Value::is_string)
    {
        let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
        let joined = joined.join(" ");
        claims.insert("scope".into(), Value::from(joined));
    }
    if claims.contains_key("scope") {
        claims.entry("aud").or_insert_with(|| Value::from(GOOGLE_TOKEN_URL));
    } else if claims.contains_key("aud")
        && let Some(iss) = non_empty(claims, "iss").map(str::to_owned)
    {
        claims.entry("sub").or_insert_with(|| Value::from(iss));
    }
}

pub(super) fn google_check(claims: &Map<String, Value>) -> Result<(), String> {
    let aud = non_empty(claims, "aud");
    match (claims.get("scope"), aud) {
        (Some(scope), Some(GOOGLE_TOKEN_URL)) => match scope.as_str() {
            Some(scope) if !scope.trim().is_empty() => Ok(()),
            _ => Err("scope must be the scopes, joined by spaces".into()),
        },
        (Some(_), _) => Err(format!(
            "a token with --scope is for the OAuth grant, whose aud is {GOOGLE_TOKEN_URL}; give either --scope or --aud, never both"
        )),
        (None, Some(aud)) if aud.starts_with("https://") && aud != GOOGLE_TOKEN_URL => {
            if non_empty(claims, "sub").is_some() && non_empty(claims, "sub") == non_empty(claims, "iss") {
                Ok(())
            } else {
                Err("a self-signed JWT for an API has sub = iss, the service account's email".into())
            }
        }
        (None, Some(_)) => {
            Err("aud must be the API's https URL, such as https://pubsub.googleapis.com/".into())
        }
        (None, None) => Err(
            "give --scope (an OAuth grant at the token endpoint) or --aud (a self-signed JWT for one API)"
                .into(),
        ),
    }
}

pub(super) fn snowflake_fill(
    claims: &mut Map<String, Value>,
    fingerprint: Option<&str>,
) -> Result<(), String> {
    let Some(sub) = non_empty(claims, "sub").map(str::to_uppercase) else { return Ok(()) };
    if claims.contains_key("iss") {
        return Err(
            "the agent sets iss from --sub and the key's fingerprint; give --sub ACCOUNT.USER only".into()
        );
    }
    let fingerprint = fingerprint.ok_or("the key has no public key to take the fingerprint of")?;
    claims.insert("iss".into(), Value::from(format!("{sub}.{fingerprint}")));
    claims.insert("sub".into(), Value::from(sub));
    Ok(())
}

pub(super) fn snowflake_check(claims: &Map<String, Value>) -> Result<(), String> {
    let sub = non_empty(claims, "sub").unwrap_or("");
    let (account, user) = sub.split_once('.').unwrap_or(("", ""));
    if account.is_empty() || user.is_empty() || sub != sub.to_uppercase() {
        return Err(format!("sub must be ACCOUNT.USER in capitals, not {sub:?}"));
    }
    match non_empty(claims, "iss").and_then(|iss| iss.strip_prefix(sub)) {
        Some(rest) if rest.starts_with(".SHA256:") && rest.len() > 8 => Ok(()),
        _ => Err("iss must be ACCOUNT.USER.SHA256:FINGERPRINT, the key's public key fingerprint".into()),
    }
}

pub(super) fn aud_one_of(claims: &Map<String, Value>, audiences: &[&str], url: bool) -> Result<(), String> {
    let aud = non_empty(claims, "aud").unwrap_or("");
    if audiences.contains(&aud) || (url && aud.starts_with("https://") && aud.len() > 8) {
        return Ok(());
    }
    let shapes = audiences.join(" or ");
    Err(if url {
        format!("aud must be {shapes} or your community's https URL, not {aud:?}")
    } else {
        format!("aud must be {shapes}, not {aud:?}")
    })
}

pub(super) fn entra_fill(
    header: &mut Map<String, Value>,
    claims: &mut Map<String, Value>,
    x5t_s256: Option<&str>,
) -> Result<(), String> {
    if !header.contains_key("x5t#S256") {
        let x5t = x5t_s256.ok_or(
            "the key has no certificate on the token: make one with `jwt-agent cert KEY` and register it with the app",
        )?;
        header.insert("x5t#S256".into(), Value::from(x5t));
    }
    if let Some(iat) = claims.get("iat").cloned() {
        claims.entry("nbf").or_insert(iat);
    }
    Ok(())
}

pub(super) fn entra_check(header: &Map<String, Value>, claims: &Map<String, Value>) -> Result<(), String> {
    if non_empty(header, "x5t#S256").is_none_or(|x5t| x5t.len() != 43) {
        return Err("the header needs x5t#S256, the base64url SHA-256 of the key's certificate".into());
    }
    if claims.get("nbf").and_then(Value::as_u64).is_none() {
        return Err("nbf must be set".into());
    }
    let aud = non_empty(claims, "aud").unwrap_or("");
    let tenant = aud
        .strip_prefix("https://login.microsoftonline.com/")
        .and_then(|rest| rest.strip_suffix("/oauth2/v2.0/token"))
        .filter(|tenant| !tenant.is_empty() && !tenant.contains('/'));
    match tenant {
        Some(_) => Ok(()),
        None => Err(format!(
            "aud must be https://login.microsoftonline.com/TENANT/oauth2/v2.0/token, not {aud:?}"
        )),
    }
}

pub(super) fn firebase_check(claims: &Map<String, Value>) -> Result<(), String> {
    match claims.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() && uid.chars().count() <= 128 => {}
        _ => return Err("uid (--claim uid=...) is required, 1 to 128 characters".into()),
    }
    match claims.get("claims") {
        Some(value) if !value.is_object() => {
            Err("claims, the developer claims, must be a JSON object".into())
        }
        _ => Ok(()),
    }
}
