//! PKCS#11 URIs (RFC 7512) and the other ways to name a token or a key: a label, `serial=...`,
//! or `pkcs11:token=...;serial=...;object=...;id=%01;type=private`.

/// What a `--token` value or a `KEY` names. Every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Token label.
    pub token: Option<String>,
    /// Token manufacturer id.
    pub manufacturer: Option<String>,
    /// Token model.
    pub model: Option<String>,
    /// Token serial number.
    pub serial: Option<String>,
    /// Slot id.
    pub slot_id: Option<u64>,
    /// Object label (`CKA_LABEL`).
    pub object: Option<String>,
    /// Object id (`CKA_ID`).
    pub id: Option<Vec<u8>>,
    /// Object type: `private`, `public`, `cert`, `secret-key` or `data`.
    pub object_type: Option<String>,
}

impl Selector {
    /// A `--token` value: a PKCS#11 URI, `serial=SERIAL`, or a label.
    pub fn token(text: &str) -> Result<Selector, String> {
        if is_uri(text) {
            let selector = parse(text)?;
            if selector.object.is_some() || selector.id.is_some() || selector.object_type.is_some() {
                return Err(format!("{text:?} names an object; --token takes a token's URI"));
            }
            Ok(selector)
        } else if let Some(serial) = text.strip_prefix("serial=") {
            Ok(Selector { serial: Some(serial.to_owned()), ..Selector::default() })
        } else {
            Ok(Selector { token: Some(text.to_owned()), ..Selector::default() })
        }
    }

    /// A `KEY`: a PKCS#11 URI, or a label.
    pub fn key(text: &str) -> Result<Selector, String> {
        if is_uri(text) {
            let selector = parse(text)?;
            if selector.object.is_none() && selector.id.is_none() {
                return Err(format!("{text:?} names no key: give object= or id="));
            }
            match selector.object_type.as_deref() {
                None | Some("private") => Ok(selector),
                Some(other) => Err(format!("{text:?} names a {other} object; signing keys are type=private")),
            }
        } else {
            Ok(Selector { object: Some(text.to_owned()), ..Selector::default() })
        }
    }

    /// Whether a token with this label, manufacturer, model and serial fits.
    pub fn fits_token(
        &self,
        slot_id: u64,
        label: &str,
        manufacturer: &str,
        model: &str,
        serial: &str,
    ) -> bool {
        let fits = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
        fits(&self.token, label)
            && fits(&self.manufacturer, manufacturer)
            && fits(&self.model, model)
            && fits(&self.serial, serial)
            && self.slot_id.is_none_or(|id| id == slot_id)
    }

    /// Whether the selector names a token at all.
    pub fn names_token(&self) -> bool {
        self.token.is_some()
            || self.manufacturer.is_some()
            || self.model.is_some()
            || self.serial.is_some()
            || self.slot_id.is_some()
    }
}

/// Whether `text` is a PKCS#11 URI: the scheme, in any case (RFC 3986), then `:`.
pub fn is_uri(text: &str) -> bool {
    text.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("pkcs11:"))
}

/// `name` as logs, the audit log and messages may show it: in a PKCS#11 URI the values of
/// `pin-value` and `pin-source`, wherever they are, become `***`.
pub fn redact(name: &str) -> std::borrow::Cow<'_, str> {
    const SECRET: [&str; 2] = ["pin-value", "pin-source"];
    if !is_uri(name) || !SECRET.iter().any(|s| name.to_ascii_lowercase().contains(s)) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut attribute = String::new();
    let flush = |attribute: &mut String, out: &mut String| {
        match attribute.split_once('=') {
            Some((key, _)) if SECRET.iter().any(|s| key.trim().eq_ignore_ascii_case(s)) => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(attribute),
        }
        attribute.clear();
    };
    for c in name.chars() {
        if matches!(c, ';' | '?' | '&') {
            flush(&mut attribute, &mut out);
            out.push(c);
        } else {
            attribute.push(c);
        }
    }
    flush(&mut attribute, &mut out);
    std::borrow::Cow::Owned(out)
}

