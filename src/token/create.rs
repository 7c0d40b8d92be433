//! Putting keys on the token: importing a private key from a file, or generating a key pair
//! inside the token. Private keys are always created sensitive and non-extractable, for
//! signing only; a failure part-way destroys what was created.

use super::TokenError;
use super::keys::{self, ALG_APPLICATION, ISS_APPLICATION, KID_APPLICATION, RSA_PKCS1, RSA_PSS};
use crate::jwt::{Alg, Family};
use crate::key::file::PrivateKey;
use crate::key::{Curve, PublicKey};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::{Digest, Sha256};

/// A key to create.
// One is made per import or generate request.
#[allow(clippy::large_enum_variant)]
pub enum NewKey {
    /// A private key read from a file.
    Import {
        key: PrivateKey,
        /// `CKA_LABEL` of both objects.
        label: String,
        /// `CKA_ID`; default: the first 8 bytes of the SHA-256 of the public key's SPKI.
        id: Option<Vec<u8>>,
        /// The key's `kid`; default: the label.
        kid: Option<String>,
        /// The `iss` its tokens get by default.
        iss: Option<String>,
    },
    /// A key pair generated inside the token.
    Generate {
        /// The algorithm it is for.
        alg: Alg,
        /// RSA modulus size.
        bits: Option<u32>,
        /// `CKA_LABEL` of both objects.
        label: String,
        /// `CKA_ID`; default: 8 random bytes from the token.
        id: Option<Vec<u8>>,
    },
}

const ECDSA: &[MechanismType] = &[
    MechanismType::ECDSA,
    MechanismType::ECDSA_SHA256,
    MechanismType::ECDSA_SHA384,
    MechanismType::ECDSA_SHA512,
];
/// Refuses, before anything is created, a key the token could not sign with (or make): a clear
/// "the token does not do EdDSA" beats a key nobody can use, or a bare CKR code.
fn check_mechanisms(new: &NewKey, offered: &[MechanismType]) -> Result<(), TokenError> {
    let eddsa = || ("EdDSA", vec![MechanismType::EDDSA]);
    let ecdsa = || ("ECDSA", ECDSA.to_vec());
    let rsa = || ("RSA signatures", [RSA_PKCS1, RSA_PSS].concat());
    let ((what, sign), generate) = match new {
        NewKey::Import { key: PrivateKey::Ec { curve: Curve::Ed25519, .. }, .. } => (eddsa(), None),
        NewKey::Import { key: PrivateKey::Ec { .. }, .. } => (ecdsa(), None),
        NewKey::Import { key: PrivateKey::Rsa(_), .. } => (rsa(), None),
        NewKey::Generate { alg, .. } => match alg.family() {
            Family::EdDsa => (eddsa(), Some(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN)),
            Family::Ecdsa => (ecdsa(), Some(MechanismType::ECC_KEY_PAIR_GEN)),
            Family::RsaPkcs1 | Family::RsaPss => (rsa(), Some(MechanismType::RSA_PKCS_KEY_PAIR_GEN)),
        },
    };
    if !sign.iter().any(|m| offered.contains(m)) {
        return Err(TokenError::BadKey(format!(
            "the token does not do {what} (it offers no {} mechanism)",
            sign[0]
        )));
    }
    if let Some(generate) = generate
        && !offered.contains(&generate)
    {
        return Err(TokenError::BadKey(format!("the token cannot generate {what} keys (no {generate})")));
    }
    Ok(())
}

/// Creates the key; returns its label.
pub fn create(session: &Session, new: &NewKey, offered: &[MechanismType]) -> Result<String, TokenError> {
    check_mechanisms(new, offered)?;
    let (label, id) = match new {
        NewKey::Import { key, label, id, .. } => {
            (label, id.clone().unwrap_or_else(|| Sha256::digest(key.public().to_spki_der())[..8].to_vec()))
        }
        NewKey::Generate { label, id, .. } => {
            (label, id.clone().map_or_else(|| session.generate_random_vec(8), Ok)?)
        }
    };
    if label.is_empty() {
        return Err(TokenError::BadKey("a key needs a label".into()));
    }
    if let Some(taken) = keys::taken(session, label, &id)? {
        return Err(TokenError::Exists(taken));
    }
    let mut created = Vec::new();
    let result = match new {
        NewKey::Import { key, kid, iss, .. } => {
            import(session, key, label, &id, &mut created).and_then(|()| {
                if let Some(kid) = kid.as_deref().filter(|kid| kid != label) {
                    store(session, KID_APPLICATION, label, kid, &mut created)?;
                }
                match iss {
                    Some(iss) => store(session, ISS_APPLICATION, label, iss, &mut created),
                    None => Ok(()),
                }
            })
        }
        NewKey::Generate { alg, bits, .. } => {
            generate(session, *alg, *bits, label, &id, &mut created).and_then(|public| {
                store(session, KID_APPLICATION, label, &public.thumbprint(), &mut created)?;
                // An RSA key could sign six algs; it signs the one it was made for.
                match alg.family() {
                    Family::RsaPkcs1 | Family::RsaPss => {
                        store(session, ALG_APPLICATION, label, alg.name(), &mut created)
                    }
                    Family::Ecdsa | Family::EdDsa => Ok(()),
                }
            })
        }
    };
    if let Err(e) = result {
        for object in created.into_iter().rev() {
            if let Err(cleanup) = session.destroy_object(object) {
                crate::warn!("could not remove a half-created object of key {label:?}: {cleanup}");
            }
        }
        return Err(e);
    }
    Ok(label.clone())
}

