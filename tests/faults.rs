//! Token faults, injected by a PKCS#11 module that forwards to SoftHSM
//! (`tests/faulty/faulty_pkcs11.c`): the daemon recovers by itself when the token comes back,
//! reports a clear `token_error` while it is gone, never spins, and never retries a rejected PIN.

mod common;

use common::*;
use serde_json::Value;

fn sign(hsm: &Hsm) -> (i32, String, String) {
    run(hsm.cli().args(["sign", "--key", KEY, "--fresh"]))
}

fn fault(control: &std::path::Path, what: &str) {
    std::fs::write(control, what).unwrap();
}

fn state(hsm: &Hsm) -> String {
    let (_, out, _) = run(hsm.cli().args(["status", "--json"]));
    serde_json::from_str::<Value>(&out).unwrap()["token"]["state"].as_str().unwrap().to_owned()
}

#[test]
fn closed_sessions_are_reopened_and_the_login_redone_once() {
    let hsm = Hsm::new();
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "1"]);
    assert_eq!(sign(&hsm).0, 0);
    assert_eq!(calls(&log, "C_Login"), 1);
    // A replugged token or restarted connector: every session closed, the login gone.
    fault(&control, "close_all");
    let (code, token, err) = sign(&hsm);
    assert_eq!(code, 0, "{err}");
    verify_p256(token.trim(), &hsm.public_pem(KEY));
    assert_eq!(calls(&log, "C_Login"), 2, "one login again with the PIN that worked");
    assert_eq!(calls(&log, "C_OpenSession"), 2);
    assert_eq!(sign(&hsm).0, 0);
    assert_eq!(calls(&log, "C_Login"), 2);
    assert_eq!(state(&hsm), "logged_in");
}

#[test]
fn an_invalid_session_is_retried_once_and_a_second_failure_is_an_error() {
    let hsm = Hsm::new();
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "1"]);
    fault(&control, "session_invalid_once");
    assert_eq!(sign(&hsm).0, 0, "retried once on a new session");
    assert_eq!(calls(&log, "C_SignInit"), 2);

    for (what, message) in
        [("session_invalid", "dropped the session"), ("not_logged_in", "dropped the session")]
    {
        fault(&control, what);
        let before = calls(&log, "C_SignInit");
        let (code, out, err) = sign(&hsm);
        assert_eq!(code, 5, "{what}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(message), "{what}: {err}");
        assert_eq!(calls(&log, "C_SignInit") - before, 2, "{what}: tried twice, not in a loop");
    }
    fault(&control, "");
    assert_eq!(sign(&hsm).0, 0);
}

#[test]
fn a_device_error_is_reported_without_a_retry() {
    let hsm = Hsm::new();
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "1"]);
    fault(&control, "device_error");
    let before = calls(&log, "C_SignInit");
    let (code, _, err) = sign(&hsm);
    assert_eq!(code, 5);
    assert!(err.contains("reported a failure") && err.contains("DeviceError"), "{err}");
    assert_eq!(calls(&log, "C_SignInit") - before, 1);
    fault(&control, "");
    assert_eq!(sign(&hsm).0, 0);
}

#[test]
fn a_removed_token_is_a_clear_error_and_the_agent_recovers_when_it_is_back() {
    let hsm = Hsm::new();
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "2"]);
    assert_eq!(sign(&hsm).0, 0);
    fault(&control, "removed");
    let sessions_before = calls(&log, "C_OpenSession");
    for _ in 0..5 {
        let (code, out, err) = sign(&hsm);
        assert_eq!(code, 5);
        assert!(out.is_empty());
        assert!(err.contains("not there") && err.contains("plug it back in"), "{err}");
    }
    // At most one reopen per request: the daemon does not spin on a missing token.
    assert!(calls(&log, "C_OpenSession") - sessions_before <= 5);
    assert!(state(&hsm).contains("unreachable") || state(&hsm).contains("unavailable"), "{}", state(&hsm));
    // The token comes back; it took its sessions and the login with it when it went.
    let logins = calls(&log, "C_Login");
    fault(&control, "");
    assert_eq!(sign(&hsm).0, 0, "recovered by itself");
    assert_eq!(calls(&log, "C_Login"), logins + 1, "logged in again, once");
    assert_eq!(sign(&hsm).0, 0);
    assert_eq!(state(&hsm), "logged_in");
}

