//! The daemon under pressure: lock and unlock, connection limits and stalled clients, shutdown
//! with requests in flight, a soak, and the PIN kept out of everything the agent says.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn sign(hsm: &Hsm) -> (i32, String, String) {
    run(hsm.cli().args(["sign", "--key", KEY, "--iss", "x", "--ttl", "20m"]))
}

#[test]
fn lock_refuses_signing_until_unlock() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let cached = sign(&hsm).1;
    assert_eq!(run(hsm.cli().arg("lock")).0, 0);
    let (code, out, err) = sign(&hsm);
    assert_eq!(code, 4, "{err}");
    assert!(out.is_empty(), "a cached token left a locked agent");
    assert!(err.contains("locked") && err.contains("jwt-agent unlock"), "{err}");
    let input = signing_input(r#"{"alg":"ES256"}"#, "{}");
    assert_eq!(run(hsm.cli().args(["sign-input", "--key", KEY, &input])).0, 4);
    let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((status["locked"].as_bool(), status["token"]["state"].as_str()), (Some(true), Some("locked")));
    assert_eq!(status["cache"]["size"], 0, "lock empties the cache");

    // (A wrong PIN now holds off every unlock for 30 s: that is tested on its own below.)
    let (code, _, err) = run(hsm.cli().arg("unlock").env("JWT_AGENT_PIN", PIN));
    assert_eq!(code, 0, "{err}");
    let (code, token, _) = sign(&hsm);
    assert_eq!(code, 0);
    assert_ne!(token, cached, "the old cached token was forgotten");
    assert_eq!(run(hsm.cli().arg("unlock").env("JWT_AGENT_PIN", PIN)).0, 4, "not locked");
}

#[test]
fn lock_after_locks_an_idle_agent() {
    let hsm = Hsm::new();
    let _agent = hsm.agent_with(&["--lock-after", "2s"]);
    assert_eq!(sign(&hsm).0, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
        if serde_json::from_str::<Value>(&out).unwrap()["locked"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the idle agent never locked");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sign(&hsm).0, 4);
    assert_eq!(run(hsm.cli().arg("unlock").arg("--pin-file").arg(&hsm.pin_file)).0, 0);
    assert_eq!(sign(&hsm).0, 0);
}

#[test]
fn half_written_connections_do_not_hold_up_a_new_client() {
    let hsm = Hsm::new();
    let _agent = hsm.agent_with(&["--read-timeout", "60s"]);
    // 200 clients that start a request and never finish it.
    let stalled: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut stream = UnixStream::connect(hsm.socket()).unwrap();
            stream.write_all(b"{\"op\":\"sign_input\",\"key\":\"asc\",\"inp").unwrap();
            stream
        })
        .collect();
    let (code, token, err) = sign(&hsm);
    assert_eq!(code, 0, "{err}");
    verify_p256(token.trim(), &hsm.public_pem(KEY));
    // They were all still connected (and waiting) while the new client was served.
    for mut stream in stalled {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let still_open =
            matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(still_open, "a stalled connection was answered or closed");
    }
}

#[test]
fn a_stalled_request_is_cut_off_after_the_read_timeout() {
    let hsm = Hsm::new();
    let _agent = hsm.agent_with(&["--read-timeout", "1s"]);
    let mut stream = UnixStream::connect(hsm.socket()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"{\"op\":\"ke").unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the daemon closed the connection without an answer: {rest:?}");
    assert_eq!(sign(&hsm).0, 0);
}

