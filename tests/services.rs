//! The presets beyond Apple (GitHub Apps, Google, OAuth client assertions, Snowflake,
//! Salesforce, DocuSign, Firebase) and the key files those services hand out, through the real
//! daemon. Every token is checked by PyJWT against its service's rules; every rule a service
//! enforces is a refusal with exit 4 before anything is signed. The services themselves cannot
//! be reached from here; docs/services.md cites where each rule comes from.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

/// PyJWT's view of a token signed with `pem`'s key: (header, claims), or why it refused.
fn pyjwt(token: &str, pem: &str, alg: &str, aud: Option<&str>) -> (Value, Value) {
    let script = r#"
import json, sys, jwt
token, pem, alg, aud = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
claims = jwt.decode(token, pem, algorithms=[alg], audience=aud, options={"verify_aud": aud is not None})
print(json.dumps([jwt.get_unverified_header(token), claims]))
"#;
    let out =
        Command::new("python3").args(["-c", script, token, pem, alg, aud.unwrap_or("")]).output().unwrap();
    assert!(out.status.success(), "PyJWT refused the token: {}", String::from_utf8_lossy(&out.stderr));
    let both: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    (both[0].clone(), both[1].clone())
}

struct Signer<'a> {
    hsm: &'a Hsm,
}

impl Signer<'_> {
    fn sign(&self, key: &str, preset: &str, args: &[&str]) -> (i32, String, String) {
        run(self.hsm.cli().args(["sign", "--key", key, "--preset", preset]).args(args))
    }

    fn ok(&self, key: &str, preset: &str, args: &[&str]) -> String {
        let (code, token, err) = self.sign(key, preset, args);
        assert_eq!(code, 0, "{preset} {args:?}: {err}");
        token.trim().to_owned()
    }

    /// Refused with exit 4, nothing printed, and the message names `want`.
    fn refused(&self, key: &str, preset: &str, args: &[&str], want: &str) {
        let (code, out, err) = self.sign(key, preset, args);
        assert_eq!(code, 4, "{preset} {args:?} was not refused: {out}{err}");
        assert!(out.is_empty() && err.contains(want), "{preset} {args:?}: {err}");
    }
}

fn keys(hsm: &Hsm) -> Vec<Value> {
    serde_json::from_str(&run(hsm.cli().args(["keys", "--json"])).1).unwrap()
}

