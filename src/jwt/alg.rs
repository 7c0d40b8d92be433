//! The JWS algorithms (RFC 7518, RFC 8037) and the hashes they use.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::fmt;

/// A JWS `alg` this agent signs with. `none` and the HMAC algorithms are not among them: a key
/// on the token is asymmetric, and an unsigned token is no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256, salt as long as the hash.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

/// How an algorithm signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// ECDSA; the JWS signature is `r || s`, each as long as the curve's field.
    Ecdsa,
    /// RSA PKCS#1 v1.5.
    RsaPkcs1,
    /// RSA PSS.
    RsaPss,
    /// EdDSA.
    EdDsa,
}

/// A SHA-2 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Alg {
    /// Every algorithm, in the order the spec lists them.
    pub const ALL: [Alg; 10] = [
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::EdDsa,
    ];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The algorithm an `alg` value names, if this agent signs with it.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// All names, for messages.
    pub fn names() -> String {
        Alg::ALL.map(Alg::name).join(", ")
    }

    /// How it signs.
    pub fn family(self) -> Family {
        match self {
            Alg::Es256 | Alg::Es384 | Alg::Es512 => Family::Ecdsa,
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => Family::RsaPkcs1,
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => Family::RsaPss,
            Alg::EdDsa => Family::EdDsa,
        }
    }

    /// The hash applied to the signing input; EdDSA hashes inside the signature scheme.
    pub fn hash(self) -> Option<Hash> {
        match self {
            Alg::Es256 | Alg::Rs256 | Alg::Ps256 => Some(Hash::Sha256),
            Alg::Es384 | Alg::Rs384 | Alg::Ps384 => Some(Hash::Sha384),
            Alg::Es512 | Alg::Rs512 | Alg::Ps512 => Some(Hash::Sha512),
            Alg::EdDsa => None,
        }
    }
}

impl Serialize for Alg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Alg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Alg, D::Error> {
        let name = String::deserialize(d)?;
        Alg::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("alg {name:?} is not one of {}", Alg::names())))
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Hash {
    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The digest's length in bytes (also the PSS salt length JWS uses).
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refuse_the_rest() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        for name in ["none", "HS256", "es256", "ES256K", "Ed25519", ""] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn digests_have_their_lengths() {
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            assert_eq!(hash.digest(b"x").len(), hash.digest_len());
        }
    }
}
