//! The key lifecycle through the real daemon on a real SoftHSM token: import (Apple .p8 and
//! every key type), generate, list, export, verify; each algorithm's tokens checked by PyJWT.

mod common;

use common::*;
use serde_json::Value;

fn private_keys(hsm: &Hsm) -> Vec<Value> {
    inspect(hsm).into_iter().filter(|o| o["class"] == "PRIVATE_KEY").collect()
}

#[test]
fn an_apple_p8_goes_in_with_one_command_and_cannot_come_out() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let p8 = hsm.path("AuthKey_ABC123DEFG.p8");
    openssl_key("EC:P-256", &p8);
    if hsm.import_is_refused_by_a_tpm(&p8) {
        return;
    }
    let (code, out, err) = run(hsm.cli().arg("import").arg(&p8));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Imported ABC123DEFG (ES256"), "{out}");
    assert!(out.contains(&format!("shred -u {}", p8.display())), "{out}");

    // python-pkcs11 sees a private key that the token will not let out, and its public key.
    let objects = inspect(&hsm);
    let private = objects.iter().find(|o| o["label"] == "ABC123DEFG" && o["class"] == "PRIVATE_KEY").unwrap();
    assert_eq!(private["sensitive"], true);
    assert_eq!(private["extractable"], false);
    assert_eq!(private["token"], true);
    assert_eq!(private["private"], true);
    assert_eq!(private["sign"], true);
    assert_eq!(private["decrypt"], false);
    assert_eq!(private["value_readable"], false);
    assert!(objects.iter().any(|o| o["label"] == "ABC123DEFG" && o["class"] == "PUBLIC_KEY"));

    // The key signs an App Store Connect-shaped token that verifies with the .p8's public half.
    let (code, token, _) = run(hsm.cli().args([
        "sign",
        "--key",
        "ABC123DEFG",
        "--kid",
        "ABC123DEFG",
        "--iss",
        "57246542-96fe-1a63-e053-0824d011072a",
        "--aud",
        "appstoreconnect-v1",
        "--ttl",
        "20m",
    ]));
    assert_eq!(code, 0);
    let public = openssl_public(&p8);
    let (header, _) = verify_p256(token.trim(), &public);
    assert_eq!(header["kid"], "ABC123DEFG");
    verify_pyjwt(token.trim(), &public);

    // `keys` shows label and kid from the file name, and the fingerprint of the .p8's key.
    let (_, out, _) = run(hsm.cli().args(["keys", "--json"]));
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    let key = keys.iter().find(|k| k["label"] == "ABC123DEFG").unwrap();
    assert_eq!(key["kid"], "ABC123DEFG");
    assert_eq!(key["alg"], "ES256");
    let (_, pem, _) = run(hsm.cli().args(["pubkey", "ABC123DEFG"]));
    assert_eq!(pem.trim(), public.trim());
}