#[test]
fn every_service_preset_makes_the_token_its_service_wants() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let file = hsm.path("rsa.pem");
    openssl_key("RSA:2048", &file);
    hsm.add_key("RSA:2048", &file, "rsa");
    let pem = openssl_public(&file);
    let s = Signer { hsm: &hsm };
    let rsa = keys(&hsm).into_iter().find(|k| k["label"] == "rsa").unwrap();

    // GitHub App: RS256, typ JWT, no kid; iat 60 s back; at most 10 minutes.
    let before = now();
    let token = s.ok("rsa", "github-app", &["--iss", "Iv1.0123456789abcdef"]);
    let (header, claims) = pyjwt(&token, &pem, "RS256", None);
    assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before - 61..=now() - 59).contains(&iat), "iat {iat} is not 60 s back");
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 540);
    s.refused("rsa", "github-app", &["--iss", "Iv1.x", "--ttl", "11m"], "at most 10m");
    s.refused("rsa", "github-app", &[], "iss");
    // A P-256 key cannot make an RS256 token.
    s.refused(KEY, "github-app", &["--iss", "Iv1.x"], "RS256");

    // Google: an OAuth grant with scopes, or a self-signed JWT for one API; never both.
    let email = "ci@project.iam.gserviceaccount.com";
    let scopes = ["--scope", "https://www.googleapis.com/auth/cloud-platform", "--scope", "openid"];
    let token = s.ok("rsa", "google-service-account", &[&["--iss", email][..], &scopes].concat());
    let (header, claims) = pyjwt(&token, &pem, "RS256", Some("https://oauth2.googleapis.com/token"));
    assert_eq!(header["kid"], rsa["kid"]);
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/cloud-platform openid");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
    assert!(claims.get("sub").is_none());
    let api = "https://pubsub.googleapis.com/";
    let token = s.ok("rsa", "google-service-account", &["--iss", email, "--aud", api]);
    let (_, claims) = pyjwt(&token, &pem, "RS256", Some(api));
    assert_eq!((claims["sub"].as_str(), claims.get("scope")), (Some(email), None));
    s.refused(
        "rsa",
        "google-service-account",
        &[&["--iss", email, "--aud", api][..], &scopes].concat(),
        "never both",
    );
    s.refused("rsa", "google-service-account", &["--iss", email], "--scope");
    s.refused("rsa", "google-service-account", &["--iss", email, "--aud", api, "--ttl", "2h"], "at most 1h");

    // An OAuth client assertion (RFC 7523): the key's own alg, iss = sub, a fresh jti each time,
    // never cached.
    let endpoint = "https://login.example.com/oauth2/token";
    let args = ["--iss", "client-42", "--aud", endpoint];
    let first = s.ok(KEY, "oauth-client-assertion", &args);
    let second = s.ok(KEY, "oauth-client-assertion", &args);
    assert_ne!(first, second, "a client assertion was handed out twice");
    let (header, claims) = pyjwt(&first, &hsm.public_pem(KEY), "ES256", Some(endpoint));
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("ES256"), Some("JWT")));
    assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("client-42"), Some("client-42")));
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(b64url_decode(jti).len(), 16, "the jti is not 128 bits: {jti}");
    assert_ne!(decode(&second).1["jti"], claims["jti"]);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    s.refused(KEY, "oauth-client-assertion", &["--iss", "client-42"], "aud");
    s.refused(KEY, "oauth-client-assertion", &["--iss", "c", "--aud", endpoint, "--sub", "other"], "sub");
    s.refused(KEY, "oauth-client-assertion", &["--iss", "c", "--aud", endpoint, "--claim", "jti=x"], "jti");

    // Snowflake: sub ACCOUNT.USER in capitals, iss that and the key's fingerprint.
    let token = s.ok("rsa", "snowflake", &["--sub", "myorg-acct.ci_user"]);
    let (_, claims) = pyjwt(&token, &pem, "RS256", None);
    assert_eq!(claims["sub"], "MYORG-ACCT.CI_USER");
    let fingerprint = rsa["fingerprint"].as_str().unwrap();
    assert_eq!(claims["iss"], format!("MYORG-ACCT.CI_USER.{fingerprint}"));
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 59 * 60);
    s.refused("rsa", "snowflake", &["--sub", "nodot"], "ACCOUNT.USER");
    s.refused("rsa", "snowflake", &["--sub", "a.b", "--iss", "x"], "iss");

    // Salesforce: iss, sub and one of its audiences (or a community URL), at most 3 minutes.
    let args = ["--iss", "3MVG9consumer", "--sub", "ci@example.com"];
    for aud in ["https://login.salesforce.com", "https://acme.my.site.com"] {
        let token = s.ok("rsa", "salesforce", &[&args[..], &["--aud", aud]].concat());
        let (header, claims) = pyjwt(&token, &pem, "RS256", Some(aud));
        assert_eq!(header, serde_json::json!({"alg": "RS256"}));
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 180);
    }
    s.refused("rsa", "salesforce", &[&args[..], &["--aud", "login.salesforce.com"]].concat(), "aud must be");
    let long = [&args[..], &["--aud", "https://test.salesforce.com", "--ttl", "5m"]].concat();
    s.refused("rsa", "salesforce", &long, "at most 3m");

    // DocuSign: its scope, and one of its two account servers.
    let args = ["--iss", "integration-key", "--sub", "user-guid"];
    let token = s.ok("rsa", "docusign", &[&args[..], &["--aud", "account-d.docusign.com"]].concat());
    let (_, claims) = pyjwt(&token, &pem, "RS256", Some("account-d.docusign.com"));
    assert_eq!(claims["scope"], "signature impersonation");
    s.refused("rsa", "docusign", &[&args[..], &["--aud", "docusign.com"]].concat(), "aud must be");

    // Firebase custom tokens: iss = sub = the service account, its audience, a uid.
    let aud = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit";
    let args = ["--iss", email, "--claim", "uid=user-1", "--claim", r#"claims={"premium":true}"#];
    let token = s.ok("rsa", "firebase-custom-token", &args);
    let (_, claims) = pyjwt(&token, &pem, "RS256", Some(aud));
    assert_eq!((claims["sub"].as_str(), claims["uid"].as_str()), (Some(email), Some("user-1")));
    assert_eq!(claims["claims"]["premium"], true);
    s.refused("rsa", "firebase-custom-token", &["--iss", email], "uid");
    let long_uid = format!("uid={}", "u".repeat(129));
    s.refused("rsa", "firebase-custom-token", &["--iss", email, "--claim", &long_uid], "128");
    s.refused(
        "rsa",
        "firebase-custom-token",
        &["--iss", email, "--claim", "uid=u", "--claim", "claims=5"],
        "object",
    );

    // verify --preset knows them too.
    let token = s.ok("rsa", "github-app", &["--iss", "Iv1.0123456789abcdef"]);
    let (code, _, err) = run(hsm.cli().args(["verify", &token, "--key", "rsa", "--preset", "github-app"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(hsm.cli().args(["verify", &token, "--key", "rsa", "--preset", "salesforce"]));
    assert_eq!(code, 4, "{err}");
}

/// A key file in another form, made from `pkcs8` by openssl.
fn convert(pkcs8: &std::path::Path, args: &[&str], out: &std::path::Path) {
    let made =
        Command::new("openssl").args(args).arg("-in").arg(pkcs8).arg("-out").arg(out).output().unwrap();
    assert!(made.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&made.stderr));
}

#[test]
fn import_reads_pkcs1_sec1_and_google_key_files() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let (rsa, ec, google) = (hsm.path("rsa.p8"), hsm.path("ec.p8"), hsm.path("google.p8"));
    openssl_key("RSA:2048", &rsa);
    openssl_key("EC:P-384", &ec);
    openssl_key("RSA:2048", &google);
    // GitHub and DocuSign hand out PKCS#1, some tools SEC1, Google a JSON file.
    let pkcs1 = hsm.path("github-app.private-key.pem");
    convert(&rsa, &["rsa", "-traditional"], &pkcs1);
    let sec1 = hsm.path("ec.pem");
    convert(&ec, &["ec"], &sec1);
    assert!(std::fs::read_to_string(&pkcs1).unwrap().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(&sec1).unwrap().starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let email = "ci@project.iam.gserviceaccount.com";
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "project",
        "private_key_id": "4f1c3a9d0e",
        "private_key": std::fs::read_to_string(&google).unwrap(),
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let json_file = hsm.path("project-4f1c3a9d0e.json");
    std::fs::write(&json_file, json.to_string()).unwrap();
    if hsm.import_is_refused_by_a_tpm(&pkcs1) {
        return;
    }
    for (file, label) in [(&pkcs1, "gh"), (&sec1, "sec1")] {
        let (code, out, err) = run(hsm.cli().arg("import").arg(file).args(["--label", label]));
        assert_eq!(code, 0, "{label}: {err}");
        assert!(out.contains("shred -u"), "{out}");
    }
    let (code, out, err) = run(hsm.cli().arg("import").arg(&json_file));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Imported 4f1c3a9d0e"), "{out}");

    let listed = keys(&hsm);
    let alg_of = |label: &str| listed.iter().find(|k| k["label"] == label).map(|k| k["alg"].clone());
    assert_eq!(alg_of("gh"), Some(Value::from("RS256")));
    assert_eq!(alg_of("sec1"), Some(Value::from("ES384")));
    let google_key = listed.iter().find(|k| k["label"] == "4f1c3a9d0e").unwrap();
    assert_eq!(google_key["kid"], "4f1c3a9d0e");

    // Each signs tokens its public key verifies.
    let token = run(hsm.cli().args(["sign", "--key", "gh", "--preset", "github-app", "--iss", "42"])).1;
    pyjwt(token.trim(), &openssl_public(&rsa), "RS256", None);
    let token = run(hsm.cli().args(["sign", "--key", "sec1", "--iss", "x"])).1;
    pyjwt(token.trim(), &openssl_public(&ec), "ES384", None);
    // The Google key's client_email is its default iss, its private_key_id its kid.
    let (code, token, err) = run(hsm.cli().args([
        "sign",
        "--key",
        "4f1c3a9d0e",
        "--preset",
        "google-service-account",
        "--scope",
        "openid",
    ]));
    assert_eq!(code, 0, "{err}");
    let (header, claims) =
        pyjwt(token.trim(), &openssl_public(&google), "RS256", Some("https://oauth2.googleapis.com/token"));
    assert_eq!((header["kid"].as_str(), claims["iss"].as_str()), (Some("4f1c3a9d0e"), Some(email)));

    // Snowflake's encrypted PKCS#8, with the passphrase from a file: decrypted in the client.
    let snow = hsm.path("snow.p8");
    openssl_key("RSA:2048", &snow);
    let encrypted = hsm.path("rsa_key.p8");
    convert(&snow, &["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:correct horse"], &encrypted);
    assert!(
        std::fs::read_to_string(&encrypted).unwrap().starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    );
    let (wrong, right) = (hsm.path("wrong"), hsm.path("passphrase"));
    std::fs::write(&wrong, "battery staple\n").unwrap();
    std::fs::write(&right, "correct horse\n").unwrap();
    let before = keys(&hsm);
    let import = |passphrase: Option<&std::path::Path>| {
        let mut command = hsm.cli();
        command.arg("import").arg(&encrypted).args(["--label", "snow"]);
        if let Some(file) = passphrase {
            command.arg("--passphrase-file").arg(file);
        }
        run(&mut command)
    };
    let (code, _, err) = import(Some(&wrong));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("passphrase does not decrypt") && err.contains("nothing was created"), "{err}");
    // Without a file and without a terminal to ask on, it says so.
    let (code, _, err) = import(None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("passphrase"), "{err}");
    assert_eq!(keys(&hsm), before);
    let (code, _, err) = import(Some(&right));
    assert_eq!(code, 0, "{err}");
    let token = run(hsm.cli().args(["sign", "--key", "snow", "--preset", "snowflake", "--sub", "a.b"])).1;
    pyjwt(token.trim(), &openssl_public(&snow), "RS256", None);

    // A JSON file that is not a service account's key is refused, and nothing is created.
    let before = keys(&hsm);
    let other = hsm.path("user.json");
    std::fs::write(&other, r#"{"type": "authorized_user", "client_id": "x", "refresh_token": "y"}"#).unwrap();
    let (code, _, err) = run(hsm.cli().arg("import").arg(&other));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("service account"), "{err}");
    assert_eq!(keys(&hsm), before);
}

#[test]
fn cert_makes_a_certificate_inside_the_token_and_entra_assertions_carry_its_thumbprint() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let s = Signer { hsm: &hsm };
    assert_eq!(run(hsm.cli().args(["generate", "--label", "entra-app", "--alg", "PS256"])).0, 0);
    let aud = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
    let args = ["--iss", "11111111-2222-3333-4444-555555555555", "--aud", aud];
    // No certificate yet: Entra ID could not match the assertion to anything registered.
    s.refused("entra-app", "entra", &args, "jwt-agent cert");

    let (code, pem, err) =
        run(hsm.cli().args(["cert", "entra-app", "--subject", "CN=ci,O=Example", "--days", "30"]));
    assert_eq!(code, 0, "{err}");
    let cert = hsm.path("entra-app.pem");
    std::fs::write(&cert, &pem).unwrap();
    // OpenSSL, independently: self-signed and valid, the subject asked for, PSS, the key's own.
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let cert_path = cert.to_str().unwrap();
    assert!(openssl(&["verify", "-CAfile", cert_path, cert_path]).contains(": OK"));
    let text = openssl(&["x509", "-in", cert_path, "-noout", "-text"]);
    assert!(text.contains("Subject: O = Example, CN = ci") && text.contains("rsassaPss"), "{text}");
    assert!(text.contains("CA:FALSE") && text.contains("Digital Signature"), "{text}");
    let public = openssl(&["x509", "-in", cert_path, "-noout", "-pubkey"]);
    let (_, ours, _) = run(hsm.cli().args(["pubkey", "entra-app"]));
    assert_eq!(public.trim(), ours.trim(), "the certificate is not for the key");
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    use sha2::Digest;
    let x5t = b64url(&sha2::Sha256::digest(&der));
    // It sits on the token next to the key, with the same id.
    let objects = inspect(&hsm);
    let id_of = |class: &str| {
        objects.iter().find(|o| o["label"] == "entra-app" && o["class"] == class).map(|o| o["id"].clone())
    };
    assert_eq!(id_of("CERTIFICATE"), id_of("PRIVATE_KEY"));
    // A second one for the same key is refused, and nothing changes.
    let (code, _, err) = run(hsm.cli().args(["cert", "entra-app"]));
    assert_eq!(code, 4, "{err}");

    // Entra ID: PS256, x5t#S256 of that certificate, iss = sub, nbf = iat, a fresh jti, never cached.
    let token = s.ok("entra-app", "entra", &args);
    let (header, claims) = pyjwt(&token, &public, "PS256", Some(aud));
    assert_eq!(header["x5t#S256"], x5t.as_str());
    assert_eq!(claims["sub"], claims["iss"]);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(b64url_decode(claims["jti"].as_str().unwrap()).len(), 16);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 600);
    assert_ne!(s.ok("entra-app", "entra", &args), token, "an Entra assertion was handed out twice");
    s.refused(
        "entra-app",
        "entra",
        &["--iss", "app", "--aud", "https://login.microsoftonline.com/token"],
        "TENANT",
    );
    s.refused("entra-app", "entra", &[&args[..], &["--ttl", "2h"]].concat(), "at most 1h");
    // A P-256 key has neither the RSA Entra wants nor a certificate: refused all the same.
    s.refused(KEY, "entra", &args, "entra: ");
    let (code, _, err) = run(hsm.cli().args(["verify", &token, "--key", "entra-app", "--preset", "entra"]));
    assert_eq!(code, 0, "{err}");
}
