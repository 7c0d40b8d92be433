//! `start` and `stop`: the agent in the background, ssh-agent style.

use super::{DaemonArgs, Failure};
use crate::cli::EXIT_OTHER;
use crate::client::{Client, ClientError};
use crate::{paths, pin};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for the daemon to log in and listen, and `stop` for it to go.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// Runs `jwt-agent daemon` in the background, waits until its socket answers, and prints
/// `JWT_AGENT_SOCK=...; export JWT_AGENT_SOCK;` and `echo Agent pid N;` for `eval`.
pub fn start(args: DaemonArgs) -> Result<(), Failure> {
    let (options, _) = args.resolve()?;
    let socket = options.socket.clone();
    match Client::connect(&socket) {
        Ok(_) => {
            return Err(Failure::new(
                EXIT_OTHER,
                format!(
                    "an agent is already running at {}; `jwt-agent stop` it first or give another --socket",
                    socket.display()
                ),
            ));
        }
        // Another user's socket is not "an agent already running": say whose it is.
        Err(e @ ClientError::Untrusted { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    paths::prepare_socket_dir(&socket)
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot prepare the socket folder: {e}")))?;
    // Prompt here, where the terminal is; the daemon gets the PIN on a pipe, never in argv.
    let prompted = if options.pin_from_stdin || pin::has_non_interactive_source(options.pin_file.as_deref()) {
        None
    } else {
        let prompt = format!("PIN for token {:?}: ", options.token);
        Some(pin::prompt_on_terminal(&prompt).map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?)
    };

    let log_path = socket.with_extension("log");
    let mut log = crate::files::open_private_append(&log_path)
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot open the agent's log: {e}")))?;
    let log_start = log.seek(SeekFrom::End(0)).unwrap_or(0);
    let log_err = log.try_clone().map_err(|e| Failure::new(EXIT_OTHER, e.to_string()))?;

    let mut command = daemon_command()?;
    command
        .stdin(if prompted.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(log_err)
        // Its own process group: a Ctrl-C in the shell that ran `start` does not reach it.
        .process_group(0);
    if prompted.is_some() {
        command.arg("--pin-from-stdin");
    }
    let mut child =
        command.spawn().map_err(|e| Failure::new(EXIT_OTHER, format!("cannot run the daemon: {e}")))?;
    if let (Some(pin), Some(mut stdin)) = (&prompted, child.stdin.take()) {
        let mut line = zeroize::Zeroizing::new(pin.as_bytes().to_vec());
        line.push(b'\n');
        let _ = stdin.write_all(&line);
    }

    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut told = String::new();
            let _ = log.seek(SeekFrom::Start(log_start));
            let _ = log.read_to_string(&mut told);
            eprint!("{told}");
            let code = status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(EXIT_OTHER);
            return Err(Failure::new(code, "the agent did not start (its log is above)"));
        }
        if Client::connect(&socket).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                EXIT_OTHER,
                format!(
                    "the agent (pid {}) did not answer within {WAIT:?}; see {}",
                    child.id(),
                    log_path.display()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
    let socket = shell_quote(&socket.display().to_string());
    println!("JWT_AGENT_SOCK={socket}; export JWT_AGENT_SOCK;");
    println!("echo Agent pid {};", child.id());
    Ok(())
}

/// Asks the agent to stop, waits until its socket is gone, and prints lines for `eval`.
pub fn stop(socket: Option<&Path>) -> Result<(), Failure> {
    let socket = paths::socket_path(socket);
    let pid = Client::connect(&socket)?.stop()?;
    let deadline = Instant::now() + WAIT;
    // The daemon removes its socket as it goes; one systemd passed it stays, so the process
    // itself is watched too.
    while socket.exists() && !process_gone(pid) {
        if Instant::now() > deadline {
            return Err(Failure::new(
                EXIT_OTHER,
                format!("the agent (pid {pid}) has not stopped within {WAIT:?}"),
            ));
        }
        std::thread::sleep(POLL);
    }
    println!("unset JWT_AGENT_SOCK;");
    println!("echo Agent pid {pid} stopped;");
    Ok(())
}

/// `jwt-agent daemon` with the flags `start` was given, as given: the daemon resolves them as
/// `start` did (same folder, same environment), then leaves the folder for `/`.
fn daemon_command() -> Result<Command, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot find this program: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags =
        args.iter().skip(1).position(|a| a == "start").map_or(&args[args.len()..], |at| &args[at + 2..]);
    let mut command = Command::new(exe);
    command.arg("daemon").args(flags);
    Ok(command)
}

/// Whether process `pid` has ended (an unreaped zombie counts as ended).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) if Path::new("/proc/self").exists() => true,
        // No /proc (macOS): ask the kernel. SAFETY: signal 0 only checks that the process exists.
        Err(_) => (unsafe { libc::kill(pid as libc::pid_t, 0) }) != 0,
    }
}

/// Quotes a path for sh when it holds anything but safe characters.
pub(super) fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("/run/user/1000/jwt-agent/agent.sock"), "/run/user/1000/jwt-agent/agent.sock");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