#[test]
fn every_algorithm_signs_tokens_that_pyjwt_verifies_with_pem_and_jwk() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    // Imported from openssl-made files: (file key type, label, the algorithms to sign with).
    let imported = [
        ("EC:P-384", "p384", &["ES384"][..]),
        ("EC:P-521", "p521", &["ES512"]),
        ("RSA:2048", "rsa", &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]),
        ("ED25519", "ed25519", &["EdDSA"]),
    ];
    // A token without EdDSA (kryoptic on OpenSSL 3.0) must say so, and create nothing.
    let eddsa = token_offers(&hsm, "EDDSA");
    let imported: Vec<_> = imported.into_iter().filter(|(kind, ..)| eddsa || *kind != "ED25519").collect();
    // A TPM signs with P-256, P-384 and RSA keys only (tpm2-pkcs11 cannot sign with P-521).
    let imported: Vec<_> =
        imported.into_iter().filter(|(kind, ..)| imports() || *kind != "EC:P-521").collect();
    for (kind, label, _) in &imported {
        let file = hsm.path(&format!("{label}.pem"));
        openssl_key(kind, &file);
        hsm.add_key(kind, &file, label);
    }
    if !eddsa {
        let file = hsm.path("ed25519.pem");
        openssl_key("ED25519", &file);
        for args in
            [vec!["import", file.to_str().unwrap()], vec!["generate", "--label", "e", "--alg", "EdDSA"]]
        {
            let (code, _, err) = run(hsm.cli().args(&args));
            assert_eq!(code, 4, "{args:?}: {err}");
            assert!(err.contains("does not do EdDSA") && err.contains("nothing was created"), "{err}");
        }
    }
    // Generated inside the token.
    let generated = [
        ("ES256", "gen-es256", &["ES256"][..]),
        ("ES384", "gen-es384", &["ES384"]),
        ("ES512", "gen-es512", &["ES512"]),
        ("RS256", "gen-rs256", &["RS256"]),
        ("RS384", "gen-rs384", &["RS384"]),
        ("RS512", "gen-rs512", &["RS512"]),
        ("PS256", "gen-ps256", &["PS256"]),
        ("PS384", "gen-ps384", &["PS384"]),
        ("PS512", "gen-ps512", &["PS512"]),
        ("EdDSA", "gen-eddsa", &["EdDSA"]),
    ];
    let generated: Vec<_> = generated.into_iter().filter(|(alg, ..)| eddsa || *alg != "EdDSA").collect();
    let generated: Vec<_> = generated.into_iter().filter(|(alg, ..)| imports() || *alg != "ES512").collect();
    if !imports() {
        let (code, _, err) = run(hsm.cli().args(["generate", "--label", "p", "--alg", "ES512"]));
        assert_eq!(code, 4, "{err}");
        assert!(err.contains("does not sign with P-521") && err.contains("nothing was created"), "{err}");
    }
    for (alg, label, _) in generated.iter().copied() {
        let (code, out, err) = run(hsm.cli().args(["generate", "--label", label, "--alg", alg]));
        assert_eq!(code, 0, "{alg}: {err}");
        assert!(out.contains(&format!("Generated {label} ({alg}")), "{out}");
    }
    for (label, algs) in
        imported.iter().map(|(_, l, a)| (l, a)).chain(generated.iter().map(|(_, l, a)| (l, a)))
    {
        let (_, pem, _) = run(hsm.cli().args(["pubkey", label]));
        let (_, jwk, _) = run(hsm.cli().args(["pubkey", label, "--format", "jwk"]));
        let jwk_value: Value = serde_json::from_str(&jwk).unwrap();
        assert_eq!(jwk_value["use"], "sig");
        // The JWK names the key's alg when it signs with one only: not the imported RSA key.
        let one_alg = if algs.len() == 1 { Value::from(algs[0]) } else { Value::Null };
        assert_eq!(jwk_value["alg"], one_alg, "{label}");
        for alg in algs.iter() {
            let (code, token, err) =
                run(hsm.cli().args(["sign", "--key", label, "--alg", alg, "--iss", label, "--ttl", "5m"]));
            assert_eq!(code, 0, "{label} {alg}: {err}");
            let claims = verify_pyjwt_with(token.trim(), alg, &pem, &jwk);
            assert_eq!(claims["iss"], **label);
            // And the agent's own verify agrees.
            let (code, _, err) = run(hsm.cli().args(["verify", token.trim(), "--key", label]));
            assert_eq!(code, 0, "{label} {alg}: {err}");
        }
    }
    // Without --alg the key's type picks; a PS256 key defaults to PS256 and refuses RS256.
    let (_, out, _) = run(hsm.cli().args(["keys", "--json"]));
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    let alg_of = |label: &str| keys.iter().find(|k| k["label"] == label).unwrap()["alg"].clone();
    if imports() {
        assert_eq!(alg_of("p521"), "ES512");
    }
    assert_eq!(alg_of("rsa"), "RS256");
    assert_eq!(alg_of("gen-ps256"), "PS256");
    // A key generated for one alg is bound to it: keys shows it, a plain sign uses it, and no
    // other is signed with it.
    for (alg, label, _) in generated.iter().copied() {
        assert_eq!(alg_of(label), alg);
        let (code, token, err) = run(hsm.cli().args(["sign", "--key", label]));
        assert_eq!(code, 0, "{label}: {err}");
        assert_eq!(decode(token.trim()).0["alg"], alg, "{label}");
    }
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", "gen-ps384", "--alg", "PS256"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("signs PS384"), "{err}");
    if eddsa {
        assert_eq!(alg_of("gen-eddsa"), "EdDSA");
    }
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", "gen-ps256", "--alg", "RS256"]));
    assert_eq!(code, 4);
    assert!(err.contains("signs PS256"), "{err}");
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", "p384", "--alg", "ES256"]));
    assert_eq!(code, 4, "{err}");

    // Generated keys are non-extractable from birth; their default kid is the JWK thumbprint.
    // (A key tpm2_ptool imported on a TPM says extractable, though the TPM holds it wrapped.)
    let generated_labels: Vec<&str> = generated.iter().map(|(_, label, _)| *label).collect();
    let mine = |key: &Value| imports() || generated_labels.iter().any(|l| key["label"] == *l);
    for key in private_keys(&hsm).into_iter().filter(mine) {
        assert_eq!(key["extractable"], false, "{key}");
        assert_eq!(key["value_readable"], false, "{key}");
    }
    let generated_kid =
        keys.iter().find(|k| k["label"] == "gen-es256").unwrap()["kid"].as_str().unwrap().to_owned();
    let (_, jwk, _) = run(hsm.cli().args(["pubkey", "gen-es256", "--format", "jwk"]));
    let jwk: Value = serde_json::from_str(&jwk).unwrap();
    let thumbprint_input = format!(r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#, jwk["x"], jwk["y"]);
    use sha2::Digest;
    assert_eq!(generated_kid, b64url(&sha2::Sha256::digest(thumbprint_input.as_bytes())));
    assert_eq!(jwk["kid"], generated_kid.as_str());

    // A JWKS of every key.
    let (_, jwks, _) = run(hsm.cli().args(["pubkey", "--format", "jwks"]));
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1 + imported.len() + generated.len());
}

