//! `jwt-agent bench`: the agent's throughput and latency under load, and with `--direct` the
//! token's own, measured side by side in one run.

mod load;

use super::{Failure, SocketArgs, connect, print_line};
use crate::cli::{EXIT_OTHER, EXIT_TOKEN, EXIT_USAGE};
use crate::jwt::Alg;
use crate::pin::{self, PinSource};
use crate::wire::{Request, SignRequest};
use clap::Args;
use load::{Direct, Samples, Stats};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Connections, each a closed loop of requests
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// Seconds of load (for the agent, and as many again for --direct)
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    seconds: u16,
    /// Key to sign with [default: the first key the agent signs with]
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Also sign on the token directly in this process, as many threads as the agent has
    /// sessions, interleaved with the agent's load; prints both and their ratio
    #[arg(long)]
    direct: bool,
    /// The PIN for --direct (else $JWT_AGENT_PIN, else a prompt)
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Repeat one `sign` request, which the agent answers from its token cache
    #[arg(long, conflicts_with = "direct")]
    cached: bool,
    /// Print {"agent": {...}, "direct": {...}, "ratio": ...}
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark and prints the result.
pub fn bench(args: BenchArgs) -> Result<(), Failure> {
    let status = connect(&args.socket)?.status()?;
    let key = match &args.key {
        Some(key) => status.keys.iter().find(|k| &k.label == key),
        None => status.keys.iter().find(|k| k.alg.is_some()),
    }
    .ok_or_else(|| Failure::new(EXIT_TOKEN, "no key to sign with: give --key, or put a key on the token"))?;
    let alg = key.alg.as_deref().and_then(Alg::from_name).ok_or_else(|| {
        Failure::new(EXIT_USAGE, format!("the key {:?} is not one the agent signs with", key.label))
    })?;
    let request = if args.cached {
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from("jwt-agent bench"));
        let sign = SignRequest {
            key: key.label.clone(),
            claims,
            ttl: crate::jwt::Ttl::from_secs(20 * 60),
            ..SignRequest::default()
        };
        Request::Sign(sign)
    } else {
        Request::SignInput { key: key.label.clone(), input: load::signing_input(alg) }
    };
    let mut direct = if args.direct {
        let source = args.pin_file.as_deref().map_or(PinSource::EnvOrPrompt, PinSource::File);
        let pin = pin::read_pin(source, &format!("PIN for token {:?} (for --direct): ", status.token.label))
            .map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;
        let module = PathBuf::from(&status.token.module);
        let opened = Direct::open(&module, &status.token.label, pin, status.pool.sessions, &key.label, alg)
            .map_err(|e| Failure::new(EXIT_TOKEN, format!("--direct: {e}")))?;
        Some(opened)
    } else {
        None
    };

    // Slices of at most a second, agent and direct in turn, so both see the same machine.
    let total = Duration::from_secs(u64::from(args.seconds));
    let slice = Duration::from_secs(1);
    let (mut agent, mut raw) = (Samples::default(), Samples::default());
    let socket = crate::paths::socket_path(args.socket.socket.as_deref());
    let (mut done, mut turn) = (Duration::ZERO, 0);
    while done < total {
        let this = slice.min(total - done);
        let samples = load::agent_slice(&socket, usize::from(args.connections), this, &request, turn)?;
        turn += 1;
        agent.add(samples);
        if let Some(direct) = direct.as_mut() {
            let samples =
                direct.slice(this).map_err(|e| Failure::new(EXIT_OTHER, format!("--direct: {e}")))?;
            raw.add(samples);
        }
        done += this;
    }
    let agent = agent.stats();
    let raw = direct.is_some().then(|| raw.stats());
    let ratio = raw.filter(|r| r.rate > 0.0).map(|r| agent.rate / r.rate);
    if args.json {
        let mut out = json!({ "agent": agent });
        if let (Some(raw), Some(ratio)) = (raw, ratio) {
            out["direct"] = json!(raw);
            out["ratio"] = json!(ratio);
        }
        return print_line(&out.to_string());
    }
    let what = if args.cached { "cached sign" } else { "sign_input" };
    let mut lines = vec![format!("key {} ({alg}), {what}, {} s", key.label, args.seconds)];
    lines.push(line("agent", &format!("{} connections", args.connections), &agent));
    if let (Some(raw), Some(ratio)) = (raw, ratio) {
        lines.push(line("direct", &format!("{} threads", status.pool.sessions), &raw));
        lines.push(format!("ratio   {ratio:.2} (agent / direct)"));
    }
    print_line(&lines.join("\n"))
}

fn line(name: &str, load: &str, s: &Stats) -> String {
    let mut extra = if s.errors > 0 { format!("  {} errors", s.errors) } else { String::new() };
    if let Some(share) = s.slowest_share {
        extra.push_str(&format!("  slowest {share:.2}x fair"));
    }
    format!(
        "{name:<7} {load:<15} {:>9.0} signatures/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms{extra}",
        s.rate, s.p50_ms, s.p99_ms, s.max_ms
    )
}
