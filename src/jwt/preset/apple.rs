//! Apple's services, one definition each: App Store Connect, App Store Server, APNs, Sign in
//! with Apple, WeatherKit and MusicKit. docs/apple.md gives each one's rules and sources.

use super::{Preset, Required, Rule, fixed as claims, ttl};
use crate::jwt::alg::Alg;
use crate::jwt::time::Ttl;
use serde_json::{Map, Value};

/// How long an APNs token (which has no `exp`) is handed out again: never refreshed more often
/// than every 20 minutes (APNs answers 429 then), never used past 60.
pub const APNS_REUSE: Ttl = ttl(50 * MINUTE);

const MINUTE: u64 = 60;
const DAY: u64 = 86400;
/// Sign in with Apple and MusicKit: "no more than 15777000 seconds (6 months)".
const SIX_MONTHS: u64 = 15_777_000;
/// Apple's servers may run a little behind the caller's clock.
const BACKDATE: Ttl = ttl(30);
const ASC_AUDIENCE: &str = "appstoreconnect-v1";

/// What every Apple preset shares: ES256, the key's kid, iat backdated 30 s.
fn apple(name: &str) -> Preset {
    Preset { alg: Some(Alg::Es256), backdate: Some(BACKDATE), ..Preset::named(name) }
}

fn team_id() -> Required {
    Required::new("iss", Some("your team ID"))
}

/// The six presets.
pub(super) fn presets() -> Vec<Preset> {
    vec![
        Preset {
            typ: Some("JWT".into()),
            claims: claims(&[("aud", ASC_AUDIENCE)]),
            ttl: Some(ttl(20 * MINUTE)),
            max_ttl: Some(ttl(20 * MINUTE)),
            rules: vec![Rule::TeamOrIndividual, Rule::Scopes],
            ..apple("app-store-connect")
        },
        Preset {
            typ: Some("JWT".into()),
            claims: claims(&[("aud", ASC_AUDIENCE)]),
            required: vec![
                Required::new("iss", None),
                Required::new("bid", Some("the app's bundle ID, --bid")),
            ],
            ttl: Some(ttl(20 * MINUTE)),
            max_ttl: Some(ttl(60 * MINUTE)),
            ..apple("app-store-server")
        },
        Preset {
            required: vec![team_id()],
            forbidden: vec!["aud".into()],
            exp: false,
            reuse: Some(APNS_REUSE),
            ..apple("apns")
        },
        Preset {
            claims: claims(&[("aud", "https://appleid.apple.com")]),
            required: vec![team_id(), Required::new("sub", Some("the client ID, --sub"))],
            ttl: Some(ttl(180 * DAY)),
            max_ttl: Some(ttl(SIX_MONTHS)),
            ..apple("sign-in-with-apple")
        },
        Preset {
            required: vec![team_id(), Required::new("sub", Some("the service ID, --sub"))],
            only: Some(["iss", "iat", "exp", "sub"].map(String::from).to_vec()),
            ttl: Some(ttl(60 * MINUTE)),
            rules: vec![Rule::IdOfIssAndSub],
            ..apple("weatherkit")
        },
        Preset {
            required: vec![team_id()],
            ttl: Some(ttl(180 * DAY)),
            max_ttl: Some(ttl(SIX_MONTHS)),
            rules: vec![Rule::StringList { claim: "origin", items: "origins" }],
            ..apple("musickit")
        },
    ]
}

/// The `scope` of an App Store Connect token: a list of `METHOD /path` strings, if any.
pub(super) fn scopes(claims: &Map<String, Value>) -> Result<Option<Vec<&str>>, String> {
    match claims.get("scope") {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().ok_or_else(|| "scope must be a list of strings".to_owned()))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err("scope must be a list of strings, such as [\"GET /v1/apps\"]".into()),
    }
}

/// App Store Connect's cap: 180 days when every scope entry is a GET of a long-lived resource,
/// else 20 minutes.
pub(super) fn scope_cap(claims: &Map<String, Value>) -> (u64, Option<&'static str>) {
    match scopes(claims) {
        Ok(Some(scopes)) if !scopes.is_empty() && scopes.iter().all(|s| long_lived(s)) => {
            (180 * DAY, Some("180 days for GET requests of long-lived resources"))
        }
        _ => (20 * MINUTE, Some("20 minutes, unless every scope is a GET of a long-lived resource")),
    }
}

