//! `import`, `generate`, `pubkey` and `verify`: the key lifecycle from the command line.

use super::{Failure, SocketArgs, connect, print_line};
use crate::cli::{EXIT_OTHER, EXIT_REFUSED, EXIT_USAGE};
use crate::config::Config;
use crate::jwt::Alg;
use crate::jwt::preset::Presets;
use crate::key::PublicKey;
use crate::wire::{CertRequest, GenerateRequest, Hex, ImportRequest, KeyInfo, PubkeyFormat, SecretText};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// The private key: PEM (PKCS#8 such as Apple's AuthKey_ABC123DEFG.p8, PKCS#1 RSA, SEC1 EC)
    /// or a Google service-account JSON key file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Label on the token [default: ABC123DEFG for AuthKey_ABC123DEFG.p8, else the file's name]
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// The key's kid [default: ABC123DEFG for AuthKey_ABC123DEFG.p8, else the label]
    #[arg(long, value_name = "KID")]
    kid: Option<String>,
    /// CKA_ID in hex [default: derived from the public key]
    #[arg(long, value_name = "HEX")]
    id: Option<Hex>,
    /// For an encrypted key (ENCRYPTED PRIVATE KEY): the file whose first line is the
    /// passphrase [default: ask on the terminal, without echo]
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Label on the token
    #[arg(long, value_name = "LABEL")]
    label: String,
    /// What the key signs: ES256, ES384, ES512, RS256, PS256 (and the other RS/PS sizes), EdDSA
    #[arg(long, value_name = "ALG", default_value = "ES256", value_parser = super::parse_alg)]
    alg: Alg,
    /// CKA_ID in hex [default: random]
    #[arg(long, value_name = "HEX")]
    id: Option<Hex>,
    /// RSA modulus size: 2048, 3072 or 4096 [default: 2048]
    #[arg(long, value_name = "BITS")]
    bits: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Key label or PKCS#11 URI
    #[arg(value_name = "KEY")]
    key: String,
    /// The subject, as CN=NAME,O=ORG [default: CN=LABEL]
    #[arg(long, value_name = "DN")]
    subject: Option<String>,
    /// Days of validity, from now
    #[arg(long, value_name = "N", default_value_t = 365)]
    days: u32,
    /// Output: PEM text, or DER bytes
    #[arg(long, value_enum, default_value = "pem")]
    format: CertFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CertFormat {
    Pem,
    Der,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Pem,
    Jwk,
    Jwks,
}

#[derive(Debug, Args)]
pub struct PubkeyArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Key label or PKCS#11 URI; may be left out with --format jwks for every key
    #[arg(value_name = "KEY")]
    key: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value = "pem")]
    format: Format,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("with").required(true).args(["key", "pubkey"])))]
pub struct VerifyArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// The compact JWT; `-` reads it from stdin
    #[arg(value_name = "TOKEN")]
    token: String,
    /// Verify with this key's public half, asked of the agent
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Verify with this PEM public key file (no agent needed)
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// Also check the rules of a preset: built in, or a [presets.NAME] of the config
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// The config file whose [presets.NAME] `--preset` may name
    /// [default: $XDG_CONFIG_HOME/jwt-agent/config.toml, if it exists]
    #[arg(long, value_name = "FILE", requires = "preset")]
    config: Option<PathBuf>,
}

/// `jwt-agent import FILE`.
pub fn import(args: ImportArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.file)
        .map(Zeroizing::new)
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot read {}: {e}", args.file.display())))?;
    let (pem, from_file, iss) = if text.trim_start().starts_with('{') {
        let account = google_key_file(&text).map_err(|e| Failure::new(EXIT_REFUSED, e))?;
        (account.private_key, Some(account.private_key_id), Some(account.client_email))
    } else if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let pem = decrypt(&text, &args.file, args.passphrase_file.as_deref())?;
        (pem, apple_key_id(&args.file), None)
    } else {
        (text, apple_key_id(&args.file), None)
    };
    let label =
        args.label.or_else(|| from_file.clone()).or_else(|| args.kid.clone()).or_else(|| stem(&args.file));
    let kid = args.kid.or(from_file);
    let request = ImportRequest { pkcs8_pem: SecretText(pem), label, kid, id: args.id, iss };
    let key = connect(&args.socket)?.import(request)?;
    print_line(&format!(
        "Imported {} into the token as a non-extractable key.\nThe token holds the key now; destroy the file:\n  shred -u {}",
        describe(&key),
        super::start::shell_quote(&args.file.display().to_string()),
    ))
}