/// Parses `pkcs11:path?query`. Query attributes that would carry a PIN are refused; module
/// attributes are ignored (the daemon's module is given by `--module`).
pub fn parse(text: &str) -> Result<Selector, String> {
    let rest = if is_uri(text) {
        &text[7..]
    } else {
        return Err(format!("{:?} is not a pkcs11: URI", redact(text)));
    };
    // What messages show of the URI: never a PIN it carries.
    let text = &*redact(text);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut selector = Selector::default();
    for attribute in path.split(';').filter(|a| !a.is_empty()) {
        let (name, value) = attribute
            .split_once('=')
            .ok_or_else(|| format!("{attribute:?} in {text:?} is not NAME=VALUE"))?;
        let value = percent_decode(value).map_err(|e| format!("{name} in {text:?}: {e}"))?;
        let string =
            || String::from_utf8(value.clone()).map_err(|_| format!("{name} in {text:?} is not UTF-8"));
        match name {
            "token" => selector.token = Some(string()?),
            "manufacturer" => selector.manufacturer = Some(string()?),
            "model" => selector.model = Some(string()?),
            "serial" => selector.serial = Some(string()?),
            "slot-id" => {
                selector.slot_id =
                    Some(string()?.parse().map_err(|_| format!("slot-id in {text:?} is not a number"))?)
            }
            "object" => selector.object = Some(string()?),
            "id" => selector.id = Some(value),
            "type" => selector.object_type = Some(string()?),
            // The library attributes describe the module, which --module already chose.
            "library-manufacturer" | "library-description" | "library-version" => {}
            name if name.starts_with("x-") => {}
            name => {
                return Err(format!(
                    "{text:?} has the attribute {name:?}, which this agent does not match on"
                ));
            }
        }
    }
    for attribute in query.split('&').filter(|a| !a.is_empty()) {
        let name = attribute.split_once('=').map_or(attribute, |(name, _)| name);
        match name {
            "pin-value" | "pin-source" => {
                return Err(format!(
                    "{name} in a URI is refused: the agent holds the PIN, and takes none with a key"
                ));
            }
            _ => {}
        }
    }
    Ok(selector)
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("a bad %-escape")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_uris() {
        let s = parse(
            "pkcs11:token=The%20Token;serial=42;object=my%2fkey;id=%01%A0;type=private?module-path=/x.so",
        )
        .unwrap();
        assert_eq!(s.token.as_deref(), Some("The Token"));
        assert_eq!(s.serial.as_deref(), Some("42"));
        assert_eq!(s.object.as_deref(), Some("my/key"));
        assert_eq!(s.id, Some(vec![0x01, 0xa0]));
        assert_eq!(s.object_type.as_deref(), Some("private"));
        assert!(s.fits_token(0, "The Token", "SoftHSM", "v2", "42"));
        assert!(!s.fits_token(0, "The Token", "SoftHSM", "v2", "43"));
    }

    #[test]
    fn refuses_pins_bad_escapes_and_unknown_attributes() {
        assert!(parse("pkcs11:object=a?pin-value=1234").is_err());
        assert!(parse("pkcs11:object=a%2").is_err());
        assert!(parse("pkcs11:object=a%zz").is_err());
        assert!(parse("pkcs11:colour=red").is_err());
        assert!(parse("pkcs11:object").is_err());
        assert!(Selector::key("pkcs11:object=a;type=cert").is_err());
        assert!(Selector::key("pkcs11:token=t").is_err());
        assert!(Selector::token("pkcs11:object=a").is_err());
    }

    #[test]
    fn labels_and_serials() {
        assert_eq!(Selector::key("asc").unwrap().object.as_deref(), Some("asc"));
        assert_eq!(Selector::token("serial=0123").unwrap().serial.as_deref(), Some("0123"));
        assert_eq!(Selector::token("release").unwrap().token.as_deref(), Some("release"));
    }

    #[test]
    fn pins_are_redacted_wherever_they_are() {
        assert_eq!(redact("pkcs11:object=k?pin-value=1234"), "pkcs11:object=k?pin-value=***");
        assert_eq!(redact("PKCS11:object=k;pin-value=1234;id=%01"), "PKCS11:object=k;pin-value=***;id=%01");
        assert_eq!(
            redact("pkcs11:object=k?module-path=/x&pin-source=file:/p"),
            "pkcs11:object=k?module-path=/x&pin-source=***"
        );
        assert_eq!(redact("asc"), "asc");
        let error = Selector::key("pkcs11:object=k;pin-value=4321").unwrap_err();
        assert!(!error.contains("4321"), "{error}");
        let error = Selector::key("pkcs11:object=k?pin-value=4321").unwrap_err();
        assert!(!error.contains("4321"), "{error}");
        assert_eq!(Selector::key("PKCS11:object=k").unwrap().object.as_deref(), Some("k"));
    }
}
