//! Finding signing keys on the token and describing them: algorithm, public key, fingerprint.

use super::TokenError;
use crate::jose::Alg;
use crate::protocol::KeyInfo;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

/// DER of the named-curve OID of P-256 (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A private key on the token that this agent can sign with.
#[derive(Debug)]
pub struct Key {
    /// The private key object's handle, valid across this process's sessions.
    pub handle: ObjectHandle,
    /// The algorithm its signatures are made for.
    pub alg: Alg,
    /// What `keys` says of it.
    pub info: KeyInfo,
}

/// Finds the one private key labelled `label`.
pub fn find_by_label(session: &Session, label: &str) -> Result<Key, TokenError> {
    // Without the class, a label would match the public key object too.
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.as_bytes().to_vec())];
    let handles = session.find_objects(&template)?;
    let handle = match handles.as_slice() {
        [handle] => *handle,
        [] => return Err(TokenError::NoKey(label.to_owned())),
        _ => return Err(TokenError::AmbiguousKey(label.to_owned())),
    };
    let info = describe(session, handle)?;
    let alg = info
        .alg
        .as_deref()
        .and_then(Alg::from_name)
        .ok_or_else(|| TokenError::UnsupportedKey(label.to_owned()))?;
    Ok(Key { handle, alg, info })
}

/// Describes every private key on the token that may sign.
pub fn list(session: &Session) -> Result<Vec<KeyInfo>, TokenError> {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Sign(true)];
    let mut keys = session
        .find_objects(&template)?
        .into_iter()
        .map(|handle| describe(session, handle))
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_by(|a, b| a.label.cmp(&b.label).then_with(|| a.id.cmp(&b.id)));
    Ok(keys)
}

/// Reads a private key's label, id and type, and its public key object's point.
fn describe(session: &Session, handle: ObjectHandle) -> Result<KeyInfo, TokenError> {
    let wanted = [AttributeType::Label, AttributeType::Id, AttributeType::KeyType, AttributeType::EcParams];
    let (mut label, mut id, mut key_type, mut params) = (Vec::new(), Vec::new(), None, Vec::new());
    // get_attributes drops what the token will not say: match by type, never by position.
    for attribute in session.get_attributes(handle, &wanted)? {
        match attribute {
            Attribute::Label(v) => label = v,
            Attribute::Id(v) => id = v,
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(v) => params = v,
            _ => {}
        }
    }
    let label = String::from_utf8_lossy(&label).into_owned();
    let alg = (key_type == Some(KeyType::EC) && params == P256_PARAMS).then_some(Alg::Es256);
    let spki = match alg {
        Some(Alg::Es256) => public_point(session, &id, &label)?.and_then(|point| p256_spki(&point)),
        None => None,
    };
    Ok(KeyInfo {
        kid: Some(label.clone()),
        label,
        id: hex(&id),
        alg: alg.map(|a| a.name().to_owned()),
        fingerprint: spki.map(|der| fingerprint(&der)),
    })
}

/// `CKA_EC_POINT` of the public key object with the same id (else the same label).
fn public_point(session: &Session, id: &[u8], label: &str) -> Result<Option<Vec<u8>>, TokenError> {
    let by =
        if id.is_empty() { Attribute::Label(label.as_bytes().to_vec()) } else { Attribute::Id(id.to_vec()) };
    let template = [Attribute::Class(ObjectClass::PUBLIC_KEY), by];
    let Some(&public) = session.find_objects(&template)?.first() else {
        return Ok(None);
    };
    let point =
        session.get_attributes(public, &[AttributeType::EcPoint])?.into_iter().find_map(|a| match a {
            Attribute::EcPoint(point) => Some(point),
            _ => None,
        });
    Ok(point)
}

/// SPKI DER of a P-256 point that arrives DER-wrapped (`04 41 04 X Y`) or raw (`04 X Y`).
fn p256_spki(point: &[u8]) -> Option<Vec<u8>> {
    let raw = match point {
        [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
        raw => raw,
    };
    let key = p256::PublicKey::from_sec1_bytes(raw).ok()?;
    Some(key.to_public_key_der().ok()?.as_bytes().to_vec())
}

/// `SHA256:` and the unpadded base64 digest, the way ssh-keygen prints fingerprints.
pub fn fingerprint(spki_der: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(spki_der)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_in_either_encoding() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        let spki = p256_spki(&point).unwrap();
        assert_eq!(p256_spki(&wrapped).unwrap(), spki);
        assert!(fingerprint(&spki).starts_with("SHA256:"));
        assert_eq!(p256_spki(&[0x04, 0x01]), None);
    }
}
