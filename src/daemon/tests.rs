//! The server in process, as mini-redis tests its own: a real SoftHSM token (made fresh by
//! `softhsm2-util` in a temp folder), the pool and the agent of this crate, `serve` on a real
//! socket with a shutdown the test controls. Skipped, saying so, where `$JWT_AGENT_TEST_MODULE`
//! is not set (`scripts/test.sh` sets it).

use super::{Agent, Limits, serve};
use crate::config::Config;
use crate::jwt::policy::Policy;
use crate::jwt::{self, Alg};
use crate::token::pool::Pool;
use crate::token::{NewKey, Token, TokenError};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const LABEL: &str = "unit";

/// One token for the whole test binary: a PKCS#11 module is initialized once per process, and
/// SoftHSM reads its config then.
fn token() -> Option<Arc<Token>> {
    static TOKEN: OnceLock<Option<Arc<Token>>> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let Some(module) = std::env::var_os("JWT_AGENT_TEST_MODULE").map(PathBuf::from) else {
                eprintln!("skipping the in-process server tests: JWT_AGENT_TEST_MODULE is not set");
                return None;
            };
            let dir = tempfile::tempdir().expect("a temp folder").keep();
            std::fs::create_dir(dir.join("tokens")).expect("a token folder");
            let conf = dir.join("softhsm2.conf");
            let template = include_str!("../../softhsm/softhsm2.conf.in");
            std::fs::write(&conf, template.replace("@TOKENDIR@", &dir.join("tokens").display().to_string()))
                .expect("the SoftHSM config");
            // SAFETY: set once, before the module is loaded; no other test of this binary reads
            // or writes the environment.
            unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
            let made = std::process::Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", LABEL, "--pin", "123456", "--so-pin", "654321"])
                .output()
                .expect("softhsm2-util");
            assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
            let (token, _session) = Token::open(&module, LABEL, "123456".into()).expect("the token opens");
            let new = NewKey::Generate { alg: Alg::Es256, bits: None, label: "k".into(), id: None };
            token.create(&new).expect("a key");
            Some(Arc::new(token))
        })
        .clone()
}

fn agent(token: Arc<Token>, sessions: usize) -> Arc<Agent> {
    let session = token.open_session().expect("a session");
    let pool = Pool::start(token, session, sessions).expect("the pool");
    let policy = Policy::new(crate::paths::euid(), &Config::default()).expect("the default policy");
    Arc::new(Agent::new(pool, policy, None))
}

fn limits() -> Limits {
    Limits { max_connections: 8, read_timeout: Duration::from_secs(5) }
}

async fn ask(stream: &mut BufReader<UnixStream>, request: Value) -> Value {
    stream.get_mut().write_all(format!("{request}\n").as_bytes()).await.expect("the request goes out");
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("an answer");
    serde_json::from_str(&line).expect("the answer is JSON")
}

#[tokio::test]
async fn serve_answers_until_the_shutdown_it_was_given() {
    let Some(token) = token() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = agent(token.clone(), 1);
    let (shut, shutdown) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, agent, limits(), async move {
        let _ = shutdown.await;
    }));

    let mut stream = BufReader::new(UnixStream::connect(&socket).await.unwrap());
    let header = json!({"alg": "ES256"});
    let input = jwt::encode_signing_input(header.as_object().unwrap(), &serde_json::Map::new());
    let answer = ask(&mut stream, json!({"op": "sign_input", "key": "k", "input": input, "id": 7})).await;
    assert_eq!((answer["ok"].as_bool(), answer["id"].as_u64()), (Some(true), Some(7)), "{answer}");
    let signed = answer["token"].as_str().unwrap();
    let (signing_input, signature) = signed.rsplit_once('.').unwrap();
    let public = token.open_session().map(|s| token.key(&s, "k").unwrap().public.clone().unwrap()).unwrap();
    use base64::Engine;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap();
    public.verify(Alg::Es256, signing_input.as_bytes(), &signature).expect("the signature verifies");

    shut.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server).await.expect("serve returned").unwrap();
    let mut rest = String::new();
    assert_eq!(stream.read_line(&mut rest).await.unwrap(), 0, "the connection was closed: {rest}");
}

#[tokio::test]
async fn a_stop_request_ends_serve() {
    let Some(token) = token() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(serve(listener, agent(token, 1), limits(), std::future::pending()));
    let mut stream = BufReader::new(UnixStream::connect(&socket).await.unwrap());
    let answer = ask(&mut stream, json!({"op": "stop"})).await;
    assert_eq!(answer["pid"], std::process::id(), "{answer}");
    tokio::time::timeout(Duration::from_secs(15), server).await.expect("serve returned").unwrap();
}

#[tokio::test]
async fn a_job_that_panics_fails_its_request_and_the_worker_goes_on() {
    let Some(token) = token() else { return };
    let session = token.open_session().unwrap();
    let pool = Pool::start(token, session, 1).unwrap();
    let failed = pool.run(|_, _| -> Result<(), TokenError> { panic!("a bug in a job") }).await;
    assert!(
        matches!(&failed, Err(TokenError::Panicked(message)) if message == "a bug in a job"),
        "{failed:?}"
    );
    // The one worker is still there, with a new session.
    let keys = pool.run(|token, session| token.list_keys(session)).await.expect("the worker goes on");
    assert_eq!(keys.len(), 1);
}
