//! The client side of the socket: a blocking connection that sends requests and reads answers.
//! The CLI uses it for one-shot requests (no async runtime to start); Rust programs may too.
//!
//! ```no_run
//! let mut agent = jwt_agent::Client::connect_default()?;
//! let token = agent.sign_input("ABC123DEFG", "eyJhbGciOiJFUzI1NiJ9.e30")?;
//! # Ok::<(), jwt_agent::ClientError>(())
//! ```

use crate::wire::{
    self, AccessToken, AccessTokenResult, CertRequest, CertResult, ExchangedReport, ExchangedResult,
    GenerateRequest, ImportRequest, KeyInfo, KeyResult, KeysResult, LockResult, PubkeyFormat, PubkeyResult,
    Request, SecretText, SignInputResult, SignRequest, SignResult, StatusResult, StopResult,
};
use crate::wire::{ErrorCode, WireError};
pub mod trust;

use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use trust::{Distrust, Trusted};

/// How long the client waits for an answer before giving up on the agent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request did not get a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach the agent at {}: {source}", path.display())]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket is one this client does not trust: nothing was sent to it.
    #[error("will not talk to the agent at {}: {}", path.display(), why.reason)]
    Untrusted {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        why: Distrust,
    },
    /// The connection broke mid-request.
    #[error("the connection to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(#[from] WireError),
}

impl ClientError {
    /// The error code, when the agent answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A connection to the agent. Requests are answered in order; one connection serves many.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the agent at `path`, after checking that the socket's folder and the process
    /// listening on it are this user's own (or root's, or `$JWT_AGENT_UID`'s). Nothing is sent to
    /// a socket that fails those checks; the error's [`Distrust`] says why.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let unreachable = |source| ClientError::Unreachable { path: path.to_path_buf(), source };
        let untrusted = |why| ClientError::Untrusted { path: path.to_path_buf(), why };
        std::fs::symlink_metadata(path).map_err(unreachable)?;
        let trusted = Trusted::from_env().map_err(|reason| untrusted(Distrust { reason, uid: None }))?;
        trusted.check_folder(path).map_err(untrusted)?;
        let stream = UnixStream::connect(path).map_err(unreachable)?;
        trusted.check_peer(&stream).map_err(untrusted)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::new(stream), writer, next_id: 1 })
    }

    /// Connects to the agent at `$JWT_AGENT_SOCK`, else the default path.
    pub fn connect_default() -> Result<Client, ClientError> {
        Self::connect(&crate::paths::socket_path(None))
    }

    /// Sends `request` and decodes the answer as `T`.
    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = wire::encode_request((!request.has_own_id()).then_some(id), request)
            .map_err(|e| WireError::bad_request(format!("cannot encode the request: {e}")))?;
        // A daemon that refuses the connection says why and closes; that answer may already be
        // waiting when the write fails, so read it before reporting the write error.
        let written = self.writer.write_all(&line);
        let mut answer = Vec::with_capacity(512);
        let read = self.reader.read_until(b'\n', &mut answer);
        if answer.is_empty() {
            written?;
            read?;
            let closed =
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the agent closed the connection");
            return Err(closed.into());
        }
        Ok(wire::decode_answer(&answer)?)
    }

    /// Signs JWS signing input built by the caller; returns the compact token.
    pub fn sign_input(&mut self, key: &str, input: &str) -> Result<String, ClientError> {
        let request = Request::SignInput { key: key.to_owned(), input: input.to_owned() };
        Ok(self.call::<SignInputResult>(&request)?.token)
    }

    /// Builds and signs a JWT.
    pub fn sign(&mut self, request: SignRequest) -> Result<SignResult, ClientError> {
        self.call(&Request::Sign(request))
    }

    /// Lists the signing keys.
    pub fn keys(&mut self) -> Result<KeysResult, ClientError> {
        self.call(&Request::Keys {})
    }

    /// A key's public half (or, with `key` absent and `Jwks`, every key's).
    pub fn pubkey(&mut self, key: Option<&str>, format: PubkeyFormat) -> Result<PubkeyResult, ClientError> {
        self.call(&Request::Pubkey { key: key.map(str::to_owned), format })
    }

    /// Puts a PKCS#8 private key on the token as a non-extractable key.
    pub fn import(&mut self, request: ImportRequest) -> Result<KeyInfo, ClientError> {
        Ok(self.call::<KeyResult>(&Request::Import(request))?.key)
    }

    /// Generates a key pair inside the token.
    pub fn generate(&mut self, request: GenerateRequest) -> Result<KeyInfo, ClientError> {
        Ok(self.call::<KeyResult>(&Request::Generate(request))?.key)
    }

    /// Makes a self-signed certificate for a key inside the token and stores it there.
    pub fn cert(&mut self, request: CertRequest) -> Result<CertResult, ClientError> {
        self.call::<CertResult>(&Request::Cert(request))
    }

    /// Locks the agent.
    pub fn lock(&mut self) -> Result<(), ClientError> {
        self.call::<LockResult>(&Request::Lock {}).map(drop)
    }

    /// Unlocks the agent with `pin`.
    pub fn unlock(&mut self, pin: SecretText) -> Result<(), ClientError> {
        self.call::<LockResult>(&Request::Unlock { pin }).map(drop)
    }

    /// The agent's status.
    pub fn status(&mut self) -> Result<StatusResult, ClientError> {
        self.call(&Request::Status {})
    }

    /// The access token the agent keeps for this uid's exchange `request` signed by `key`, if
    /// one is left with more than 5 minutes to go.
    pub fn access_token(&mut self, key: &str, request: &str) -> Result<Option<AccessToken>, ClientError> {
        let request = Request::AccessToken { key: key.to_owned(), request: request.to_owned() };
        Ok(self.call::<AccessTokenResult>(&request)?.access_token)
    }

    /// Reports an exchange made by this process, for the audit log; the agent keeps an issued
    /// token for this uid. Returns whether it did.
    pub fn exchanged(&mut self, report: ExchangedReport) -> Result<bool, ClientError> {
        Ok(self.call::<ExchangedResult>(&Request::Exchanged(report))?.kept)
    }

    /// Asks the agent to stop; returns its pid.
    pub fn stop(&mut self) -> Result<u32, ClientError> {
        Ok(self.call::<StopResult>(&Request::Stop {})?.pid)
    }
}
