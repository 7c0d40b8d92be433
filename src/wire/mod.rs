//! The wire protocol: newline-delimited JSON requests and answers on the agent's socket.
//!
//! One definition of every request and answer, used by the daemon to decode and by
//! [`crate::Client`] to encode. This module knows nothing of sockets or tokio; see
//! `docs/protocol.md` for the format with examples.

mod error;

pub use error::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest request or answer line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

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
}

impl Request {
    /// Every `op` this version of the protocol knows.
    pub const OPS: &'static [&'static str] =
        &["sign_input", "sign", "keys", "pubkey", "import", "generate", "status", "lock", "unlock", "stop"];

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
            Request::Status {} => "status",
            Request::Lock {} => "lock",
            Request::Unlock { .. } => "unlock",
            Request::Stop {} => "stop",
        }
    }

    /// Whether the request has a field `id` of its own, so that the envelope must not add one.
    pub fn has_own_id(&self) -> bool {
        Self::OWN_ID.contains(&self.op())
    }
}

/// The fields of a `sign` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The key's label on the token.
    pub key: String,
    /// A preset that fills and checks header and claims for a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Header members to set (the daemon adds `alg` and `typ`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub header: Map<String, Value>,
    /// Claims to set (the daemon adds `iat`, and `exp` from `ttl`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// Lifetime, such as `"20m"`: sets `exp` to `iat` plus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
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
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pkcs8_pem: SecretText,
    /// `CKA_LABEL` of the new key; default: the kid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The key's `kid`; default: the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `CKA_ID` in hex; default: derived from the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl std::fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportRequest")
            .field("label", &self.label)
            .field("kid", &self.kid)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
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
    pub alg: Option<String>,
    /// `CKA_ID` in hex; default: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
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

/// A request with its optional `id`, as the daemon reads it off a line.
#[derive(Debug)]
pub struct Incoming {
    /// The caller's `id`, echoed in the answer.
    pub id: Option<Value>,
    /// The request, or why it could not be decoded.
    pub request: Result<Request, WireError>,
}

/// Decodes one request line (without its newline). Never fails: a line that is not a
/// request decodes to the error its answer must carry. A member named twice, at any depth, is
/// refused; every string the line held is wiped once the request is decoded.
pub fn decode_request(line: &[u8]) -> Incoming {
    let mut object = match crate::jwt::json::parse_object(line) {
        Ok(object) => object,
        Err(crate::jwt::json::ParseError::NotObject) => {
            return Incoming::error(None, WireError::bad_request("a request must be a JSON object"));
        }
        Err(e) => return Incoming::error(None, WireError::bad_request(format!("the request is {e}"))),
    };
    let id = object.get("id").cloned();
    // An id is echoed to be matched, so it must come back exactly: a string or an integer.
    if let Some(bad) =
        id.as_ref().filter(|id| !(id.is_string() || id.is_i64() || id.is_u64() || id.is_null()))
    {
        let message = format!("`id` must be a string or an integer, not {bad}");
        crate::jwt::json::wipe(Value::Object(object));
        return Incoming::error(None, WireError::bad_request(message));
    }
    let op = match object.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Incoming::error(id, WireError::bad_request("`op` must be a string")),
        None => return Incoming::error(id, WireError::bad_request("the request has no `op`")),
    };
    if !Request::OPS.contains(&op.as_str()) {
        crate::jwt::json::wipe(Value::Object(object));
        let message = format!("unknown op {op:?}; this agent knows {}", Request::OPS.join(", "));
        return Incoming::error(id, WireError::new(ErrorCode::UnknownOp, message));
    }
    // `import` and `generate` have a field `id` of their own, the new key's CKA_ID; like any
    // request's id it is echoed in the answer. For every other op it is only the request's id.
    if !Request::OWN_ID.contains(&op.as_str()) {
        object.remove("id");
    }
    let fields = Value::Object(object);
    // Read from the borrowed tree: strings are copied straight into the request's own fields
    // (a PIN or a key into `SecretText`, which wipes itself), and the tree is wiped after.
    let request =
        Request::decode(&op, &fields).map_err(|e| WireError::bad_request(format!("invalid request: {e}")));
    crate::jwt::json::wipe(fields);
    Incoming { id, request }
}

