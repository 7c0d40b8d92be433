//! Private key files: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), which is what Apple's `.p8`
//! files are. Used only to put a key on the token; every buffer that holds key bytes is zeroized.

use crate::key::{Curve, PublicKey};
use der::Decode;
use der::asn1::ObjectIdentifier;
use zeroize::{Zeroize, Zeroizing};

/// Secret bytes, zeroized on drop.
pub type Secret = Zeroizing<Vec<u8>>;

/// A private key read from a file, with its public half.
// One is made per import; boxing the EC variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum PrivateKey {
    /// An EC key: the curve and the private value `CKA_VALUE` holds (the big-endian scalar,
    /// or for Ed25519 the 32-byte seed).
    Ec {
        curve: Curve,
        /// The private scalar or seed.
        scalar: Secret,
        public: PublicKey,
    },
    /// An RSA key, with the CRT components PKCS#11 wants.
    Rsa(Box<RsaParts>),
}

/// The components of an RSA private key, big-endian.
pub struct RsaParts {
    /// `n`.
    pub modulus: Vec<u8>,
    /// `e`.
    pub public_exponent: Vec<u8>,
    /// `d`.
    pub private_exponent: Secret,
    /// `p`.
    pub prime_1: Secret,
    /// `q`.
    pub prime_2: Secret,
    /// `d mod (p-1)`.
    pub exponent_1: Secret,
    /// `d mod (q-1)`.
    pub exponent_2: Secret,
    /// `q^-1 mod p`.
    pub coefficient: Secret,
    pub public: PublicKey,
}

