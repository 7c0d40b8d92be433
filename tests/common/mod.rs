//! Test support: a fresh SoftHSM token in a temp folder, the real daemon binary on a real socket,
//! and the CLI run as a user would run it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_jwt-agent");
pub const TOKEN_LABEL: &str = "jwt-test";
pub const PIN: &str = "123456";
pub const SO_PIN: &str = "654321";
/// The key every fresh token carries: P-256, as Apple's .p8 keys are.
pub const KEY: &str = "asc";

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The PKCS#11 implementation the tests run against: SoftHSM, or with
/// `JWT_AGENT_TEST_BACKEND=kryoptic` or `tpm` (and `JWT_AGENT_TEST_MODULE`) kryoptic, or a TPM
/// through tpm2-pkcs11 (`scripts/tpm.sh` starts swtpm and tpm2-abrmd and sets the TCTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SoftHsm,
    Kryoptic,
    Tpm,
}

pub fn backend() -> Backend {
    match std::env::var("JWT_AGENT_TEST_BACKEND").as_deref() {
        Ok("kryoptic") => Backend::Kryoptic,
        Ok("tpm") => Backend::Tpm,
        _ => Backend::SoftHsm,
    }
}

/// What a TPM (tpm2-pkcs11) answers `import`: it takes no private key from outside.
pub const TPM_IMPORT_REFUSAL: &str =
    "this token is a TPM (tpm2-pkcs11), which takes no private key from outside";

/// Whether the token takes private keys through `jwt-agent import` (a TPM does not).
pub fn imports() -> bool {
    backend() != Backend::Tpm
}

/// SoftHSM's PKCS#11 module: `$JWT_AGENT_TEST_MODULE`, else the usual Debian paths.
pub fn softhsm_module() -> PathBuf {
    std::env::var_os("JWT_AGENT_TEST_MODULE").map(PathBuf::from).unwrap_or_else(|| {
        first_existing(&[
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        ])
        .expect("libsofthsm2.so not found: run scripts/test.sh, which installs softhsm2")
    })
}

/// OpenSC's pkcs11-spy module, which logs every PKCS#11 call it forwards.
pub fn spy_module() -> PathBuf {
    std::env::var_os("JWT_AGENT_TEST_SPY").map(PathBuf::from).unwrap_or_else(|| {
        first_existing(&[
            "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
            "/usr/lib/aarch64-linux-gnu/pkcs11/pkcs11-spy.so",
        ])
        .expect("pkcs11-spy.so not found: run scripts/test.sh, which installs opensc")
    })
}

/// A SoftHSM token made fresh in a temp folder, with one P-256 key labelled [`KEY`].
pub struct Hsm {
    pub dir: TempDir,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
}

