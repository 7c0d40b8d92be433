//! The daemon's life: start and stop, sockets and their folders, PINs, signals, other users.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn without_an_agent_client_commands_exit_3() {
    let hsm = Hsm::new();
    for args in
        [&["sign", "--key", KEY][..], &["sign-input", "--key", KEY, "a.b"], &["keys"], &["status"], &["stop"]]
    {
        let (code, out, err) = run(hsm.cli().args(args));
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(out.is_empty());
        assert!(err.contains("cannot reach the agent") && err.contains("jwt-agent start"), "{err}");
    }
}

#[test]
fn a_wrong_pin_is_tried_once_and_exits_5() {
    let hsm = Hsm::new();
    std::fs::write(&hsm.pin_file, "000000\n").unwrap();
    let log = hsm.path("spy.log");
    // Through OpenSC's pkcs11-spy, which logs every call it forwards to SoftHSM.
    let mut command = hsm.daemon_with(&spy_module(), &hsm.socket());
    command.env("PKCS11SPY", &hsm.module).env("PKCS11SPY_OUTPUT", &log);
    let (code, out, err) = run(&mut command);
    assert_eq!(code, 5, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("rejected the PIN") && err.contains("will not be retried"), "{err}");
    assert!(!err.contains("000000"), "the PIN leaked into the message: {err}");
    assert!(!hsm.socket().exists(), "a daemon that failed to log in left a socket");
    let calls = std::fs::read_to_string(&log).unwrap();
    let logins = calls.lines().filter(|l| l.contains("C_Login")).count();
    assert_eq!(logins, 1, "C_Login was called {logins} times");
}

#[test]
fn the_right_pin_through_the_spy_logs_in_once() {
    // The same count with a good PIN: the spy's log is read correctly, so the test above can fail.
    let hsm = Hsm::new();
    let log = hsm.path("spy.log");
    let mut command = hsm.daemon_with(&spy_module(), &hsm.socket());
    command.args(["--sessions", "4"]);
    command.env("PKCS11SPY", &hsm.module).env("PKCS11SPY_OUTPUT", &log);
    let _agent = Agent::spawn(command, hsm.socket());
    let (code, _, _) = run(hsm.cli().args(["sign", "--key", KEY]));
    assert_eq!(code, 0);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().filter(|l| l.contains("C_Login")).count(), 1);
    assert_eq!(calls.lines().filter(|l| l.contains("C_OpenSession")).count(), 4);
}

#[test]
fn the_pin_can_come_from_the_environment_and_nowhere_else_without_a_terminal() {
    let hsm = Hsm::new();
    let base = |hsm: &Hsm| {
        let mut command = hsm.cli();
        command.arg("daemon").arg("--module").arg(&hsm.module).args(["--token", TOKEN_LABEL]);
        command
    };
    let (code, _, err) = run(&mut base(&hsm));
    assert_eq!(code, 1);
    assert!(err.contains("no PIN") && err.contains("--pin-file") && err.contains("JWT_AGENT_PIN"), "{err}");

    let mut command = base(&hsm);
    command.env("JWT_AGENT_PIN", PIN);
    let _agent = Agent::spawn(command, hsm.socket());
    assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
}

#[test]
fn sigterm_and_sigint_stop_the_daemon_and_remove_the_socket() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let hsm = Hsm::new();
        let mut agent = hsm.agent();
        assert!(hsm.socket().exists());
        agent.signal(signal);
        let (status, err) = agent.wait();
        assert!(status.success(), "signal {signal}: {status} {err}");
        assert!(!hsm.socket().exists(), "the socket outlived the daemon");
        assert!(err.contains("stopped"), "{err}");
    }
}

#[test]
fn sighup_does_not_stop_the_daemon() {
    let hsm = Hsm::new();
    let agent = hsm.agent();
    agent.signal(libc::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
}

#[test]
fn socket_folder_is_0700_and_socket_0600() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&hsm.socket()), 0o600);
    assert_eq!(mode(hsm.socket().parent().unwrap()), 0o700);
}

#[test]
fn a_folder_others_can_write_is_refused() {
    let hsm = Hsm::new();
    let open = hsm.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = hsm.daemon_with(&hsm.module, &open.join("agent.sock"));
    let (code, _, err) = run(&mut command);
    assert_eq!(code, 1);
    assert!(err.contains("writable by others"), "{err}");
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_and_the_first_goes_on() {
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    let (code, _, err) = run(&mut hsm.daemon_command());
    assert_eq!(code, 1);
    assert!(err.contains("already listening"), "{err}");
    assert!(hsm.socket().exists());
    assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
}

#[test]
fn a_stale_socket_is_replaced_and_a_regular_file_is_not() {
    let hsm = Hsm::new();
    let dir = hsm.socket().parent().unwrap().to_path_buf();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A socket file nobody listens on, as a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(hsm.socket()).unwrap());
    assert!(hsm.socket().exists());
    {
        let _agent = hsm.agent();
        assert_eq!(run(hsm.cli().args(["sign", "--key", KEY])).0, 0);
    }
    std::fs::write(hsm.socket(), "not a socket").unwrap();
    let (code, _, err) = run(&mut hsm.daemon_command());
    assert_eq!(code, 1);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(hsm.socket()).unwrap(), "not a socket");
}

