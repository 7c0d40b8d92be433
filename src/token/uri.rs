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
    pub slot_id: Option<u64>,
    pub slot_description: Option<String>,
    pub slot_manufacturer: Option<String>,
    /// The module's `CK_INFO`: manufacturer, description, and version as `MAJOR.MINOR`.
    pub library_manufacturer: Option<String>,
    pub library_description: Option<String>,
    pub library_version: Option<String>,
    /// Object label (`CKA_LABEL`).
    pub object: Option<String>,
    /// Object id (`CKA_ID`).
    pub id: Option<Vec<u8>>,
    /// Object type: `private`, `public`, `cert`, `secret-key` or `data`.
    pub object_type: Option<String>,
    /// A path attribute this agent does not know. As in p11-kit, it matches nothing.
    pub unknown: Option<String>,
}

/// What the agent knows of its module, slot and token, for a URI to be matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub slot_id: u64,
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub slot_description: String,
    pub slot_manufacturer: String,
    pub library_manufacturer: String,
    pub library_description: String,
    pub library_version: String,
}

/// A token's fixed-width text field as people read it: without the blank padding and the NUL
/// bytes some modules leave in it.
pub fn token_text(field: &str) -> String {
    field.replace('\0', "").trim().to_owned()
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

    /// Whether the module, slot and token `identity` describes fit.
    pub fn fits(&self, identity: &Identity) -> bool {
        let i = identity;
        let fits = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.unknown.is_none()
            && fits(&self.token, &i.label)
            && fits(&self.manufacturer, &i.manufacturer)
            && fits(&self.model, &i.model)
            && fits(&self.serial, &i.serial)
            && self.slot_id.is_none_or(|id| id == i.slot_id)
            && fits(&self.slot_description, &i.slot_description)
            && fits(&self.slot_manufacturer, &i.slot_manufacturer)
            && fits(&self.library_manufacturer, &i.library_manufacturer)
            && fits(&self.library_description, &i.library_description)
            && fits(&self.library_version, &i.library_version)
    }

    /// Whether the selector says anything of the module, slot or token.
    pub fn names_token(&self) -> bool {
        self.token.is_some()
            || self.manufacturer.is_some()
            || self.model.is_some()
            || self.serial.is_some()
            || self.slot_id.is_some()
            || self.slot_description.is_some()
            || self.slot_manufacturer.is_some()
            || self.library_manufacturer.is_some()
            || self.library_description.is_some()
            || self.library_version.is_some()
            || self.unknown.is_some()
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

/// Parses `pkcs11:path?query` as p11-kit does: the scheme in any case, whitespace ignored
/// (RFC 3986, appendix C), an attribute it does not know kept as one that matches nothing. A
/// query that would carry a PIN or choose a module is refused: the agent holds the PIN, and
/// `--module` chose the module.
pub fn parse(text: &str) -> Result<Selector, String> {
    if !is_uri(text) {
        return Err(format!("{:?} is not a pkcs11: URI", redact(text)));
    }
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let rest = &compact[7..];
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
        let field = match name {
            "token" => &mut selector.token,
            "manufacturer" => &mut selector.manufacturer,
            "model" => &mut selector.model,
            "serial" => &mut selector.serial,
            "slot-description" => &mut selector.slot_description,
            "slot-manufacturer" => &mut selector.slot_manufacturer,
            "library-manufacturer" => &mut selector.library_manufacturer,
            "library-description" => &mut selector.library_description,
            "library-version" => &mut selector.library_version,
            "object" => &mut selector.object,
            "type" => &mut selector.object_type,
            "slot-id" => {
                let id = string()?.parse().map_err(|_| format!("slot-id in {text:?} is not a number"))?;
                selector.slot_id = Some(id);
                continue;
            }
            "id" => {
                selector.id = Some(value);
                continue;
            }
            "pin-value" | "pin-source" => return Err(pin_refused(name)),
            name => {
                selector.unknown.get_or_insert_with(|| name.to_owned());
                continue;
            }
        };
        *field = Some(string()?);
    }
    for attribute in query.split('&').filter(|a| !a.is_empty()) {
        let name = attribute.split_once('=').map_or(attribute, |(name, _)| name);
        match name {
            "pin-value" | "pin-source" => return Err(pin_refused(name)),
            "module-name" | "module-path" => {
                return Err(format!(
                    "{name} in a URI is refused: the agent signs with the module --module loaded"
                ));
            }
            _ => {}
        }
    }
    Ok(selector)
}

/// The URI of the private key with this label and id (in hex, as `keys` lists it), which names
/// it when its label alone may not: another tool can give two keys one label.
pub fn key_uri_hex(label: &str, id_hex: &str) -> String {
    let mut uri = String::from("pkcs11:object=");
    for &b in label.as_bytes() {
        // RFC 7512's unreserved and path characters stay; everything else is escaped.
        if b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    if !id_hex.is_empty() {
        uri.push_str(";id=");
        for (i, digit) in id_hex.chars().enumerate() {
            if i % 2 == 0 {
                uri.push('%');
            }
            uri.push(digit);
        }
    }
    uri.push_str(";type=private");
    uri
}

fn pin_refused(name: &str) -> String {
    format!("{name} in a URI is refused: the agent holds the PIN, and takes none with a key")
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
        let s = parse("pkcs11:token=The%20Token;serial=42;object=my%2fkey;id=%01%A0;type=private?x-vendor=1")
            .unwrap();
        assert_eq!(s.token.as_deref(), Some("The Token"));
        assert_eq!(s.serial.as_deref(), Some("42"));
        assert_eq!(s.object.as_deref(), Some("my/key"));
        assert_eq!(s.id, Some(vec![0x01, 0xa0]));
        assert_eq!(s.object_type.as_deref(), Some("private"));
        let mut token = Identity { label: "The Token".into(), serial: "42".into(), ..Identity::default() };
        assert!(s.fits(&token));
        token.serial = "43".into();
        assert!(!s.fits(&token));
    }

    #[test]
    fn reads_uris_as_p11_kit_does() {
        // Whitespace is not part of a URI; an escaped space is.
        let s = parse("pkcs11: object = my%20key ;\n id=%01").unwrap();
        assert_eq!((s.object.as_deref(), s.id.as_deref()), (Some("my key"), Some(&[1u8][..])));
        // Module and slot attributes are matched like the token's.
        let token = Identity {
            library_manufacturer: "SoftHSM".into(),
            library_version: "2.6".into(),
            slot_description: "SoftHSM slot ID 0x1".into(),
            ..Identity::default()
        };
        assert!(
            parse("pkcs11:library-manufacturer=SoftHSM;library-version=2.6;object=k").unwrap().fits(&token)
        );
        assert!(!parse("pkcs11:library-manufacturer=OpenSC;object=k").unwrap().fits(&token));
        assert!(!parse("pkcs11:slot-description=other;object=k").unwrap().fits(&token));
        // An attribute the agent does not know matches nothing, so nothing is signed.
        for uri in ["pkcs11:object=k;x-foo=bar", "pkcs11:object=k;vendor-aaa=1"] {
            let s = Selector::key(uri).unwrap();
            assert!(s.names_token() && !s.fits(&token), "{uri}");
        }
        // A module chosen in the query is refused, not silently ignored.
        for uri in ["pkcs11:object=k?module-path=/x.so", "pkcs11:object=k?module-name=p11-kit-trust"] {
            assert!(parse(uri).unwrap_err().contains("--module"), "{uri}");
        }
    }

    #[test]
    fn key_uris_name_one_key_and_read_back() {
        let uri = key_uri_hex("my key;1%", "01ab");
        assert_eq!(uri, "pkcs11:object=my%20key%3B1%25;id=%01%ab;type=private");
        let s = Selector::key(&uri).unwrap();
        assert_eq!((s.object.as_deref(), s.id.as_deref()), (Some("my key;1%"), Some(&[0x01, 0xab][..])));
    }

    #[test]
    fn token_text_drops_padding_and_nul_bytes() {
        assert_eq!(token_text("SW   TPM\0\0\0     "), "SW   TPM");
        assert_eq!(token_text("jwt-test                        "), "jwt-test");
    }

    #[test]
    fn refuses_pins_bad_escapes_and_unknown_attributes() {
        assert!(parse("pkcs11:object=a?pin-value=1234").is_err());
        assert!(parse("pkcs11:object=a%2").is_err());
        assert!(parse("pkcs11:object=a%zz").is_err());
        assert!(parse("pkcs11:object=k;colour=red").unwrap().unknown.is_some());
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
