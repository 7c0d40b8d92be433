//! The command line: one binary for the daemon and its client commands.

mod bench;
mod daemon;
mod failure;
mod keys;
mod output;
mod start;
mod token;

use daemon::DaemonArgs;

use crate::client::Client;
use crate::jwt::{Alg, Ttl};
use crate::wire::{PresetName, SignRequest};
use clap::{Args, Parser, Subcommand};
pub(crate) use failure::{EXIT_OTHER, EXIT_REFUSED, EXIT_TOKEN, EXIT_USAGE, Failure};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;

/// Sign JWTs with keys that never leave a PKCS#11 token.
#[derive(Debug, Parser)]
#[command(name = "jwt-agent", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (for systemd, CI and containers)
    Daemon(DaemonArgs),
    /// Run the agent in the background and print shell lines that point clients at it:
    /// eval "$(jwt-agent start --module M --token T)"
    Start(DaemonArgs),
    /// Stop the agent; prints shell lines that unset JWT_AGENT_SOCK
    Stop(SocketArgs),
    /// Build a JWT from flags, sign it in the token, print it
    Sign(SignArgs),
    /// Sign BASE64URL(header).BASE64URL(payload) built elsewhere and print the whole token
    SignInput(SignInputArgs),
    /// List the signing keys on the token
    Keys(ListArgs),
    /// Print a key's public half: PEM (SPKI), JWK or JWKS
    Pubkey(keys::PubkeyArgs),
    /// Put a PKCS#8 private key (an Apple .p8) on the token, non-extractable
    Import(keys::ImportArgs),
    /// Generate a key pair inside the token
    Generate(keys::GenerateArgs),
    /// Make a self-signed X.509 certificate for a key, signed inside the token, and store it
    /// there (what Entra ID, Google and Salesforce ask you to register)
    Cert(keys::CertArgs),
    /// Check a JWT's signature and times; print its header and claims
    Verify(keys::VerifyArgs),
    /// Show the token, keys, session pool and counters
    Status(ListArgs),
    /// Log the agent out of the token and make it forget the PIN; it signs nothing until unlock
    Lock(SocketArgs),
    /// Load the agent with N connections of sign requests; --direct compares with the raw token
    Bench(bench::BenchArgs),
    /// Sign a service's assertion and trade it for the access token the job needs (a GitHub
    /// installation token, an OAuth access token); print that token
    Token(token::TokenArgs),
    /// Run a command with a token in an environment variable: a JWT, or with --exchange (or
    /// GitHub's --installation/--repo) an access token, revoked (GitHub) when the command ends
    Exec(ExecArgs),
    /// Print shell completions: bash, zsh, fish, elvish or powershell
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// Log the agent in again: prompts for the PIN, or reads --pin-file
    Unlock(UnlockArgs),
}

impl Command {
    /// The subcommand's name, as the hints on errors refer to it.
    fn name(&self) -> &'static str {
        match self {
            Command::Daemon(_) => "daemon",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Sign(_) => "sign",
            Command::SignInput(_) => "sign-input",
            Command::Keys(_) => "keys",
            Command::Pubkey(_) => "pubkey",
            Command::Import(_) => "import",
            Command::Generate(_) => "generate",
            Command::Cert(_) => "cert",
            Command::Verify(_) => "verify",
            Command::Status(_) => "status",
            Command::Lock(_) => "lock",
            Command::Bench(_) => "bench",
            Command::Token(_) => "token",
            Command::Exec(_) => "exec",
            Command::Completions { .. } => "completions",
            Command::Man => "man",
            Command::Unlock(_) => "unlock",
        }
    }
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    exchange: token::ExchangeArgs,
    /// Trade the assertion for the service's access token, as `jwt-agent token` does
    #[arg(long = "exchange")]
    exchange_token: bool,
    /// The variable that gets the token [default: JWT; with an exchange GH_TOKEN for GitHub,
    /// else ACCESS_TOKEN]
    #[arg(long, value_name = "VAR")]
    env: Option<String>,
    /// The command, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct UnlockArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// File holding the user PIN (else $JWT_AGENT_PIN, else a prompt on the terminal)
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SocketArgs {
    /// Agent socket (else $JWT_AGENT_SOCK, else the default path)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SignInputArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Key label on the token
    #[arg(long, value_name = "KEY")]
    key: String,
    /// BASE64URL(header).BASE64URL(payload); `-` reads it from stdin
    #[arg(value_name = "SIGNING_INPUT")]
    input: String,
}

