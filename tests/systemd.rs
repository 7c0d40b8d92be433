//! Running under systemd: socket activation (`LISTEN_FDS`, tested with
//! `systemd-socket-activate`) and readiness (`NOTIFY_SOCKET`), and the shipped units' syntax.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn activator() -> Option<&'static str> {
    [
        "/usr/bin/systemd-socket-activate",
        "/lib/systemd/systemd-socket-activate",
        "/usr/lib/systemd/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

#[test]
fn a_socket_systemd_passes_is_served_kept_and_readiness_is_told() {
    let activate = activator().expect("systemd-socket-activate (package systemd) is needed");
    let hsm = Hsm::new();
    let dir = hsm.socket().parent().unwrap().to_path_buf();
    std::fs::create_dir(&dir).unwrap();
    let notify_path = hsm.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(hsm.socket())
        .arg("-E")
        .arg(format!("SOFTHSM2_CONF={}", hsm.conf.display()))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg(BIN)
        .arg("daemon")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token", TOKEN_LABEL, "--pin-file"])
        .arg(&hsm.pin_file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hsm.socket().exists() {
        assert!(Instant::now() < deadline, "systemd-socket-activate did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first client starts the agent on the socket systemd made; the agent says it is ready.
    let (code, token, err) = run(hsm.cli().args(["sign", "--key", KEY, "--iss", "systemd"]));
    assert_eq!(code, 0, "{err}");
    verify_p256(token.trim(), &hsm.public_pem(KEY));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let started = Instant::now();
    let (code, out, err) = run(hsm.cli().arg("stop"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20), "stop waited for a socket that stays");
    let status = child.wait().unwrap();
    assert!(status.success());
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("passed by systemd"), "{log}");
    // The socket belongs to systemd: the agent leaves it for the next activation.
    assert!(hsm.socket().exists(), "the agent removed a socket it did not make");
}

#[test]
fn the_shipped_units_parse() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze (package systemd) is needed");
    };
    assert!(out.status.success());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd");
    for unit in ["jwt-agent.socket", "jwt-agent.service", "user/jwt-agent.socket", "user/jwt-agent.service"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--recursive-errors=no"])
            .arg(format!("{dir}/{unit}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // verify also checks that the binary is installed where the unit runs it; it is not here.
        let problems: Vec<&str> =
            err.lines().filter(|l| !l.trim().is_empty() && !l.contains("is not executable")).collect();
        assert!(problems.is_empty(), "{unit}: {err}");
    }
}
