//! `jwt-agent token` and `exec --exchange`: the agent signs the assertion, the client trades it
//! for an access token over HTTPS. GitHub and the OAuth services cannot be reached from the
//! test machines, so `tests/exchange_server.py` plays them on 127.0.0.1 with a certificate from
//! its own CA (given with --ca-file), answering as their docs say; it checks every assertion
//! it receives with PyJWT against the key's public half, and logs what it saw.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "Iv1.0123456789abcdef";

/// The fake services, for one test.
struct Services {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Services {
    /// Starts the server; it trusts the public keys of `labels` (PEM files in the Hsm folder).
    fn start(hsm: &Hsm, trusted: &[&str]) -> Services {
        let dir = hsm.path("services");
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        for label in trusted {
            std::fs::write(dir.join(format!("keys/{label}.pem")), public(hsm, label)).unwrap();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/exchange_server.py");
        let child = Command::new("python3").arg(script).arg(&dir).stderr(Stdio::inherit()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(dir.join("port")) {
                break port.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the test server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Services { child, dir, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").to_str().unwrap().to_owned()
    }

    /// Every request the server has seen, oldest first.
    fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("requests.jsonl")).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The public key of `label`, PEM, as `jwt-agent pubkey` gives it.
fn public(hsm: &Hsm, label: &str) -> String {
    let (code, pem, err) = run(hsm.cli().args(["pubkey", label]));
    assert_eq!(code, 0, "pubkey {label}: {err}");
    pem
}

/// `jwt-agent token ARGS`, with no proxy in the way of 127.0.0.1.
fn token(hsm: &Hsm, args: &[&str]) -> (i32, String, String) {
    run(hsm
        .cli()
        .arg("token")
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY"))
}

fn token_ok(hsm: &Hsm, args: &[&str]) -> String {
    let (code, out, err) = token(hsm, args);
    assert_eq!(code, 0, "token {args:?}: {err}");
    assert!(err.is_empty(), "token {args:?} wrote to stderr: {err}");
    out.trim_end().to_owned()
}

/// An agent with an audit log and an RSA key `rsa`.
fn rsa_agent(hsm: &Hsm) -> Agent {
    let audit = hsm.path("audit.jsonl");
    let agent = hsm.agent_with(&["--audit-log", audit.to_str().unwrap()]);
    let file = hsm.path("rsa.pem");
    openssl_key("RSA:2048", &file);
    hsm.add_key("RSA:2048", &file, "rsa");
    agent
}

/// The socket inodes of TCP connections open anywhere (IPv4 and IPv6).
fn tcp_inodes() -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.push(inode.to_owned());
            }
        }
    }
    inodes
}

/// The daemon has no TCP socket open: the exchange ran in the client.
fn assert_no_network(agent: &Agent) {
    let tcp = tcp_inodes();
    for fd in std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
            assert!(!tcp.iter().any(|t| t == inode), "the daemon holds a TCP socket");
        }
    }
}

/// An agent with the RSA key `rsa`, the services trusting it, GitHub's API URL and the CA file.
fn github(hsm: &Hsm) -> (Agent, Services, String, String) {
    let agent = rsa_agent(hsm);
    let services = Services::start(hsm, &["rsa"]);
    let (api, ca) = (services.url("/api/v3"), services.ca());
    (agent, services, api, ca)
}

