//! Apple presets and the token cache through the real daemon: each preset's token checked
//! against its service's rules (and verified by PyJWT), every refusal with exit 4 and nothing
//! signed, and cache hits shared across separate CLI processes.

mod common;

use common::*;
use serde_json::{Value, json};

const TEAM: &str = "57246542-96fe-1a63-e053-0824d011072a";

fn sign(hsm: &Hsm, args: &[&str]) -> (i32, String, String) {
    run(hsm.cli().args(["sign", "--key", KEY]).args(args))
}

fn signatures(hsm: &Hsm) -> u64 {
    let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
    serde_json::from_str::<Value>(&out).unwrap()["counters"]["signatures"].as_u64().unwrap()
}

#[test]
fn each_preset_makes_the_token_its_service_wants() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let public = hsm.public_pem(KEY);
    let cases: Vec<(&[&str], Value, Value, u64)> = vec![
        (
            &["--preset", "app-store-connect", "--kid", "ABC123DEFG", "--iss", TEAM],
            json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}),
            json!({"iss": TEAM, "aud": "appstoreconnect-v1"}),
            1200,
        ),
        (
            &[
                "--preset",
                "app-store-connect",
                "--kid",
                "ABC123DEFG",
                "--sub",
                "user",
                "--scope",
                "GET /v1/apps",
            ],
            json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}),
            json!({"sub": "user", "aud": "appstoreconnect-v1", "scope": ["GET /v1/apps"]}),
            1200,
        ),
        (
            &[
                "--preset",
                "app-store-connect",
                "--iss",
                TEAM,
                "--scope",
                "GET /v1/ciBuildRuns",
                "--ttl",
                "180d",
            ],
            json!({"alg": "ES256", "kid": KEY, "typ": "JWT"}),
            json!({"iss": TEAM, "aud": "appstoreconnect-v1", "scope": ["GET /v1/ciBuildRuns"]}),
            180 * 86400,
        ),
        // The App Store Server API token people sign in-process today: bid, 30 minutes.
        (
            &[
                "--preset",
                "app-store-server",
                "--kid",
                "ABC123DEFG",
                "--iss",
                TEAM,
                "--bid",
                "com.example.app",
                "--ttl",
                "30m",
            ],
            json!({"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}),
            json!({"iss": TEAM, "aud": "appstoreconnect-v1", "bid": "com.example.app"}),
            1800,
        ),
        (
            &[
                "--preset",
                "sign-in-with-apple",
                "--kid",
                "K",
                "--iss",
                "TEAMID1234",
                "--sub",
                "com.example.web",
            ],
            json!({"alg": "ES256", "kid": "K"}),
            json!({"iss": "TEAMID1234", "sub": "com.example.web", "aud": "https://appleid.apple.com"}),
            180 * 86400,
        ),
        (
            &["--preset", "weatherkit", "--kid", "K", "--iss", "TEAMID1234", "--sub", "com.example.weather"],
            json!({"alg": "ES256", "kid": "K", "id": "TEAMID1234.com.example.weather"}),
            json!({"iss": "TEAMID1234", "sub": "com.example.weather"}),
            3600,
        ),
        (
            &[
                "--preset",
                "musickit",
                "--kid",
                "K",
                "--iss",
                "TEAMID1234",
                "--claim",
                "origin=[\"https://example.com\"]",
            ],
            json!({"alg": "ES256", "kid": "K"}),
            json!({"iss": "TEAMID1234", "origin": ["https://example.com"]}),
            180 * 86400,
        ),
    ];
    for (args, want_header, want_claims, lifetime) in cases {
        let (code, token, err) = sign(&hsm, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let (header, mut claims) = verify_p256(token.trim(), &public);
        assert_eq!(header, want_header, "{args:?}");
        let iat = claims["iat"].as_u64().unwrap();
        assert!(now() - iat >= 29 && now() - iat <= 35, "iat is backdated 30 s: {iat} vs {}", now());
        assert_eq!(claims["exp"].as_u64().unwrap() - iat, lifetime, "{args:?}");
        let map = claims.as_object_mut().unwrap();
        map.remove("iat");
        map.remove("exp");
        assert_eq!(claims, want_claims, "{args:?}");
        verify_pyjwt(token.trim(), &public);
        let preset = args[1];
        let (code, _, err) = run(hsm.cli().args(["verify", token.trim(), "--key", KEY, "--preset", preset]));
        assert_eq!(code, 0, "{preset}: {err}");
    }
    // APNs: iss and iat only, no exp and no aud.
    let (code, token, _) = sign(&hsm, &["--preset", "apns", "--kid", "K", "--iss", "TEAMID1234"]);
    assert_eq!(code, 0);
    let (header, claims) = verify_p256(token.trim(), &public);
    assert_eq!(header, json!({"alg": "ES256", "kid": "K"}));
    assert_eq!(claims.as_object().unwrap().keys().collect::<Vec<_>>(), ["iat", "iss"]);
}

#[test]
fn what_apple_would_reject_never_leaves_the_agent() {
    let hsm = Hsm::new();
    let p384 = hsm.path("p384.pem");
    openssl_key("EC:P-384", &p384);
    let _agent = hsm.agent();
    hsm.add_key("EC:P-384", &p384, "p384");
    let cases: &[(&[&str], &str)] = &[
        (&["--preset", "app-store-connect", "--iss", TEAM, "--ttl", "21m"], "at most 20m"),
        (
            &["--preset", "app-store-connect", "--iss", TEAM, "--ttl", "2d", "--scope", "GET /v1/apps"],
            "at most 20m",
        ),
        (
            &[
                "--preset",
                "app-store-connect",
                "--iss",
                TEAM,
                "--ttl",
                "181d",
                "--scope",
                "GET /v1/ciProducts",
            ],
            "at most 180d",
        ),
        (
            &[
                "--preset",
                "app-store-connect",
                "--iss",
                TEAM,
                "--ttl",
                "1d",
                "--scope",
                "POST /v1/ciBuildRuns",
            ],
            "at most 20m",
        ),
        (&["--preset", "app-store-connect"], "iss claim"),
        (&["--preset", "app-store-connect", "--iss", TEAM, "--sub", "user"], "not both"),
        (&["--preset", "app-store-server", "--iss", TEAM], "bid claim"),
        (&["--preset", "app-store-server", "--iss", TEAM, "--bid", "b", "--ttl", "61m"], "at most 1h"),
        (&["--preset", "apns", "--iss", "T", "--ttl", "10m"], "no exp"),
        (&["--preset", "apns", "--iss", "T", "--aud", "x"], "no aud"),
        (&["--preset", "apns"], "team ID"),
        (&["--preset", "sign-in-with-apple", "--iss", "T"], "client ID"),
        (&["--preset", "sign-in-with-apple", "--iss", "T", "--sub", "c", "--ttl", "183d"], "at most"),
        (&["--preset", "weatherkit", "--iss", "T", "--sub", "s", "--claim", "extra=1"], "not extra"),
        (&["--preset", "weatherkit", "--iss", "T"], "service ID"),
        (&["--preset", "musickit", "--iss", "T", "--claim", "origin=https://x"], "list of origins"),
        (&["--preset", "musickit", "--iss", "T", "--claim", "exp=99"], "agent sets exp"),
        (&["--preset", "app-store-connect", "--iss", TEAM, "--alg", "ES384"], "ES256"),
    ];
    for (args, want) in cases {
        let (code, out, err) = sign(&hsm, args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
    // A P-384 key cannot make an ES256 token for Apple.
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", "p384", "--preset", "apns", "--iss", "T"]));
    assert_eq!(code, 4);
    assert!(err.contains("not ES256"), "{err}");
    // Any preset name goes to the daemon, whose config may define more presets; it refuses one it
    // does not know, naming those it does (this was a usage error, 2, when the CLI knew them all).
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", KEY, "--preset", "asc"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unknown preset \"asc\"") && err.contains("app-store-connect"), "{err}");
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", KEY, "--preset", "Not A Name"]));
    assert_eq!(code, 2, "{err}");
    assert_eq!(signatures(&hsm), 0, "nothing was signed");
}

#[test]
fn the_cache_is_shared_across_processes_and_fresh_forces_a_new_token() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let args = ["--preset", "app-store-connect", "--iss", TEAM];
    let first = sign(&hsm, &args).1;
    let second = sign(&hsm, &args).1;
    assert_eq!(first, second, "a second process got the cached token");
    assert_eq!(signatures(&hsm), 1);

    let fresh = sign(&hsm, &[&args[..], &["--fresh"]].concat()).1;
    assert_ne!(fresh, first);
    assert_eq!(signatures(&hsm), 2);
    assert_eq!(sign(&hsm, &args).1, fresh, "--fresh replaced the cached token");

    // Other claims, another ttl or another preset are other tokens.
    assert_ne!(sign(&hsm, &["--preset", "app-store-connect", "--iss", "other-team"]).1, fresh);
    assert_ne!(sign(&hsm, &[&args[..], &["--ttl", "10m"]].concat()).1, fresh);
    let apns = sign(&hsm, &["--preset", "apns", "--iss", "TEAMID1234"]).1;
    assert_eq!(sign(&hsm, &["--preset", "apns", "--iss", "TEAMID1234"]).1, apns, "APNs tokens are reused");
    assert_eq!(signatures(&hsm), 5);

    // The answer says whether it came from the cache; sign_input never does.
    let mut conn = Conn::new(&hsm.socket());
    let request = json!({"op": "sign", "key": KEY, "preset": "app-store-connect", "claims": {"iss": TEAM}});
    let answer = conn.request(request);
    assert_eq!((answer["cached"].as_bool(), answer["token"].as_str()), (Some(true), Some(fresh.trim())));
    let input = signing_input(r#"{"alg":"ES256"}"#, r#"{"iss":"x"}"#);
    let a = conn.request(json!({"op": "sign_input", "key": KEY, "input": input}));
    let b = conn.request(json!({"op": "sign_input", "key": KEY, "input": input}));
    assert_ne!(a["token"], b["token"], "ECDSA signatures differ: sign_input was signed twice");
    assert!(a.get("cached").is_none());
    let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["counters"]["signatures"], 7);
    assert_eq!(status["cache"]["hits"], 4);
    assert_eq!(status["cache"]["size"], 4);
    assert_eq!(status["per_key"][KEY]["cache_hits"], 4);
}

#[test]
fn a_cached_token_has_at_least_half_its_life_left() {
    // A token with a 4 s lifetime is reused for its first 2 s only.
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let args = ["--iss", "x", "--ttl", "4s"];
    let first = sign(&hsm, &args).1;
    let (_, claims) = decode(&first);
    let exp = claims["exp"].as_u64().unwrap();
    let mut renewed = false;
    for _ in 0..60 {
        // Read the clock before asking: the daemon reads its own after, so its `exp - now` is
        // at most this one (read after, a second may tick between the two).
        let now = now();
        let token = sign(&hsm, &args).1;
        if token == first {
            assert!(exp - now >= 2, "a token with {} s of 4 left was served from the cache", exp - now);
        } else {
            renewed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(renewed, "the cached token was never renewed");
}