impl Request {
    fn decode(op: &str, fields: &Value) -> Result<Request, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoFields {}
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SignInputFields {
            key: String,
            input: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PubkeyFields {
            #[serde(default)]
            key: Option<String>,
            format: PubkeyFormat,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct UnlockFields {
            pin: SecretText,
        }
        let none = |fields: &Value| NoFields::deserialize(fields).map(drop);
        Ok(match op {
            "sign_input" => {
                let SignInputFields { key, input } = SignInputFields::deserialize(fields)?;
                Request::SignInput { key, input }
            }
            "sign" => Request::Sign(SignRequest::deserialize(fields)?),
            "keys" => none(fields).map(|()| Request::Keys {})?,
            "pubkey" => {
                let PubkeyFields { key, format } = PubkeyFields::deserialize(fields)?;
                Request::Pubkey { key, format }
            }
            "import" => Request::Import(ImportRequest::deserialize(fields)?),
            "generate" => Request::Generate(GenerateRequest::deserialize(fields)?),
            "status" => none(fields).map(|()| Request::Status {})?,
            "lock" => none(fields).map(|()| Request::Lock {})?,
            "unlock" => Request::Unlock { pin: UnlockFields::deserialize(fields)?.pin },
            "stop" => none(fields).map(|()| Request::Stop {})?,
            other => return Err(serde::de::Error::custom(format!("unknown op {other:?}"))),
        })
    }
}

impl Incoming {
    fn error(id: Option<Value>, error: WireError) -> Self {
        Incoming { id, request: Err(error) }
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    ok: bool,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a WireError,
}

/// Encodes a successful answer line, newline included.
pub fn encode_ok<T: Serialize>(id: Option<&Value>, result: &T) -> Vec<u8> {
    let envelope = Envelope { id, ok: true, body: result };
    match serde_json::to_vec(&envelope) {
        Ok(mut line) => {
            line.push(b'\n');
            line
        }
        Err(e) => {
            encode_error(id, &WireError::new(ErrorCode::Internal, format!("cannot encode the answer: {e}")))
        }
    }
}

/// Encodes an error answer line, newline included.
pub fn encode_error(id: Option<&Value>, error: &WireError) -> Vec<u8> {
    let envelope = Envelope { id, ok: false, body: ErrorBody { error } };
    // A struct of strings and an enum always serializes.
    let mut line = serde_json::to_vec(&envelope).unwrap_or_else(|_| br#"{"ok":false}"#.to_vec());
    line.push(b'\n');
    line
}

/// Encodes a request line, newline included (the client's side).
pub fn encode_request(id: Option<u64>, request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(flatten)]
        request: &'a Request,
    }
    let mut line = serde_json::to_vec(&Out { id, request })?;
    line.push(b'\n');
    Ok(line)
}

/// Decodes an answer line into the expected result, or the daemon's error (the client's side).
pub fn decode_answer<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, WireError> {
    #[derive(Deserialize)]
    struct Head {
        ok: bool,
        error: Option<WireError>,
    }
    let malformed = |e: serde_json::Error| {
        WireError::new(ErrorCode::Internal, format!("the agent's answer is malformed: {e}"))
    };
    let value: Value = serde_json::from_slice(line).map_err(malformed)?;
    let head: Head = Head::deserialize(&value).map_err(malformed)?;
    if !head.ok {
        return Err(head
            .error
            .unwrap_or_else(|| WireError::new(ErrorCode::Internal, "the agent failed without saying why")));
    }
    T::deserialize(value).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let request = Request::SignInput { key: "asc".into(), input: "a.b".into() };
        let line = encode_request(Some(7), &request).unwrap();
        assert_eq!(line, b"{\"id\":7,\"op\":\"sign_input\",\"key\":\"asc\",\"input\":\"a.b\"}\n");
        let incoming = decode_request(&line[..line.len() - 1]);
        assert_eq!(incoming.id, Some(Value::from(7)));
        assert_eq!(incoming.request.unwrap(), request);
    }

    #[test]
    fn unknown_op_and_fields_are_told_apart() {
        let incoming = decode_request(br#"{"op":"frobnicate"}"#);
        assert_eq!(incoming.request.unwrap_err().code, ErrorCode::UnknownOp);
        let incoming = decode_request(br#"{"op":"keys","id":"x","extra":1}"#);
        assert_eq!(incoming.id, Some(Value::from("x")));
        assert_eq!(incoming.request.unwrap_err().code, ErrorCode::BadRequest);
        let incoming = decode_request(br#"[1,2]"#);
        assert_eq!(incoming.request.unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn answers_round_trip() {
        let line = encode_ok(Some(&Value::from(3)), &SignResult { token: "t".into(), cached: false });
        assert_eq!(line, b"{\"id\":3,\"ok\":true,\"token\":\"t\",\"cached\":false}\n");
        let result: SignResult = decode_answer(&line).unwrap();
        assert_eq!(result.token, "t");
        let line = encode_error(None, &WireError::new(ErrorCode::UnknownKey, "no key"));
        let error = decode_answer::<SignResult>(&line).unwrap_err();
        assert_eq!(error, WireError::new(ErrorCode::UnknownKey, "no key"));
    }
}