/// The App Store Connect resources whose GET requests may use tokens of up to 180 days: Build
/// Actions, Build Runs, Git References, Issues, macOS Versions, Products, Providers, Power and
/// Performance Metrics and Logs, Pull Requests, Repositories, Test Results, Workflows and Xcode
/// Versions, by the path names the API gives them.
const LONG_LIVED: &[&str] = &[
    "ciBuildActions",
    "ciBuildRuns",
    "scmGitReferences",
    "ciIssues",
    "ciMacOsVersions",
    "ciProducts",
    "scmProviders",
    "perfPowerMetrics",
    "diagnosticSignatures",
    "diagnosticLogs",
    "scmPullRequests",
    "scmRepositories",
    "ciTestResults",
    "ciWorkflows",
    "ciXcodeVersions",
];

/// Whether a scope entry is a GET of a long-lived resource: `GET /v1/ciBuildRuns/ID`, or the
/// metrics of an app or build, `GET /v1/apps/ID/perfPowerMetrics`.
fn long_lived(scope: &str) -> bool {
    let Some(path) = scope.strip_prefix("GET ") else { return false };
    let path = path.split('?').next().unwrap_or("");
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Apple's examples write scopes with and without the API version.
    if segments
        .first()
        .is_some_and(|s| s.len() >= 2 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit()))
    {
        segments.remove(0);
    }
    let first = segments.first().copied().unwrap_or("");
    let last = segments.last().copied().unwrap_or("");
    LONG_LIVED.contains(&first) || matches!(last, "perfPowerMetrics" | "diagnosticSignatures")
}

#[cfg(test)]
mod tests {
    use super::super::{PresetError, Presets};
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn fill(preset: &str, claims: Value, ttl: Option<u64>) -> Result<(Value, Value), PresetError> {
        let presets = Presets::builtin();
        let preset = presets.get(preset).unwrap();
        let mut header = Map::new();
        let mut claims = claims.as_object().unwrap().clone();
        let ttl = ttl.map(|secs| Ttl::from_secs(secs).unwrap());
        preset.fill(
            &mut header,
            &mut claims,
            ttl,
            Some("ABC123DEFG"),
            crate::jwt::preset::KeyFacts::default(),
            NOW,
        )?;
        Ok((Value::Object(header), Value::Object(claims)))
    }

