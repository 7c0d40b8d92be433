//! The load generator behind `jwt-agent bench`: N connections, each a closed loop of
//! `sign_input` requests, and the same signatures made straight on the token in this process
//! (`--direct`), in interleaved slices of one run so that both see the same machine.

use crate::client::ClientError;
use crate::jwt::{self, Alg};
use crate::token::Token;
use crate::token::TokenError;
use crate::wire::Request;
use cryptoki::types::AuthPin;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one side of the comparison achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Signatures per second.
    pub rate: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Worst latency.
    pub max_ms: f64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests made.
    pub requests: u64,
    /// How much longer than its fair share the slowest connection waited: the mean number of
    /// signatures per connection over the fewest any one got (1.0 is perfectly fair).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_share: Option<f64>,
}

/// Latencies (microseconds) and time spent, gathered over slices.
#[derive(Debug, Default)]
pub struct Samples {
    latencies: Vec<u32>,
    errors: u64,
    busy: Duration,
    /// Answers each connection got, by its place in the slice.
    per_connection: Vec<u64>,
}

impl Samples {
    /// Takes `other`'s samples in.
    pub fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.busy += other.busy;
        if self.per_connection.len() < other.per_connection.len() {
            self.per_connection.resize(other.per_connection.len(), 0);
        }
        for (mine, theirs) in self.per_connection.iter_mut().zip(other.per_connection) {
            *mine += theirs;
        }
    }

    /// The rate and percentiles of what was gathered.
    pub fn stats(mut self) -> Stats {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let at = |q: f64| {
            if n == 0 {
                0.0
            } else {
                f64::from(self.latencies[((n as f64 * q) as usize).min(n - 1)]) / 1000.0
            }
        };
        let seconds = self.busy.as_secs_f64();
        let slowest_share = match (self.per_connection.iter().min(), self.per_connection.len()) {
            (Some(&fewest), connections) if connections > 1 && fewest > 0 => {
                let mean = self.per_connection.iter().sum::<u64>() as f64 / connections as f64;
                Some(mean / fewest as f64)
            }
            _ => None,
        };
        Stats {
            slowest_share,
            rate: if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: self.latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            errors: self.errors,
            requests: n as u64 + self.errors,
        }
    }
}

/// Signing input for a key of `alg`: what the load signs, over and over.
pub fn signing_input(alg: Alg) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), Value::from(alg.name()));
    header.insert("typ".into(), Value::from("JWT"));
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from("jwt-agent bench"));
    claims.insert("iat".into(), Value::from(jwt::now()));
    jwt::encode_signing_input(&header, &claims)
}

/// One slice of agent load: `connections` closed loops of `request` for `duration`. Like
/// redis-benchmark, the client does as little as it can: one thread drives every connection
/// (a single-threaded tokio runtime), the request line is encoded once, and an answer is checked
/// for `{"ok":true`, not parsed; so the load generator takes as little of the machine as it can
/// from the agent it measures.
///
/// Connection `i` of slice `turn` is counted as client `(i + turn) % connections`: the ones that
/// connect first also ask first, and a slice's end cuts the last ones in line short, so each
/// client takes every place in line in turn.
pub fn agent_slice(
    socket: &Path,
    connections: usize,
    duration: Duration,
    request: &Request,
    turn: usize,
) -> Result<Samples, ClientError> {
    let line: Arc<[u8]> = crate::wire::encode_request(None, request).map_err(std::io::Error::other)?.into();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The same checks as `Client::connect`: nothing goes to a socket this user does not trust.
    let untrusted = |why| ClientError::Untrusted { path: socket.to_path_buf(), why };
    let trusted = crate::client::trust::Trusted::from_env()
        .map_err(|reason| untrusted(crate::client::trust::Distrust { reason, uid: None }))?;
    trusted.check_folder(socket).map_err(untrusted)?;
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Unreachable { path: socket.to_path_buf(), source })?;
            trusted.check_uid(stream.peer_cred()?.uid()).map_err(untrusted)?;
            streams.push(stream);
        }
        let started = Instant::now();
        let deadline = started + duration;
        let loops: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(closed_loop(stream, line.clone(), deadline)))
            .collect();
        let mut all = Samples { per_connection: vec![0; connections], ..Samples::default() };
        for (i, one) in loops.into_iter().enumerate() {
            let one = one.await.unwrap_or_default();
            all.per_connection[(i + turn) % connections] = one.latencies.len() as u64;
            all.add(one);
        }
        all.busy = started.elapsed();
        Ok(all)
    })
}

