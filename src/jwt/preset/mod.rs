//! Apple's token rules, one preset per service: what each fills in, and what each refuses before
//! anything is signed. The same checks serve `sign --preset`, the policy on `sign-input`, and
//! `verify --preset`.

use crate::jwt::MAX_IAT_AHEAD_SECS;
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// How far `iat` is set back against clocks that run a little ahead of Apple's.
pub const BACKDATE_SECS: u64 = 30;
/// How long an APNs token (which has no `exp`) is reused: never refreshed more often than every
/// 20 minutes (APNs answers 429 then), never used past 60.
pub const APNS_REUSE_SECS: u64 = 50 * 60;

const ASC_AUDIENCE: &str = "appstoreconnect-v1";
const SIWA_AUDIENCE: &str = "https://appleid.apple.com";
const MINUTE: u64 = 60;
const DAY: u64 = 86400;
/// Sign in with Apple and MusicKit: "no more than 15777000 seconds (6 months)".
const SIX_MONTHS: u64 = 15_777_000;

/// An Apple service's token rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// App Store Connect API (team keys; individual keys with `sub: "user"`).
    AppStoreConnect,
    /// App Store Server API.
    AppStoreServer,
    /// Apple Push Notification service, token-based connections.
    Apns,
    /// Sign in with Apple client secrets.
    SignInWithApple,
    /// WeatherKit REST API.
    WeatherKit,
    /// MusicKit / Apple Music API developer tokens.
    MusicKit,
}