    #[test]
    fn each_preset_fills_what_its_service_needs() {
        let iat = NOW - 30;
        let (h, c) = fill("app-store-connect", json!({"iss": "team-uuid"}), None).unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}));
        assert_eq!(
            c,
            json!({"iss": "team-uuid", "iat": iat, "exp": iat + 1200, "aud": "appstoreconnect-v1"})
        );

        let (_, c) = fill("app-store-connect", json!({"sub": "user"}), None).unwrap();
        assert_eq!(c["sub"], "user");
        assert!(c.get("iss").is_none());

        // The App Store Server API token people sign in-process today: bid, 30 minutes.
        let (h, c) =
            fill("app-store-server", json!({"iss": "team-uuid", "bid": "com.example.app"}), Some(1800))
                .unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}));
        assert_eq!(
            c,
            json!({"iss": "team-uuid", "iat": iat, "exp": iat + 1800, "aud": "appstoreconnect-v1", "bid": "com.example.app"})
        );

        let (h, c) = fill("apns", json!({"iss": "TEAMID1234"}), None).unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG"}));
        assert_eq!(c, json!({"iss": "TEAMID1234", "iat": iat}));

        let (_, c) =
            fill("sign-in-with-apple", json!({"iss": "TEAMID1234", "sub": "com.example.web"}), None).unwrap();
        assert_eq!(c["aud"], "https://appleid.apple.com");
        assert_eq!(c["exp"], iat + 180 * 86400);

        let (h, c) =
            fill("weatherkit", json!({"iss": "TEAMID1234", "sub": "com.example.weather"}), None).unwrap();
        assert_eq!(h["id"], "TEAMID1234.com.example.weather");
        assert_eq!(
            c,
            json!({"iss": "TEAMID1234", "iat": iat, "exp": iat + 3600, "sub": "com.example.weather"})
        );

        let (_, c) =
            fill("musickit", json!({"iss": "TEAMID1234", "origin": ["https://example.com"]}), None).unwrap();
        assert_eq!(c["exp"], iat + 180 * 86400);
    }

    #[test]
    fn what_the_service_would_reject_is_refused() {
        let refused = [
            ("app-store-connect", json!({"iss": "t"}), Some(21 * 60), "at most 20m"),
            (
                "app-store-connect",
                json!({"iss": "t", "scope": ["GET /v1/apps"]}),
                Some(2 * 86400),
                "at most 20m",
            ),
            (
                "app-store-connect",
                json!({"iss": "t", "scope": ["POST /v1/ciBuildRuns"]}),
                Some(86400),
                "at most 20m",
            ),
            (
                "app-store-connect",
                json!({"iss": "t", "scope": ["GET /v1/ciBuildRuns"]}),
                Some(181 * 86400),
                "at most 180d",
            ),
            ("app-store-connect", json!({"iss": "t", "scope": "GET /v1/apps"}), None, "list of strings"),
            ("app-store-connect", json!({}), None, "iss claim"),
            ("app-store-connect", json!({"iss": "t", "sub": "user"}), None, "not both"),
            ("app-store-connect", json!({"sub": "admin"}), None, "only be \"user\""),
            ("app-store-connect", json!({"iss": "t", "aud": "other"}), None, "aud must be"),
            ("app-store-server", json!({"iss": "t"}), None, "bid claim"),
            ("app-store-server", json!({"iss": "t", "bid": "b"}), Some(61 * 60), "at most 1h"),
            ("apns", json!({"iss": "t"}), Some(600), "no exp"),
            ("apns", json!({"iss": "t", "aud": "x"}), None, "no aud"),
            ("apns", json!({}), None, "team ID"),
            ("sign-in-with-apple", json!({"iss": "t"}), None, "client ID"),
            ("sign-in-with-apple", json!({"iss": "t", "sub": "c"}), Some(15_777_001), "at most"),
            ("weatherkit", json!({"iss": "t", "sub": "s", "aud": "x"}), None, "only, not aud"),
            ("weatherkit", json!({"iss": "t"}), None, "service ID"),
            ("musickit", json!({"iss": "t", "origin": "https://x"}), None, "list of origins"),
            ("musickit", json!({"iss": "t", "exp": 5}), None, "agent sets exp"),
        ];
        for (preset, claims, ttl, want) in refused {
            let error = fill(preset, claims.clone(), ttl).unwrap_err();
            assert!(error.to_string().contains(want), "{preset} {claims} {ttl:?}: {error}");
        }
        let presets = Presets::builtin();
        let mut header = Map::new();
        header.insert("alg".into(), Value::from("ES384"));
        let error = presets
            .get("apns")
            .unwrap()
            .fill(&mut header, &mut Map::new(), None, Some("k"), crate::jwt::preset::KeyFacts::default(), NOW)
            .unwrap_err();
        assert!(error.to_string().contains("ES256"), "{error}");
    }

    #[test]
    fn a_callers_iat_cannot_stretch_a_lifetime() {
        let presets = Presets::builtin();
        let asc = presets.get("app-store-connect").unwrap();
        let header = json!({"alg": "ES256", "kid": "k", "typ": "JWT"});
        let header = header.as_object().unwrap();
        let check = |iat: u64, exp: u64| {
            let claims = json!({"iss": "t", "aud": "appstoreconnect-v1", "iat": iat, "exp": exp});
            asc.check(header, claims.as_object().unwrap(), NOW)
        };
        assert!(check(NOW, NOW + 1200).is_ok());
        let later = NOW + 10 * 365 * 86400;
        assert!(check(later, later + 1200).unwrap_err().to_string().contains("ahead of the agent's clock"));
        assert!(check(u64::MAX, 4_102_444_800).unwrap_err().to_string().contains("ahead"));
        // An iat in the past makes exp - iat the longer, one a little ahead exp - now.
        assert!(check(NOW - 600, NOW + 1200).unwrap_err().to_string().contains("at most 20m"));
        assert!(check(NOW + 50, NOW + 1210).unwrap_err().to_string().contains("at most 20m"));
    }

    #[test]
    fn long_lived_scopes_may_live_180_days() {
        for scope in [
            "GET /v1/ciBuildRuns/123",
            "GET /ciProducts",
            "GET /v1/apps/1/perfPowerMetrics",
            "GET /v1/scmRepositories?limit=5",
        ] {
            let claims = json!({"iss": "t", "scope": [scope]});
            assert!(fill("app-store-connect", claims, Some(180 * 86400)).is_ok(), "{scope}");
        }
        for scope in ["GET /v1/apps", "DELETE /v1/ciProducts/1", "GET", "get /v1/ciProducts"] {
            assert!(!long_lived(scope), "{scope}");
        }
    }

    #[test]
    fn every_builtin_is_known_by_name() {
        let presets = Presets::builtin();
        for name in
            ["app-store-connect", "app-store-server", "apns", "sign-in-with-apple", "weatherkit", "musickit"]
        {
            assert_eq!(presets.get(name).unwrap().name, name);
        }
        assert!(presets.get("asc").unwrap_err().contains("app-store-connect"));
    }
}