/// `jwt-agent generate --label L`.
pub fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let request = GenerateRequest { label: args.label, alg: Some(args.alg), id: args.id, bits: args.bits };
    let key = connect(&args.socket)?.generate(request)?;
    print_line(&format!("Generated {} inside the token; it cannot be exported.", describe(&key)))
}

/// `jwt-agent cert KEY`: prints the certificate; its `x5t#S256` goes to stderr.
pub fn cert(args: CertArgs) -> Result<(), Failure> {
    let request = CertRequest { key: args.key, subject: args.subject, days: Some(args.days) };
    let made = connect(&args.socket)?.cert(request)?;
    eprintln!("stored on the token next to the key; x5t#S256 {}", made.x5t_s256);
    match args.format {
        CertFormat::Pem => print_line(made.pem.trim_end()),
        CertFormat::Der => {
            let (_, der) = pem_rfc7468::decode_vec(made.pem.as_bytes())
                .map_err(|e| Failure::new(EXIT_OTHER, format!("the agent sent a bad certificate: {e}")))?;
            use std::io::Write;
            std::io::stdout()
                .write_all(&der)
                .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot write to stdout: {e}")))
        }
    }
}

fn describe(key: &KeyInfo) -> String {
    format!(
        "{} ({}, id {}, kid {}, {})",
        key.label,
        key.alg.as_deref().unwrap_or("?"),
        key.id,
        key.kid.as_deref().unwrap_or("-"),
        key.fingerprint.as_deref().unwrap_or("no public key")
    )
}

/// `ABC123DEFG` from `AuthKey_ABC123DEFG.p8`, Apple's naming.
fn apple_key_id(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let id = name.strip_prefix("AuthKey_")?.strip_suffix(".p8")?;
    (!id.is_empty()).then(|| id.to_owned())
}

fn stem(file: &Path) -> Option<String> {
    file.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
}

/// `jwt-agent pubkey KEY --format pem|jwk|jwks`.
pub fn pubkey(args: PubkeyArgs) -> Result<(), Failure> {
    let format = match args.format {
        Format::Pem => PubkeyFormat::Pem,
        Format::Jwk => PubkeyFormat::Jwk,
        Format::Jwks => PubkeyFormat::Jwks,
    };
    if args.key.is_none() && !matches!(format, PubkeyFormat::Jwks) {
        return Err(Failure::usage("give KEY, or --format jwks for every key"));
    }
    let result = connect(&args.socket)?.pubkey(args.key.as_deref(), format)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("a JSON value serializes");
    match (result.pem, result.jwk, result.jwks) {
        (Some(pem), _, _) => print_line(pem.trim_end()),
        (_, Some(jwk), _) => print_line(&pretty(&jwk)),
        (_, _, Some(jwks)) => print_line(&pretty(&jwks)),
        _ => Err(Failure::new(EXIT_OTHER, "the agent sent no key")),
    }
}

/// `jwt-agent verify TOKEN (--key KEY | --pubkey FILE)`.
pub fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let token = match args.token.as_str() {
        "-" => super::read_stdin()?,
        token => token.to_owned(),
    };
    let pem = match (&args.pubkey, &args.key) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot read {}: {e}", file.display())))?,
        (None, Some(key)) => connect(&args.socket)?
            .pubkey(Some(key), PubkeyFormat::Pem)?
            .pem
            .ok_or_else(|| Failure::new(EXIT_OTHER, "the agent sent no key"))?,
        (None, None) => return Err(Failure::usage("give --key KEY or --pubkey FILE")),
    };
    let key =
        PublicKey::from_pem(&pem).map_err(|e| Failure::new(EXIT_USAGE, format!("the public key: {e}")))?;
    let now = crate::jwt::now();
    let presets = match args.config.or_else(Config::default_path).filter(|_| args.preset.is_some()) {
        Some(path) => {
            let config = Config::load(&path).map_err(|e| Failure::new(EXIT_OTHER, e))?;
            Presets::with(config.presets)
                .map_err(|e| Failure::new(EXIT_OTHER, format!("{}: {e}", path.display())))?
        }
        None => Presets::builtin(),
    };
    let preset = args.preset.as_deref().map(|name| presets.get(name)).transpose().map_err(Failure::usage)?;
    let verified = crate::jwt::verify::verify(&token, &key, now)
        .map_err(|e| Failure::new(EXIT_REFUSED, format!("the token is not valid: {e}")))?;
    if let Some(preset) = preset {
        preset
            .check(&verified.header, &verified.claims, now)
            .map_err(|e| Failure::new(EXIT_REFUSED, format!("the token breaks a rule of {e}")))?;
    }
    let out = json!({ "header": verified.header, "claims": verified.claims });
    print_line(&serde_json::to_string_pretty(&out).expect("a JSON value serializes"))
}