impl PrivateKey {
    pub fn public(&self) -> &PublicKey {
        match self {
            PrivateKey::Ec { public, .. } => public,
            PrivateKey::Rsa(parts) => &parts.public,
        }
    }
}

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("the file is not PEM; an Apple .p8 file starts with -----BEGIN PRIVATE KEY-----")]
    NotPem,
    /// An encrypted PKCS#8 file.
    #[error(
        "the key is encrypted (ENCRYPTED PRIVATE KEY); Apple's .p8 files are not, and this agent does not decrypt keys"
    )]
    Encrypted,
    /// A PEM of something else than a private key.
    #[error("the file holds a {0}, not a private key")]
    NotPrivateKey(String),
    /// A private key in a form this agent does not read (OpenSSH's).
    #[error(
        "the file holds an {0}; convert it to PKCS#8 with `ssh-keygen -p -m PKCS8 -f COPY` on a copy in a private folder, import that, and shred both"
    )]
    NotPkcs8(String),
    /// The DER does not parse.
    #[error("the key is malformed: {0}")]
    Malformed(String),
    /// An RSA key too weak to import, or larger than tokens and verifiers take.
    #[error("{0}")]
    RsaSize(String),
    /// A curve or key type this agent does not sign with.
    #[error("unsupported key type: {0} (supported: P-256, P-384, P-521, RSA, Ed25519)")]
    Unsupported(String),
}

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`: Apple's `.p8`, Snowflake, Google), PKCS#1
/// (`RSA PRIVATE KEY`: GitHub Apps, DocuSign) or SEC1 (`EC PRIVATE KEY`).
pub fn parse_pem(text: &str) -> Result<PrivateKey, KeyFileError> {
    let (label, der) = pem_rfc7468::decode_vec(text.trim().as_bytes()).map_err(|_| KeyFileError::NotPem)?;
    let der = Zeroizing::new(der);
    match label {
        "PRIVATE KEY" => parse_der(&der),
        "RSA PRIVATE KEY" => rsa(&der),
        "EC PRIVATE KEY" => sec1(&der),
        "ENCRYPTED PRIVATE KEY" => Err(KeyFileError::Encrypted),
        "OPENSSH PRIVATE KEY" => Err(KeyFileError::NotPkcs8(label.to_lowercase())),
        other => Err(KeyFileError::NotPrivateKey(other.to_lowercase())),
    }
}

/// A SEC1 `ECPrivateKey` (RFC 5915), whose named curve says which it is.
fn sec1(der: &[u8]) -> Result<PrivateKey, KeyFileError> {
    use p256::elliptic_curve::SecretKey;
    let secret = |bytes: &mut [u8]| {
        let copy = Zeroizing::new(bytes.to_vec());
        bytes.zeroize();
        copy
    };
    // Each curve's decoder refuses a key whose parameters name another curve.
    if let Ok(key) = SecretKey::<p256::NistP256>::from_sec1_der(der) {
        return Ok(PrivateKey::Ec {
            curve: Curve::P256,
            scalar: secret(&mut key.to_bytes()),
            public: PublicKey::P256(key.public_key()),
        });
    }
    if let Ok(key) = SecretKey::<p384::NistP384>::from_sec1_der(der) {
        return Ok(PrivateKey::Ec {
            curve: Curve::P384,
            scalar: secret(&mut key.to_bytes()),
            public: PublicKey::P384(key.public_key()),
        });
    }
    match SecretKey::<p521::NistP521>::from_sec1_der(der) {
        Ok(key) => Ok(PrivateKey::Ec {
            curve: Curve::P521,
            scalar: secret(&mut key.to_bytes()),
            public: PublicKey::P521(key.public_key()),
        }),
        Err(_) => Err(KeyFileError::Malformed(
            "the EC PRIVATE KEY is not a P-256, P-384 or P-521 key in SEC1 form".into(),
        )),
    }
}

/// Reads a DER PKCS#8 PrivateKeyInfo.
pub fn parse_der(der: &[u8]) -> Result<PrivateKey, KeyFileError> {
    let malformed = |e: &dyn std::fmt::Display| KeyFileError::Malformed(e.to_string());
    let info = pkcs8::PrivateKeyInfoRef::from_der(der).map_err(|e| malformed(&e))?;
    let (oid, params) = info.algorithm.oids().map_err(|e| malformed(&e))?;
    match (oid, params) {
        (EC_PUBLIC_KEY, Some(curve)) => ec(der, curve),
        (EC_PUBLIC_KEY, None) => Err(KeyFileError::Malformed("an EC key without a named curve".into())),
        (RSA_ENCRYPTION, _) => rsa(info.private_key.as_bytes()),
        (oid, _) if Curve::from_oid(oid) == Some(Curve::Ed25519) => ed25519(der),
        (other, _) => Err(KeyFileError::Unsupported(format!("algorithm {other}"))),
    }
}

fn ec(der: &[u8], curve_oid: ObjectIdentifier) -> Result<PrivateKey, KeyFileError> {
    use p256::pkcs8::DecodePrivateKey;
    let malformed = |e: pkcs8::Error| KeyFileError::Malformed(e.to_string());
    // The scalar is copied out of the stack array `to_bytes` returns, which is then wiped.
    let secret = |bytes: &mut [u8]| {
        let copy = Zeroizing::new(bytes.to_vec());
        bytes.zeroize();
        copy
    };
    let (curve, scalar, public) = match Curve::from_oid(curve_oid) {
        Some(Curve::P256) => {
            let key = p256::SecretKey::from_pkcs8_der(der).map_err(malformed)?;
            (Curve::P256, secret(&mut key.to_bytes()), PublicKey::P256(key.public_key()))
        }
        Some(Curve::P384) => {
            let key = p384::SecretKey::from_pkcs8_der(der).map_err(malformed)?;
            (Curve::P384, secret(&mut key.to_bytes()), PublicKey::P384(key.public_key()))
        }
        Some(Curve::P521) => {
            let key = p521::SecretKey::from_pkcs8_der(der).map_err(malformed)?;
            (Curve::P521, secret(&mut key.to_bytes()), PublicKey::P521(key.public_key()))
        }
        _ => return Err(KeyFileError::Unsupported(format!("EC curve {curve_oid}"))),
    };
    Ok(PrivateKey::Ec { curve, scalar, public })
}

fn ed25519(der: &[u8]) -> Result<PrivateKey, KeyFileError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
    let public = PublicKey::Ed25519(key.verifying_key());
    let mut seed = key.to_bytes();
    let scalar = Zeroizing::new(seed.to_vec());
    seed.zeroize();
    Ok(PrivateKey::Ec { curve: Curve::Ed25519, scalar, public })
}

fn rsa(pkcs1_der: &[u8]) -> Result<PrivateKey, KeyFileError> {
    let key =
        pkcs1::RsaPrivateKeyRef::try_from(pkcs1_der).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
    if key.other_prime_infos.is_some() {
        return Err(KeyFileError::Unsupported("multi-prime RSA".into()));
    }
    let secret = |u: &pkcs1::UintRef| Zeroizing::new(u.as_bytes().to_vec());
    let modulus = key.modulus.as_bytes().to_vec();
    let public_exponent = key.public_exponent.as_bytes().to_vec();
    check_rsa_size(&modulus, &public_exponent)?;
    let public = PublicKey::from_rsa(&modulus, &public_exponent)
        .map_err(|e| KeyFileError::Malformed(format!("the RSA public key: {e}")))?;
    Ok(PrivateKey::Rsa(Box::new(RsaParts {
        private_exponent: secret(&key.private_exponent),
        prime_1: secret(&key.prime1),
        prime_2: secret(&key.prime2),
        exponent_1: secret(&key.exponent1),
        exponent_2: secret(&key.exponent2),
        coefficient: secret(&key.coefficient),
        modulus,
        public_exponent,
        public,
    })))
}

/// RSA keys under 2048 bits or with a public exponent under 65537 are weak; above 4096 bits,
/// few tokens and verifiers take them (and `generate` makes none).
fn check_rsa_size(modulus: &[u8], exponent: &[u8]) -> Result<(), KeyFileError> {
    let bits = |n: &[u8]| {
        let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
        n.first().map_or(0, |first| (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
    };
    let modulus_bits = bits(modulus);
    if !(2048..=4096).contains(&modulus_bits) {
        return Err(KeyFileError::RsaSize(format!(
            "the RSA key has {modulus_bits} bits; keys of 2048 to 4096 bits are imported"
        )));
    }
    let exponent_value =
        exponent.iter().fold(0u128, |v, b| v.saturating_mul(256).saturating_add(u128::from(*b)));
    if exponent_value < 65537 {
        return Err(KeyFileError::RsaSize(format!(
            "the RSA key's public exponent is {exponent_value}; keys with an exponent under 65537 are refused"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_plain_pkcs8_private_key() {
        assert_eq!(parse_pem("hello").err(), Some(KeyFileError::NotPem));
        let pem = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
        assert_eq!(parse_pem(&pem("ENCRYPTED PRIVATE KEY")).err(), Some(KeyFileError::Encrypted));
        assert!(matches!(parse_pem(&pem("EC PRIVATE KEY")), Err(KeyFileError::Malformed(_))));
        assert!(matches!(parse_pem(&pem("RSA PRIVATE KEY")), Err(KeyFileError::Malformed(_))));
        assert!(matches!(parse_pem(&pem("OPENSSH PRIVATE KEY")), Err(KeyFileError::NotPkcs8(_))));
        assert!(matches!(parse_pem(&pem("PUBLIC KEY")), Err(KeyFileError::NotPrivateKey(_))));
        assert!(matches!(parse_pem(&pem("CERTIFICATE")), Err(KeyFileError::NotPrivateKey(_))));
        assert!(matches!(parse_pem(&pem("PRIVATE KEY")), Err(KeyFileError::Malformed(_))));
    }

    #[test]
    fn weak_and_oversized_rsa_keys_are_refused() {
        let n = |bits: usize| {
            let mut n = vec![0u8; bits.div_ceil(8) + 1];
            n[1] = 0x80;
            n
        };
        let f4 = [1, 0, 1];
        assert!(check_rsa_size(&n(2048), &f4).is_ok());
        assert!(check_rsa_size(&n(4096), &f4).is_ok());
        assert!(check_rsa_size(&n(1024), &f4).unwrap_err().to_string().contains("1024 bits"));
        assert!(check_rsa_size(&n(16384), &f4).unwrap_err().to_string().contains("16384 bits"));
        assert!(check_rsa_size(&n(2048), &[3]).unwrap_err().to_string().contains("exponent is 3"));
        assert!(check_rsa_size(&n(2048), &[0, 1, 0, 0]).unwrap_err().to_string().contains("65536"));
    }

    #[test]
    fn reads_sec1_keys_of_each_curve() {
        use p256::elliptic_curve::SecretKey;
        let p256 = SecretKey::<p256::NistP256>::from_slice(&[5u8; 32]).unwrap();
        let pem = p256.to_sec1_pem(pkcs8::LineEnding::LF).unwrap();
        let PrivateKey::Ec { curve, public, .. } = parse_pem(&pem).unwrap() else { panic!("not EC") };
        assert_eq!((curve, public), (Curve::P256, PublicKey::P256(p256.public_key())));
        let p384 = SecretKey::<p384::NistP384>::from_slice(&[5u8; 48]).unwrap();
        let pem = p384.to_sec1_pem(pkcs8::LineEnding::LF).unwrap();
        let PrivateKey::Ec { curve, public, .. } = parse_pem(&pem).unwrap() else { panic!("not EC") };
        assert_eq!((curve, public), (Curve::P384, PublicKey::P384(p384.public_key())));
    }

    #[test]
    fn reads_a_p256_key_and_its_public_half() {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(pkcs8::LineEnding::LF).unwrap();
        let PrivateKey::Ec { curve, scalar, public } = parse_pem(&pem).unwrap() else { panic!("not EC") };
        assert_eq!(curve, Curve::P256);
        assert_eq!(scalar.as_slice(), &[3u8; 32]);
        assert_eq!(public, PublicKey::P256(secret.public_key()));
    }
}