/// A rule a token broke, named so the caller knows what the service would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{preset}: {rule}")]
pub struct PresetError {
    /// The preset.
    pub preset: Preset,
    /// The rule, as a sentence.
    pub rule: String,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 6] = [
        Preset::AppStoreConnect,
        Preset::AppStoreServer,
        Preset::Apns,
        Preset::SignInWithApple,
        Preset::WeatherKit,
        Preset::MusicKit,
    ];

    /// Its name, as `--preset` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::AppStoreConnect => "app-store-connect",
            Preset::AppStoreServer => "app-store-server",
            Preset::Apns => "apns",
            Preset::SignInWithApple => "sign-in-with-apple",
            Preset::WeatherKit => "weatherkit",
            Preset::MusicKit => "musickit",
        }
    }

    /// The lifetime a token gets when no ttl is given; `None`: no `exp` at all (APNs).
    pub fn default_ttl(self) -> Option<u64> {
        match self {
            Preset::AppStoreConnect | Preset::AppStoreServer => Some(20 * MINUTE),
            Preset::Apns => None,
            Preset::SignInWithApple | Preset::MusicKit => Some(180 * DAY),
            Preset::WeatherKit => Some(60 * MINUTE),
        }
    }

    fn error(self, rule: impl Into<String>) -> PresetError {
        PresetError { preset: self, rule: rule.into() }
    }

    /// Completes a token for this service from what the caller gave: sets `alg`, `kid` (the
    /// key's unless given), `typ` where the service wants it, `iat` (now, less
    /// [`BACKDATE_SECS`]), `exp` from the ttl or the default, and the service's fixed claims; then
    /// [`check`](Self::check)s the result.
    pub fn fill(
        self,
        header: &mut Map<String, Value>,
        claims: &mut Map<String, Value>,
        ttl: Option<u64>,
        key_kid: Option<&str>,
        now: u64,
    ) -> Result<(), PresetError> {
        if let Some(alg) = header.get("alg").filter(|alg| *alg != "ES256") {
            return Err(self.error(format!("tokens are signed with ES256, not {alg}")));
        }
        header.insert("alg".into(), Value::from("ES256"));
        if !header.contains_key("kid") {
            let kid = key_kid.ok_or_else(|| self.error("the token needs a kid (--kid)"))?;
            header.insert("kid".into(), Value::from(kid));
        }
        if matches!(self, Preset::AppStoreConnect | Preset::AppStoreServer) {
            header.entry("typ").or_insert_with(|| Value::from("JWT"));
        }
        for time in ["iat", "exp"] {
            if claims.contains_key(time) {
                return Err(self.error(format!("the agent sets {time}; give a ttl instead")));
            }
        }
        let iat = now.saturating_sub(BACKDATE_SECS);
        claims.insert("iat".into(), Value::from(iat));
        match (ttl.or(self.default_ttl()), self) {
            (Some(_), Preset::Apns) => {
                return Err(self.error("APNs tokens have no exp; the agent reuses each for up to 50 minutes"));
            }
            (Some(ttl), _) => {
                let exp =
                    iat.checked_add(ttl).ok_or_else(|| self.error("iat + ttl is past the end of time"))?;
                claims.insert("exp".into(), Value::from(exp));
            }
            (None, _) => {}
        }
        match self {
            Preset::AppStoreConnect | Preset::AppStoreServer => {
                claims.entry("aud").or_insert_with(|| Value::from(ASC_AUDIENCE));
            }
            Preset::SignInWithApple => {
                claims.entry("aud").or_insert_with(|| Value::from(SIWA_AUDIENCE));
            }
            Preset::WeatherKit => {
                // The header's id is TEAMID.SERVICEID: the issuer and the subject.
                if let (Some(iss), Some(sub)) = (str_claim(claims, "iss"), str_claim(claims, "sub")) {
                    header.entry("id").or_insert_with(|| Value::from(format!("{iss}.{sub}")));
                }
            }
            Preset::Apns | Preset::MusicKit => {}
        }
        self.check(header, claims, now)
    }

    /// Checks a finished token's header and claims against the service's rules at `now`: an
    /// `iat` at most [`MAX_IAT_AHEAD_SECS`] ahead, and a cap on both `exp - iat` and `exp - now`,
    /// so that a caller's `iat` cannot stretch a token's life.
    pub fn check(
        self,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(), PresetError> {
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(self.error("the header's alg must be ES256"));
        }
        if str_claim(header, "kid").is_none() {
            return Err(self.error("the header needs a kid: the key's ID from Apple"));
        }
        let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| self.error("iat must be set"))?;
        if iat > now.saturating_add(MAX_IAT_AHEAD_SECS) {
            return Err(self.error(format!(
                "iat is {} s ahead of the agent's clock; at most {MAX_IAT_AHEAD_SECS} s is allowed",
                iat - now
            )));
        }
        let exp = claims.get("exp").map(|exp| exp.as_u64().ok_or_else(|| self.error("exp must be a number")));
        let exp = exp.transpose()?;
        // The longer of exp - iat and exp - now: an iat in the past makes the first longer, one
        // in the future the second.
        let lifetime = exp.map(|exp| exp.saturating_sub(iat).max(exp.saturating_sub(now)));
        if exp.is_some_and(|exp| exp <= iat) {
            return Err(self.error("exp must be after iat"));
        }
        let require = |name: &str| {
            str_claim(claims, name)
                .map(|_| ())
                .ok_or_else(|| self.error(format!("the {name} claim is required")))
        };
        let audience = |want: &str| match claims.get("aud").and_then(Value::as_str) {
            Some(aud) if aud == want => Ok(()),
            _ => Err(self.error(format!("aud must be {want:?}"))),
        };
        let cap = |max: u64, what: &str| match lifetime {
            None => Err(self.error("the token needs an exp")),
            Some(lifetime) if lifetime > max => Err(self.error(format!(
                "the lifetime (exp - iat, or exp - now if longer) is {} and may be at most {} ({what})",
                human(lifetime),
                human(max)
            ))),
            Some(_) => Ok(()),
        };
        match self {
            Preset::AppStoreConnect => {
                audience(ASC_AUDIENCE)?;
                match (claims.get("iss"), claims.get("sub")) {
                    (Some(_), None) => require("iss")?,
                    (None, Some(sub)) if sub == "user" => {}
                    (None, Some(_)) => return Err(self.error("sub may only be \"user\" (individual keys)")),
                    (Some(_), Some(_)) => {
                        return Err(self.error("team keys have iss, individual keys sub \"user\"; not both"));
                    }
                    (None, None) => {
                        return Err(self.error("the iss claim (issuer ID) is required, or --sub user"));
                    }
                }
                match scopes(claims).map_err(|rule| self.error(rule))? {
                    Some(scopes) if !scopes.is_empty() && scopes.iter().all(|s| long_lived(s)) => {
                        cap(180 * DAY, "180 days for GET requests of long-lived resources")
                    }
                    _ => cap(20 * MINUTE, "20 minutes, unless every scope is a GET of a long-lived resource"),
                }
            }
            Preset::AppStoreServer => {
                require("iss")?;
                audience(ASC_AUDIENCE)?;
                require("bid")
                    .map_err(|_| self.error("the bid claim (the app's bundle ID, --bid) is required"))?;
                cap(60 * MINUTE, "60 minutes")
            }
            Preset::Apns => {
                require("iss").map_err(|_| self.error("the iss claim (your team ID) is required"))?;
                for (name, why) in [("exp", "APNs tokens have no exp"), ("aud", "APNs tokens have no aud")] {
                    if claims.contains_key(name) {
                        return Err(self.error(why));
                    }
                }
                Ok(())
            }
            Preset::SignInWithApple => {
                require("iss").map_err(|_| self.error("the iss claim (your team ID) is required"))?;
                require("sub").map_err(|_| self.error("the sub claim (the client ID, --sub) is required"))?;
                audience(SIWA_AUDIENCE)?;
                cap(SIX_MONTHS, "15777000 seconds")
            }
            Preset::WeatherKit => {
                require("iss").map_err(|_| self.error("the iss claim (your team ID) is required"))?;
                require("sub")
                    .map_err(|_| self.error("the sub claim (the service ID, --sub) is required"))?;
                if let Some(extra) =
                    claims.keys().find(|k| !["iss", "iat", "exp", "sub"].contains(&k.as_str()))
                {
                    return Err(self
                        .error(format!("WeatherKit tokens carry iss, iat, exp and sub only, not {extra}")));
                }
                let want = format!(
                    "{}.{}",
                    str_claim(claims, "iss").unwrap_or(""),
                    str_claim(claims, "sub").unwrap_or("")
                );
                if str_claim(header, "id") != Some(want.as_str()) {
                    return Err(self.error(format!("the header's id must be TEAMID.SERVICEID, {want:?}")));
                }
                lifetime.map(|_| ()).ok_or_else(|| self.error("the token needs an exp"))
            }
            Preset::MusicKit => {
                require("iss").map_err(|_| self.error("the iss claim (your team ID) is required"))?;
                if let Some(origin) = claims.get("origin")
                    && !origin.as_array().is_some_and(|o| o.iter().all(Value::is_string))
                {
                    return Err(self.error("origin must be a list of origins"));
                }
                cap(SIX_MONTHS, "15777000 seconds")
            }
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(name: &str) -> Result<Preset, String> {
        Preset::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            format!("unknown preset {name:?} (presets: {})", names.join(", "))
        })
    }
}

