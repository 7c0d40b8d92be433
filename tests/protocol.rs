//! The wire protocol against the real daemon: every malformed or refused line gets an error
//! answer on a connection that keeps working, answers come in order, and many clients at once
//! all get signatures.

mod common;

use common::*;
use serde_json::{Value, json};

fn good_input() -> String {
    signing_input(r#"{"alg":"ES256","typ":"JWT"}"#, r#"{"iss":"x"}"#)
}

fn assert_signed(answer: &Value, hsm: &Hsm) {
    assert_eq!(answer["ok"], true, "{answer}");
    verify_p256(answer["token"].as_str().unwrap(), &hsm.public_pem(KEY));
}

#[test]
fn hostile_lines_get_error_answers_and_the_connection_goes_on() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let mut conn = agent.connect();
    let header = b64url(br#"{"alg":"ES256"}"#);
    let claims = b64url(b"{}");
    let sign_input = |input: &str| json!({"op": "sign_input", "key": KEY, "input": input}).to_string();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_request"),
        ("{\"op\":\"keys\"".into(), "bad_request"),
        ("[]".into(), "bad_request"),
        ("42".into(), "bad_request"),
        ("null".into(), "bad_request"),
        ("\"sign\"".into(), "bad_request"),
        ("{}".into(), "bad_request"),
        ("{\"op\":7}".into(), "bad_request"),
        ("{\"op\":\"frobnicate\"}".into(), "unknown_op"),
        ("{\"op\":\"SIGN\"}".into(), "unknown_op"),
        ("{\"op\":\"keys\",\"extra\":true}".into(), "bad_request"),
        ("{\"op\":\"sign_input\"}".into(), "bad_request"),
        ("{\"op\":\"sign_input\",\"key\":5,\"input\":\"a.b\"}".into(), "bad_request"),
        ("{\"op\":\"sign\",\"key\":\"asc\",\"header\":[]}".into(), "bad_request"),
        ("{\"op\":\"sign\",\"key\":\"asc\",\"ttl\":\"-5m\"}".into(), "bad_request"),
        ("{\"op\":\"sign\",\"key\":\"asc\",\"ttl\":\"99999999999d\"}".into(), "bad_request"),
        ("{\"op\":\"sign\",\"key\":\"asc\",\"claims\":{\"iat\":1e400}}".into(), "bad_request"),
        ("{\"op\":\"sign\",\"key\":\"asc\",\"preset\":\"no-such-preset\"}".into(), "bad_request"),
        (deep, "bad_request"),
        (sign_input(""), "bad_request"),
        (sign_input("abc"), "bad_request"),
        (sign_input(&format!("{header}.{claims}.{claims}")), "bad_request"),
        (sign_input(&format!("{header}=.{claims}")), "bad_request"),
        (sign_input(&format!("{}.{claims}", b64url(br#"{"alg":"none"}"#))), "bad_request"),
        (sign_input(&format!("{}.{claims}", b64url(br#"{"alg":"HS256"}"#))), "bad_request"),
        (sign_input(&format!("{}.{claims}", b64url(br#"{"alg":"RS256"}"#))), "bad_request"),
        (sign_input(&format!("{}.{claims}", b64url(br#"{"typ":"JWT"}"#))), "bad_request"),
        (sign_input(&format!("{}.{claims}", b64url(br#"{"alg":"ES256","alg":"none"}"#))), "bad_request"),
        (sign_input(&format!("{header}.{}", b64url(b"[1,2]"))), "bad_request"),
        (sign_input(&format!("{header}.{}", b64url(b"\xff\xfe"))), "bad_request"),
        (
            sign_input(&format!("{}.{claims}", header.replace('_', "/").replace('-', "+") + "+/")),
            "bad_request",
        ),
        (
            json!({"op": "sign_input", "key": "../../etc/passwd", "input": good_input()}).to_string(),
            "unknown_key",
        ),
        (json!({"op": "sign_input", "key": "", "input": good_input()}).to_string(), "unknown_key"),
        (json!({"op": "sign", "key": "nope"}).to_string(), "unknown_key"),
        (json!({"op": "sign_input", "key": "asc\u{0}x", "input": good_input()}).to_string(), "unknown_key"),
        (json!({"op": "sign_input", "key": "k".repeat(5000), "input": good_input()}).to_string(), "unknown_key"),
        (json!({"op": "sign_input", "key": "pkcs11:object=%zz", "input": good_input()}).to_string(), "bad_request"),
        (json!({"op": "sign", "key": KEY, "fresh": "yes"}).to_string(), "bad_request"),
        (json!({"op": "sign", "key": KEY, "ttl": 1200}).to_string(), "bad_request"),
        (json!({"op": "pubkey", "key": KEY, "format": "xml"}).to_string(), "bad_request"),
        (json!({"op": "pubkey", "format": "pem"}).to_string(), "bad_request"),
        (json!({"op": "import", "pkcs8_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "label": "x"}).to_string(), "bad_request"),
        (json!({"op": "import", "pkcs8_pem": "not pem", "label": "x"}).to_string(), "bad_request"),
        (json!({"op": "generate", "label": "x", "alg": "none"}).to_string(), "bad_request"),
        (json!({"op": "generate", "label": "x", "alg": "RS256", "bits": 512}).to_string(), "bad_request"),
        (json!({"op": "unlock"}).to_string(), "bad_request"),
        (json!({"op": "unlock", "pin": "123456"}).to_string(), "bad_request"),
        ("{\"op\":\"keys\",\"id\":123456789012345678901234567890}".into(), "bad_request"),
    ];
    for (line, code) in &cases {
        let answer = conn.ask(line);
        assert_eq!(answer["ok"], false, "{line:.80} -> {answer}");
        assert_eq!(answer["error"]["code"], *code, "{line:.80} -> {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    // Invalid UTF-8 on the wire.
    conn.send_raw(b"{\"op\":\"\xff\xfe\"}\n");
    assert_eq!(conn.read_answer()["error"]["code"], "bad_request");
    // The same connection still signs.
    let answer = conn.request(json!({"op": "sign_input", "key": KEY, "input": good_input()}));
    assert_signed(&answer, &hsm);
}

#[test]
fn an_answer_goes_out_while_the_next_request_is_still_coming() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let mut conn = agent.connect();
    // One request and the first bytes of the next, in one write: the client may be waiting for
    // the first answer before it sends the rest.
    conn.send_raw(b"{\"id\":1,\"op\":\"keys\"}\n{\"id\":2,\"op\":\"ke");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !conn.has_answer() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(conn.has_answer(), "the answer waited for the next request");
    assert_eq!(conn.read_answer()["id"], 1);
    conn.send_raw(b"ys\"}\n");
    assert_eq!(conn.read_answer()["id"], 2);
}

#[test]
fn ids_are_echoed_and_pipelined_requests_are_answered_in_order() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let mut conn = agent.connect();
    let mut batch = String::new();
    for i in 0..20 {
        let request = match i % 3 {
            0 => json!({"id": i, "op": "sign_input", "key": KEY, "input": good_input()}),
            1 => json!({"id": format!("s{i}"), "op": "keys"}),
            _ => json!({"id": i, "op": "frobnicate"}),
        };
        batch.push_str(&request.to_string());
        batch.push('\n');
    }
    conn.send_raw(batch.as_bytes());
    for i in 0..20 {
        let answer = conn.read_answer();
        match i % 3 {
            0 => {
                assert_eq!(answer["id"], i);
                assert_signed(&answer, &hsm);
            }
            1 => {
                assert_eq!(answer["id"], format!("s{i}"));
                assert_eq!(answer["keys"][0]["label"], KEY);
            }
            _ => {
                assert_eq!(answer["id"], i);
                assert_eq!(answer["error"]["code"], "unknown_op");
            }
        }
    }
}

#[test]
fn a_line_over_64_kib_is_too_large_and_the_connection_goes_on() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let mut conn = agent.connect();
    let huge = format!("{{\"op\":\"sign_input\",\"key\":\"asc\",\"input\":\"{}\"}}\n", "A".repeat(70 * 1024));
    conn.send_raw(huge.as_bytes());
    assert_eq!(conn.read_answer()["error"]["code"], "too_large");
    // A line just under the limit is read as a request (and refused for what it says).
    let under = format!("{{\"op\":\"keys\",\"pad\":\"{}\"}}", "B".repeat(60 * 1024));
    assert_eq!(conn.ask(&under)["error"]["code"], "bad_request");
    assert_signed(&conn.request(json!({"op": "sign_input", "key": KEY, "input": good_input()})), &hsm);
}

#[test]
fn thirty_two_connections_of_fifty_requests_all_succeed() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    let input = good_input();
    let tokens: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|c| {
                let (agent, input) = (&agent, &input);
                scope.spawn(move || {
                    let mut conn = agent.connect();
                    (0..50)
                        .map(|i| {
                            let answer = conn.request(
                                json!({"id": c * 100 + i, "op": "sign_input", "key": KEY, "input": input}),
                            );
                            assert_eq!(answer["ok"], true, "{answer}");
                            assert_eq!(answer["id"], c * 100 + i);
                            answer["token"].as_str().unwrap().to_owned()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let public = hsm.public_pem(KEY);
    let all: Vec<&String> = tokens.iter().flatten().collect();
    assert_eq!(all.len(), 1600);
    for token in &all {
        verify_p256(token, &public);
    }
    let mut conn = agent.connect();
    let status = conn.request(json!({"op": "status"}));
    assert_eq!(status["counters"]["signatures"], 1600);
    assert_eq!(status["counters"]["token_errors"], 0);
}

#[test]
fn a_client_that_pipelines_a_stream_of_requests_keeps_its_lane_from_no_other() {
    use std::io::Write;
    let hsm = Hsm::new();
    let audit = hsm.path("audit.jsonl");
    // One session, so one lane serves both clients, and signs inline (a fast token; a TPM's lane
    // hands each request to the pool instead, and its stream is a fifth as long).
    let agent = hsm.agent_with(&["--sessions", "1", "--audit-log", audit.to_str().unwrap()]);
    let stream_line = format!("{}\n", json!({"op": "sign_input", "key": KEY, "input": good_input()}));
    let stream_len = if backend() == Backend::Tpm { 400 } else { 2000 };
    let mut stream = agent.connect();
    let mut writer = stream.writer();
    let requests = stream_line.repeat(stream_len);
    let sender = std::thread::spawn(move || writer.write_all(requests.as_bytes()).unwrap());
    assert_eq!(stream.read_answer()["ok"], true);
    let reader = std::thread::spawn(move || (1..stream_len).all(|_| stream.read_answer()["ok"] == true));
    // While the stream is signed, another client connects and asks for one signature.
    let other = signing_input(r#"{"alg":"ES256","typ":"JWT"}"#, r#"{"iss":"other"}"#);
    assert_signed(&agent.connect().request(json!({"op": "sign_input", "key": KEY, "input": other})), &hsm);
    sender.join().unwrap();
    assert!(reader.join().unwrap(), "a signature of the stream failed");
    let signed: Vec<Value> = audit_lines(&audit).into_iter().filter(|l| l["outcome"] == "signed").collect();
    assert_eq!(signed.len(), stream_len + 1);
    let before = signed.iter().position(|l| l["iss"] == "other").unwrap();
    // The other client is served in its turn, after what the lane signed while it connected
    // (some tens of the stream's requests), not after the whole stream.
    assert!(before < stream_len / 2, "the other client waited for {before} signatures of the stream");
}