#[test]
fn refused_imports_leave_the_token_as_it_was() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let good = hsm.path("AuthKey_GOOD.p8");
    openssl_key("EC:P-256", &good);
    if hsm.import_is_refused_by_a_tpm(&good) {
        return;
    }
    assert_eq!(run(hsm.cli().arg("import").arg(&good)).0, 0);
    let before = inspect(&hsm);

    let k1 = hsm.path("k1.pem");
    openssl_key("EC:secp256k1", &k1);
    let encrypted = hsm.path("encrypted.pem");
    std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes256", "-passout", "pass:x", "-in"])
        .arg(&good)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .unwrap();
    let public = hsm.path("public.pem");
    std::fs::write(&public, openssl_public(&good)).unwrap();
    let garbage = hsm.path("garbage.p8");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = hsm.path("notes.txt");
    std::fs::write(&text, "not a key").unwrap();
    let other = hsm.path("other.pem");
    openssl_key("EC:P-256", &other);

    let good = good.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![good.clone()], "already on the token"),
        (vec![good.clone(), "--label".into(), "renamed".into()], "already on the token"),
        (
            vec![other.to_str().unwrap().into(), "--label".into(), "GOOD".into()],
            "labelled \"GOOD\" is already",
        ),
        (vec![other.to_str().unwrap().into(), "--id".into(), before_id(&before)], "is already on the token"),
        (vec![k1.to_str().unwrap().into()], "unsupported key type"),
        // (An encrypted key is read now, with its passphrase: tests/services.rs.)
        (
            vec![encrypted.to_str().unwrap().into(), "--passphrase-file".into(), "/dev/null".into()],
            "passphrase",
        ),
        (vec![public.to_str().unwrap().into()], "not a private key"),
        (vec![garbage.to_str().unwrap().into()], "malformed"),
        (vec![text.to_str().unwrap().into()], "not PEM"),
    ];
    // A malformed --id is the CLI's usage error now that ids are typed (it was the daemon's 4).
    let (code, _, err) = run(hsm.cli().arg("import").arg(&other).args(["--id", "xyz"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not hex"), "{err}");
    for (args, want) in cases {
        let (code, out, err) = run(hsm.cli().arg("import").args(&args));
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(out.is_empty());
        assert!(
            err.contains(want) && err.contains("nothing was created") || err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(inspect(&hsm), before, "{args:?} changed the token");
    }
    let (code, _, err) = run(hsm.cli().args(["generate", "--label", "GOOD"]));
    assert_eq!(code, 4, "{err}");
    let (code, _, err) =
        run(hsm.cli().args(["generate", "--label", "big", "--alg", "RS256", "--bits", "1024"]));
    assert_eq!(code, 4);
    assert!(err.contains("2048, 3072 or 4096"), "{err}");
    // The alg is typed at the CLI now: an unknown one is a usage error (it was the daemon's 4).
    let (code, _, err) = run(hsm.cli().args(["generate", "--label", "x", "--alg", "HS256"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("HS256"), "{err}");
    let mut conn = Conn::new(&hsm.socket());
    let answer = conn.request(serde_json::json!({"op": "generate", "label": "x", "alg": "HS256"}));
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    assert_eq!(inspect(&hsm), before);
}

/// Whether the token's module offers `CKM_<name>`, as pkcs11-tool lists it.
fn token_offers(hsm: &Hsm, name: &str) -> bool {
    let out = std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token-label", TOKEN_LABEL, "--list-mechanisms"])
        .envs(hsm.conf_envs())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with(&format!("{name},")) || l.trim() == name)
}

fn before_id(objects: &[Value]) -> String {
    objects.iter().find(|o| o["class"] == "PRIVATE_KEY").unwrap()["id"].as_str().unwrap().to_owned()
}

#[test]
fn import_takes_label_kid_and_id_flags() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let file = hsm.path("AuthKey_ZZZ.p8");
    openssl_key("EC:P-256", &file);
    if hsm.import_is_refused_by_a_tpm(&file) {
        return;
    }
    let (code, _, err) =
        run(hsm.cli().arg("import").arg(&file).args(["--label", "release", "--kid", "ZZZ9", "--id", "A1B2"]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(hsm.cli().args(["keys", "--json"]));
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    let key = keys.iter().find(|k| k["label"] == "release").unwrap();
    assert_eq!((key["kid"].as_str(), key["id"].as_str()), (Some("ZZZ9"), Some("a1b2")));
    let (_, jwk, _) = run(hsm.cli().args(["pubkey", "release", "--format", "jwk"]));
    assert!(jwk.contains("\"kid\": \"ZZZ9\""), "{jwk}");
}

#[test]
fn verify_accepts_good_tokens_and_refuses_tampered_expired_and_unsigned_ones() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let public = hsm.path("asc.pub.pem");
    let (_, good, _) = run(hsm.cli().args(["sign", "--key", KEY, "--iss", "me", "--ttl", "5m"]));
    let good = good.trim().to_owned();
    let (code, out, err) = run(hsm.cli().args(["verify", &good, "--pubkey"]).arg(&public));
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["claims"]["iss"], "me");
    assert_eq!(shown["header"]["alg"], "ES256");
    assert_eq!(run(hsm.cli().args(["verify", &good, "--key", KEY])).0, 0);

    let (input, signature) = good.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();
    let forged_claims = b64url(br#"{"iss":"attacker","iat":1}"#);
    let (_, expired, _) = run(hsm.cli().args(["sign", "--key", KEY, "--claim", "iat=1000", "--ttl", "1h"]));
    let unsigned = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(br#"{"iss":"me"}"#));
    let hs256 = format!("{}.{}.{signature}", b64url(br#"{"alg":"HS256"}"#), b64url(br#"{"iss":"me"}"#));
    let mut flipped = b64url_decode(signature);
    flipped[10] ^= 1;
    let cases = [
        (format!("{header}.{forged_claims}.{signature}"), "does not verify"),
        (format!("{input}.{}", b64url(&flipped)), "does not verify"),
        (expired.trim().to_owned(), "expired"),
        (unsigned, "\"none\" is not accepted"),
        (hs256, "\"HS256\" is not accepted"),
        ("abc".to_owned(), "three segments"),
    ];
    for (token, want) in cases {
        let (code, out, err) = run(hsm.cli().args(["verify", &token, "--pubkey"]).arg(&public));
        assert_eq!(code, 4, "{token}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(want), "{token}: {err}");
    }
    // A token of another key does not verify with this one.
    let other = hsm.import_p256("other", "02");
    let (_, theirs, _) = run(hsm.cli().args(["sign", "--key", "other"]));
    verify_p256(theirs.trim(), &other);
    assert_eq!(run(hsm.cli().args(["verify", theirs.trim(), "--key", KEY])).0, 4);
}

#[test]
fn keys_are_chosen_by_label_or_pkcs11_uri() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let public = hsm.public_pem(KEY);
    for key in [
        "asc".to_owned(),
        "pkcs11:object=asc".to_owned(),
        "pkcs11:object=asc;type=private".to_owned(),
        "pkcs11:id=%01".to_owned(),
        format!("pkcs11:token={TOKEN_LABEL};object=asc"),
        // As p11-kit reads URIs: the scheme in any case, whitespace ignored, the module's
        // attributes matched against the module.
        "PKCS11:object=asc".to_owned(),
        "pkcs11: object=asc ;\n type=private".to_owned(),
        format!("pkcs11:library-manufacturer={};object=asc", library_manufacturer(&hsm).replace(' ', "%20")),
    ] {
        let (code, token, err) = run(hsm.cli().args(["sign", "--key", &key]));
        assert_eq!(code, 0, "{key}: {err}");
        verify_p256(token.trim(), &public);
    }
    for (key, code) in [
        ("pkcs11:object=asc;type=cert", 4),
        ("pkcs11:token=elsewhere;object=asc", 5),
        ("pkcs11:object=nope", 5),
        ("pkcs11:id=%02", 5),
        ("pkcs11:object=asc?pin-value=123456", 4),
        ("pkcs11:object=asc;pin-value=123456", 4),
        // What the agent does not know matches nothing, so nothing is signed.
        ("pkcs11:object=asc;x-foo=bar", 5),
        ("pkcs11:object=asc;vendor-aaa=1", 5),
        ("pkcs11:object=asc;library-manufacturer=Nobody", 5),
        ("pkcs11:object=asc;slot-description=elsewhere", 5),
        // A module chosen in the URI is refused: the agent signs with the one it loaded.
        ("pkcs11:object=asc?module-path=/usr/lib/other.so", 4),
    ] {
        let (got, out, err) = run(hsm.cli().args(["sign", "--key", key]));
        assert_eq!(got, code, "{key}: {err}");
        assert!(out.is_empty() && !err.contains("123456"), "{err}");
    }
    let (_, _, err) = run(hsm.cli().args(["sign", "--key", "pkcs11:object=asc;x-foo=bar"]));
    assert!(err.contains("\"x-foo\"") && err.contains("matches nothing"), "{err}");
}

/// The module's manufacturer, as `pkcs11-tool -I` reads it.
fn library_manufacturer(hsm: &Hsm) -> String {
    let info = hsm.pkcs11_tool(&["-I"]);
    let line = info.lines().find_map(|l| l.strip_prefix("Manufacturer")).expect("pkcs11-tool -I names it");
    line.trim().to_owned()
}

#[test]
fn the_daemon_finds_its_token_by_serial_or_uri() {
    let hsm = Hsm::new();
    let status = {
        let _agent = hsm.agent();
        let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let serial = status["token"]["serial"].as_str().unwrap().to_owned();
    for token in [format!("serial={serial}"), format!("pkcs11:token={TOKEN_LABEL};serial={serial}")] {
        let mut command = hsm.cli();
        command.arg("daemon").arg("--module").arg(&hsm.module).args(["--token", &token]);
        command.arg("--pin-file").arg(&hsm.pin_file).arg("--socket").arg(hsm.socket());
        let _agent = Agent::spawn(command, hsm.socket());
        assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0, "{token}");
    }
    let mut command = hsm.cli();
    command.arg("daemon").arg("--module").arg(&hsm.module).args(["--token", "serial=0000"]);
    command.arg("--pin-file").arg(&hsm.pin_file);
    let (code, _, err) = run(&mut command);
    assert_eq!(code, 5);
    assert!(err.contains("no token matches \"serial=0000\"") && err.contains(&serial), "{err}");
}

#[test]
fn always_authenticate_keys_get_a_context_login_per_signature() {
    if backend() == Backend::Tpm {
        // tpm2-pkcs11 makes no CKA_ALWAYS_AUTHENTICATE keys (pkcs11-tool --always-auth fails).
        eprintln!("skipping: a TPM has no always-authenticate keys to sign with");
        return;
    }
    let hsm = Hsm::new();
    hsm.always_authenticate_key("piv9c", "9c");
    let key =
        inspect(&hsm).into_iter().find(|o| o["label"] == "piv9c" && o["class"] == "PRIVATE_KEY").unwrap();
    assert_eq!(key["always_authenticate"], true);

    let log = hsm.path("spy.log");
    let mut command = hsm.daemon_with(&spy_module(), &hsm.socket());
    command.env("PKCS11SPY", &hsm.module).env("PKCS11SPY_OUTPUT", &log);
    let _agent = Agent::spawn(command, hsm.socket());
    let (_, pem, _) = run(hsm.cli().args(["pubkey", "piv9c"]));
    for _ in 0..3 {
        let (code, token, err) =
            run(hsm.cli().args(["sign", "--key", "piv9c", "--iss", "yubikey", "--fresh"]));
        assert_eq!(code, 0, "{err}");
        verify_p256(token.trim(), &pem);
    }
    // One user login at start, then one context-specific login per signature.
    let calls = std::fs::read_to_string(&log).unwrap();
    let logins = calls.lines().filter(|l| l.contains("C_Login")).count();
    assert_eq!(logins, 4, "C_Login was called {logins} times");
    assert_eq!(calls.matches("CKU_CONTEXT_SPECIFIC").count(), 3);
}

#[test]
fn keys_other_tools_make_while_the_agent_runs_are_found_even_under_one_label() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let keys = || -> Vec<Value> { serde_json::from_str(&run(hsm.cli().args(["keys", "--json"])).1).unwrap() };
    assert_eq!(keys().len(), 1);
    // Another tool makes two keys with one label while the agent runs.
    for id in ["0a", "0b"] {
        let args = ["--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "dup"];
        hsm.pkcs11_tool(&[&args[..], &["--id", id]].concat());
    }
    let listed = keys();
    let dups: Vec<&Value> = listed.iter().filter(|k| k["label"] == "dup").collect();
    assert_eq!(dups.len(), 2, "{listed:?}");
    // Each gets a kid of its own (its thumbprint), and the JWKS publishes both.
    assert_ne!(dups[0]["kid"], dups[1]["kid"]);
    assert_ne!(dups[0]["kid"], "dup");
    let (code, jwks, err) = run(hsm.cli().args(["pubkey", "--format", "jwks"]));
    assert_eq!(code, 0, "{err}");
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    let kids: Vec<&Value> = jwks["keys"].as_array().unwrap().iter().map(|k| &k["kid"]).collect();
    assert_eq!(kids.len(), 3);
    assert!(kids.contains(&&dups[0]["kid"]) && kids.contains(&&dups[1]["kid"]), "{jwks}");

    // The label alone is ambiguous and says how to name one; the URI with the id signs, and the
    // token carries that key's kid, so a verifier picks the right key out of the JWKS.
    let (code, _, err) = run(hsm.cli().args(["sign", "--key", "dup"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("more than one private key") && err.contains("id=%"), "{err}");
    let uri = "pkcs11:object=dup;id=%0b";
    let (code, token, err) = run(hsm.cli().args(["sign", "--key", uri, "--iss", "x"]));
    assert_eq!(code, 0, "{err}");
    let b = dups.iter().find(|k| k["id"] == "0b").unwrap();
    assert_eq!(decode(token.trim()).0["kid"], b["kid"]);
    let (_, pem, _) = run(hsm.cli().args(["pubkey", uri]));
    verify_p256(token.trim(), &pem);
}

#[test]
fn a_plain_token_carries_the_kid_keys_shows_and_a_kid_may_start_with_a_dash() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let listed: Vec<Value> = serde_json::from_str(&run(hsm.cli().args(["keys", "--json"])).1).unwrap();
    let (code, token, err) = run(hsm.cli().args(["sign", "--key", KEY]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(decode(token.trim()).0["kid"], listed[0]["kid"]);
    let (code, token, err) = run(hsm.cli().args(["sign", "--key", KEY, "--kid", "-abc"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(decode(token.trim()).0["kid"], "-abc");
}

#[test]
fn making_an_rsa_key_holds_up_no_other_connection_on_its_lane() {
    if backend() == Backend::Tpm {
        // A TPM signs too slowly for its lanes to sign inline, and makes no RSA-4096 key.
        eprintln!("skipping: a TPM's lanes never call the token themselves");
        return;
    }
    let hsm = Hsm::new();
    // One session, so one lane serves every connection; the token signs fast, so signatures
    // are made inline on the lane. A key is made on a pool thread all the same: an RSA key
    // takes the token a second or more, and made inline it would hold up the lane.
    let agent = hsm.agent_with(&["--sessions", "1"]);
    let cached = serde_json::json!({"op": "sign", "key": KEY, "claims": {"iss": "c"}, "ttl": "20m"});
    assert_eq!(agent.connect().request(cached.clone())["cached"], false);
    let status = agent.connect().ask(r#"{"op":"status"}"#);
    assert_eq!(status["pool"]["inline"], true, "{status}");
    let mut making = agent.connect();
    making.send_raw(b"{\"op\":\"generate\",\"label\":\"big\",\"alg\":\"RS256\",\"bits\":4096}\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    // A cache hit on the same lane is answered while the key is still being made.
    assert_eq!(agent.connect().request(cached)["cached"], true);
    assert!(!making.has_answer(), "the key was made before the cache hit was answered");
    let made = making.read_answer();
    assert_eq!(made["key"]["label"], "big", "{made}");
}
