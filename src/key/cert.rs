//! Self-signed X.509 v3 certificates for keys on the token, built with the RustCrypto
//! `x509-cert` builder. The builder hands over the TBSCertificate; the token signs it (the
//! caller's part), and the signature goes back in. Nothing here signs or touches a private key.

use super::PublicKey;
use crate::jwt::{Alg, Family, Hash};
use der::asn1::{BitString, ObjectIdentifier};
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey, SubjectPublicKeyInfoOwned,
};
use std::str::FromStr;
use std::time::Duration;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

/// Why a certificate could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

fn failed<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> CertError + '_ {
    move |e| CertError(format!("{what}: {e}"))
}

/// A certificate waiting for its signature: [`to_sign`](Self::to_sign) is the DER
/// TBSCertificate for the token to sign with `alg`.
pub struct Unsigned {
    builder: CertificateBuilder<SelfSigned>,
    signer: TokenKey,
    tbs: Vec<u8>,
}

/// Prepares a certificate for `public`, signed with `alg` (the key's own), of `subject` (an
/// RFC 4514 string such as `CN=release`), valid from now for `days`; `serial` is random.
pub fn prepare(
    public: &PublicKey,
    alg: Alg,
    subject: &str,
    days: u32,
    serial: [u8; 16],
) -> Result<Unsigned, CertError> {
    let subject = Name::from_str(subject).map_err(|e| {
        CertError(format!("{subject:?} is not a distinguished name such as CN=NAME,O=ORG: {e}"))
    })?;
    if !(1..=3650).contains(&days) {
        return Err(CertError(format!("a certificate is valid for 1 to 3650 days, not {days}")));
    }
    let spki =
        SubjectPublicKeyInfoOwned::from_der(&public.to_spki_der()).map_err(failed("the public key"))?;
    let mut serial = serial;
    serial[0] &= 0x7f; // positive, as RFC 5280 wants
    let serial = SerialNumber::new(&serial).map_err(failed("the serial number"))?;
    let validity =
        Validity::from_now(Duration::from_secs(u64::from(days) * 86_400)).map_err(failed("the validity"))?;
    let signer = TokenKey { spki: public.to_spki_der(), alg };
    let mut builder = CertificateBuilder::new(SelfSigned { subject }, serial, validity, spki)
        .map_err(failed("the certificate"))?;
    let tbs = builder.finalize(&signer).map_err(failed("the certificate"))?;
    Ok(Unsigned { builder, signer, tbs })
}

impl Unsigned {
    pub fn to_sign(&self) -> &[u8] {
        &self.tbs
    }

    /// The certificate, DER, with `signature` as the token made it (raw `r || s` for ECDSA).
    pub fn assemble(self, signature: &[u8]) -> Result<Vec<u8>, CertError> {
        let encoded = match self.signer.alg.family() {
            Family::Ecdsa => ecdsa_der(self.signer.alg, signature)?,
            Family::RsaPkcs1 | Family::RsaPss | Family::EdDsa => signature.to_vec(),
        };
        let bits = BitString::from_bytes(&encoded).map_err(failed("the signature"))?;
        let cert = self.builder.assemble(bits, &self.signer).map_err(failed("the certificate"))?;
        cert.to_der().map_err(failed("the certificate"))
    }
}