#[derive(Debug, Args)]
struct SignArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Key label on the token, or a PKCS#11 URI
    #[arg(long, value_name = "KEY")]
    key: String,
    /// Fill and check the token for a service: app-store-connect, app-store-server, apns,
    /// sign-in-with-apple, weatherkit, musickit, github-app, google-service-account,
    /// oauth-client-assertion, snowflake, salesforce, docusign, firebase-custom-token, or a
    /// [presets.NAME] of the daemon's config
    /// [default: the key's preset in the config]
    #[arg(long, value_name = "NAME")]
    preset: Option<PresetName>,
    /// JWS algorithm [default: the key's]
    #[arg(long, value_name = "ALG")]
    alg: Option<String>,
    /// Header `kid` (values may start with `-`, as kids and ids do)
    #[arg(long, value_name = "KID", allow_hyphen_values = true)]
    kid: Option<String>,
    /// Claim `iss`
    #[arg(long, value_name = "ISS", allow_hyphen_values = true)]
    iss: Option<String>,
    /// Claim `sub`
    #[arg(long, value_name = "SUB", allow_hyphen_values = true)]
    sub: Option<String>,
    /// Claim `aud` (repeat for several)
    #[arg(long, value_name = "AUD", allow_hyphen_values = true)]
    aud: Vec<String>,
    /// Claim `bid`: the app's bundle ID (App Store Server API)
    #[arg(long, value_name = "BUNDLE_ID", allow_hyphen_values = true)]
    bid: Option<String>,
    /// Claim `scope`: one App Store Connect request, such as "GET /v1/apps", or one OAuth scope
    /// (repeatable)
    #[arg(long, value_name = "S")]
    scope: Vec<String>,
    /// Lifetime: sets `exp` to `iat` plus this (90s, 20m, 1h, 180d); without it a preset's
    /// default, or no `exp` at all
    #[arg(long, value_name = "DURATION")]
    ttl: Option<Ttl>,
    /// Extra claim; VALUE is JSON when it parses as JSON, else a string (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    claim: Vec<String>,
    /// Extra header member, like --claim (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    header: Vec<String>,
    /// Sign anew even when a cached token would do
    #[arg(long)]
    fresh: bool,
}

fn parse_alg(name: &str) -> Result<Alg, String> {
    Alg::from_name(name).ok_or_else(|| format!("{name:?} is not one of {}", Alg::names()))
}

/// Parses the command line, runs the command, and returns the exit status.
pub fn run_command_line() -> u8 {
    // The one-shot hot path skips building clap's command tree, which costs more than the
    // whole round trip to the agent (docs/performance.md); anything it does not recognize goes
    // to clap, which then parses, explains and refuses as usual.
    let command = match quick_sign_input(std::env::args_os().skip(1)) {
        Some(args) => Command::SignInput(args),
        None => Cli::parse().command,
    };
    let name = command.name();
    match run(command) {
        Ok(()) => 0,
        Err(failure) => {
            if !failure.is_silent() {
                eprintln!("{}", failure.line(name));
            }
            failure.status
        }
    }
}

