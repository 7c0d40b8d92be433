//! The wire protocol: newline-delimited JSON requests and answers on the agent's socket.
//!
//! One definition of every request and answer, used by the daemon to decode and by
//! [`crate::Client`] to encode. This module knows nothing of sockets or tokio; see
//! `docs/protocol.md` for the format with examples.

mod codec;
mod error;

use crate::jwt::{Alg, Ttl};
pub use codec::{Incoming, MAX_LINE, decode_answer, decode_request, encode_error, encode_ok, encode_request};
pub use error::{ErrorCode, WireError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request, tagged by its `op`.
// Decoded by `decode_request`, not by serde's internally tagged enums: those buffer every
// field in intermediates that are freed unwiped, and a request may carry a PIN or a key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Sign `BASE64URL(header).BASE64URL(payload)` built by the caller.
    SignInput {
        /// The key's label on the token.
        key: String,
        /// The JWS signing input.
        input: String,
    },
    /// Build and sign a JWT from header and claims.
    Sign(SignRequest),
    /// List the signing keys on the token.
    Keys {},
    /// A key's public half: PEM, JWK, or a JWKS (of all keys when `key` is absent).
    Pubkey {
        /// The key's label or PKCS#11 URI; absent with `jwks` for every key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// `pem`, `jwk` or `jwks`.
        format: PubkeyFormat,
    },
    /// Put a private key from a PKCS#8 PEM on the token, non-extractable.
    Import(ImportRequest),
    /// Generate a key pair inside the token.
    Generate(GenerateRequest),
    /// Make a self-signed certificate for a key, signed inside the token, and store it there.
    Cert(CertRequest),
    /// Report the token, keys, pool and counters.
    Status {},
    /// Log out, forget the PIN and the cached tokens; refuse to sign until `unlock`.
    Lock {},
    /// Log in again with `pin`, tried once.
    Unlock {
        /// The user PIN.
        pin: SecretText,
    },
    /// Stop the daemon cleanly.
    Stop {},
    /// The access token this uid got earlier for the same exchange, if it is still good.
    AccessToken {
        /// The key that signs the exchange's assertion.
        key: String,
        /// What the exchange was for, as the client names it (a digest of preset, key,
        /// assertion and service flags).
        request: String,
    },
    /// A client's report of an exchange it made (the daemon opens no network connection):
    /// audited, and an issued token is kept for the uid.
    Exchanged(ExchangedReport),
}

impl Request {
    /// Every `op` this version of the protocol knows.
    pub const OPS: &'static [&'static str] = &[
        "sign_input",
        "sign",
        "keys",
        "pubkey",
        "import",
        "generate",
        "cert",
        "status",
        "lock",
        "unlock",
        "stop",
        "access_token",
        "exchanged",
    ];

    /// The ops whose own field `id` (a key's CKA_ID) is also the request's id.
    pub const OWN_ID: &'static [&'static str] = &["import", "generate"];

    /// The request's `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::SignInput { .. } => "sign_input",
            Request::Sign(_) => "sign",
            Request::Keys {} => "keys",
            Request::Pubkey { .. } => "pubkey",
            Request::Import(_) => "import",
            Request::Generate(_) => "generate",
            Request::Cert(_) => "cert",
            Request::Status {} => "status",
            Request::Lock {} => "lock",
            Request::Unlock { .. } => "unlock",
            Request::Stop {} => "stop",
            Request::AccessToken { .. } => "access_token",
            Request::Exchanged(_) => "exchanged",
        }
    }

    /// Whether the request may be dropped when its client hangs up: it only reads or signs (a
    /// signature still queued is dropped, one on the token finishes and is cached). What changes
    /// the agent or the token (a key made, a certificate stored, a lock, an unlock, a report to
    /// audit) runs to its end and is audited, whoever is still listening.
    pub fn abandonable(&self) -> bool {
        matches!(
            self,
            Request::SignInput { .. }
                | Request::Sign(_)
                | Request::Keys {}
                | Request::Pubkey { .. }
                | Request::Status {}
                | Request::AccessToken { .. }
        )
    }

    /// Whether the request has a field `id` of its own, so that the envelope must not add one.
    pub fn has_own_id(&self) -> bool {
        Self::OWN_ID.contains(&self.op())
    }
}