#[test]
fn start_prints_eval_lines_and_stop_ends_the_agent() {
    let hsm = Hsm::new();
    let mut start = hsm.cli();
    start.env_remove("JWT_AGENT_SOCK").arg("start").arg("--module").arg(&hsm.module);
    start.args(["--token", TOKEN_LABEL]).arg("--pin-file").arg(&hsm.pin_file);
    start.arg("--socket").arg(hsm.socket());
    let (code, out, err) = run(&mut start);
    assert_eq!(code, 0, "{err}");
    let socket = hsm.socket().display().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], format!("JWT_AGENT_SOCK={socket}; export JWT_AGENT_SOCK;"));
    let pid: i32 =
        lines[1].strip_prefix("echo Agent pid ").unwrap().strip_suffix(';').unwrap().parse().unwrap();

    // What `eval` would do, then use the agent through the variable alone.
    let script = format!("{out}\n{BIN} sign --key {KEY} --iss shell");
    let signed = Command::new("sh")
        .args(["-c", &script])
        .envs(hsm.conf_envs())
        .env_remove("JWT_AGENT_SOCK")
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let stdout = String::from_utf8(signed.stdout).unwrap();
    assert_eq!(stdout.lines().next(), Some(format!("Agent pid {pid}").as_str()));
    verify_p256(stdout.lines().nth(1).unwrap(), &hsm.public_pem(KEY));

    // A second start on the same socket refuses.
    let (code, _, err) = run(&mut start);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");

    let (code, out, err) = run(hsm.cli().arg("stop"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("unset JWT_AGENT_SOCK;\necho Agent pid {pid} stopped;\n"));
    assert!(!hsm.socket().exists());
    // The process is gone (it was not our child, so it was reaped by init, not left a zombie).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // SAFETY: kill with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(std::time::Instant::now() < deadline, "the agent process is still there");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn start_reports_a_daemon_that_fails_and_its_exit_status() {
    let hsm = Hsm::new();
    std::fs::write(&hsm.pin_file, "999999").unwrap();
    let mut start = hsm.cli();
    start.arg("start").arg("--module").arg(&hsm.module).args(["--token", TOKEN_LABEL]);
    start.arg("--pin-file").arg(&hsm.pin_file).arg("--socket").arg(hsm.socket());
    let (code, out, err) = run(&mut start);
    assert_eq!(code, 5, "{err}");
    assert!(out.is_empty(), "nothing to eval when the agent did not start: {out}");
    assert!(err.contains("rejected the PIN"), "{err}");

    let (code, _, err) = run(hsm
        .cli()
        .args(["start", "--module", "/nonexistent.so", "--token", "x", "--pin-file"])
        .arg(&hsm.pin_file));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("cannot load the PKCS#11 module"), "{err}");
}

#[test]
fn an_unknown_token_label_is_a_clear_error() {
    let hsm = Hsm::new();
    let mut command = hsm.cli();
    command
        .arg("daemon")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token", "nope", "--pin-file"])
        .arg(&hsm.pin_file);
    let (code, _, err) = run(&mut command);
    assert_eq!(code, 5);
    assert!(err.contains("no token matches \"nope\"") && err.contains(TOKEN_LABEL), "{err}");
}

#[test]
fn the_stop_request_answers_then_stops() {
    let hsm = Hsm::new();
    let mut agent = hsm.agent();
    let mut conn = agent.connect();
    let answer = conn.request(json!({"op": "stop", "id": 1}));
    assert_eq!(answer, json!({"id": 1, "ok": true, "pid": agent.pid()}));
    let (status, _) = agent.wait();
    assert!(status.success());
    assert!(!hsm.socket().exists());
}

#[test]
fn another_uid_is_refused_by_the_peer_check() {
    if !Command::new("setpriv").arg("--help").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        panic!("setpriv (util-linux) is needed to connect as another user");
    }
    if euid() != 0 {
        eprintln!("skipping: connecting as another uid needs root");
        return;
    }
    let hsm = Hsm::new();
    let _agent = hsm.agent();
    // Open the file modes so that only the daemon's SO_PEERCRED check stands in the way.
    for dir in [hsm.dir.path(), hsm.socket().parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(hsm.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The client binary, copied where `nobody` can run it whatever the checkout's modes are.
    let client = hsm.path("jwt-agent");
    std::fs::copy(BIN, &client).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&client)
        .args(["keys", "--json", "--socket"])
        .arg(hsm.socket())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(out.stdout.is_empty(), "keys were listed to another uid");
    assert!(err.contains("uid 65534 may not use this agent"), "{err}");
    // The daemon's own uid is still served.
    assert_eq!(run(hsm.cli().arg("keys")).0, 0);
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