#[test]
fn a_pin_the_token_rejects_on_relogin_is_never_tried_again() {
    let hsm = Hsm::new();
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "1"]);
    assert_eq!(sign(&hsm).0, 0);
    // The sessions go, and the token refuses the PIN now (someone changed it meanwhile).
    fault(&control, "close_all pin_incorrect");
    let (code, _, err) = sign(&hsm);
    assert_eq!(code, 5);
    assert!(err.contains("rejected the PIN") && err.contains("will not be retried"), "{err}");
    assert_eq!(calls(&log, "C_Login"), 2);
    for _ in 0..3 {
        let (code, _, err) = sign(&hsm);
        assert_eq!(code, 5);
        assert!(err.contains("does not log in again by itself"), "{err}");
    }
    fault(&control, "");
    assert_eq!(sign(&hsm).0, 5, "even with the token fine again, the agent does not try the PIN");
    assert_eq!(calls(&log, "C_Login"), 2, "the rejected PIN was tried once");
    // A person gives the PIN again.
    let (code, _, err) = run(hsm.cli().arg("unlock").arg("--pin-file").arg(&hsm.pin_file));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sign(&hsm).0, 0);
}

#[test]
fn a_hanging_token_does_not_stop_other_requests() {
    let hsm = Hsm::new();
    let (_agent, control, _) = faulty_agent(&hsm, &["--sessions", "2"]);
    fault(&control, "hang 3000");
    let slow = std::thread::spawn({
        let mut command = hsm.cli();
        command.args(["sign", "--key", KEY, "--fresh"]);
        move || run(&mut command)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    // status and keys go to the other session while the first waits on the token.
    assert_eq!(run(hsm.cli().args(["status"])).0, 0);
    assert_eq!(run(hsm.cli().args(["keys"])).0, 0);
    assert!(!slow.is_finished(), "the hang did not happen, so this proves nothing");
    fault(&control, "");
    let (code, token, err) = slow.join().unwrap();
    assert_eq!(code, 0, "{err}");
    verify_p256(token.trim(), &hsm.public_pem(KEY));
}

#[test]
fn a_token_call_that_never_returns_does_not_keep_the_daemon_from_stopping() {
    let hsm = Hsm::new();
    let (mut agent, control, _) = faulty_agent(&hsm, &["--sessions", "1"]);
    // Ten minutes a signature: a network HSM that stopped answering mid-call.
    fault(&control, "hang 600000");
    let mut stuck = agent.connect();
    stuck.send_raw(format!("{}\n", sign_input_line()).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(300));
    agent.signal(libc::SIGTERM);
    // The drain waits 10 s for the request in flight, then the daemon stops without it.
    let (status, err) = agent.wait();
    assert!(status.success(), "{err}");
    assert!(err.contains("stopping without finalizing the module"), "{err}");
    assert!(!hsm.socket().exists(), "the socket outlived the daemon");
}

#[test]
fn a_token_absent_at_start_is_a_clear_error() {
    let hsm = Hsm::new();
    let control = hsm.path("fault");
    std::fs::write(&control, "removed").unwrap();
    let mut command = hsm.daemon_with(&faulty_module(), &hsm.socket());
    command.env("FAULTY_PKCS11_MODULE", &hsm.module).env("FAULTY_PKCS11_CONTROL", &control);
    let (code, _, err) = run(&mut command);
    assert_eq!(code, 5);
    assert!(err.contains("no token matches") && err.contains("tokens present: none"), "{err}");
    assert!(!hsm.socket().exists());
}

#[test]
fn a_pin_refused_at_a_context_login_is_not_tried_again() {
    let hsm = Hsm::new();
    hsm.always_authenticate_key("piv9c", "9c");
    let (_agent, control, log) = faulty_agent(&hsm, &["--sessions", "1"]);
    let sign = || run(hsm.cli().args(["sign", "--key", "piv9c", "--fresh"]));
    assert_eq!(sign().0, 0);
    let logins = calls(&log, "C_Login");
    // The PIN was changed behind the agent's back: the per-signature login is refused.
    fault(&control, "pin_incorrect");
    let (code, _, err) = sign();
    assert_eq!(code, 5);
    assert!(err.contains("rejected the PIN"), "{err}");
    for _ in 0..3 {
        assert_eq!(sign().0, 5);
    }
    assert_eq!(calls(&log, "C_Login"), logins + 1, "one refused try, then no more");
}

/// A `sign_input` request line for the agent's test key.
fn sign_input_line() -> String {
    let input = signing_input(r#"{"alg":"ES256","typ":"JWT"}"#, r#"{"iss":"t"}"#);
    serde_json::json!({"op": "sign_input", "key": KEY, "input": input}).to_string()
}

/// An agent with `sessions` on a slow device: each signature takes `ms`, one at a time.
fn slow_agent(hsm: &Hsm, sessions: u32, ms: u32) -> (Agent, std::path::PathBuf) {
    let (agent, control, log) = faulty_agent(hsm, &["--sessions", &sessions.to_string()]);
    fault(&control, &format!("slow {ms}"));
    (agent, log)
}

#[test]
fn sixty_four_clients_asking_for_one_token_at_once_cost_one_signature() {
    let hsm = Hsm::new();
    // A slow device (like a YubiHSM 2), so that every request arrives while the first is signed.
    let (agent, log) = slow_agent(&hsm, 2, 300);
    let before = calls(&log, "C_SignInit");
    let request = serde_json::json!({"op": "sign", "key": KEY, "claims": {"iss": "fleet"}, "ttl": "20m"});
    let mut conns: Vec<Conn> = (0..64).map(|_| agent.connect()).collect();
    for conn in &mut conns {
        conn.send_raw(format!("{request}\n").as_bytes());
    }
    let answers: Vec<serde_json::Value> = conns.iter_mut().map(Conn::read_answer).collect();
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
    let token = &answers[0]["token"];
    assert!(answers.iter().all(|a| &a["token"] == token), "the clients got different tokens");
    assert_eq!(answers.iter().filter(|a| a["cached"] == false).count(), 1);
    assert_eq!(calls(&log, "C_SignInit") - before, 1, "more than one signature for one token");
}

#[test]
fn a_token_signed_for_a_client_that_hung_up_serves_the_next_who_asks() {
    let hsm = Hsm::new();
    let (agent, log) = slow_agent(&hsm, 1, 400);
    assert_eq!(agent.connect().ask(&sign_input_line())["ok"], true);
    let before = calls(&log, "C_SignInit");
    let request = serde_json::json!({"op": "sign", "key": KEY, "claims": {"iss": "first"}, "ttl": "20m"});
    // The first asker's signature is on the device when a second asks for the same token, and
    // the first hangs up: what the device signs is cached and handed to the second.
    let mut first = agent.connect();
    first.send_raw(format!("{request}\n").as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut second = agent.connect();
    second.send_raw(format!("{request}\n").as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(first);
    let answer = second.read_answer();
    assert_eq!((answer["ok"].as_bool(), answer["cached"].as_bool()), (Some(true), Some(true)), "{answer}");
    assert_eq!(calls(&log, "C_SignInit") - before, 1, "one token was signed twice");
}

#[test]
fn a_request_whose_client_has_gone_is_not_signed() {
    let hsm = Hsm::new();
    let (agent, log) = slow_agent(&hsm, 1, 300);
    let line = sign_input_line();
    // The first signature teaches the agent that this token is slow.
    assert_eq!(agent.connect().ask(&line)["ok"], true);
    let before = calls(&log, "C_SignInit");
    let mut busy = agent.connect();
    busy.send_raw(format!("{line}\n").as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Four clients ask while the device is busy, and hang up before their turn.
    for _ in 0..4 {
        let mut gone = agent.connect();
        gone.send_raw(format!("{line}\n").as_bytes());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(gone);
    }
    assert_eq!(busy.read_answer()["ok"], true);
    // One that stays is served after them, and nothing was signed for those that left.
    assert_eq!(agent.connect().ask(&line)["ok"], true);
    assert_eq!(calls(&log, "C_SignInit") - before, 2, "a request of a client that had gone was signed");
    let status = agent.connect().ask(r#"{"op":"status"}"#);
    assert_eq!(status["pool"]["inline"], false, "a 300 ms token is not called inline");
}

#[test]
fn calls_that_never_reach_the_device_do_not_make_a_slow_token_look_fast() {
    let hsm = Hsm::new();
    let (agent, _) = slow_agent(&hsm, 1, 300);
    assert_eq!(agent.connect().ask(&sign_input_line())["ok"], true);
    // A public key the agent has found before costs the token nothing: many of them (a JWKS
    // poller) must not pass for fast signatures, or the next 300 ms one would block a lane.
    let pubkey = serde_json::json!({"op": "pubkey", "key": KEY, "format": "pem"});
    let mut poller = agent.connect();
    for _ in 0..40 {
        assert_eq!(poller.request(pubkey.clone())["ok"], true);
    }
    let status = agent.connect().ask(r#"{"op":"status"}"#);
    assert_eq!(status["pool"]["inline"], false, "40 public keys made a 300 ms token look fast");
}

#[test]
fn requests_for_a_preset_that_is_never_cached_sign_side_by_side() {
    let hsm = Hsm::new();
    // A device that signs in parallel (a network HSM), 400 ms a signature, and two sessions.
    let (agent, control, log) = faulty_agent(&hsm, &["--sessions", "2"]);
    fault(&control, "hang 400");
    assert_eq!(agent.connect().ask(&sign_input_line())["ok"], true);
    let before = calls(&log, "C_SignInit");
    // The same client assertion asked twice: each gets a jti of its own, so neither waits for
    // the other as requests for one cached token do.
    let claims = serde_json::json!({"iss": "client-42", "aud": "https://login.example.com/oauth2/token"});
    let request =
        serde_json::json!({"op": "sign", "key": KEY, "preset": "oauth-client-assertion", "claims": claims});
    let mut conns: Vec<Conn> = (0..2).map(|_| agent.connect()).collect();
    for conn in &mut conns {
        conn.send_raw(format!("{request}\n").as_bytes());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(calls(&log, "C_SignInit") - before, 2, "the second assertion waited for the first");
    let answers: Vec<Value> = conns.iter_mut().map(Conn::read_answer).collect();
    assert!(answers.iter().all(|a| a["ok"] == true && a["cached"] == false), "{answers:?}");
    assert_ne!(answers[0]["token"], answers[1]["token"]);
}

#[test]
fn a_slow_always_authenticate_signature_holds_up_neither_another_nor_a_cache_hit() {
    let hsm = Hsm::new();
    hsm.always_authenticate_key("piv9c", "9c");
    let (agent, control, log) = faulty_agent(&hsm, &["--sessions", "2"]);
    let cached = serde_json::json!({"op": "sign", "key": KEY, "claims": {"iss": "c"}, "ttl": "20m"});
    assert_eq!(agent.connect().request(cached.clone())["cached"], false);
    fault(&control, "hang 400");
    let piv = sign_input_line().replace(KEY, "piv9c");
    assert_eq!(agent.connect().ask(&piv)["ok"], true);
    let before = calls(&log, "C_SignInit");
    // Two signatures that each need the PIN once more (CKA_ALWAYS_AUTHENTICATE), on two
    // sessions: the logins take turns, the signatures do not.
    let mut slow: Vec<Conn> = (0..2).map(|_| agent.connect()).collect();
    for conn in &mut slow {
        conn.send_raw(format!("{piv}\n").as_bytes());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(calls(&log, "C_SignInit") - before, 2, "the second signature waited for the first");
    // Whether the agent is locked is asked without waiting for either.
    assert_eq!(agent.connect().request(cached)["cached"], true);
    assert!(slow.iter_mut().all(|c| !c.has_answer()), "a cache hit waited for the device");
    assert!(slow.iter_mut().all(|c| c.read_answer()["ok"] == true));
}

#[test]
fn a_key_asked_for_is_made_and_audited_even_when_its_client_hangs_up() {
    let hsm = Hsm::new();
    let audit = hsm.path("audit.jsonl");
    let (agent, control, _) =
        faulty_agent(&hsm, &["--sessions", "1", "--audit-log", audit.to_str().unwrap()]);
    fault(&control, "hang 400");
    assert_eq!(agent.connect().ask(&sign_input_line())["ok"], true);
    // The one session is busy with a slow signature when the key is asked for, and the client
    // that asked hangs up before its turn: a signature it asked for would be dropped, a key is
    // made all the same, and audited.
    let mut busy = agent.connect();
    busy.send_raw(format!("{}\n", sign_input_line()).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut gone = agent.connect();
    gone.send_raw(b"{\"op\":\"generate\",\"label\":\"made\"}\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(gone);
    assert_eq!(busy.read_answer()["ok"], true);
    let keys = agent.connect().ask(r#"{"op":"keys"}"#);
    assert!(keys["keys"].as_array().unwrap().iter().any(|k| k["label"] == "made"), "{keys}");
    let created = || {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        log.lines().any(|l| l.contains(r#""op":"generate""#) && l.contains(r#""outcome":"created""#))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !created() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(created(), "{}", std::fs::read_to_string(&audit).unwrap_or_default());
}

#[test]
fn a_slow_token_does_not_hold_up_what_needs_no_signature() {
    let hsm = Hsm::new();
    // One session, so one lane serves every connection.
    let (agent, _) = slow_agent(&hsm, 1, 300);
    let cached = serde_json::json!({"op": "sign", "key": KEY, "claims": {"iss": "c"}, "ttl": "20m"});
    assert_eq!(agent.connect().request(cached.clone())["cached"], false);
    let mut slow = agent.connect();
    slow.send_raw(format!("{}\n", sign_input_line()).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    // A cache hit on the same lane is answered while the signature is still being made.
    let hit = agent.connect().request(cached);
    assert_eq!(hit["cached"], true);
    assert!(!slow.has_answer(), "the slow signature was answered before the cache hit");
    assert_eq!(slow.read_answer()["ok"], true);
}

#[test]
fn a_client_that_only_stops_writing_still_gets_its_answer() {
    use std::io::{BufRead, Write};
    let hsm = Hsm::new();
    let (agent, _) = slow_agent(&hsm, 1, 200);
    let line = sign_input_line();
    assert_eq!(
        agent.connect().ask(&line)["ok"],
        true,
        "the first signature teaches the agent the token is slow"
    );
    // As `socat` and `nc -N` do: the request, then the end of the writing side, then the answer.
    let mut stream = std::os::unix::net::UnixStream::connect(hsm.socket()).unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
}
