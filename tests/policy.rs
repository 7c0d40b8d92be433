//! The config file, per-key policy on `sign` and `sign-input`, other uids, and the audit log,
//! through the real daemon.

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const TEAM: &str = "57246542-96fe-1a63-e053-0824d011072a";

fn config(hsm: &Hsm, extra: &str) -> String {
    hsm.config(&format!(
        r#"
[daemon]
module = "{module}"
token = "{TOKEN_LABEL}"
pin_file = "{pin}"
socket = "{socket}"
audit_log = "audit.jsonl"
{extra}
"#,
        module = hsm.module.display(),
        pin = hsm.pin_file.display(),
        socket = hsm.socket().display(),
    ))
}

fn daemon_from_config(hsm: &Hsm, config: &str) -> Command {
    let mut command = hsm.cli();
    command.args(["daemon", "--config", config]);
    command
}

#[test]
fn the_daemon_starts_from_the_config_alone_and_flags_override_it() {
    let hsm = Hsm::new();
    let path = config(&hsm, "");
    {
        let _agent = Agent::spawn(daemon_from_config(&hsm, &path), hsm.socket());
        assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
        let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["audit_log"], hsm.path("audit.jsonl").to_str().unwrap());
    }
    // A flag beats the file: the file names a token that does not exist, the flag the real one.
    let bad = hsm.config(&std::fs::read_to_string(&path).unwrap().replace(TOKEN_LABEL, "no-such-token"));
    let (code, _, err) = run(&mut daemon_from_config(&hsm, &bad));
    assert_eq!(code, 5, "{err}");
    let mut command = daemon_from_config(&hsm, &bad);
    command.args(["--token", TOKEN_LABEL]);
    let _agent = Agent::spawn(command, hsm.socket());
    assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
}