/// Decrypts an encrypted PKCS#8 key (Snowflake's `rsa_key.p8` made with a passphrase) here, in
/// the client, with the passphrase from `passphrase_file` or the terminal; the agent gets the
/// plain PKCS#8 as for any other import. Every copy is zeroized once sent.
fn decrypt(pem: &str, file: &Path, passphrase_file: Option<&Path>) -> Result<Zeroizing<String>, Failure> {
    use der::Decode;
    let refused = |why: String| Failure::new(EXIT_REFUSED, why);
    let (_, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map_err(|e| refused(format!("the encrypted key is not valid PEM: {e}")))?;
    let der = Zeroizing::new(der);
    let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der)
        .map_err(|e| refused(format!("the encrypted key is malformed: {e}")))?;
    let passphrase = match passphrase_file {
        Some(path) => crate::pin::read_pin_text(crate::pin::PinSource::File(path), ""),
        None => crate::pin::prompt_on_terminal(&format!("Passphrase for {}: ", file.display())),
    }
    .or_else(|e| match e {
        // An empty passphrase is one too; the key says whether it is the right one.
        crate::pin::PinError::Empty => Ok(Zeroizing::new(String::new())),
        crate::pin::PinError::File { .. } => Err(Failure::new(EXIT_OTHER, format!("the passphrase: {e}"))),
        _ => Err(Failure::new(
            EXIT_OTHER,
            "the key is encrypted: give its passphrase with --passphrase-file FILE (there is no terminal to ask on)",
        )),
    })?;
    let plain = info.decrypt(passphrase.as_bytes()).map_err(|_| {
        refused("the passphrase does not decrypt the key (or its cipher is not PBES2 with AES); nothing was created".into())
    })?;
    let pem = pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, plain.as_bytes())
        .map_err(|e| Failure::new(EXIT_OTHER, format!("cannot re-encode the key: {e}")))?;
    Ok(Zeroizing::new(pem))
}

/// What `import` takes from a Google service-account key file.
struct GoogleAccount {
    private_key: Zeroizing<String>,
    private_key_id: String,
    client_email: String,
}

/// Reads a Google service-account JSON key file: its PKCS#8 `private_key`, whose
/// `private_key_id` becomes the label and kid, and its `client_email`, the Google presets' iss.
fn google_key_file(text: &str) -> Result<GoogleAccount, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the JSON key file does not parse: {e}"))?;
    let field = |value: &serde_json::Value, name: &str| {
        value.get(name).and_then(serde_json::Value::as_str).map(str::to_owned)
    };
    let kind = field(&value, "type");
    let found = (field(&value, "private_key_id"), field(&value, "client_email"));
    let private_key = value.get_mut("private_key").map(serde_json::Value::take);
    let private_key = match private_key {
        Some(serde_json::Value::String(pem)) => Zeroizing::new(pem),
        _ => return Err("the JSON file has no private_key: is it a service account's key file?".into()),
    };
    crate::jwt::json::wipe(value);
    match (kind.as_deref(), found) {
        (Some("service_account"), (Some(private_key_id), Some(client_email))) => {
            Ok(GoogleAccount { private_key, private_key_id, client_email })
        }
        _ => {
            Err("the JSON file is not a service account's key file (type, private_key_id, client_email)"
                .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_file_names_give_the_key_id() {
        assert_eq!(apple_key_id(Path::new("/x/AuthKey_ABC123DEFG.p8")).as_deref(), Some("ABC123DEFG"));
        assert_eq!(apple_key_id(Path::new("AuthKey_.p8")), None);
        assert_eq!(apple_key_id(Path::new("key.pem")), None);
        assert_eq!(stem(Path::new("/x/release.pem")).as_deref(), Some("release"));
    }

    #[test]
    fn google_key_files_give_key_label_and_email() {
        let file = r#"{"type": "service_account", "project_id": "p", "private_key_id": "abc123",
            "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "client_email": "ci@p.iam.gserviceaccount.com"}"#;
        let account = google_key_file(file).unwrap();
        assert_eq!(account.private_key_id, "abc123");
        assert_eq!(account.client_email, "ci@p.iam.gserviceaccount.com");
        assert!(account.private_key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(google_key_file(r#"{"type": "authorized_user", "private_key": "x"}"#).is_err());
        assert!(google_key_file("{").err().is_some_and(|e| e.contains("does not parse")));
    }
}
