//! ES256 tokens from `sign` and `sign-input`, through the real daemon over a real SoftHSM token,
//! checked by two verifiers: the p256 crate and PyJWT.

mod common;

use common::*;
use serde_json::json;

#[test]
fn sign_makes_a_jwt_that_p256_and_pyjwt_verify() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let (code, token, err) = run(hsm.cli().args([
        "sign",
        "--key",
        KEY,
        "--kid",
        "ABC123DEFG",
        "--iss",
        "57246542-96fe-1a63-e053-0824d011072a",
        "--aud",
        "appstoreconnect-v1",
        "--ttl",
        "20m",
        "--claim",
        "scope=[\"GET /v1/apps\"]",
        "--claim",
        "note=plain text",
        "--header",
        "x-test=1",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "sign printed to stderr: {err}");
    assert!(
        token.ends_with('\n') && token.trim_end().lines().count() == 1,
        "stdout is the token alone: {token:?}"
    );
    let token = token.trim_end();
    assert_eq!(token.split('.').count(), 3);

    let (header, claims) = verify_p256(token, &hsm.public_pem(KEY));
    assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": "ABC123DEFG", "x-test": 1}));
    assert_eq!(claims["iss"], "57246542-96fe-1a63-e053-0824d011072a");
    assert_eq!(claims["aud"], "appstoreconnect-v1");
    assert_eq!(claims["scope"], json!(["GET /v1/apps"]));
    assert_eq!(claims["note"], "plain text");
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now()) <= 5, "iat {iat} is not now");
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 1200);

    let decoded = verify_pyjwt(token, &hsm.public_pem(KEY));
    assert_eq!(decoded["claims"], claims);
    assert_eq!(decoded["header"], header);
}

#[test]
fn sign_input_signs_what_the_caller_built() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let input =
        signing_input(r#"{"alg":"ES256","kid":"K1","typ":"JWT"}"#, r#"{"iss":"team","iat":1700000000}"#);
    let (code, token, err) = run(hsm.cli().args(["sign-input", "--key", KEY, &input]));
    assert_eq!(code, 0, "{err}");
    let token = token.trim_end();
    assert!(token.starts_with(&format!("{input}.")), "the signing input is kept as given");
    let (_, claims) = verify_p256(token, &hsm.public_pem(KEY));
    assert_eq!(claims, json!({"iss": "team", "iat": 1700000000}));
    verify_pyjwt(token, &hsm.public_pem(KEY));

    // `-` reads the signing input from stdin.
    let mut child = hsm
        .cli()
        .args(["sign-input", "--key", KEY, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{input}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    verify_p256(String::from_utf8(out.stdout).unwrap().trim_end(), &hsm.public_pem(KEY));
}

#[test]
fn each_key_signs_with_its_own_private_half() {
    let hsm = Hsm::new();
    let second = hsm.import_p256("second", "02");
    let _agent = hsm.agent();
    let (code, token, _) = run(hsm.cli().args(["sign", "--key", "second", "--iss", "x"]));
    assert_eq!(code, 0);
    verify_p256(token.trim_end(), &second);
    let wrong = std::panic::catch_unwind(|| verify_p256(token.trim_end(), &hsm.public_pem(KEY)));
    assert!(wrong.is_err(), "a token of `second` verified with the other key");
}

#[test]
fn without_ttl_there_is_no_exp_and_given_times_are_kept() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let (_, token, _) = run(hsm.cli().args(["sign", "--key", KEY, "--sub", "user"]));
    let (_, claims) = verify_p256(token.trim_end(), &hsm.public_pem(KEY));
    assert!(claims.get("exp").is_none(), "{claims}");
    assert_eq!(claims["sub"], "user");

    let (_, token, _) =
        run(hsm.cli().args(["sign", "--key", KEY, "--claim", "iat=1700000000", "--ttl", "90s"]));
    let (_, claims) = verify_p256(token.trim_end(), &hsm.public_pem(KEY));
    assert_eq!((claims["iat"].as_u64(), claims["exp"].as_u64()), (Some(1700000000), Some(1700000090)));
}

#[test]
fn refusals_name_the_problem_and_exit_as_the_spec_says() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["sign", "--key", "missing"], 5, "no private key \"missing\""),
        (&["sign", "--key", KEY, "--alg", "HS256"], 4, "HS256"),
        (&["sign", "--key", KEY, "--alg", "none"], 4, "\"none\""),
        (&["sign", "--key", KEY, "--ttl", "20m", "--claim", "exp=5"], 4, "either `exp` or a ttl"),
        (&["sign", "--key", KEY, "--claim", "iat=\"yesterday\""], 4, "`iat` must be"),
        (&["sign", "--key", KEY, "--ttl", "20 minutes"], 2, "not a duration"),
        (&["sign", "--key", KEY, "--claim", "novalue"], 2, "NAME=VALUE"),
        (&["sign", "--key", KEY, "--iss", "a", "--claim", "iss=b"], 2, "given twice"),
        (&["sign-input", "--key", KEY, "not.jwt"], 4, "base64url"),
        (&["sign-input", "--key", KEY, "a.b.c"], 4, "more than one"),
        (&["bogus"], 2, "unrecognized subcommand"),
    ];
    for (args, want_code, want_message) in cases {
        let (code, out, err) = run(hsm.cli().args(*args));
        assert_eq!(code, *want_code, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out:?}");
        assert!(err.contains(want_message), "{args:?}: {err:?} lacks {want_message:?}");
    }
    // The agent signs on after every refusal.
    let (code, _, _) = run(hsm.cli().args(["sign", "--key", KEY]));
    assert_eq!(code, 0);
}