#[test]
fn a_config_with_an_unknown_field_or_bad_value_stops_the_daemon_at_start() {
    let hsm = Hsm::new();
    for (extra, want) in [
        ("colour = \"red\"", "unknown field `colour`"),
        ("[keys.asc]\nmax_tll = \"20m\"", "unknown field `max_tll`"),
        ("[keys.asc]\nmax_ttl = \"twenty\"", "not a duration"),
        ("[keys.asc]\npreset = \"asc\"", "unknown preset"),
        ("[keys.asc]\nallowed_uids = \"all\"", "allowed_uids"),
    ] {
        let path = config(&hsm, extra);
        let (code, out, err) = run(&mut daemon_from_config(&hsm, &path));
        assert_eq!(code, 1, "{extra}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(want) && err.contains("config"), "{extra}: {err}");
        assert!(!hsm.socket().exists());
    }
    let (code, _, err) = run(hsm.cli().args(["daemon", "--config", "/nonexistent/config.toml"]));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the config"), "{err}");
}

#[test]
fn key_policy_binds_sign_and_sign_input() {
    let hsm = Hsm::new();
    hsm.import_p256("open", "02");
    let path = config(
        &hsm,
        &format!(
            r#"
[keys.asc]
preset = "app-store-connect"
kid = "ABC123DEFG"
iss = "{TEAM}"
presets = ["app-store-connect"]
allowed_aud = ["appstoreconnect-v1"]
max_ttl = "20m"

[keys.open]
allowed_aud = ["https://api.example.com"]
"#
        ),
    );
    let _agent = Agent::spawn(daemon_from_config(&hsm, &path), hsm.socket());
    // The key's defaults make `sign --key asc` an App Store Connect token.
    let (code, token, err) = run(hsm.cli().args(["sign", "--key", KEY]));
    assert_eq!(code, 0, "{err}");
    let (header, claims) = verify_p256(token.trim(), &hsm.public_pem(KEY));
    assert_eq!(header["kid"], "ABC123DEFG");
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(TEAM), Some("appstoreconnect-v1")));

    let denied: &[&[&str]] = &[
        &["sign", "--key", KEY, "--preset", "apns", "--iss", "T"],
        &["sign", "--key", "open", "--aud", "https://evil.example.com", "--ttl", "5m"],
        &["sign", "--key", "open", "--ttl", "5m"],
    ];
    for args in denied {
        let (code, out, err) = run(hsm.cli().args(*args));
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(out.is_empty());
    }
    assert_eq!(run(hsm.cli().args(["sign", "--key", "open", "--aud", "https://api.example.com"])).0, 0);

    // sign-input: the daemon reads the claims of what it is asked to sign.
    let now = now();
    let asc_input = |exp: u64, aud: &str| {
        let claims = json!({"iss": TEAM, "iat": now, "exp": exp, "aud": aud});
        signing_input(r#"{"alg":"ES256","kid":"ABC123DEFG","typ":"JWT"}"#, &claims.to_string())
    };
    let cases = [
        (asc_input(now + 1200, "appstoreconnect-v1"), 0, ""),
        (asc_input(now + 3600, "appstoreconnect-v1"), 4, "at most 20m"),
        (asc_input(now + 600, "elsewhere"), 4, "app-store-connect"),
        (signing_input(r#"{"alg":"ES256"}"#, r#"{"iss":"x"}"#), 4, "signs only app-store-connect tokens"),
    ];
    for (input, want_code, want) in cases {
        let (code, out, err) = run(hsm.cli().args(["sign-input", "--key", KEY, &input]));
        assert_eq!(code, want_code, "{input}: {err}");
        assert!(err.contains(want), "{err}");
        if code == 0 {
            verify_p256(out.trim(), &hsm.public_pem(KEY));
        }
    }
}

const PARTNER: &str = r#"
[presets.partner-api]
alg = "ES256"
typ = "JWT"
claims = { aud = "https://partner.example/token" }
required = ["iss", "sub"]
forbidden = ["scope"]
ttl = "10m"
max_ttl = "15m"
backdate = "30s"
"#;

#[test]
fn a_config_defines_a_service_as_a_preset_of_its_own() {
    let hsm = Hsm::new();
    let path = config(&hsm, &format!("{PARTNER}\n[keys.{KEY}]\npresets = [\"partner-api\"]\n"));
    let _agent = Agent::spawn(daemon_from_config(&hsm, &path), hsm.socket());
    let sign = |extra: &[&str]| {
        let mut command = hsm.cli();
        command.args(["sign", "--key", KEY, "--preset", "partner-api", "--iss", "acme"]);
        run(command.args(extra))
    };

    let before = now();
    let (code, token, err) = sign(&["--sub", "ci"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    let verified = verify_pyjwt(&token, &hsm.public_pem(KEY));
    let (header, claims) = (&verified["header"], &verified["claims"]);
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("ES256"), Some("JWT")));
    assert!(header["kid"].is_string(), "{header}");
    assert_eq!(claims["aud"], "https://partner.example/token");
    assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("acme"), Some("ci")));
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before - 31..=now() - 29).contains(&iat), "iat {iat} is not backdated 30 s from {before}");
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 600);
    // Its tokens are cached like a built-in preset's.
    assert_eq!(sign(&["--sub", "ci"]).1.trim(), token);

    // Whatever the service would reject is refused before signing, with exit 4.
    for (extra, want) in [
        (&["--sub", "ci", "--ttl", "20m"][..], "partner-api"),
        (&["--sub", "ci", "--scope", "GET /v1/apps"], "scope"),
        (&["--sub", "ci", "--aud", "https://elsewhere.example"], "aud"),
        (&[], "sub"),
    ] {
        let (code, out, err) = sign(extra);
        assert_eq!(code, 4, "{extra:?}: {out}{err}");
        assert!(out.is_empty() && err.contains(want), "{extra:?}: {err}");
    }
    // The key may only sign this preset's tokens, so sign-input meets its rules too.
    let input =
        signing_input(r#"{"alg":"ES256","typ":"JWT"}"#, &format!(r#"{{"iss":"acme","iat":{}}}"#, now()));
    let (code, _, err) = run(hsm.cli().args(["sign-input", "--key", KEY, &input]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("partner-api"), "{err}");

    // verify --preset reads the same definition from the config, with no agent.
    let pem = hsm.path("asc.pub.pem");
    let verify = |preset: &str| {
        let args =
            ["verify", "--pubkey", pem.to_str().unwrap(), "--preset", preset, "--config", &path, &token];
        run(hsm.cli().args(args))
    };
    assert_eq!(verify("partner-api").0, 0);
    let (code, _, err) = verify("app-store-connect");
    assert_eq!(code, 4, "{err}");
}

#[test]
fn a_preset_definition_that_cannot_hold_stops_the_daemon_at_start() {
    let hsm = Hsm::new();
    for (extra, want) in [
        ("[presets.apns]\nttl = \"10m\"", "built-in"),
        ("[presets.Partner]\nttl = \"10m\"", "not a preset name"),
        ("[presets.p]\ncolour = \"red\"", "unknown field `colour`"),
        ("[presets.p]\nttl = \"1h\"\nmax_ttl = \"10m\"", "longer than max_ttl"),
        ("[presets.p]\nalg = \"HS256\"", "HS256"),
        ("[keys.asc]\npreset = \"partner-api\"", "unknown preset"),
    ] {
        let path = config(&hsm, extra);
        let (code, _, err) = run(&mut daemon_from_config(&hsm, &path));
        assert_eq!(code, 1, "{extra}: {err}");
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!hsm.socket().exists());
    }
}