/// What every private key of this agent is: on the token, private, sensitive, never
/// extractable, for signing only.
fn private_template(label: &str, id: &[u8], key_type: KeyType) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        // With the PIN, a modifiable key could have CKA_DERIVE or CKA_DECRYPT switched on later,
        // and a copyable one could be copied into an object with other attributes.
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// Attributes a token may not know (PKCS#11 2.40 added CKA_COPYABLE); without them the key is
/// still sensitive and non-extractable.
fn is_optional(attribute: &Attribute) -> bool {
    matches!(attribute, Attribute::Modifiable(_) | Attribute::Copyable(_))
}

/// Whether a token's refusal of a template may be its not knowing an optional attribute.
fn refuses_optional(error: &cryptoki::error::Error) -> bool {
    use cryptoki::error::{Error, RvError};
    matches!(
        error,
        Error::Pkcs11(
            RvError::AttributeTypeInvalid | RvError::AttributeValueInvalid | RvError::TemplateInconsistent,
            _
        )
    )
}

/// `C_CreateObject`, and once more without the optional attributes if the token refuses them.
fn create_object(session: &Session, template: &[Attribute], label: &str) -> Result<ObjectHandle, TokenError> {
    match session.create_object(template) {
        Err(e) if refuses_optional(&e) && template.iter().any(is_optional) => {
            crate::info!(
                "the token refused key {label:?} with CKA_MODIFIABLE and CKA_COPYABLE false ({e}); creating it without them"
            );
            let mut reduced: Vec<Attribute> = template.iter().filter(|a| !is_optional(a)).cloned().collect();
            let made = session.create_object(&reduced);
            zeroize_template(&mut reduced);
            Ok(made?)
        }
        made => Ok(made?),
    }
}

fn public_template(label: &str, id: &[u8], key_type: KeyType) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(true),
        Attribute::Private(false),
        // CKA_VERIFY is left to the token: tpm2-pkcs11 derives it from the key's TPM usage and
        // refuses a template that says otherwise. Nothing verifies on the token anyway.
        Attribute::Modifiable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn key_type(curve: Curve) -> KeyType {
    if curve == Curve::Ed25519 { KeyType::EC_EDWARDS } else { KeyType::EC }
}

fn import(
    session: &Session,
    key: &PrivateKey,
    label: &str,
    id: &[u8],
    created: &mut Vec<ObjectHandle>,
) -> Result<(), TokenError> {
    let (mut private, mut public) = match key {
        PrivateKey::Ec { curve, scalar, .. } => {
            let (kt, params) = (key_type(*curve), curve.params());
            let mut private = private_template(label, id, kt);
            private.extend([Attribute::EcParams(params.clone()), Attribute::Value(scalar.to_vec())]);
            let mut public = public_template(label, id, kt);
            public.extend([Attribute::EcParams(params), Attribute::EcPoint(ec_point(key.public())?)]);
            (private, public)
        }
        PrivateKey::Rsa(parts) => {
            let mut private = private_template(label, id, KeyType::RSA);
            private.extend([
                Attribute::Modulus(parts.modulus.clone()),
                Attribute::PublicExponent(parts.public_exponent.clone()),
                Attribute::PrivateExponent(parts.private_exponent.to_vec()),
                Attribute::Prime1(parts.prime_1.to_vec()),
                Attribute::Prime2(parts.prime_2.to_vec()),
                Attribute::Exponent1(parts.exponent_1.to_vec()),
                Attribute::Exponent2(parts.exponent_2.to_vec()),
                Attribute::Coefficient(parts.coefficient.to_vec()),
            ]);
            let mut public = public_template(label, id, KeyType::RSA);
            public.extend([
                Attribute::Modulus(parts.modulus.clone()),
                Attribute::PublicExponent(parts.public_exponent.clone()),
            ]);
            (private, public)
        }
    };
    let made = create_object(session, &private, label);
    zeroize_template(&mut private);
    created.push(made?);
    match create_object(session, &public, label) {
        Ok(handle) => created.push(handle),
        // Some tokens (a YubiHSM 2) keep a key pair as one object and show its public half by
        // themselves, refusing a separate public object: then that public half serves.
        Err(e) if public_exists(session, id) => {
            crate::info!("the token made the public key of {label:?} itself ({e})");
        }
        Err(e) => return Err(e),
    }
    public.clear();
    Ok(())
}

fn public_exists(session: &Session, id: &[u8]) -> bool {
    let template = [Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id.to_vec())];
    session.find_objects(&template).is_ok_and(|found| !found.is_empty())
}