/// What an `exchanged` report says became of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeOutcome {
    /// The service issued an access token.
    Issued,
    /// The service refused, or could not be reached.
    Failed,
    /// The access token was revoked (GitHub, when `exec`'s command ended).
    Revoked,
}

/// The fields of an `exchanged` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangedReport {
    /// The preset the assertion was signed with.
    pub preset: PresetName,
    /// The key that signed it.
    pub key: String,
    /// The client id the assertion named (`iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Where it was traded: the token endpoint, or GitHub's API.
    pub endpoint: String,
    /// What became of it.
    pub outcome: ExchangeOutcome,
    /// Why it failed, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the exchange was for, as `access_token` names it; with `token`, it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The access token issued, to keep for this uid until 5 minutes before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AccessToken>,
}

/// An access token a service issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessToken {
    /// The token itself.
    pub token: SecretText,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// The service's other fields (GitHub's `permissions`, OAuth's `scope`, `token_type`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// The result of `access_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenResult {
    /// The kept token, or `null`.
    pub access_token: Option<AccessToken>,
}

/// The result of `exchanged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangedResult {
    /// Whether the daemon keeps the token for this uid.
    pub kept: bool,
}

/// The fields of a `cert` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    /// The key's label or PKCS#11 URI.
    pub key: String,
    /// The subject, RFC 4514 (`CN=release,O=Example`); default `CN=` the key's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Days of validity, from now; default 365.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

/// The result of `cert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResult {
    /// The certificate, PEM.
    pub pem: String,
    /// Its `x5t#S256`: the base64url SHA-256 of its DER.
    pub x5t_s256: String,
}

/// The fields of a `sign` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The key's label on the token.
    pub key: String,
    /// A preset that fills and checks header and claims for a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetName>,
    /// Header members to set (the daemon adds `alg` and `typ`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub header: Map<String, Value>,
    /// Claims to set (the daemon adds `iat`, and `exp` from `ttl`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// Lifetime, such as `"20m"`: sets `exp` to `iat` plus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Sign anew even when a cached token would do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

/// How `pubkey` gives the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PubkeyFormat {
    /// SubjectPublicKeyInfo, PEM.
    Pem,
    /// A JWK with `kid`, `alg` and `use`.
    Jwk,
    /// A JWK Set.
    Jwks,
}

/// The fields of an `import` request.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The private key, PEM: PKCS#8 (`-----BEGIN PRIVATE KEY-----`, the field's name), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub pkcs8_pem: SecretText,
    /// `CKA_LABEL` of the new key; default: the kid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The key's `kid`; default: the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `CKA_ID`, hex on the wire; default: derived from the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Hex>,
    /// The `iss` the key's tokens get by default (a Google service account's `client_email`),
    /// kept on the token with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl std::fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportRequest")
            .field("label", &self.label)
            .field("kid", &self.kid)
            .field("id", &self.id)
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

/// A preset's name as a request gives it: lowercase letters, digits and dashes. Which presets
/// exist is the daemon's to say (its config may define more).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PresetName(String);

impl PresetName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PresetName {
    type Err = String;

    fn from_str(name: &str) -> Result<PresetName, String> {
        crate::jwt::preset::check_name(name).map(|()| PresetName(name.to_owned()))
    }
}

impl<'de> Deserialize<'de> for PresetName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PresetName, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes written as hex (a key's `CKA_ID`): an even number of digits, any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl std::str::FromStr for Hex {
    type Err = String;

    fn from_str(text: &str) -> Result<Hex, String> {
        parse_hex(text).map(Hex)
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hex, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex (an even number of digits, any case), as `--id` takes it.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{text:?} is not hex (an even number of 0-9a-f digits)");
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Text that is secret: zeroized on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(..)")
    }
}

/// The fields of a `generate` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// `CKA_LABEL` of the new key pair.
    pub label: String,
    /// The JWS algorithm the key is for; default `ES256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<Alg>,
    /// `CKA_ID`, hex on the wire; default: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Hex>,
    /// RSA modulus size: 2048 (default), 3072 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
}

