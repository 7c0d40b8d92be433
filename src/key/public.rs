//! Public keys of every supported type: SPKI (PEM and DER), JWK, RFC 7638 thumbprints,
//! fingerprints, and JWS signature verification. No private key ever passes through here.

use crate::jwt::{Alg, Family};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use der::asn1::{ObjectIdentifier, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode};
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A public key this agent can sign for.
#[derive(Debug, Clone, PartialEq)]
pub enum PublicKey {
    /// NIST P-256.
    P256(p256::PublicKey),
    /// NIST P-384.
    P384(p384::PublicKey),
    /// NIST P-521.
    P521(p521::PublicKey),
    /// RSA.
    Rsa(rsa::PublicKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// An elliptic curve, as `CKA_EC_PARAMS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// Ed25519.
    Ed25519,
}

impl Curve {
    /// The curve's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
            Curve::P384 => ObjectIdentifier::new_unwrap("1.3.132.0.34"),
            Curve::P521 => ObjectIdentifier::new_unwrap("1.3.132.0.35"),
            Curve::Ed25519 => ObjectIdentifier::new_unwrap("1.3.101.112"),
        }
    }

    /// The curve an OID names.
    pub fn from_oid(oid: ObjectIdentifier) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521, Curve::Ed25519].into_iter().find(|c| c.oid() == oid)
    }

    /// `CKA_EC_PARAMS`: the DER of the curve's OID.
    pub fn params(self) -> Vec<u8> {
        self.oid().to_der().expect("an OID always encodes")
    }

    /// The curve `CKA_EC_PARAMS` names: an OID, or for Ed25519 also the printable string
    /// `edwards25519` that PKCS#11 3.0 allows.
    pub fn from_params(params: &[u8]) -> Option<Curve> {
        if let Ok(oid) = ObjectIdentifier::from_der(params) {
            return Curve::from_oid(oid);
        }
        let name = PrintableStringRef::from_der(params).ok()?;
        (name.as_str() == "edwards25519").then_some(Curve::Ed25519)
    }

    /// The length of a field element (and of `r` and `s` in a JWS signature).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Ed25519 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// Why a public key could not be read or a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a SubjectPublicKeyInfo of a supported type.
    #[error("not a P-256, P-384, P-521, RSA or Ed25519 public key")]
    Unsupported,
    /// Not PEM.
    #[error("not a PEM public key (-----BEGIN PUBLIC KEY-----)")]
    NotPem,
    /// The point or modulus is not valid.
    #[error("the public key is malformed")]
    Malformed,
    /// The key cannot make signatures of this `alg`.
    #[error("a {key} key does not sign {alg}")]
    WrongAlg {
        /// What the key is.
        key: &'static str,
        /// What was asked.
        alg: Alg,
    },
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        use p256::pkcs8::DecodePublicKey;
        if let Ok(key) = p256::PublicKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(key));
        }
        if let Ok(key) = p384::PublicKey::from_public_key_der(der) {
            return Ok(PublicKey::P384(key));
        }
        if let Ok(key) = p521::PublicKey::from_public_key_der(der) {
            return Ok(PublicKey::P521(key));
        }
        if let Ok(key) = rsa::PublicKey::from_public_key_der(der) {
            return Ok(PublicKey::Rsa(key));
        }
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::Ed25519(key));
        }
        Err(KeyError::Unsupported)
    }

    /// Reads a PEM `PUBLIC KEY` (SPKI).
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        let (label, der) = pem_rfc7468::decode_vec(text.trim().as_bytes()).map_err(|_| KeyError::NotPem)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::NotPem);
        }
        Self::from_spki_der(&der)
    }

    /// A key from a curve and the point `CKA_EC_POINT` holds, DER-wrapped (an OCTET STRING, as
    /// PKCS#11 says) or raw (as some tokens return it).
    pub fn from_ec_point(curve: Curve, point: &[u8]) -> Result<PublicKey, KeyError> {
        let raw = unwrap_octet_string(point).unwrap_or(point);
        let key = match curve {
            Curve::P256 => p256::PublicKey::from_sec1_bytes(raw).map(PublicKey::P256).ok(),
            Curve::P384 => p384::PublicKey::from_sec1_bytes(raw).map(PublicKey::P384).ok(),
            Curve::P521 => p521::PublicKey::from_sec1_bytes(raw).map(PublicKey::P521).ok(),
            Curve::Ed25519 => <[u8; 32]>::try_from(raw)
                .ok()
                .and_then(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
                .map(PublicKey::Ed25519),
        };
        key.ok_or(KeyError::Malformed)
    }

    /// A key from an RSA modulus and public exponent (big-endian).
    pub fn from_rsa(modulus: &[u8], exponent: &[u8]) -> Result<PublicKey, KeyError> {
        let n = rsa::BoxedUint::from_be_slice_vartime(modulus);
        let e = rsa::BoxedUint::from_be_slice_vartime(exponent);
        rsa::PublicKey::new(n, e).map(PublicKey::Rsa).map_err(|_| KeyError::Malformed)
    }

    /// What kind of key, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::P256(_) => "P-256",
            PublicKey::P384(_) => "P-384",
            PublicKey::P521(_) => "P-521",
            PublicKey::Rsa(_) => "RSA",
            PublicKey::Ed25519(_) => "Ed25519",
        }
    }

    /// Whether keys of this type make signatures of `alg`.
    pub fn signs(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (PublicKey::P256(_), Alg::Es256)
                | (PublicKey::P384(_), Alg::Es384)
                | (PublicKey::P521(_), Alg::Es512)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        ) || matches!(self, PublicKey::Rsa(_)) && matches!(alg.family(), Family::RsaPkcs1 | Family::RsaPss)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        let der = match self {
            PublicKey::P256(k) => k.to_public_key_der(),
            PublicKey::P384(k) => k.to_public_key_der(),
            PublicKey::P521(k) => k.to_public_key_der(),
            PublicKey::Rsa(k) => k.to_public_key_der(),
            PublicKey::Ed25519(k) => k.to_public_key_der(),
        };
        der.map(|d| d.as_bytes().to_vec()).expect("a key that parsed encodes as SPKI")
    }

    /// The SPKI as PEM.
    pub fn to_pem(&self) -> String {
        let der = self.to_spki_der();
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &der)
            .expect("a fixed label and any bytes encode as PEM")
    }

    /// `SHA256:` and the unpadded base64 SHA-256 of the SPKI DER, as ssh-keygen prints them.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(self.to_spki_der())))
    }

    /// The JWK members that identify the key (RFC 7517/7518/8037), in the lexicographic order
    /// RFC 7638 hashes them in.
    fn jwk_members(&self) -> Map<String, Value> {
        let b64 = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
        let members = |pairs: Vec<(&str, Value)>| -> Map<String, Value> {
            pairs.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
        };
        let ec = |crv: &str, point: &[u8], len: usize| {
            let (x, y) = (b64(&point[1..1 + len]), b64(&point[1 + len..]));
            members(vec![("crv", Value::from(crv)), ("kty", Value::from("EC")), ("x", x), ("y", y)])
        };
        match self {
            PublicKey::P256(k) => ec("P-256", &k.to_sec1_bytes(), 32),
            PublicKey::P384(k) => ec("P-384", &k.to_sec1_bytes(), 48),
            PublicKey::P521(k) => ec("P-521", &k.to_sec1_bytes(), 66),
            PublicKey::Rsa(k) => {
                members(vec![("e", b64(&k.e_bytes())), ("kty", Value::from("RSA")), ("n", b64(&k.n_bytes()))])
            }
            PublicKey::Ed25519(k) => members(vec![
                ("crv", Value::from("Ed25519")),
                ("kty", Value::from("OKP")),
                ("x", b64(k.as_bytes())),
            ]),
        }
    }

    /// The RFC 7638 JWK thumbprint: base64url SHA-256 of the required members.
    pub fn thumbprint(&self) -> String {
        let members = serde_json::to_vec(&self.jwk_members()).expect("a map of strings serializes");
        URL_SAFE_NO_PAD.encode(Sha256::digest(members))
    }

    /// The JWK, with `kid`, `alg` (for a key that signs with one only) and `use: sig`.
    pub fn jwk(&self, kid: Option<&str>, alg: Option<Alg>) -> Value {
        let mut jwk = self.jwk_members();
        if let Some(kid) = kid {
            jwk.insert("kid".into(), Value::from(kid));
        }
        if let Some(alg) = alg {
            jwk.insert("alg".into(), Value::from(alg.name()));
        }
        jwk.insert("use".into(), Value::from("sig"));
        Value::Object(jwk)
    }

    /// Checks a JWS signature made with `alg` over `input`.
    pub fn verify(&self, alg: Alg, input: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        use p256::ecdsa::signature::Verifier;
        if !self.signs(alg) {
            return Err(KeyError::WrongAlg { key: self.kind(), alg });
        }
        let bad = |_| KeyError::BadSignature;
        match self {
            PublicKey::P256(k) => {
                let signature = p256::ecdsa::Signature::from_slice(signature).map_err(bad)?;
                p256::ecdsa::VerifyingKey::from(k).verify(input, &signature).map_err(bad)
            }
            PublicKey::P384(k) => {
                let signature = p384::ecdsa::Signature::from_slice(signature).map_err(bad)?;
                p384::ecdsa::VerifyingKey::from(k).verify(input, &signature).map_err(bad)
            }
            PublicKey::P521(k) => {
                let signature = p521::ecdsa::Signature::from_slice(signature).map_err(bad)?;
                let key = p521::ecdsa::VerifyingKey::from_affine(*k.as_affine()).map_err(bad)?;
                key.verify(input, &signature).map_err(bad)
            }
            PublicKey::Ed25519(k) => {
                let signature = ed25519_dalek::Signature::from_slice(signature).map_err(bad)?;
                k.verify_strict(input, &signature).map_err(bad)
            }
            PublicKey::Rsa(k) => verify_rsa(k, alg, input, signature),
        }
    }
}