#[test]
fn every_decision_is_one_audit_line() {
    let hsm = Hsm::new();
    let path = config(&hsm, "[keys.asc]\npresets = [\"app-store-connect\"]\n");
    let _agent = Agent::spawn(daemon_from_config(&hsm, &path), hsm.socket());
    let audit = hsm.path("audit.jsonl");
    assert_eq!(std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777, 0o600);

    let asc =
        ["sign", "--key", KEY, "--preset", "app-store-connect", "--iss", TEAM, "--aud", "appstoreconnect-v1"];
    let signed = run(hsm.cli().args(asc)).1;
    let cached = run(hsm.cli().args(asc)).1;
    assert_eq!(signed, cached);
    assert_eq!(run(hsm.cli().args(["sign", "--key", KEY, "--preset", "apns", "--iss", "T"])).0, 4);
    assert_eq!(run(hsm.cli().args(["sign-input", "--key", KEY, "not-jwt"])).0, 4);
    assert_eq!(run(hsm.cli().args(["sign", "--key", "missing"])).0, 5);
    let mut conn = Conn::new(&hsm.socket());
    conn.ask("this is not json");
    assert_eq!(run(hsm.cli().arg("keys")).0, 0, "reads are not decisions");

    let lines = audit_lines(&audit);
    let outcomes: Vec<(&str, &str)> =
        lines.iter().map(|l| (l["op"].as_str().unwrap_or("-"), l["outcome"].as_str().unwrap())).collect();
    assert_eq!(
        outcomes,
        [
            ("sign", "signed"),
            ("sign", "cached"),
            ("sign", "refused"),
            ("sign_input", "refused"),
            ("sign", "refused"),
            ("-", "refused")
        ]
    );
    let first = &lines[0];
    let (header, claims) = decode(&signed);
    assert_eq!(first["uid"], unsafe { libc::geteuid() });
    assert!(first["pid"].as_u64().unwrap() > 0);
    assert!(first["exe"].as_str().unwrap().ends_with("jwt-agent"), "{first}");
    assert_eq!(first["key"], KEY);
    assert_eq!(first["preset"], "app-store-connect");
    assert_eq!((&first["alg"], &first["kid"]), (&header["alg"], &header["kid"]));
    assert_eq!((&first["iss"], &first["aud"]), (&claims["iss"], &claims["aud"]));
    assert_eq!((&first["iat"], &first["exp"]), (&claims["iat"], &claims["exp"]));
    use sha2::Digest;
    let input = signed.trim().rsplit_once('.').unwrap().0;
    let digest: String = sha2::Sha256::digest(input.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(first["input_sha256"], digest.as_str());
    assert_eq!(lines[1]["input_sha256"], digest.as_str(), "the cached token is the same signing input");
    assert_eq!(lines[2]["code"], "policy_denied");
    assert!(lines[2]["reason"].as_str().unwrap().contains("apns"));
    assert_eq!(lines[3]["code"], "bad_request");
    assert_eq!(lines[4]["code"], "unknown_key");
    assert_eq!(lines[5]["code"], "bad_request");
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_signing() {
    let hsm = Hsm::new();
    // The log is full to the daemon's file size limit, so every append fails (EFBIG). (This test
    // used /dev/full until the daemon refused logs that are not private regular files.)
    let audit = hsm.path("audit.jsonl");
    std::fs::write(&audit, vec![b'\n'; 64 * 1024]).unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut command = hsm.daemon_command();
    command.arg("--audit-log").arg(&audit);
    limit_file_size(&mut command, 64 * 1024);
    let _agent = Agent::spawn(command, hsm.socket());
    let (code, out, err) = run(hsm.cli().args(["sign", "--key", KEY]));
    assert_ne!(code, 0);
    assert!(out.is_empty(), "a token left the agent unaudited");
    assert!(err.contains("audit log cannot be written"), "{err}");
    let input = signing_input(r#"{"alg":"ES256"}"#, "{}");
    let (code, out, _) = run(hsm.cli().args(["sign-input", "--key", KEY, &input]));
    assert_ne!(code, 0);
    assert!(out.is_empty());
}

/// Runs the command with RLIMIT_FSIZE at `bytes`.
fn limit_file_size(command: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn other_uids_get_only_what_the_config_allows_them() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: connecting as another uid needs root");
        return;
    }
    let hsm = Hsm::new();
    hsm.import_p256("ci", "02");
    let path = config(&hsm, "[keys.ci]\nallowed_uids = [65534]\n");
    let _agent = Agent::spawn(daemon_from_config(&hsm, &path), hsm.socket());
    for dir in [hsm.dir.path(), hsm.socket().parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(hsm.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let client = hsm.path("jwt-agent");
    std::fs::copy(BIN, &client).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&client)
            .args(args)
            .arg("--socket")
            .arg(hsm.socket())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, token, err) = as_nobody(&["sign", "--key", "ci", "--iss", "runner"]);
    assert_eq!(code, 0, "{err}");
    verify_p256(token.trim(), &hsm.public_pem("ci"));
    let (code, _, err) = as_nobody(&["sign", "--key", KEY]);
    assert_eq!(code, 4);
    assert!(err.contains("uid 65534 may not use the key"), "{err}");
    let (code, _, err) = as_nobody(&["stop"]);
    assert_eq!(code, 4);
    assert!(err.contains("only the agent's own uid"), "{err}");
    // It sees only the key it may use, and not where the audit log is.
    let (code, keys, err) = as_nobody(&["keys", "--json"]);
    assert_eq!(code, 0, "{err}");
    let labels: Vec<Value> = serde_json::from_str::<Value>(&keys)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].clone())
        .collect();
    assert_eq!(labels, vec![json!("ci")]);
    let (_, status, _) = as_nobody(&["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["keys"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["audit_log"], Value::Null);
    assert!(status["per_key"].get(KEY).is_none(), "{status}");
    let (_, jwks, _) = as_nobody(&["pubkey", "--format", "jwks"]);
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    let (code, _, err) = as_nobody(&["pubkey", KEY]);
    assert_eq!(code, 4, "{err}");
    // The owner still sees everything.
    let (_, status, _) = run(hsm.cli().args(["status", "--json"]));
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["keys"].as_array().unwrap().len(), 2);
    assert!(status["audit_log"].is_string());
    assert!(hsm.socket().exists());
    let lines = audit_lines(&hsm.path("audit.jsonl"));
    assert!(lines.iter().any(|l| l["uid"] == 65534 && l["outcome"] == "signed" && l["key"] == "ci"));
    assert!(lines.iter().any(|l| l["uid"] == 65534 && l["op"] == "stop" && l["code"] == "policy_denied"));
}