/// One connection's closed loop: send, wait for the answer, again, until `deadline`.
async fn closed_loop(stream: tokio::net::UnixStream, line: Arc<[u8]>, deadline: Instant) -> Samples {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut samples = Samples::default();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut answer = Vec::with_capacity(1024);
    while Instant::now() < deadline {
        let sent = Instant::now();
        answer.clear();
        if write.write_all(&line).await.is_err() {
            samples.errors += 1;
            break;
        }
        match reader.read_until(b'\n', &mut answer).await {
            Ok(_) if answer.starts_with(br#"{"ok":true"#) => samples.latencies.push(micros(sent.elapsed())),
            Ok(0) | Err(_) => {
                samples.errors += 1;
                break;
            }
            Ok(_) => samples.errors += 1,
        }
    }
    samples
}

/// The token opened in this process, with its sessions, for `--direct`.
pub struct Direct {
    token: Arc<Token>,
    sessions: Vec<cryptoki::session::Session>,
    key: String,
    input: String,
    alg: Alg,
}

impl Direct {
    /// Opens `token` in `module` with `pin`, and `threads` sessions.
    pub fn open(
        module: &Path,
        token: &str,
        pin: AuthPin,
        threads: usize,
        key: &str,
        alg: Alg,
    ) -> Result<Direct, TokenError> {
        let (token, first) = Token::open(module, token, pin)?;
        let mut sessions = vec![first];
        for _ in 1..threads.max(1) {
            sessions.push(token.open_session()?);
        }
        Ok(Direct { token: Arc::new(token), sessions, key: key.to_owned(), input: signing_input(alg), alg })
    }

    /// One slice: each session signs in a closed loop on its own thread for `duration`, the
    /// same way a daemon worker does (key lookup, hash, `C_Sign`), with no agent in between.
    pub fn slice(&mut self, duration: Duration) -> std::io::Result<Samples> {
        let started = Instant::now();
        let deadline = started + duration;
        let sessions = std::mem::take(&mut self.sessions);
        let threads: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                let (token, key, input, alg) =
                    (self.token.clone(), self.key.clone(), self.input.clone(), self.alg);
                spawn("bench-direct", move || {
                    let mut samples = Samples::default();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let signed = token
                            .key(&session, &key)
                            .and_then(|k| token.sign(&session, &k, alg, input.as_bytes()));
                        match signed {
                            Ok(signature) => {
                                std::hint::black_box(jwt::compact(&input, &signature));
                                samples.latencies.push(micros(sent.elapsed()));
                            }
                            Err(_) => samples.errors += 1,
                        }
                    }
                    (session, samples)
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut all = Samples::default();
        for thread in threads {
            if let Ok((session, samples)) = thread.join() {
                self.sessions.push(session);
                all.add(samples);
            }
        }
        all.busy = started.elapsed();
        Ok(all)
    }
}

/// A named thread, so that a profile tells the load generator from the agent.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let samples = Samples {
            latencies: (1..=100).map(|ms| ms * 1000).collect(),
            errors: 2,
            busy: Duration::from_secs(2),
            per_connection: vec![30, 50, 20],
        };
        let stats = samples.stats();
        assert_eq!(stats.rate, 50.0);
        assert_eq!((stats.p50_ms, stats.p99_ms, stats.max_ms), (51.0, 100.0, 100.0));
        assert_eq!((stats.errors, stats.requests), (2, 102));
        // The mean connection got 33.3 answers, the slowest 20.
        assert!((stats.slowest_share.unwrap() - 100.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn slices_add_up_per_connection() {
        let slice = |counts: Vec<u64>| Samples { per_connection: counts, ..Samples::default() };
        let mut all = slice(vec![1, 2]);
        all.add(slice(vec![3, 4, 5]));
        assert_eq!(all.per_connection, vec![4, 6, 5]);
    }
}
