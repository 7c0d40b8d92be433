//! Where the daemon's PIN comes from: `--pin-file`, else `$JWT_AGENT_PIN`, else a no-echo prompt
//! on a terminal. Never a flag that takes the PIN itself: it would show in `ps`.

use cryptoki::types::AuthPin;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use zeroize::Zeroizing;

/// The environment variable that may hold the PIN.
pub const PIN_ENV: &str = "JWT_AGENT_PIN";

/// Why no PIN could be had.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The PIN file could not be read.
    #[error("cannot read the PIN file {path}: {source}")]
    File { path: String, source: std::io::Error },
    /// No source of a PIN was given and there is no terminal to ask on.
    #[error("no PIN: give --pin-file FILE or set JWT_AGENT_PIN (there is no terminal to ask on)")]
    NoSource,
    /// Reading from the terminal or stdin failed.
    #[error("cannot read the PIN: {0}")]
    Read(std::io::Error),
    #[error("the PIN is empty")]
    Empty,
}

/// Where to read the PIN from.
#[derive(Debug, Clone, Copy)]
pub enum PinSource<'a> {
    /// A file of its own (first line, trailing newline dropped).
    File(&'a Path),
    /// One line on standard input: how `start` hands a prompted PIN to the daemon it spawns.
    Stdin,
    /// `$JWT_AGENT_PIN`, else a prompt on the terminal.
    EnvOrPrompt,
}

/// Reads the PIN. The intermediate buffers are zeroized; the result zeroizes itself on drop.
pub fn read_pin(source: PinSource, prompt: &str) -> Result<AuthPin, PinError> {
    read_pin_text(source, prompt).map(|pin| AuthPin::from(pin.as_str()))
}

/// Reads the PIN as text, first line only, for `unlock` to send to the agent.
pub fn read_pin_text(source: PinSource, prompt: &str) -> Result<Zeroizing<String>, PinError> {
    let text: Zeroizing<String> = match source {
        PinSource::File(path) => {
            let bytes = Zeroizing::new(
                std::fs::read(path)
                    .map_err(|source| PinError::File { path: path.display().to_string(), source })?,
            );
            if let Ok(meta) = std::fs::metadata(path)
                && meta.mode() & 0o044 != 0
            {
                crate::warn!("the PIN file {} is readable by others; chmod 600 it", path.display());
            }
            Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned())
        }
        PinSource::Stdin => read_line_unbuffered()?,
        PinSource::EnvOrPrompt => match std::env::var(PIN_ENV) {
            Ok(pin) => Zeroizing::new(pin),
            Err(_) => prompt_on_terminal(prompt)?,
        },
    };
    let pin = first_line(&text);
    if pin.is_empty() {
        return Err(PinError::Empty);
    }
    Ok(Zeroizing::new(pin.to_owned()))
}

/// One line of stdin, read a byte at a time from the descriptor itself: std's `Stdin` keeps
/// what it reads in a buffer of its own that is never freed, let alone wiped.
fn read_line_unbuffered() -> Result<Zeroizing<String>, PinError> {
    use std::io::Read;
    use std::os::fd::AsFd;
    const LONGEST: usize = 1024;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().map_err(PinError::Read)?;
    let mut input = std::fs::File::from(fd);
    let mut line = Zeroizing::new(Vec::with_capacity(LONGEST));
    let mut byte = [0u8; 1];
    while line.len() < LONGEST {
        match input.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PinError::Read(e)),
        }
    }
    zeroize::Zeroize::zeroize(&mut byte);
    let text = std::str::from_utf8(&line)
        .map_err(|_| PinError::Read(std::io::Error::other("the PIN is not UTF-8")))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Asks on the terminal without echo, or says how else to give the PIN.
pub fn prompt_on_terminal(prompt: &str) -> Result<Zeroizing<String>, PinError> {
    if !std::io::stdin().is_terminal() {
        return Err(PinError::NoSource);
    }
    rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(PinError::Read)
}

/// Takes `$JWT_AGENT_PIN` out of this process's environment, overwriting its value where the
/// kernel keeps the environment the process started with (which `/proc/PID/environ` shows).
///
/// # Safety
///
/// No other thread may read or change the environment meanwhile: call it before any starts.
pub unsafe fn forget_env_pin() {
    const NAME: &std::ffi::CStr = c"JWT_AGENT_PIN";
    // SAFETY: getenv returns null or a pointer to the NUL-terminated value inside the
    // environment, which is writable memory of this process; no other thread uses it (the
    // caller's promise). Overwriting it in place keeps its length, so the block stays valid.
    unsafe {
        let value = libc::getenv(NAME.as_ptr());
        if !value.is_null() {
            let len = libc::strlen(value);
            std::ptr::write_bytes(value, 0, len);
        }
        std::env::remove_var(PIN_ENV);
    }
}

/// Whether a PIN would come from somewhere other than a prompt.
pub fn has_non_interactive_source(pin_file: Option<&Path>) -> bool {
    pin_file.is_some() || std::env::var_os(PIN_ENV).is_some()
}

fn first_line(text: &str) -> &str {
    text.split(['\n', '\r']).next().unwrap_or("")
}