/// Overwrites the secret values in a template once the token has them.
fn zeroize_template(template: &mut [Attribute]) {
    use zeroize::Zeroize;
    for attribute in template.iter_mut() {
        match attribute {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// `CKA_EC_POINT`: the point as a DER OCTET STRING, as PKCS#11 specifies.
fn ec_point(public: &PublicKey) -> Result<Vec<u8>, TokenError> {
    use der::Encode;
    let raw: Vec<u8> = match public {
        PublicKey::P256(k) => k.to_sec1_bytes().into_vec(),
        PublicKey::P384(k) => k.to_sec1_bytes().into_vec(),
        PublicKey::P521(k) => k.to_sec1_bytes().into_vec(),
        PublicKey::Ed25519(k) => k.as_bytes().to_vec(),
        PublicKey::Rsa(_) => return Err(TokenError::Other("an RSA key has no EC point".into())),
    };
    let encoded = der::asn1::OctetString::new(raw).and_then(|point| point.to_der());
    encoded.map_err(|e| TokenError::Other(format!("cannot encode the EC point: {e}")))
}

fn generate(
    session: &Session,
    alg: Alg,
    bits: Option<u32>,
    label: &str,
    id: &[u8],
    created: &mut Vec<ObjectHandle>,
) -> Result<PublicKey, TokenError> {
    let curve = match alg {
        Alg::Es256 => Some(Curve::P256),
        Alg::Es384 => Some(Curve::P384),
        Alg::Es512 => Some(Curve::P521),
        Alg::EdDsa => Some(Curve::Ed25519),
        _ => None,
    };
    if curve.is_some() && bits.is_some() {
        return Err(TokenError::BadKey(format!("--bits is for RSA keys; {alg} keys have a fixed size")));
    }
    let (mechanism, mut public, mut private) = match curve {
        Some(curve) => {
            let kt = key_type(curve);
            let mut public = public_template(label, id, kt);
            public.push(Attribute::EcParams(curve.params()));
            let mechanism = if curve == Curve::Ed25519 {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            };
            (mechanism, public, private_template(label, id, kt))
        }
        None => {
            let bits = bits.unwrap_or(2048);
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(TokenError::BadKey(format!("RSA keys are 2048, 3072 or 4096 bits, not {bits}")));
            }
            let mut public = public_template(label, id, KeyType::RSA);
            public.extend([
                Attribute::ModulusBits(u64::from(bits).into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ]);
            let mut private = private_template(label, id, KeyType::RSA);
            if alg.family() == Family::RsaPss {
                private.push(Attribute::AllowedMechanisms(RSA_PSS.to_vec()));
            }
            (Mechanism::RsaPkcsKeyPairGen, public, private)
        }
    };
    // The key type is implied by the mechanism; some tokens refuse it in the templates.
    public.retain(|a| !matches!(a, Attribute::KeyType(_)));
    private.retain(|a| !matches!(a, Attribute::KeyType(_)));
    let (public_handle, private_handle) = match session.generate_key_pair(&mechanism, &public, &private) {
        Err(e) if refuses_optional(&e) => {
            crate::info!(
                "the token refused key {label:?} with CKA_MODIFIABLE and CKA_COPYABLE false ({e}); generating it without them"
            );
            public.retain(|a| !is_optional(a));
            private.retain(|a| !is_optional(a));
            session.generate_key_pair(&mechanism, &public, &private)?
        }
        made => made?,
    };
    created.extend([private_handle, public_handle]);
    read_public(session, public_handle, curve)
}

fn read_public(
    session: &Session,
    handle: ObjectHandle,
    curve: Option<Curve>,
) -> Result<PublicKey, TokenError> {
    let wanted = [AttributeType::EcPoint, AttributeType::Modulus, AttributeType::PublicExponent];
    let (mut point, mut modulus, mut exponent) = (Vec::new(), Vec::new(), Vec::new());
    for attribute in session.get_attributes(handle, &wanted)? {
        match attribute {
            Attribute::EcPoint(v) => point = v,
            Attribute::Modulus(v) => modulus = v,
            Attribute::PublicExponent(v) => exponent = v,
            _ => {}
        }
    }
    let public = match curve {
        Some(curve) => PublicKey::from_ec_point(curve, &point),
        None => PublicKey::from_rsa(&modulus, &exponent),
    };
    public.map_err(|e| TokenError::Other(format!("the generated public key: {e}")))
}

/// A `CKO_CERTIFICATE` (X.509) next to the key with this label and id.
pub fn certificate_template(label: &str, id: &[u8], subject: &[u8], der: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(cryptoki::object::CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Subject(subject.to_vec()),
        Attribute::Value(der.to_vec()),
    ]
}

/// A data object that says `value` of the key labelled `label`, for `application`.
fn store(
    session: &Session,
    application: &[u8],
    label: &str,
    value: &str,
    created: &mut Vec<ObjectHandle>,
) -> Result<(), TokenError> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        // Not secret, but private: tpm2-pkcs11 makes no public data objects, and the keys it
        // speaks of are seen only after the login too.
        Attribute::Private(true),
        Attribute::Application(application.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.as_bytes().to_vec()),
    ];
    created.push(session.create_object(&template)?);
    Ok(())
}