/// `sign-input --key KEY [--socket PATH] INPUT`, flags in any order and as `--flag=VALUE` too,
/// read without clap; `None` for anything else (help, an unknown or repeated flag, a value that
/// looks like a flag, `--`), which clap then handles.
fn quick_sign_input(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<SignInputArgs> {
    if args.next()? != "sign-input" {
        return None;
    }
    let (mut key, mut socket, mut input) = (None, None, None);
    while let Some(arg) = args.next() {
        let arg = arg.into_string().ok()?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg, None),
        };
        let mut value = || match inline.clone() {
            Some(value) => Some(value),
            None => args.next()?.into_string().ok().filter(|v| !v.starts_with('-')),
        };
        match flag.as_str() {
            "--key" if key.is_none() => key = Some(value()?),
            "--socket" if socket.is_none() => socket = Some(PathBuf::from(value()?)),
            positional if input.is_none() && (positional == "-" || !positional.starts_with('-')) => {
                input = Some(positional.to_owned());
            }
            _ => return None,
        }
    }
    Some(SignInputArgs { socket: SocketArgs { socket }, key: key?, input: input? })
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Daemon(args) => {
            let options = args.resolve()?.0;
            // Every path is absolute now; a daemon keeps no folder busy.
            std::env::set_current_dir("/")
                .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot change to /: {e}")))?;
            Ok(crate::daemon::run(options)?)
        }
        Command::Start(args) => start::start(args),
        Command::Stop(args) => start::stop(args.socket.as_deref()),
        Command::Sign(args) => {
            let mut client = connect(&args.socket)?;
            let token = client.sign(args.into_request()?)?.token;
            print_line(&token)
        }
        Command::SignInput(args) => {
            let input = match args.input.as_str() {
                "-" => read_stdin()?,
                input => input.to_owned(),
            };
            let token = connect(&args.socket)?.sign_input(&args.key, &input)?;
            print_line(&token)
        }
        Command::Keys(args) => {
            let keys = connect(&args.socket)?.keys()?.keys;
            print_line(&output::keys(&keys, args.json))
        }
        Command::Pubkey(args) => keys::pubkey(args),
        Command::Import(args) => keys::import(args),
        Command::Generate(args) => keys::generate(args),
        Command::Cert(args) => keys::cert(args),
        Command::Verify(args) => keys::verify(args),
        Command::Bench(args) => bench::bench(args),
        Command::Token(args) => token::token(args),
        Command::Exec(args) => exec(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "jwt-agent", &mut script);
            print_line(String::from_utf8_lossy(&script).trim_end())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot render the man page: {e}")))?;
            print_line(String::from_utf8_lossy(&page).trim_end())
        }
        Command::Lock(args) => {
            connect(&args)?.lock()?;
            print_line("The agent is locked: it is logged out and has forgotten the PIN.")
        }
        Command::Unlock(args) => {
            let source = match &args.pin_file {
                Some(file) => crate::pin::PinSource::File(file),
                None => crate::pin::PinSource::EnvOrPrompt,
            };
            let pin = crate::pin::read_pin_text(source, "PIN to unlock the agent: ")
                .map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;
            connect(&args.socket)?.unlock(crate::wire::SecretText(pin))?;
            print_line("The agent is unlocked.")
        }
        Command::Status(args) => {
            let status = connect(&args.socket)?.status()?;
            print_line(&output::status(&status, args.json))
        }
    }
}

/// `jwt-agent exec`: sign, then replace this process with the command, the token in its
/// environment (never on its command line, where `ps` would show it). With an exchange, the
/// command runs as a child instead, so that its GitHub token can be revoked when it ends.
fn exec(args: ExecArgs) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let exchange = args.exchange_token || args.exchange.names_installation();
    let github = args.sign.preset.as_ref().is_some_and(|p| p.as_str() == "github-app");
    let env = match (&args.env, exchange, github) {
        (Some(env), _, _) => env.clone(),
        (None, false, _) => "JWT".into(),
        (None, true, true) => "GH_TOKEN".into(),
        (None, true, false) => "ACCESS_TOKEN".into(),
    };
    if env.is_empty() || env.contains('=') || env.contains('\0') {
        return Err(Failure::usage(format!("--env wants a variable name, not {env:?}")));
    }
    let (program, rest) =
        args.command.split_first().ok_or_else(|| Failure::usage("give the command after --"))?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    let cannot_run = |error: std::io::Error| {
        Failure::new(127, format!("cannot run {}: {error}", program.to_string_lossy()))
    };
    if !exchange {
        let mut client = connect(&args.sign.socket)?;
        let token = client.sign(args.sign.into_request()?)?.token;
        return Err(cannot_run(command.env(&env, token).exec()));
    }
    let socket = SocketArgs { socket: args.sign.socket.socket.clone() };
    let plan = token::Plan::new(args.sign, args.exchange)?;
    let mut agent = connect(&socket)?;
    // A token that is revoked at the end is the command's own: not kept, not shared.
    let obtained = plan.obtain(&mut agent, !plan.service.revocable())?;
    let status = {
        let child = command.env(&env, obtained.token.as_str()).spawn();
        child.map_err(cannot_run).and_then(wait_passing_signals)
    };
    if let Err(e) = plan.revoke(Some(&mut agent), &obtained) {
        eprintln!("jwt-agent: the token was not revoked, it stays valid until it expires: {e}");
    }
    let code = status?;
    if code == 0 { Ok(()) } else { Err(Failure::silent(code)) }
}

/// Waits for `child` while passing it the signals that would end this process, and returns the
/// exit status to end with (128 + the signal when a signal ended it, as shells say).
fn wait_passing_signals(mut child: std::process::Child) -> Result<u8, Failure> {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::{AtomicI32, Ordering};
    static CHILD: AtomicI32 = AtomicI32::new(0);
    extern "C" fn pass(signal: libc::c_int) {
        let pid = CHILD.load(Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(pid, signal) };
        }
    }
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: `pass` only reads an atomic and calls kill.
        unsafe { libc::signal(signal, pass as *const () as libc::sighandler_t) };
    }
    let status = child.wait();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: restores the default disposition.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let status = status.map_err(|e| Failure::new(1, format!("cannot wait for the command: {e}")))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    })
}