#[test]
fn a_github_app_gets_an_installation_token_narrowed_as_asked() {
    let hsm = Hsm::new();
    let (mut agent, services, api, ca) = github(&hsm);
    let base = ["--key", "rsa", "--preset", "github-app", "--iss", APP, "--api-url", &api, "--ca-file", &ca];

    // By installation id, narrowed to one repository and two permissions; --json says it all.
    let args = [&base[..], &["--installation", "4242", "--repository", "app"]].concat();
    let args =
        [&args[..], &["--permission", "contents=read", "--permission", "issues=write", "--json"]].concat();
    let answer: Value = serde_json::from_str(&token_ok(&hsm, &args)).unwrap();
    let first = answer["token"].as_str().unwrap().to_owned();
    assert!(first.starts_with("ghs_"), "{answer}");
    assert_eq!(answer["cached"], false);
    assert_eq!(answer["installation_id"], 4242);
    assert_eq!(answer["permissions"], serde_json::json!({"contents": "read", "issues": "write"}));
    assert_eq!(answer["repositories"][0]["name"], "app");
    let expires = answer["expires_at"].as_str().unwrap();
    assert!(expires.ends_with('Z') && expires.len() == 20, "{expires}");

    let seen = services.requests();
    let post = seen.last().unwrap();
    assert_eq!(post["path"], "/api/v3/app/installations/4242/access_tokens");
    assert_eq!(post["verified"], true, "PyJWT did not verify the app's JWT: {post}");
    assert_eq!(post["claims"]["iss"], APP);
    assert_eq!(post["header"]["alg"], "RS256");
    assert_eq!(
        post["asked"],
        serde_json::json!({"repositories": ["app"], "permissions": {"contents": "read", "issues": "write"}})
    );
    assert_eq!(post["headers"]["Accept"], "application/vnd.github+json");
    assert_eq!(post["headers"]["X-GitHub-Api-Version"], "2022-11-28");

    // The same request again comes from the agent, without a call to GitHub; --fresh asks anew.
    let again: Value = serde_json::from_str(&token_ok(&hsm, &args)).unwrap();
    assert_eq!((again["token"].as_str(), &again["cached"]), (Some(first.as_str()), &Value::from(true)));
    assert_eq!(services.requests().len(), seen.len(), "a kept token went to GitHub again");
    let fresh = token_ok(&hsm, &[&args[..args.len() - 1], &["--fresh"]].concat());
    assert!(fresh.starts_with("ghs_") && fresh != first);
    // Other flags are another request.
    let other = token_ok(&hsm, &[&base[..], &["--installation", "4242"]].concat());
    assert!(other != first && other != fresh);

    // By repository: the installation is looked up first.
    let by_repo = token_ok(&hsm, &[&base[..], &["--repo", "octo-org/docs"]].concat());
    assert!(by_repo.starts_with("ghs_"));
    let seen = services.requests();
    let lookup = &seen[seen.len() - 2];
    assert_eq!(
        (lookup["method"].as_str(), lookup["path"].as_str()),
        (Some("GET"), Some("/api/v3/repos/octo-org/docs/installation"))
    );
    assert_eq!(lookup["verified"], true);

    // The audit log records each exchange, and holds no token of either kind.
    let lines = audit_lines(&hsm.path("audit.jsonl"));
    let exchanged: Vec<&Value> = lines.iter().filter(|l| l["op"] == "exchanged").collect();
    assert_eq!(exchanged.len(), 4, "{lines:?}");
    assert!(exchanged.iter().all(|l| l["outcome"] == "exchanged" && l["key"] == "rsa" && l["iss"] == APP));
    assert_eq!(exchanged[0]["endpoint"], api);
    assert_eq!(exchanged[0]["preset"], "github-app");
    assert!(lines.iter().any(|l| l["op"] == "access_token" && l["outcome"] == "cached"));
    let audit = std::fs::read_to_string(hsm.path("audit.jsonl")).unwrap();
    assert!(!audit.contains("ghs_"), "an access token reached the audit log");
    assert!(!audit.contains("eyJ"), "an assertion reached the audit log");
    let status: Value = serde_json::from_str(&run(hsm.cli().args(["status", "--json"])).1).unwrap();
    assert_eq!(status["cache"]["access_tokens"], 3);
    assert_no_network(&agent);

    // Locking forgets kept access tokens.
    assert_eq!(run(hsm.cli().arg("lock")).0, 0);
    let status: Value = serde_json::from_str(&run(hsm.cli().args(["status", "--json"])).1).unwrap();
    assert_eq!(status["cache"]["access_tokens"], 0);

    agent.signal(libc::SIGTERM);
    let (_, log) = agent.wait();
    assert!(!log.contains("ghs_") && !log.contains("eyJ"), "a token reached the daemon's log: {log}");
}