/// The result of `import` and `generate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResult {
    /// The new key.
    pub key: KeyInfo,
}

/// The result of `pubkey`: one of the three, as asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubkeyResult {
    /// SubjectPublicKeyInfo PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// The JWK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwk: Option<Value>,
    /// The JWK Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
}

/// The result of `sign_input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInputResult {
    /// The compact JWS.
    pub token: String,
}

/// The result of `sign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResult {
    /// The compact JWS.
    pub token: String,
    /// Whether the token came from the daemon's cache.
    pub cached: bool,
}

/// One signing key, as `keys` and `status` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, lowercase hex.
    pub id: String,
    /// The JWS algorithm the key signs with by default, or `null` when unsupported.
    pub alg: Option<String>,
    /// The `kid` the key's tokens carry by default.
    pub kid: Option<String>,
    /// `SHA256:` and the unpadded base64 SHA-256 of the public key's SPKI DER, as ssh-keygen
    /// prints them; `null` when the token holds no public key for it.
    pub fingerprint: Option<String>,
}

/// The result of `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysResult {
    /// The signing keys on the token.
    pub keys: Vec<KeyInfo>,
}

/// The token part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    /// Token label.
    pub label: String,
    /// Manufacturer id.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// PKCS#11 module path.
    pub module: String,
    /// `logged_in`, or what is wrong.
    pub state: String,
    /// The user PIN counters the token reports.
    pub pin: PinCounters,
}

/// The token's user PIN flags (`CKF_USER_PIN_COUNT_LOW`, `_FINAL_TRY`, `_LOCKED`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinCounters {
    /// A wrong PIN was entered since the last good one.
    pub count_low: bool,
    /// One more wrong PIN locks the token.
    pub final_try: bool,
    /// The PIN is locked.
    pub locked: bool,
}

/// The session pool part of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Number of PKCS#11 sessions (and worker threads).
    pub sessions: usize,
    /// Whether token calls run inline on the thread serving the connection (a fast token), or
    /// through the pool's queue (a slow one).
    #[serde(default)]
    pub inline: bool,
}

/// The counters part of `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Signatures made by the token.
    pub signatures: u64,
    /// Tokens answered from the cache.
    pub cache_hits: u64,
    /// Requests refused (bad input, policy, unknown key).
    pub refusals: u64,
    /// Requests that failed on the token.
    pub token_errors: u64,
}

/// What one key has done, in `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounters {
    /// Signatures made with it.
    pub signatures: u64,
    /// Its tokens answered from the cache.
    pub cache_hits: u64,
    /// Requests for it refused or failed.
    pub refusals: u64,
}

/// The token cache part of `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Tokens held.
    pub size: usize,
    /// Tokens answered from it.
    pub hits: u64,
    /// Access tokens kept for the asking uid's exchanges (`jwt-agent token`).
    #[serde(default)]
    pub access_tokens: usize,
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The token.
    pub token: TokenStatus,
    /// The signing keys.
    pub keys: Vec<KeyInfo>,
    /// The session pool.
    pub pool: PoolStatus,
    /// What the daemon has done.
    pub counters: Counters,
    /// The token cache.
    pub cache: CacheStatus,
    /// What each key has done, by the name it was asked for.
    pub per_key: std::collections::BTreeMap<String, KeyCounters>,
    /// The audit log, if one is kept.
    pub audit_log: Option<String>,
    /// Whether the agent is locked.
    pub locked: bool,
}

/// The result of `lock` and `unlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResult {
    /// Whether the agent is locked now.
    pub locked: bool,
}

/// The result of `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopResult {
    /// The process id of the daemon that is stopping.
    pub pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_both_ways() {
        assert_eq!(parse_hex("01aF").unwrap(), vec![1, 0xaf]);
        assert_eq!(hex(&[1, 0xaf]), "01af");
        for bad in ["", "1", "0g", "é1"] {
            assert!(parse_hex(bad).is_err(), "{bad}");
        }
    }
}