/// `x5t#S256`: the base64url SHA-256 of a certificate's DER (RFC 7515, 4.1.8).
pub fn thumbprint_s256(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The subject of a DER certificate, DER (for `CKA_SUBJECT`).
pub fn subject_der(cert: &[u8]) -> Result<Vec<u8>, CertError> {
    let cert = x509_cert::Certificate::from_der(cert).map_err(failed("the certificate"))?;
    cert.tbs_certificate().subject().to_der().map_err(failed("the subject"))
}

/// ECDSA's raw `r || s` as the DER `Ecdsa-Sig-Value` X.509 wants.
fn ecdsa_der(alg: Alg, raw: &[u8]) -> Result<Vec<u8>, CertError> {
    let bad = failed("the token's ECDSA signature");
    Ok(match alg {
        Alg::Es256 => p256::ecdsa::Signature::from_slice(raw).map_err(bad)?.to_der().to_bytes().to_vec(),
        Alg::Es384 => p384::ecdsa::Signature::from_slice(raw).map_err(bad)?.to_der().to_bytes().to_vec(),
        Alg::Es512 => p521::ecdsa::Signature::from_slice(raw).map_err(bad)?.to_der().to_bytes().to_vec(),
        other => return Err(CertError(format!("{other} is not ECDSA"))),
    })
}

/// A leaf that vouches for itself: issuer = subject, not a CA, for signatures only.
struct SelfSigned {
    subject: Name,
}

impl BuilderProfile for SelfSigned {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer: spki::SubjectPublicKeyInfoRef<'_>,
        tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        // The key identifier: the leftmost 160 bits of the SHA-256 of the key (RFC 7093, 2).
        let key_id = Sha256::digest(spk.subject_public_key.raw_bytes());
        let key_id = SubjectKeyIdentifier::from(der::asn1::OctetString::new(&key_id[..20])?);
        Ok(vec![
            BasicConstraints { ca: false, path_len_constraint: None }.to_extension(subject, &[])?,
            KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(subject, &[])?,
            key_id.to_extension(subject, &[])?,
        ])
    }
}

/// What the builder needs of the signer: its public key and signature algorithm. The signing
/// itself is the token's.
#[derive(Clone)]
struct TokenKey {
    spki: Vec<u8>,
    alg: Alg,
}

impl signature::Keypair for TokenKey {
    type VerifyingKey = TokenKey;

    fn verifying_key(&self) -> TokenKey {
        self.clone()
    }
}

impl EncodePublicKey for TokenKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::from_der(&self.spki)?)
    }
}

const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

impl DynSignatureAlgorithmIdentifier for TokenKey {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        let plain = |oid| AlgorithmIdentifierOwned { oid, parameters: None };
        let null = |oid| AlgorithmIdentifierOwned { oid, parameters: Some(Any::null()) };
        Ok(match self.alg {
            Alg::Es256 => plain(ECDSA_SHA256),
            Alg::Es384 => plain(ECDSA_SHA384),
            Alg::Es512 => plain(ECDSA_SHA512),
            Alg::Rs256 => null(RSA_SHA256),
            Alg::Rs384 => null(RSA_SHA384),
            Alg::Rs512 => null(RSA_SHA512),
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                // The salt is the digest's length, as the token's PSS signatures use.
                let params = match self.alg.hash() {
                    Some(Hash::Sha384) => pkcs1::RsaPssParams::new::<sha2::Sha384>(48),
                    Some(Hash::Sha512) => pkcs1::RsaPssParams::new::<sha2::Sha512>(64),
                    _ => pkcs1::RsaPssParams::new::<sha2::Sha256>(32),
                };
                AlgorithmIdentifierOwned { oid: RSASSA_PSS, parameters: Some(Any::encode_from(&params)?) }
            }
            Alg::EdDsa => plain(ED25519),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    #[test]
    fn a_p256_certificate_signs_its_tbs_and_verifies() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = PublicKey::P256(p256::PublicKey::from(*key.verifying_key()));
        let unsigned = prepare(&public, Alg::Es256, "CN=release,O=Example", 30, [0xff; 16]).unwrap();
        let signature: p256::ecdsa::Signature = key.sign(unsigned.to_sign());
        let der = unsigned.assemble(&signature.to_bytes()).unwrap();
        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        assert_eq!(cert.tbs_certificate().subject().to_string(), "CN=release,O=Example");
        assert_eq!(cert.tbs_certificate().issuer(), cert.tbs_certificate().subject());
        assert_eq!(thumbprint_s256(&der).len(), 43);
        assert_eq!(subject_der(&der).unwrap(), cert.tbs_certificate().subject().to_der().unwrap());
    }

    #[test]
    fn bad_subjects_and_lifetimes_are_refused() {
        let key = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let public = PublicKey::P256(key.public_key());
        assert!(prepare(&public, Alg::Es256, "not a name", 30, [1; 16]).is_err());
        assert!(
            prepare(&public, Alg::Es256, "CN=x", 0, [1; 16]).err().is_some_and(|e| e.0.contains("1 to 3650"))
        );
    }
}