pub(crate) fn connect(args: &SocketArgs) -> Result<Client, Failure> {
    Ok(Client::connect(&crate::paths::socket_path(args.socket.as_deref()))?)
}

pub(crate) fn print_line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot write to stdout: {e}")))
}

pub(crate) fn read_stdin() -> Result<String, Failure> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot read stdin: {e}")))?;
    Ok(input.trim_end().to_owned())
}

impl SignArgs {
    fn into_request(self) -> Result<SignRequest, Failure> {
        let mut header = Map::new();
        let mut claims = Map::new();
        for (name, value) in [("alg", self.alg), ("kid", self.kid)] {
            if let Some(value) = value {
                set(&mut header, name, Value::from(value))?;
            }
        }
        for (name, value) in [("iss", self.iss), ("sub", self.sub), ("bid", self.bid)] {
            if let Some(value) = value {
                set(&mut claims, name, Value::from(value))?;
            }
        }
        match self.aud.len() {
            0 => {}
            1 => set(&mut claims, "aud", Value::from(self.aud[0].clone()))?,
            _ => set(&mut claims, "aud", Value::from(self.aud))?,
        }
        if !self.scope.is_empty() {
            set(&mut claims, "scope", Value::from(self.scope))?;
        }
        for pair in &self.header {
            let (name, value) = name_value(pair, "--header")?;
            set(&mut header, name, value)?;
        }
        for pair in &self.claim {
            let (name, value) = name_value(pair, "--claim")?;
            set(&mut claims, name, value)?;
        }
        Ok(SignRequest {
            key: self.key,
            preset: self.preset,
            header,
            claims,
            ttl: self.ttl,
            fresh: self.fresh,
        })
    }
}

fn set(map: &mut Map<String, Value>, name: &str, value: Value) -> Result<(), Failure> {
    match map.insert(name.to_owned(), value) {
        None => Ok(()),
        Some(_) => Err(Failure::usage(format!("{name:?} is given twice; give it once"))),
    }
}

/// `NAME=VALUE`, VALUE parsed as JSON when it is JSON, else taken as a string.
fn name_value<'a>(pair: &'a str, flag: &str) -> Result<(&'a str, Value), Failure> {
    let (name, value) = pair
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| Failure::usage(format!("{flag} wants NAME=VALUE, got {pair:?}")))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_quick_sign_input_reads_what_clap_reads_and_leaves_the_rest_to_it() {
        use clap::Parser;
        let args = |line: &str| line.split(' ').map(std::ffi::OsString::from).collect::<Vec<_>>();
        for line in [
            "sign-input --key asc e30.e30",
            "sign-input e30.e30 --key asc",
            "sign-input --key=asc --socket /tmp/s e30.e30",
            "sign-input --socket=/tmp/s - --key asc",
        ] {
            let quick = quick_sign_input(args(line).into_iter()).expect(line);
            let mut with_name = args(line);
            with_name.insert(0, "jwt-agent".into());
            let Command::SignInput(clapped) = Cli::parse_from(with_name).command else { panic!("{line}") };
            assert_eq!(
                (quick.key, quick.socket.socket, quick.input),
                (clapped.key, clapped.socket.socket, clapped.input),
                "{line}"
            );
        }
        for line in [
            "sign --key asc",
            "sign-input --help",
            "sign-input --key asc",
            "sign-input e30.e30",
            "sign-input --key asc --key b e30.e30",
            "sign-input --key -x e30.e30",
            "sign-input --key asc a b",
            "sign-input --key asc -- e30.e30",
            "sign-input --kee asc e30.e30",
            "sign-input --key",
        ] {
            assert!(quick_sign_input(args(line).into_iter()).is_none(), "{line}");
        }
    }

    #[test]
    fn claim_values_are_json_when_they_parse() {
        assert_eq!(name_value("n=5", "--claim").unwrap(), ("n", Value::from(5)));
        assert_eq!(name_value("s=abc", "--claim").unwrap(), ("s", Value::from("abc")));
        assert_eq!(name_value("o={\"a\":[1]}", "--claim").unwrap().1, serde_json::json!({"a": [1]}));
        assert_eq!(name_value("e=", "--claim").unwrap().1, Value::from(""));
        assert!(name_value("=x", "--claim").is_err());
        assert!(name_value("nothing", "--claim").is_err());
    }
}
