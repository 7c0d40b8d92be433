//! The config file (TOML): every daemon flag under `[daemon]`, and per-key defaults and policy
//! under `[keys.LABEL]`. An unknown field or a bad value is an error that names it.

use crate::jwt::Ttl;
use crate::jwt::preset::Preset;
use crate::wire::PresetName;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The daemon's settings; flags override them.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Per-key defaults and policy, by key label.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyPolicy>,
    /// Files the daemon keeps holding a valid token, for tools that read one from a file.
    #[serde(default)]
    pub sinks: Vec<Sink>,
    /// Presets of the user's own, by name, of the same form as the built-in ones.
    #[serde(default)]
    pub presets: BTreeMap<String, Preset>,
}

/// `[[sinks]]`: a file kept holding a valid token, renewed before it expires, replaced
/// atomically, mode 0600 (as Vault Agent's sinks are).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// The key, as `sign --key` takes it.
    pub key: String,
    pub path: PathBuf,
    /// A preset, as `sign --preset` takes it.
    pub preset: Option<PresetName>,
    /// The lifetime, as `sign --ttl` takes it.
    pub ttl: Option<Ttl>,
    /// Header members, as `sign --header`.
    #[serde(default)]
    pub header: serde_json::Map<String, serde_json::Value>,
    /// Claims, as `sign --claim`.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// `[daemon]`: what the flags of `jwt-agent daemon` say.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// `--module`.
    pub module: Option<PathBuf>,
    /// `--token`.
    pub token: Option<String>,
    /// `--pin-file`.
    pub pin_file: Option<PathBuf>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--audit-log`.
    pub audit_log: Option<PathBuf>,
    /// `--sessions`.
    pub sessions: Option<u16>,
    /// Uids served besides the daemon's own.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// `--lock-after`, in seconds.
    #[serde(default, deserialize_with = "ttl")]
    pub lock_after: Option<u64>,
    /// `--max-connections`.
    pub max_connections: Option<u16>,
    /// `--read-timeout`, in seconds.
    #[serde(default, deserialize_with = "ttl")]
    pub read_timeout: Option<u64>,
    /// The socket's mode, octal as systemd's `SocketMode=` writes it (`"0660"`): what lets the
    /// uids in `allowed_uids` reach it without a socket unit. Default `"0600"`.
    #[serde(default, deserialize_with = "socket_mode")]
    pub socket_mode: Option<u32>,
    /// The socket's group (a name or a gid), like systemd's `SocketGroup=`.
    pub socket_group: Option<String>,
}

/// `[keys.LABEL]`: what a key signs by default and what it may sign at all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// The preset `sign --key LABEL` uses when none is given.
    pub preset: Option<String>,
    /// The `kid` header when none is given.
    pub kid: Option<String>,
    /// The `iss` claim when none is given.
    pub iss: Option<String>,
    /// The only presets the key may sign for (`sign-input` must meet one of them).
    pub presets: Option<Vec<String>>,
    /// The only `aud` values its tokens may carry.
    pub allowed_aud: Option<Vec<String>>,
    /// The longest lifetime its tokens may have (`exp - iat`, and `exp - now`).
    pub max_ttl: Option<Ttl>,
    /// Uids besides the daemon's own that may use the key (instead of `[daemon] allowed_uids`).
    pub allowed_uids: Option<Vec<u32>>,
}

fn socket_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let text = String::deserialize(d)?;
    parse_socket_mode(&text).map(Some).map_err(serde::de::Error::custom)
}

/// An octal socket mode: the owner reads and writes; group and others at most read and write.
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text, 8)
        .map_err(|_| format!("socket_mode {text:?} is not an octal mode such as \"0660\""))?;
    if mode & !0o666 != 0 || mode & 0o600 != 0o600 {
        return Err(format!(
            "socket_mode {text:?}: the owner must read and write it, and no one may execute it (for example \"0660\")"
        ));
    }
    Ok(mode)
}

fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    crate::jwt::time::parse(&text).map(|d| Some(d.as_secs())).map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads and checks a config file. Relative paths in it are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config {}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| format!("the config {} is not valid: {e}", path.display()))?;
        // Absolute, so that paths taken from it stay right when the daemon leaves for `/`.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = absolute.parent().unwrap_or(Path::new("/"));
        let d = &mut config.daemon;
        let sinks = config.sinks.iter_mut().map(|s| &mut s.path);
        for file in [&mut d.module, &mut d.pin_file, &mut d.socket, &mut d.audit_log]
            .into_iter()
            .flatten()
            .chain(sinks)
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        crate::jwt::policy::Policy::new(0, &config)
            .map_err(|e| format!("the config {}: {e}", path.display()))?;
        for (label, key) in &config.keys {
            if let (Some(preset), Some(allowed)) = (&key.preset, &key.presets)
                && !allowed.contains(preset)
            {
                return Err(format!(
                    "the config {}: keys.{label}.preset {preset} is not among keys.{label}.presets",
                    path.display()
                ));
            }
        }
        Ok(config)
    }

    /// `$XDG_CONFIG_HOME/jwt-agent/config.toml` (or `~/.config/...`), when it exists.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
        Some(base.join("jwt-agent/config.toml")).filter(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn reads_the_spec_example() {
        let config = parse(
            r#"
            [daemon]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token = "release"
            pin_file = "/run/secrets/hsm-pin"
            socket = "/run/jwt-agent/agent.sock"
            audit_log = "audit.jsonl"
            allowed_uids = [1001]

            [keys.ABC123DEFG]
            preset = "app-store-connect"
            kid = "ABC123DEFG"
            iss = "57246542-96fe-1a63-e053-0824d011072a"
            presets = ["app-store-connect"]
            allowed_aud = ["appstoreconnect-v1"]
            max_ttl = "20m"
            allowed_uids = [1001]
            "#,
        )
        .unwrap();
        assert_eq!(config.daemon.token.as_deref(), Some("release"));
        assert!(config.daemon.audit_log.unwrap().is_absolute());
        let key = &config.keys["ABC123DEFG"];
        assert_eq!(key.preset.as_deref(), Some("app-store-connect"));
        assert_eq!(key.max_ttl.map(Ttl::secs), Some(1200));
        assert_eq!(key.allowed_uids, Some(vec![1001]));
    }

    #[test]
    fn names_what_is_wrong() {
        let error = parse("[daemon]\nmodul = \"x\"\n").unwrap_err();
        assert!(error.contains("unknown field `modul`"), "{error}");
        let error = parse("[keys.a]\npreset = \"asc\"\n").unwrap_err();
        assert!(error.contains("unknown preset \"asc\""), "{error}");
        let error = parse("[keys.a]\nmax_ttl = \"forever\"\n").unwrap_err();
        assert!(error.contains("not a duration"), "{error}");
        let error = parse("[keys.a]\npreset = \"apns\"\npresets = [\"musickit\"]\n").unwrap_err();
        assert!(error.contains("not among"), "{error}");
        let error = parse("[daemon]\nsocket_mode = \"0777\"\n").unwrap_err();
        assert!(error.contains("no one may execute"), "{error}");
        let error = parse("[daemon]\nsocket_mode = \"rw\"\n").unwrap_err();
        assert!(error.contains("octal"), "{error}");
        assert_eq!(parse("[daemon]\nsocket_mode = \"0660\"\n").unwrap().daemon.socket_mode, Some(0o660));
        let error = parse("[extra]\n").unwrap_err();
        assert!(error.contains("unknown field `extra`"), "{error}");
    }
}
