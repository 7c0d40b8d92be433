//! Making a JWS signature inside the token: choosing the mechanism the token and key allow, and
//! hashing on the host when the token offers only the raw one.

use super::TokenError;
use super::keys::{Key, KeyKind};
use crate::jwt::{Alg, Family, Hash};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};

/// How to sign: hand the token the signing input, or hash it here first.
#[derive(Debug)]
pub struct Plan {
    /// The mechanism for `C_SignInit`.
    pub mechanism: Mechanism<'static>,
    /// `None`: the token hashes (or EdDSA needs no hash). `Some`: hash on the host, and (for
    /// RSA PKCS#1) put the hash's DigestInfo before the digest.
    pub prehash: Option<(Hash, DigestInfo)>,
    /// The length the signature must have.
    pub signature_len: usize,
}

impl Plan {
    /// What to pass to `C_Sign` for this signing input.
    pub fn data(&self, input: &[u8]) -> Vec<u8> {
        match self.prehash {
            None => input.to_vec(),
            Some((hash, with)) => {
                let mut data =
                    if with == DigestInfo::Prefixed { digest_info(hash).into_vec() } else { Vec::new() };
                data.extend_from_slice(&hash.digest(input));
                data
            }
        }
    }
}

/// Whether a digest goes to the token bare (ECDSA, PSS) or inside a DigestInfo (PKCS#1 v1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestInfo {
    /// The digest alone.
    Bare,
    /// The DigestInfo prefix, then the digest.
    Prefixed,
}

/// The DER DigestInfo prefix of RFC 8017, section 9.2, for a hash, as the rsa crate builds it
/// from the hash's OID.
fn digest_info(hash: Hash) -> Box<[u8]> {
    use rsa::pkcs1v15::Pkcs1v15Sign;
    match hash {
        Hash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
        Hash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>().prefix,
        Hash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>().prefix,
    }
}

/// Picks the mechanism for `alg` with `key`: the token's hashing mechanism when it offers one
/// and the key allows it, else the raw mechanism over a digest made here.
pub fn plan(alg: Alg, key: &Key, offered: &[MechanismType]) -> Result<Plan, TokenError> {
    let usable =
        |m: &MechanismType| offered.contains(m) && (key.allowed.is_empty() || key.allowed.contains(m));
    let signature_len = match key.kind {
        KeyKind::Ec(curve) => 2 * curve.field_len(),
        KeyKind::Rsa { modulus_len } => modulus_len,
    };
    let hash = alg.hash();
    let (hashing, raw, prefix): (Option<Mechanism<'static>>, Mechanism<'static>, DigestInfo) = match alg
        .family()
    {
        Family::Ecdsa => {
            let hashing = match hash {
                Some(Hash::Sha256) => Mechanism::EcdsaSha256,
                Some(Hash::Sha384) => Mechanism::EcdsaSha384,
                _ => Mechanism::EcdsaSha512,
            };
            (Some(hashing), Mechanism::Ecdsa, DigestInfo::Bare)
        }
        Family::RsaPkcs1 => match hash {
            Some(Hash::Sha256) => (Some(Mechanism::Sha256RsaPkcs), Mechanism::RsaPkcs, DigestInfo::Prefixed),
            Some(Hash::Sha384) => (Some(Mechanism::Sha384RsaPkcs), Mechanism::RsaPkcs, DigestInfo::Prefixed),
            _ => (Some(Mechanism::Sha512RsaPkcs), Mechanism::RsaPkcs, DigestInfo::Prefixed),
        },
        Family::RsaPss => {
            let (params, hashing) = match hash {
                Some(Hash::Sha256) => {
                    let params = pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32);
                    (params, Mechanism::Sha256RsaPkcsPss(params))
                }
                Some(Hash::Sha384) => {
                    let params = pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48);
                    (params, Mechanism::Sha384RsaPkcsPss(params))
                }
                _ => {
                    let params = pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64);
                    (params, Mechanism::Sha512RsaPkcsPss(params))
                }
            };
            (Some(hashing), Mechanism::RsaPkcsPss(params), DigestInfo::Bare)
        }
        Family::EdDsa => {
            (None, Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), DigestInfo::Bare)
        }
    };
    if let Some(hashing) = hashing
        && usable(&hashing.mechanism_type())
    {
        return Ok(Plan { mechanism: hashing, prehash: None, signature_len });
    }
    if usable(&raw.mechanism_type()) {
        return Ok(Plan { mechanism: raw, prehash: hash.map(|h| (h, prefix)), signature_len });
    }
    Err(TokenError::NoMechanism { alg, key: key.info.label.clone() })
}

fn pss(hash_alg: MechanismType, mgf: PkcsMgfType, salt_len: u64) -> PkcsPssParams {
    PkcsPssParams { hash_alg, mgf, s_len: salt_len.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Curve;
    use crate::wire::KeyInfo;

    fn key(kind: KeyKind, allowed: Vec<MechanismType>) -> Key {
        Key {
            // SAFETY: the handle is only compared, never passed to a token.
            handle: unsafe { cryptoki::object::ObjectHandle::new_from_raw(1) },
            kind,
            allowed,
            always_authenticate: false,
            public: None,
            alg: Alg::Es256,
            algs: vec![],
            info: KeyInfo { label: "k".into(), id: String::new(), alg: None, kid: None, fingerprint: None },
            iss: None,
            x5t_s256: None,
        }
    }

    #[test]
    fn prefers_the_tokens_hashing_mechanism() {
        let p256 = key(KeyKind::Ec(Curve::P256), vec![]);
        let plan = plan(Alg::Es256, &p256, &[MechanismType::ECDSA, MechanismType::ECDSA_SHA256]).unwrap();
        assert_eq!(plan.mechanism.mechanism_type(), MechanismType::ECDSA_SHA256);
        assert_eq!(plan.data(b"abc"), b"abc");
    }

    #[test]
    fn hashes_on_the_host_for_raw_ecdsa_and_rsa() {
        let p256 = key(KeyKind::Ec(Curve::P256), vec![]);
        let plan = super::plan(Alg::Es256, &p256, &[MechanismType::ECDSA]).unwrap();
        assert_eq!(plan.mechanism.mechanism_type(), MechanismType::ECDSA);
        assert_eq!(plan.data(b"abc").len(), 32);
        assert_eq!(plan.signature_len, 64);

        let rsa = key(KeyKind::Rsa { modulus_len: 256 }, vec![]);
        let plan = super::plan(Alg::Rs256, &rsa, &[MechanismType::RSA_PKCS]).unwrap();
        let data = plan.data(b"abc");
        assert_eq!(data.len(), 19 + 32);
        // RFC 8017, section 9.2, note 1: the DigestInfo of SHA-256.
        assert_eq!(
            &data[..19],
            b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
        );
    }

    #[test]
    fn respects_the_keys_allowed_mechanisms() {
        let rsa = key(KeyKind::Rsa { modulus_len: 256 }, vec![MechanismType::RSA_PKCS_PSS]);
        let offered = [MechanismType::RSA_PKCS, MechanismType::SHA256_RSA_PKCS, MechanismType::RSA_PKCS_PSS];
        assert!(super::plan(Alg::Rs256, &rsa, &offered).is_err());
        let plan = super::plan(Alg::Ps256, &rsa, &offered).unwrap();
        assert_eq!(plan.mechanism.mechanism_type(), MechanismType::RSA_PKCS_PSS);
        assert_eq!(plan.data(b"abc").len(), 32);
    }
}