impl Hsm {
    pub fn new() -> Hsm {
        let dir = tempfile::Builder::new().prefix("jwt-agent-test").tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        let (conf, module) = match backend() {
            Backend::SoftHsm => {
                let tokens = dir.path().join("tokens");
                std::fs::create_dir(&tokens).unwrap();
                let template =
                    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/softhsm2.conf.in"))
                        .unwrap();
                let conf = dir.path().join("softhsm2.conf");
                std::fs::write(&conf, template.replace("@TOKENDIR@", tokens.to_str().unwrap())).unwrap();
                (conf, softhsm_module())
            }
            Backend::Tpm => {
                // One store per token; the TPM (and tpm2-abrmd) is the run's.
                let store = dir.path().join("store");
                std::fs::create_dir(&store).unwrap();
                let module = std::env::var_os("JWT_AGENT_TEST_MODULE")
                    .map(PathBuf::from)
                    .expect("JWT_AGENT_TEST_MODULE");
                (store, module)
            }
            Backend::Kryoptic => {
                let conf = dir.path().join("kryoptic.conf");
                let db = dir.path().join("token.sql");
                std::fs::write(
                    &conf,
                    format!("[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n", db.display()),
                )
                .unwrap();
                let module = std::env::var_os("JWT_AGENT_TEST_MODULE")
                    .map(PathBuf::from)
                    .expect("JWT_AGENT_TEST_MODULE");
                (conf, module)
            }
        };
        let hsm = Hsm { dir, conf, module, pin_file };
        match backend() {
            Backend::SoftHsm => hsm.util(&[
                "--init-token",
                "--free",
                "--label",
                TOKEN_LABEL,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ]),
            Backend::Tpm => {
                // A transient primary key: no persistent TPM handle per test token.
                hsm.ptool(&["init", "--transient-parent", "tpm2-tools-default"]);
                let pins = [format!("--userpin={PIN}"), format!("--sopin={SO_PIN}")];
                hsm.ptool(&["addtoken", "--pid=1", &format!("--label={TOKEN_LABEL}"), &pins[0], &pins[1]]);
            }
            Backend::Kryoptic => {
                hsm.pkcs11_tool(&["--slot", "1", "--init-token", "--label", TOKEN_LABEL, "--so-pin", SO_PIN]);
                hsm.pkcs11_tool(&[
                    "--token-label",
                    TOKEN_LABEL,
                    "--login",
                    "--login-type",
                    "so",
                    "--so-pin",
                    SO_PIN,
                    "--init-pin",
                    "--pin",
                    PIN,
                ]);
            }
        }
        hsm.import_p256(KEY, "01");
        hsm
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment a PKCS#11 module of this token reads its configuration from.
    pub fn conf_envs(&self) -> [(&'static str, &Path); 3] {
        let conf = self.conf.as_path();
        [("SOFTHSM2_CONF", conf), ("KRYOPTIC_CONF", conf), ("TPM2_PKCS11_STORE", conf)]
    }

    /// Runs tpm2-pkcs11's `tpm2_ptool` on this token's store.
    pub fn ptool(&self, args: &[&str]) {
        self.ptool_os(args.iter().map(std::ffi::OsStr::new))
    }

    fn ptool_os<'a>(&self, args: impl IntoIterator<Item = &'a std::ffi::OsStr>) {
        let mut args: Vec<&std::ffi::OsStr> = args.into_iter().collect();
        let store = self.conf.as_os_str();
        args.splice(1..1, [std::ffi::OsStr::new("--path"), store]);
        let out = Command::new("tpm2_ptool").args(&args).output().unwrap();
        assert!(out.status.success(), "tpm2_ptool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Puts the private key in `file` (made by [`openssl_key`] of `kind`) on the token as
    /// `label`, as a user of this token would: `jwt-agent import` (the agent must run), or on a
    /// TPM, which takes no key through PKCS#11, `tpm2_ptool import` (the agent finds it on its
    /// next lookup).
    pub fn add_key(&self, kind: &str, file: &Path, label: &str) {
        if backend() == Backend::Tpm {
            self.ptool_import(file, label, kind.starts_with("RSA"), None);
        } else {
            let (code, _, err) = run(self.cli().arg("import").arg(file).args(["--label", label]));
            assert_eq!(code, 0, "import {}: {err}", file.display());
        }
    }

    /// `tpm2_ptool import` of a PEM private key (EC, or RSA) as `label`, with the id's bytes.
    fn ptool_import(&self, file: &Path, label: &str, rsa: bool, id: Option<&[u8]>) {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let algorithm = if rsa { "--algorithm=rsa" } else { "--algorithm=ecc" };
        let named =
            [format!("--label={TOKEN_LABEL}"), format!("--key-label={label}"), format!("--userpin={PIN}")];
        let privkey = format!("--privkey={}", file.display());
        let args = ["import", &named[0], &named[1], &named[2], &privkey, algorithm].map(OsStr::new);
        let id = id.map(|id| [OsStr::new("--id"), OsStr::from_bytes(id)]).into_iter().flatten();
        self.ptool_os(args.into_iter().chain(id));
    }

    /// On a TPM, checks that `jwt-agent import FILE` is refused in its one sentence, exit 4,
    /// with nothing created, and returns true: the caller's import test has nothing more to do
    /// there. Elsewhere, false.
    pub fn import_is_refused_by_a_tpm(&self, file: &Path) -> bool {
        if imports() {
            return false;
        }
        // The agent lists what the token holds (the test may have changed the PIN).
        let keys = || run(self.cli().args(["keys", "--json"])).1;
        let before = keys();
        let (code, out, err) = run(self.cli().arg("import").arg(file));
        assert_eq!(code, 4, "{out}{err}");
        assert!(err.contains(TPM_IMPORT_REFUSAL) && err.contains("tpm2_ptool import"), "{err}");
        assert!(err.contains("nothing was created"), "{err}");
        assert_eq!(keys(), before, "the refused import left a key behind");
        true
    }

    /// Runs softhsm2-util against this token folder.
    pub fn util(&self, args: &[&str]) {
        let out = Command::new("softhsm2-util").args(args).envs(self.conf_envs()).output().unwrap();
        assert!(out.status.success(), "softhsm2-util {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs OpenSC's pkcs11-tool on this token's module.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(args)
            .envs(self.conf_envs())
            .output()
            .unwrap();
        assert!(out.status.success(), "pkcs11-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Generates a P-256 key pair on the token with `CKA_ALWAYS_AUTHENTICATE`, as a YubiKey's
    /// PIV slot 9c has (OpenSC's pkcs11-tool makes it, independent of the agent).
    pub fn always_authenticate_key(&self, label: &str, id: &str) {
        let args = ["--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", label];
        self.pkcs11_tool(&[&args[..], &["--id", id, "--always-auth"]].concat());
    }

    /// Makes a P-256 PKCS#8 key with openssl, puts it on the token, and returns the public PEM.
    pub fn import_p256(&self, label: &str, id: &str) -> String {
        let p8 = self.path(&format!("AuthKey_{label}.p8"));
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
                .arg("-out")
                .arg(&p8),
        );
        let public = run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&p8));
        let public = String::from_utf8(public.stdout).unwrap();
        std::fs::write(self.path(&format!("{label}.pub.pem")), &public).unwrap();
        let p8 = p8.to_str().unwrap().to_owned();
        match backend() {
            Backend::SoftHsm => self.util(&[
                "--import",
                &p8,
                "--token",
                TOKEN_LABEL,
                "--label",
                label,
                "--id",
                id,
                "--pin",
                PIN,
            ]),
            Backend::Tpm => {
                // tpm2_ptool takes the id's bytes as they are, not in hex.
                let id = (0..id.len()).step_by(2).map(|i| u8::from_str_radix(&id[i..i + 2], 16).unwrap());
                self.ptool_import(Path::new(&p8), label, false, Some(&id.collect::<Vec<u8>>()));
            }
            Backend::Kryoptic => {
                let der = self.path(&format!("{label}.pub.der"));
                run_ok(
                    Command::new("openssl")
                        .args(["pkey", "-pubin", "-outform", "DER", "-out"])
                        .arg(&der)
                        .arg("-in")
                        .arg(self.path(&format!("{label}.pub.pem"))),
                );
                let login = ["--token-label", TOKEN_LABEL, "--login", "--pin", PIN];
                let object = ["--label", label, "--id", id];
                self.pkcs11_tool(
                    &[
                        &login[..],
                        &["--write-object", &p8, "--type", "privkey", "--usage-sign", "--sensitive"],
                        &object,
                    ]
                    .concat(),
                );
                self.pkcs11_tool(
                    &[&login[..], &["--write-object", der.to_str().unwrap(), "--type", "pubkey"], &object]
                        .concat(),
                );
            }
        }
        public
    }

    pub fn public_pem(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.pub.pem"))).unwrap()
    }

    /// The socket path the tests use: in a 0700 folder inside the temp folder.
    pub fn socket(&self) -> PathBuf {
        self.path("run/agent.sock")
    }

    /// `jwt-agent` with this token's SoftHSM config and socket in its environment.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .envs(self.conf_envs())
            .env("JWT_AGENT_SOCK", self.socket())
            .env_remove("JWT_AGENT_PIN")
            .stdin(Stdio::null());
        command
    }

    /// The daemon's command line for this token, in the foreground.
    pub fn daemon_command(&self) -> Command {
        self.daemon_with(&self.module, &self.socket())
    }

    /// The daemon's command line with another module or socket.
    pub fn daemon_with(&self, module: &Path, socket: &Path) -> Command {
        let mut command = self.cli();
        command.arg("daemon").arg("--module").arg(module).args(["--token", TOKEN_LABEL]);
        command.arg("--pin-file").arg(&self.pin_file).arg("--socket").arg(socket);
        command
    }

    /// Starts the daemon and waits until it answers.
    pub fn agent(&self) -> Agent {
        Agent::spawn(self.daemon_command(), self.socket())
    }

    /// Starts the daemon with more flags.
    pub fn agent_with(&self, args: &[&str]) -> Agent {
        let mut command = self.daemon_command();
        command.args(args);
        Agent::spawn(command, self.socket())
    }

    /// Writes a config file into the temp folder and returns its path.
    pub fn config(&self, toml: &str) -> String {
        let path = self.path("config.toml");
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A running daemon; SIGTERM and reaped on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
}

impl Agent {
    pub fn spawn(mut command: Command, socket: PathBuf) -> Agent {
        let child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut agent = Agent { child, socket };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the daemon exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "the daemon did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the daemon to exit; returns its status and what it wrote to stderr.
    pub fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(stderr) = self.child.stderr.as_mut() {
                    std::io::Read::read_to_string(stderr, &mut err).unwrap();
                }
                return (status, err);
            }
            assert!(Instant::now() < deadline, "the daemon did not exit within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn connect(&self) -> Conn {
        Conn::new(&self.socket)
    }
}

impl Drop for Agent {
    /// Stops the daemon; one that does not stop within 30 s (a test has already failed on it)
    /// is killed, so that the suite fails instead of hanging.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.wait();
        }
    }
}

/// A raw protocol connection: write lines, read answer lines.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn new(socket: &Path) -> Conn {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    /// Another handle on the connection, to write from another thread while this one reads.
    pub fn writer(&self) -> UnixStream {
        self.writer.try_clone().unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn read_answer(&mut self) -> Value {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\n"), "no complete answer line: {:?}", String::from_utf8_lossy(&line));
        serde_json::from_slice(&line).unwrap()
    }

    /// Whether an answer (or its first byte) has arrived, without waiting for one.
    pub fn has_answer(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer that lives through the call; MSG_PEEK leaves it unread.
        let peeked = unsafe {
            libc::recv(
                self.writer.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked > 0
    }

    /// Sends one line (a newline is added) and reads the answer.
    pub fn ask(&mut self, line: &str) -> Value {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_answer()
    }

    /// Sends a JSON request and reads the answer.
    pub fn request(&mut self, request: Value) -> Value {
        self.ask(&request.to_string())
    }
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

pub fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// Signing input for a header and claims given as JSON text.
pub fn signing_input(header: &str, claims: &str) -> String {
    format!("{}.{}", b64url(header.as_bytes()), b64url(claims.as_bytes()))
}

/// Verifies an ES256 compact JWS with the p256 crate; returns (header, claims).
pub fn verify_p256(token: &str, public_pem: &str) -> (Value, Value) {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&b64url_decode(signature)).unwrap();
    key.verify(input.as_bytes(), &signature).expect("the signature does not verify");
    let (header, claims) = input.split_once('.').unwrap();
    (
        serde_json::from_slice(&b64url_decode(header)).unwrap(),
        serde_json::from_slice(&b64url_decode(claims)).unwrap(),
    )
}

/// Verifies a token with PyJWT, an implementation independent of this project; returns the
/// claims PyJWT decoded.
pub fn verify_pyjwt(token: &str, public_pem: &str) -> Value {
    let script = r#"
import json, sys, jwt
token, key = sys.argv[1], sys.stdin.read()
claims = jwt.decode(token, key, algorithms=["ES256"], options={"verify_aud": False})
print(json.dumps({"header": jwt.get_unverified_header(token), "claims": claims}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the PyJWT check");
    child.stdin.take().unwrap().write_all(public_pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyJWT refused the token: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decodes a compact JWS's header and claims without verifying it.
pub fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.trim().split('.');
    let mut next = || serde_json::from_slice(&b64url_decode(parts.next().unwrap())).unwrap();
    (next(), next())
}

/// The audit log's lines, parsed.
pub fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Every object on the token, as python-pkcs11 (independent of the agent) sees it.
pub fn inspect(hsm: &Hsm) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pkcs11_inspect.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&hsm.module)
        .args([TOKEN_LABEL, PIN])
        .envs(hsm.conf_envs())
        .output()
        .unwrap();
    assert!(out.status.success(), "python-pkcs11: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// Makes a PKCS#8 PEM private key with openssl: `EC:P-256`, `EC:P-384`, `EC:P-521`, `EC:secp256k1`,
/// `RSA:2048` or `ED25519`.
pub fn openssl_key(kind: &str, path: &Path) {
    let mut command = Command::new("openssl");
    command.arg("genpkey");
    match kind.split_once(':') {
        Some(("EC", curve)) => {
            command.args(["-algorithm", "EC", "-pkeyopt", &format!("ec_paramgen_curve:{curve}")])
        }
        Some(("RSA", bits)) => {
            command.args(["-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}")])
        }
        _ => command.args(["-algorithm", kind]),
    };
    run_ok(command.arg("-out").arg(path).stderr(Stdio::null()));
}

/// The public half of a private key file, PEM, by openssl.
pub fn openssl_public(path: &Path) -> String {
    String::from_utf8(run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(path)).stdout)
        .unwrap()
}

/// Verifies a token of any algorithm with PyJWT, once with a PEM public key and once with a JWK;
/// returns the claims.
pub fn verify_pyjwt_with(token: &str, alg: &str, pem: &str, jwk: &str) -> Value {
    let script = r#"
import json, sys, jwt
token, alg, pem, jwk = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
opts = {"verify_aud": False}
by_pem = jwt.decode(token, pem, algorithms=[alg], options=opts)
jwk = json.loads(jwk)
# A JWK names an alg only for a key that signs with that one alg; verifiers hold tokens to it.
assert jwk.get("alg", alg) == alg, f"the JWK says {jwk['alg']}, the token {alg}"
by_jwk = jwt.decode(token, jwt.PyJWK(jwk, algorithm=alg), algorithms=[alg], options=opts)
assert by_pem == by_jwk
print(json.dumps(by_pem))
"#;
    let out = Command::new("python3").args(["-c", script, token, alg, pem, jwk]).output().unwrap();
    assert!(out.status.success(), "PyJWT refused the {alg} token: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The fault-injecting PKCS#11 module (`tests/faulty/faulty_pkcs11.c`), compiled with the C
/// compiler the Rust toolchain already needs, once per test binary.
pub fn faulty_module() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faulty/faulty_pkcs11.c");
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let out = dir.join(format!("faulty_pkcs11.{}.so", std::process::id()));
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            run_ok(
                Command::new(cc)
                    .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
                    .arg(&out)
                    .arg(source)
                    .arg("-ldl")
                    .arg("-lpthread"),
            );
            out
        })
        .clone()
}

/// A daemon on this token through the faulty module; returns it with the control file (write a
/// fault into it) and the call log.
pub fn faulty_agent(hsm: &Hsm, args: &[&str]) -> (Agent, PathBuf, PathBuf) {
    let control = hsm.path("fault");
    let log = hsm.path("calls.log");
    std::fs::write(&control, "").unwrap();
    let mut command = hsm.daemon_with(&faulty_module(), &hsm.socket());
    command.args(args);
    command.env("FAULTY_PKCS11_MODULE", &hsm.module).env("FAULTY_PKCS11_CONTROL", &control);
    command.env("FAULTY_PKCS11_LOG", &log);
    (Agent::spawn(command, hsm.socket()), control, log)
}

/// How many times the faulty module forwarded `call` so far.
pub fn calls(log: &Path, call: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| *l == call).count()
}

/// The daemon's resident memory in KiB, from /proc.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the tests run as root, which connecting as other uids and reading another process's
/// memory need; says so when they do not.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {what}: it needs root");
    }
    root
}

/// `program` run as `uid` (gid `uid`, only the supplementary `groups`), through util-linux's
/// setpriv, as another local user would run it.
pub fn as_uid(uid: u32, groups: &[u32], program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command.arg(program).env_remove("JWT_AGENT_PIN").stdin(Stdio::null());
    command
}

/// A copy of the binary in `dir`, where any uid may run it whatever the checkout's modes are.
pub fn binary_in(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("jwt-agent");
    if !copy.exists() {
        std::fs::copy(BIN, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

/// Gives `path` and everything under it to `uid`.
pub fn chown_all(path: &Path, uid: u32) {
    let out = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(path).output().unwrap();
    assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sets a file's or folder's mode.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether `needle` is anywhere in the readable memory of process `pid` (root reads it through
/// /proc/PID/mem, a non-dumpable process too).
pub fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    assert!(!needle.is_empty());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// [`run`], killing the command if it has not ended within `limit`.
pub fn run_within(command: &mut Command, limit: Duration) -> (i32, String, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} did not end within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
