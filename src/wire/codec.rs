//! Lines on the socket: requests and answers as newline-delimited JSON, both directions.

use super::{
    CertRequest, ErrorCode, ExchangedReport, GenerateRequest, ImportRequest, PubkeyFormat, Request,
    SecretText, SignRequest, WireError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest request or answer line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

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
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AccessTokenFields {
            key: String,
            request: String,
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
            "cert" => Request::Cert(CertRequest::deserialize(fields)?),
            "status" => none(fields).map(|()| Request::Status {})?,
            "lock" => none(fields).map(|()| Request::Lock {})?,
            "unlock" => Request::Unlock { pin: UnlockFields::deserialize(fields)?.pin },
            "stop" => none(fields).map(|()| Request::Stop {})?,
            "access_token" => {
                let AccessTokenFields { key, request } = AccessTokenFields::deserialize(fields)?;
                Request::AccessToken { key, request }
            }
            "exchanged" => Request::Exchanged(ExchangedReport::deserialize(fields)?),
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
    use crate::wire::SignResult;

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