fn str_claim<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    map.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn scopes(claims: &Map<String, Value>) -> Result<Option<Vec<&str>>, &'static str> {
    match claims.get("scope") {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().ok_or("scope must be a list of strings"))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err("scope must be a list of strings, such as [\"GET /v1/apps\"]"),
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

fn human(secs: u64) -> String {
    match secs {
        s if s % DAY == 0 => format!("{}d", s / DAY),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn fill(preset: Preset, claims: Value, ttl: Option<u64>) -> Result<(Value, Value), PresetError> {
        let mut header = Map::new();
        let mut claims = claims.as_object().unwrap().clone();
        preset.fill(&mut header, &mut claims, ttl, Some("ABC123DEFG"), NOW)?;
        Ok((Value::Object(header), Value::Object(claims)))
    }

    #[test]
    fn each_preset_fills_what_its_service_needs() {
        let iat = NOW - 30;
        let (h, c) = fill(Preset::AppStoreConnect, json!({"iss": "team-uuid"}), None).unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}));
        assert_eq!(
            c,
            json!({"iss": "team-uuid", "iat": iat, "exp": iat + 1200, "aud": "appstoreconnect-v1"})
        );

        let (_, c) = fill(Preset::AppStoreConnect, json!({"sub": "user"}), None).unwrap();
        assert_eq!(c["sub"], "user");
        assert!(c.get("iss").is_none());

        // The App Store Server API token people sign in-process today: bid, 30 minutes.
        let (h, c) =
            fill(Preset::AppStoreServer, json!({"iss": "team-uuid", "bid": "com.example.app"}), Some(1800))
                .unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}));
        assert_eq!(
            c,
            json!({"iss": "team-uuid", "iat": iat, "exp": iat + 1800, "aud": "appstoreconnect-v1", "bid": "com.example.app"})
        );

        let (h, c) = fill(Preset::Apns, json!({"iss": "TEAMID1234"}), None).unwrap();
        assert_eq!(h, json!({"alg": "ES256", "kid": "ABC123DEFG"}));
        assert_eq!(c, json!({"iss": "TEAMID1234", "iat": iat}));

        let (_, c) =
            fill(Preset::SignInWithApple, json!({"iss": "TEAMID1234", "sub": "com.example.web"}), None)
                .unwrap();
        assert_eq!(c["aud"], "https://appleid.apple.com");
        assert_eq!(c["exp"], iat + 180 * 86400);

        let (h, c) =
            fill(Preset::WeatherKit, json!({"iss": "TEAMID1234", "sub": "com.example.weather"}), None)
                .unwrap();
        assert_eq!(h["id"], "TEAMID1234.com.example.weather");
        assert_eq!(
            c,
            json!({"iss": "TEAMID1234", "iat": iat, "exp": iat + 3600, "sub": "com.example.weather"})
        );

        let (_, c) =
            fill(Preset::MusicKit, json!({"iss": "TEAMID1234", "origin": ["https://example.com"]}), None)
                .unwrap();
        assert_eq!(c["exp"], iat + 180 * 86400);
    }

    #[test]
    fn what_the_service_would_reject_is_refused() {
        let refused = [
            (Preset::AppStoreConnect, json!({"iss": "t"}), Some(21 * 60), "at most 20m"),
            (
                Preset::AppStoreConnect,
                json!({"iss": "t", "scope": ["GET /v1/apps"]}),
                Some(2 * 86400),
                "at most 20m",
            ),
            (
                Preset::AppStoreConnect,
                json!({"iss": "t", "scope": ["POST /v1/ciBuildRuns"]}),
                Some(86400),
                "at most 20m",
            ),
            (
                Preset::AppStoreConnect,
                json!({"iss": "t", "scope": ["GET /v1/ciBuildRuns"]}),
                Some(181 * 86400),
                "at most 180d",
            ),
            (Preset::AppStoreConnect, json!({"iss": "t", "scope": "GET /v1/apps"}), None, "list of strings"),
            (Preset::AppStoreConnect, json!({}), None, "iss claim"),
            (Preset::AppStoreConnect, json!({"iss": "t", "sub": "user"}), None, "not both"),
            (Preset::AppStoreConnect, json!({"sub": "admin"}), None, "only be \"user\""),
            (Preset::AppStoreConnect, json!({"iss": "t", "aud": "other"}), None, "aud must be"),
            (Preset::AppStoreServer, json!({"iss": "t"}), None, "bid claim"),
            (Preset::AppStoreServer, json!({"iss": "t", "bid": "b"}), Some(61 * 60), "at most 1h"),
            (Preset::Apns, json!({"iss": "t"}), Some(600), "no exp"),
            (Preset::Apns, json!({"iss": "t", "aud": "x"}), None, "no aud"),
            (Preset::Apns, json!({}), None, "team ID"),
            (Preset::SignInWithApple, json!({"iss": "t"}), None, "client ID"),
            (Preset::SignInWithApple, json!({"iss": "t", "sub": "c"}), Some(15_777_001), "at most"),
            (Preset::WeatherKit, json!({"iss": "t", "sub": "s", "aud": "x"}), None, "only, not aud"),
            (Preset::WeatherKit, json!({"iss": "t"}), None, "service ID"),
            (Preset::MusicKit, json!({"iss": "t", "origin": "https://x"}), None, "list of origins"),
            (Preset::MusicKit, json!({"iss": "t", "exp": 5}), None, "agent sets exp"),
        ];
        for (preset, claims, ttl, want) in refused {
            let error = fill(preset, claims.clone(), ttl).unwrap_err();
            assert!(error.to_string().contains(want), "{preset} {claims} {ttl:?}: {error}");
        }
        let mut header = Map::new();
        header.insert("alg".into(), Value::from("ES384"));
        let error = Preset::Apns.fill(&mut header, &mut Map::new(), None, Some("k"), NOW).unwrap_err();
        assert!(error.to_string().contains("ES256"), "{error}");
    }

    #[test]
    fn a_callers_iat_cannot_stretch_a_lifetime() {
        let header = json!({"alg": "ES256", "kid": "k", "typ": "JWT"});
        let header = header.as_object().unwrap();
        let check = |iat: u64, exp: u64| {
            let claims = json!({"iss": "t", "aud": "appstoreconnect-v1", "iat": iat, "exp": exp});
            Preset::AppStoreConnect.check(header, claims.as_object().unwrap(), NOW)
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
            assert!(fill(Preset::AppStoreConnect, claims, Some(180 * 86400)).is_ok(), "{scope}");
        }
        for scope in ["GET /v1/apps", "DELETE /v1/ciProducts/1", "GET", "get /v1/ciProducts"] {
            assert!(!long_lived(scope), "{scope}");
        }
    }

    #[test]
    fn names_round_trip() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>(), Ok(preset));
        }
        assert!("asc".parse::<Preset>().unwrap_err().contains("app-store-connect"));
    }
}