#[test]
fn github_refusals_are_one_clear_sentence() {
    let hsm = Hsm::new();
    let (_agent, services, api, ca) = github(&hsm);
    let base = ["--key", "rsa", "--preset", "github-app", "--iss", APP, "--api-url", &api, "--ca-file", &ca];
    let refused = |extra: &[&str], want: &[&str]| {
        let (code, out, err) = token(&hsm, &[&base[..], extra].concat());
        assert_eq!(code, 1, "{extra:?}: {out}{err}");
        assert!(out.is_empty(), "{extra:?} printed {out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        for want in want {
            assert!(err.contains(want), "{extra:?}: {err}");
        }
    };
    refused(&["--installation", "99"], &["no installation 99", "404"]);
    refused(&["--repo", "octo-org/nothing"], &["not installed on octo-org/nothing", "--repo"]);
    refused(&["--repo", "octo-org/limited"], &["rate limit", "403", "resets at"]);
    refused(&["--installation", "4242", "--repository", "secret"], &["422", "--repository"]);

    // A key GitHub does not know: the server's PyJWT refuses the signature, GitHub says 401.
    let other = hsm.path("other.pem");
    openssl_key("RSA:2048", &other);
    hsm.add_key("RSA:2048", &other, "other");
    let (code, _, err) = token(
        &hsm,
        &[
            "--key",
            "other",
            "--preset",
            "github-app",
            "--iss",
            APP,
            "--api-url",
            &api,
            "--ca-file",
            &ca,
            "--installation",
            "4242",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("401") && err.contains("--iss"), "{err}");
    assert_eq!(services.requests().last().unwrap()["verified"], false);

    // Failures are audited as such, and nothing was kept.
    let lines = audit_lines(&hsm.path("audit.jsonl"));
    let failed: Vec<&Value> = lines.iter().filter(|l| l["outcome"] == "exchange_failed").collect();
    assert_eq!(failed.len(), 5, "{lines:?}");
    assert!(failed[0]["reason"].as_str().unwrap().contains("404"));

    // Usage errors, exit 2, before anything is signed or sent.
    let sent = services.requests().len();
    for (args, want) in [
        (vec!["--installation", "1", "--repo", "a/b"], "not both"),
        (vec![], "--installation ID, or --repo"),
        (vec!["--repo", "nothing"], "OWNER/REPO"),
        (vec!["--installation", "1", "--permission", "contents=all"], "read, write, admin"),
        (vec!["--installation", "1", "--scope", "repo"], "--permission"),
    ] {
        let (code, _, err) = token(&hsm, &[&base[..], &args].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let app = ["--key", "rsa", "--preset", "github-app", "--iss", APP];
    let (code, _, err) =
        token(&hsm, &[&app[..], &["--api-url", "http://127.0.0.1:1", "--installation", "1"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("https://"), "{err}");
    let (code, _, err) = token(&hsm, &["--key", "rsa", "--preset", "apns", "--iss", "T"]);
    assert_eq!(code, 2);
    assert!(err.contains("no exchange") && err.contains("github-app"), "{err}");
    assert_eq!(services.requests().len(), sent);

    // Without --ca-file the server's private CA is not trusted, and the error says what to do.
    let (code, _, err) = token(&hsm, &[&app[..], &["--api-url", &api, "--installation", "4242"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("--ca-file"), "{err}");
    assert_eq!(services.requests().len(), sent, "a request went to an untrusted server");
}

#[test]
fn exec_hands_the_command_an_installation_token_and_revokes_it_after() {
    let hsm = Hsm::new();
    let (_agent, services, api, ca) = github(&hsm);
    let out = hsm.path("seen");
    let script = format!("printf %s \"$GH_TOKEN\" > {}; exit 7", out.display());
    let exec =
        ["exec", "--key", "rsa", "--preset", "github-app", "--iss", APP, "--api-url", &api, "--ca-file", &ca];
    let (code, _, err) =
        run(hsm.cli().args(exec).args(["--repo", "octo-org/app", "--", "sh", "-c", &script]));
    assert_eq!(code, 7, "exec did not end with the command's status: {err}");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(seen.starts_with("ghs_"), "{seen:?}");
    let revoked = services.requests().into_iter().find(|r| r["method"] == "DELETE").expect("no revocation");
    assert_eq!(revoked["path"], "/api/v3/installation/token");
    assert_eq!(revoked["revoked"], seen, "another token was revoked");
    let lines = audit_lines(&hsm.path("audit.jsonl"));
    assert!(lines.iter().any(|l| l["outcome"] == "revoked" && l["key"] == "rsa"), "{lines:?}");
    // Its token was the command's own: not kept for the next ask.
    let status: Value = serde_json::from_str(&run(hsm.cli().args(["status", "--json"])).1).unwrap();
    assert_eq!(status["cache"]["access_tokens"], 0);

    // A command ended by a signal still has its token revoked; exec says 128 + the signal.
    let (code, _, _) = run(hsm.cli().args(exec).args([
        "--installation",
        "4242",
        "--env",
        "T",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]));
    assert_eq!(code, 128 + 15);
    assert_eq!(
        services.requests().iter().filter(|r| r["method"] == "DELETE" && r["revoked"].is_string()).count(),
        2
    );
}

#[test]
fn oauth_grants_trade_each_service_assertion() {
    let hsm = Hsm::new();
    let _agent = rsa_agent(&hsm);
    let services = Services::start(&hsm, &["rsa", KEY]);
    let ca = services.ca();
    let endpoint = services.url("/token");

    // Client credentials with a client assertion (Okta, Auth0, Keycloak), an ES256 key.
    let args = [
        "--key",
        KEY,
        "--preset",
        "oauth-client-assertion",
        "--iss",
        "client-42",
        "--aud",
        &endpoint,
        "--scope",
        "api.read",
        "--scope",
        "api.write",
        "--ca-file",
        &ca,
        "--json",
    ];
    let answer: Value = serde_json::from_str(&token_ok(&hsm, &args)).unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "api.read api.write");
    let seen = services.requests();
    let grant = seen.last().unwrap();
    assert_eq!(grant["verified"], true, "{grant}");
    assert_eq!(grant["form"]["grant_type"], "client_credentials");
    assert_eq!(grant["form"]["client_id"], "client-42");
    assert_eq!(grant["form"]["scope"], "api.read api.write");
    assert_eq!(grant["header"]["alg"], "ES256");
    assert!(grant["claims"].get("scope").is_none(), "the grant's scope went into the assertion");
    // Kept: the second ask signs nothing (a client assertion is never reused).
    let again: Value = serde_json::from_str(&token_ok(&hsm, &args)).unwrap();
    assert_eq!((&again["cached"], &again["token"]), (&Value::from(true), &answer["token"]));
    let (code, _, err) = token(
        &hsm,
        &[
            "--key",
            KEY,
            "--preset",
            "oauth-client-assertion",
            "--iss",
            "unknown-client",
            "--aud",
            &endpoint,
            "--ca-file",
            &ca,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid_client") && err.contains("AADSTS700016") && err.contains("--iss"), "{err}");

    // Entra ID: PS256 with the certificate's x5t#S256, posted to the tenant's endpoint.
    {
        assert_eq!(run(hsm.cli().args(["cert", "rsa"])).0, 0);
        let tenant_aud = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        let tenant_url = services.url("/contoso.onmicrosoft.com/oauth2/v2.0/token");
        let entra = [
            "--key",
            "rsa",
            "--preset",
            "entra",
            "--iss",
            "app-id",
            "--aud",
            tenant_aud,
            "--token-url",
            &tenant_url,
            "--ca-file",
            &ca,
        ];
        let (code, _, err) = token(&hsm, &entra);
        assert_eq!(code, 2, "Entra without --scope: {err}");
        assert!(err.contains("--scope"));
        token_ok(&hsm, &[&entra[..], &["--scope", "https://graph.microsoft.com/.default"]].concat());
        let grant = services.requests().pop().unwrap();
        assert_eq!(grant["verified"], true, "{grant}");
        assert_eq!(grant["header"]["alg"], "PS256");
        assert!(grant["header"]["x5t#S256"].is_string());
    }

    // Google: the JWT-bearer grant, the scopes in the assertion.
    let google = [
        "--key",
        "rsa",
        "--preset",
        "google-service-account",
        "--iss",
        "ci@p.iam.gserviceaccount.com",
        "--scope",
        "https://www.googleapis.com/auth/cloud-platform",
        "--token-url",
        &services.url("/google/token"),
        "--ca-file",
        &ca,
        "--json",
    ];
    let answer: Value = serde_json::from_str(&token_ok(&hsm, &google)).unwrap();
    assert!(answer["expires_at"].is_string());
    let grant = services.requests().pop().unwrap();
    assert_eq!(
        (&grant["verified"], &grant["form"]["grant_type"]),
        (&Value::from(true), &Value::from("urn:ietf:params:oauth:grant-type:jwt-bearer"))
    );
    assert_eq!(grant["claims"]["scope"], "https://www.googleapis.com/auth/cloud-platform");
    let (code, _, err) = token(
        &hsm,
        &[
            "--key",
            "rsa",
            "--preset",
            "google-service-account",
            "--iss",
            "ci@p",
            "--aud",
            "https://pubsub.googleapis.com/",
            "--ca-file",
            &ca,
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("jwt-agent sign"), "{err}");

    // Salesforce: instance_url comes through; without an expiry the token is not kept.
    let salesforce = [
        "--key",
        "rsa",
        "--preset",
        "salesforce",
        "--iss",
        "3MVG9",
        "--sub",
        "ci@example.com",
        "--aud",
        "https://login.salesforce.com",
        "--token-url",
        &services.url("/services/oauth2/token"),
        "--ca-file",
        &ca,
        "--json",
    ];
    let answer: Value = serde_json::from_str(&token_ok(&hsm, &salesforce)).unwrap();
    assert_eq!(answer["instance_url"], "https://example.my.salesforce.com");
    assert_eq!(answer["expires_at"], Value::Null);
    let again: Value = serde_json::from_str(&token_ok(&hsm, &salesforce)).unwrap();
    assert_eq!(again["cached"], false);
    let mut unapproved = salesforce.to_vec();
    unapproved[7] = "unapproved@example.com";
    let (code, _, err) = token(&hsm, &unapproved);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid_grant") && err.contains("hasn't approved") && err.contains("pre-authorized"),
        "{err}"
    );

    // DocuSign.
    let docusign = [
        "--key",
        "rsa",
        "--preset",
        "docusign",
        "--iss",
        "integration-key",
        "--sub",
        "user-id",
        "--aud",
        "account-d.docusign.com",
        "--token-url",
        &services.url("/oauth/token"),
        "--ca-file",
        &ca,
    ];
    assert!(!token_ok(&hsm, &docusign).is_empty());
    assert_eq!(services.requests().pop().unwrap()["verified"], true);

    // exec with --exchange puts the OAuth token in ACCESS_TOKEN.
    let out = hsm.path("seen");
    let script = format!("printf %s \"$ACCESS_TOKEN\" > {}", out.display());
    let (code, _, err) = run(hsm
        .cli()
        .args(["exec", "--exchange"])
        .args(docusign)
        .args(["--fresh", "--", "sh", "-c", &script]));
    assert_eq!(code, 0, "{err}");
    let issued = services.requests().pop().unwrap()["issued"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), issued);
}

#[test]
fn another_uid_never_sees_the_access_tokens_kept_for_this_one() {
    if !root_or_skip("another uid's view of kept access tokens") {
        return;
    }
    const OTHER: u32 = 65534;
    let hsm = Hsm::new();
    let config =
        hsm.config(&format!("[daemon]\nallowed_uids = [{OTHER}]\n[keys.{KEY}]\nallowed_uids = [{OTHER}]\n"));
    let _agent = hsm.agent_with(&["--config", &config]);
    chmod(hsm.dir.path(), 0o755);
    chmod(hsm.socket().parent().unwrap(), 0o755);
    chmod(&hsm.socket(), 0o777);
    let expires = now() + 3600;
    let report = serde_json::json!({"op": "exchanged", "preset": "oauth-client-assertion", "key": KEY,
        "endpoint": "https://idp.example/token", "outcome": "issued", "request": "r1",
        "token": {"token": "owner-secret", "expires_at": expires}});
    let mut owner = Conn::new(&hsm.socket());
    assert_eq!(owner.request(report.clone())["kept"], true);
    let ask = serde_json::json!({"op": "access_token", "key": KEY, "request": "r1"});
    assert_eq!(owner.request(ask.clone())["access_token"]["token"], "owner-secret");

    // The other uid asks for the same request, then keeps a token of its own under that name.
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
for line in sys.argv[2:]:
    f.write(line + "\n"); f.flush()
    print(f.readline().strip(), flush=True)
"#;
    let mut mine = report.clone();
    mine["token"]["token"] = "other-secret".into();
    let mut command = as_uid(OTHER, &[], std::path::Path::new("/usr/bin/python3"));
    command
        .args(["-c", script])
        .arg(hsm.socket())
        .arg(ask.to_string())
        .arg(mine.to_string())
        .arg(ask.to_string());
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0]["access_token"], Value::Null, "another uid got the owner's token");
    assert_eq!(answers[1]["kept"], true);
    assert_eq!(answers[2]["access_token"]["token"], "other-secret");
    // The owner's is untouched.
    assert_eq!(owner.request(ask)["access_token"]["token"], "owner-secret");
}