#[test]
fn connections_beyond_the_limit_are_told_the_agent_is_busy() {
    let hsm = Hsm::new();
    let _agent = hsm.agent_with(&["--max-connections", "4"]);
    // Four connections that are being served (each has had an answer) hold the four slots. The
    // probe that saw the daemon come up may hold one for a moment, so a busy answer is retried.
    let held: Vec<Conn> = (0..4)
        .map(|_| {
            loop {
                let mut conn = Conn::new(&hsm.socket());
                if conn.request(json!({"op": "keys"}))["ok"] == true {
                    break conn;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .collect();
    // A fifth is turned away with a clear answer.
    let mut extra = UnixStream::connect(hsm.socket()).unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(answer["error"]["code"], "busy");
    let (code, _, err) = sign(&hsm);
    assert_eq!(code, 1);
    assert!(err.contains("as many connections"), "{err}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sign(&hsm).0, 0, "slots free up when clients leave");
}

#[test]
fn sigterm_under_load_answers_or_closes_and_loses_nothing_silently() {
    let hsm = Hsm::new();
    let mut agent = hsm.agent();
    let input = signing_input(r#"{"alg":"ES256"}"#, r#"{"iss":"load"}"#);
    let public = hsm.public_pem(KEY);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (socket, input, public) = (hsm.socket(), input.clone(), public.clone());
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let (mut sent, mut answered) = (0, 0);
                loop {
                    let line = json!({"op": "sign_input", "key": KEY, "input": input}).to_string() + "\n";
                    if stream.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    sent += 1;
                    let mut answer = String::new();
                    match std::io::BufRead::read_line(&mut reader, &mut answer) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let answer: Value = serde_json::from_str(&answer).unwrap();
                            assert_eq!(answer["ok"], true, "{answer}");
                            verify_p256(answer["token"].as_str().unwrap(), &public);
                            answered += 1;
                        }
                    }
                }
                (sent, answered)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait();
    assert!(status.success());
    assert!(!hsm.socket().exists());
    let mut total = 0;
    for client in clients {
        let (sent, answered) = client.join().unwrap();
        // Every answer that came was good; at most the one request in the pipe when the
        // connection closed went unanswered, and the client saw the close.
        assert!(sent - answered <= 1, "sent {sent}, answered {answered}");
        total += answered;
    }
    assert!(total > 0, "no load was running when the signal came");
}

#[test]
fn soak_64_connections_of_1000_requests() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let input = signing_input(r#"{"alg":"ES256"}"#, r#"{"iss":"soak"}"#);
    let warm = rss_kib(agent.pid());
    let run_round = |connections: usize, requests: usize| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                let (socket, input) = (hsm.socket(), input.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::new(&socket);
                    let line = json!({"op": "sign_input", "key": KEY, "input": input}).to_string();
                    (0..requests).filter(|_| conn.ask(&line)["ok"] == true).count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    };
    // A TPM signs a few hundred a second, a tenth of SoftHSM: its soak is a tenth as long.
    let soak = if backend() == Backend::Tpm { 100 } else { 1000 };
    assert_eq!(run_round(64, 100), 6400);
    let after_first = rss_kib(agent.pid());
    assert_eq!(run_round(64, soak), 64 * soak, "every request of the soak succeeded");
    let after_soak = rss_kib(agent.pid());
    let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["counters"]["signatures"], 6400 + 64 * soak);
    assert_eq!(status["counters"]["token_errors"], 0);
    eprintln!(
        "soak: resident memory {warm} KiB warm, {after_first} KiB after 6,400, {after_soak} KiB after {} signatures",
        6400 + 64 * soak
    );
    // Flat: the signatures of the soak add no more than noise to what the first 6,400 left.
    assert!(after_soak <= after_first + 2048, "memory grew from {after_first} to {after_soak} KiB");
}

#[test]
fn the_pin_appears_in_nothing_the_agent_says() {
    let hsm = Hsm::new();
    let secret_pin = "8675309";
    let changed = std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--login", "--pin", PIN, "--change-pin", "--new-pin", secret_pin])
        .envs(hsm.conf_envs())
        .output()
        .unwrap();
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    std::fs::write(&hsm.pin_file, secret_pin).unwrap();
    let audit = hsm.path("audit.jsonl");
    let mut agent = hsm.agent_with(&["--audit-log", audit.to_str().unwrap()]);
    let mut said = String::new();
    for args in [&["status", "--json"][..], &["status"], &["keys", "--json"], &["lock"]] {
        let (_, out, err) = run(hsm.cli().args(args));
        said += &out;
        said += &err;
    }
    // The right PIN first, then a wrong one: after a wrong one no PIN is tried for 30 s.
    let (_, out, err) = run(hsm.cli().arg("unlock").env("JWT_AGENT_PIN", secret_pin));
    said += &out;
    said += &err;
    said += &sign(&hsm).1;
    let (_, out, err) = run(hsm.cli().arg("lock"));
    said += &out;
    said += &err;
    let (_, out, err) = run(hsm.cli().arg("unlock").env("JWT_AGENT_PIN", "1234567"));
    said += &out;
    said += &err;
    agent.signal(libc::SIGTERM);
    let (_, log) = agent.wait();
    said += &log;
    said += &std::fs::read_to_string(&audit).unwrap();
    assert!(said.contains("rejected the PIN"), "the wrong unlock was reported");
    assert!(!said.contains(secret_pin), "the PIN leaked: {said}");
    assert!(!said.contains("1234567"), "a wrong PIN leaked: {said}");
}