fn verify_rsa(key: &rsa::PublicKey, alg: Alg, input: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    use rsa::signature::Verifier;
    let key = key.clone();
    let bad = |_| KeyError::BadSignature;
    let pkcs1 = rsa::pkcs1v15::Signature::try_from(signature).map_err(bad)?;
    let pss = rsa::pss::Signature::try_from(signature).map_err(bad)?;
    match alg {
        Alg::Rs256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(input, &pkcs1),
        Alg::Rs384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(input, &pkcs1),
        Alg::Rs512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(input, &pkcs1),
        Alg::Ps256 => rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key, 32).verify(input, &pss),
        Alg::Ps384 => rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, 48).verify(input, &pss),
        Alg::Ps512 => rsa::pss::VerifyingKey::<Sha512>::new_with_salt_len(key, 64).verify(input, &pss),
        _ => return Err(KeyError::WrongAlg { key: "RSA", alg }),
    }
    .map_err(bad)
}

/// The content of a DER OCTET STRING that spans all of `der`.
fn unwrap_octet_string(der: &[u8]) -> Option<&[u8]> {
    <&OctetStringRef>::from_der(der).ok().map(OctetStringRef::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_in_either_encoding() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        let raw = PublicKey::from_ec_point(Curve::P256, &point).unwrap();
        assert_eq!(PublicKey::from_ec_point(Curve::P256, &wrapped).unwrap(), raw);
        assert_eq!(PublicKey::from_spki_der(&raw.to_spki_der()).unwrap(), raw);
        assert_eq!(PublicKey::from_pem(&raw.to_pem()).unwrap(), raw);
        assert!(PublicKey::from_ec_point(Curve::P256, &[0x04, 0x01]).is_err());
        // A 133-byte P-521 point needs the long length form.
        let mut scalar = [9u8; 66];
        scalar[0] = 0;
        let secret = p521::SecretKey::from_slice(&scalar).unwrap();
        let point = secret.public_key().to_sec1_bytes();
        let mut wrapped = vec![0x04, 0x81, 133];
        wrapped.extend_from_slice(&point);
        assert!(PublicKey::from_ec_point(Curve::P521, &wrapped).is_ok());
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // The RSA key of RFC 7638, section 3.1, and the thumbprint it gives.
        let n = URL_SAFE_NO_PAD.decode("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw").unwrap();
        let key = PublicKey::from_rsa(&n, &[1, 0, 1]).unwrap();
        assert_eq!(key.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn curves_from_params() {
        for curve in [Curve::P256, Curve::P384, Curve::P521, Curve::Ed25519] {
            assert_eq!(Curve::from_params(&curve.params()), Some(curve));
        }
        assert_eq!(Curve::from_params(b"\x13\x0cedwards25519"), Some(Curve::Ed25519));
        assert_eq!(Curve::from_params(&[0x06, 0x03, 0x2b, 0x65, 0x71]), None);
    }
}
