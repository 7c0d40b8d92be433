//! Around the daemon: `exec`, completions and the man page, token file sinks, and the Rust
//! client library.

mod common;

use common::*;
use jwt_agent::Client;
use jwt_agent::wire::{PubkeyFormat, SignRequest};
use serde_json::{Map, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn exec_runs_a_command_with_the_token_in_its_environment() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let out = hsm
        .cli()
        .args(["exec", "--key", KEY, "--iss", "exec", "--ttl", "5m", "--env", "ASC_TOKEN", "--"])
        .args(["sh", "-c", "printf %s \"$ASC_TOKEN\"; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "the command's exit status is exec's");
    let token = String::from_utf8(out.stdout).unwrap();
    let (_, claims) = verify_p256(&token, &hsm.public_pem(KEY));
    assert_eq!(claims["iss"], "exec");
    let (code, _, err) = run(hsm.cli().args(["exec", "--key", KEY, "--env", "A=B", "--", "true"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(hsm.cli().args(["exec", "--key", KEY, "--", "/nonexistent/program"]));
    assert_eq!(code, 127, "{err}");
    let (code, _, _) = run(hsm.cli().args(["exec", "--key", "missing", "--", "true"]));
    assert_eq!(code, 5, "no token, no command");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = run(std::process::Command::new(BIN).args(["completions", shell]));
        assert_eq!(code, 0);
        assert!(out.contains("sign-input") && out.contains("preset"), "{shell}");
    }
    let (code, out, _) = run(std::process::Command::new(BIN).arg("man"));
    assert_eq!(code, 0);
    assert!(out.starts_with(".ie") || out.contains(".TH jwt-agent"), "{out:.200}");
    assert!(out.contains("sign\\-input"), "every command is listed");
}

#[test]
fn token_sinks_hold_a_valid_token_renewed_before_it_expires() {
    let hsm = Hsm::new();
    let short = hsm.path("short.jwt");
    let apns = hsm.path("apns.jwt");
    let config = hsm.config(&format!(
        r#"
[[sinks]]
key = "{KEY}"
path = "{}"
ttl = "4s"
claims = {{ iss = "sink", aud = "https://api.example.com" }}

[[sinks]]
key = "{KEY}"
path = "{}"
preset = "apns"
claims = {{ iss = "TEAMID1234" }}
"#,
        short.display(),
        apns.display()
    ));
    let _agent = hsm.agent_with(&["--config", &config]);
    let wait_for = |path: &std::path::Path, not: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.is_empty()
                && text != not
            {
                return text;
            }
            assert!(Instant::now() < deadline, "{} was not written", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = wait_for(&short, "");
    assert!(first.ends_with('\n'));
    let (_, claims) = verify_p256(first.trim(), &hsm.public_pem(KEY));
    assert_eq!(
        (claims["iss"].as_str(), claims["aud"].as_str()),
        (Some("sink"), Some("https://api.example.com"))
    );
    assert_eq!(std::fs::metadata(&short).unwrap().permissions().mode() & 0o777, 0o600);
    let (header, claims) = verify_p256(wait_for(&apns, "").trim(), &hsm.public_pem(KEY));
    assert_eq!((header["kid"].as_str(), claims.get("exp")), (Some(KEY), None));

    // A 4 s token is replaced once half of it is gone, before it expires.
    let second = wait_for(&short, &first);
    let (_, first_claims) = decode(first.trim());
    let (_, second_claims) = decode(second.trim());
    assert!(second_claims["iat"].as_u64() > first_claims["iat"].as_u64());
    assert!(
        second_claims["iat"].as_u64().unwrap() <= first_claims["exp"].as_u64().unwrap(),
        "renewed before expiry"
    );
    let leftovers: Vec<_> = std::fs::read_dir(hsm.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files were left: {leftovers:?}");
}

#[test]
fn the_client_library_speaks_to_the_agent() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let mut agent = Client::connect(&hsm.socket()).unwrap();
    let input = signing_input(r#"{"alg":"ES256"}"#, r#"{"iss":"lib"}"#);
    verify_p256(&agent.sign_input(KEY, &input).unwrap(), &hsm.public_pem(KEY));
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from("lib"));
    let request = SignRequest { key: KEY.into(), claims, ttl: "5m".parse().ok(), ..SignRequest::default() };
    let signed = agent.sign(request.clone()).unwrap();
    assert!(!signed.cached);
    assert!(agent.sign(request).unwrap().cached, "the same connection gets the cached token");
    assert_eq!(agent.keys().unwrap().keys[0].label, KEY);
    let pem = agent.pubkey(Some(KEY), PubkeyFormat::Pem).unwrap().pem.unwrap();
    assert_eq!(pem.trim(), hsm.public_pem(KEY).trim());
    assert_eq!(agent.status().unwrap().counters.signatures, 2);
    let error = agent.sign_input("missing", &input).unwrap_err();
    assert_eq!(error.code(), Some(jwt_agent::ErrorCode::UnknownKey));
}

#[test]
fn bench_runs_and_reports_the_specs_shape() {
    // A smoke run, so the load generator keeps working; its numbers are not asserted here.
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let (code, out, err) = run(hsm
        .cli()
        .args(["bench", "--connections", "2", "--seconds", "1", "--direct", "--json", "--pin-file"])
        .arg(&hsm.pin_file));
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    for side in ["agent", "direct"] {
        for field in ["rate", "p50_ms", "p99_ms", "max_ms"] {
            assert!(report[side][field].as_f64().is_some(), "{side}.{field} in {report}");
        }
        assert!(report[side]["rate"].as_f64().unwrap() > 0.0);
        assert_eq!(report[side]["errors"], 0);
    }
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
    let (code, out, _) = run(hsm.cli().args(["bench", "--connections", "1", "--seconds", "1", "--cached"]));
    assert_eq!(code, 0);
    assert!(out.contains("cached sign") && out.contains("signatures/s"), "{out}");
}