#[test]
fn keys_and_status_describe_the_token() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let (code, out, _) = run(hsm.cli().args(["keys", "--json"]));
    assert_eq!(code, 0);
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["label"], KEY);
    assert_eq!(keys[0]["id"], "01");
    assert_eq!(keys[0]["alg"], "ES256");
    let (code, table, _) = run(hsm.cli().arg("keys"));
    assert_eq!(code, 0);
    assert!(table.starts_with("LABEL"), "{table}");
    assert!(table.contains(keys[0]["fingerprint"].as_str().unwrap()));

    run(hsm.cli().args(["sign", "--key", KEY]));
    let (code, out, _) = run(hsm.cli().args(["status", "--json"]));
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["pid"], agent.pid());
    assert_eq!(status["token"]["label"], TOKEN_LABEL);
    assert_eq!(status["token"]["state"], "logged_in");
    let manufacturer = status["token"]["manufacturer"].as_str().unwrap();
    let want = match backend() {
        Backend::SoftHsm => "SoftHSM project",
        Backend::Kryoptic => "Kryoptic Project",
        Backend::Tpm => "IBM", // swtpm's vendor, as the TPM reports it
    };
    assert_eq!(manufacturer, want);
    // Token strings come without padding and without the NULs a TPM leaves in its model.
    let model = status["token"]["model"].as_str().unwrap();
    assert!(!model.is_empty() && model.trim() == model && !model.contains('\0'), "{model:?}");
    assert_eq!(status["counters"]["signatures"], 1);
    assert!(status["pool"]["sessions"].as_u64().unwrap() >= 1);
    let (code, text, _) = run(hsm.cli().arg("status"));
    assert_eq!(code, 0);
    assert!(text.contains("logged_in") && text.contains("1 signatures"), "{text}");
}

#[test]
fn fingerprint_is_sha256_of_the_spki() {
    use sha2::Digest;
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let spki = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(hsm.path(&format!("{KEY}.pub.pem")))
        .output()
        .unwrap()
        .stdout;
    use base64::Engine;
    let want = format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&spki))
    );
    let (_, out, _) = run(hsm.cli().args(["keys", "--json"]));
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys[0]["fingerprint"], want.as_str());
}
