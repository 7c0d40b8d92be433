//! Finding signing keys on the token and describing them: type, algorithms, public key, kid.

use super::TokenError;
use super::uri::Selector;
use crate::jwt::mint::KeyView;
use crate::jwt::{Alg, Family};
use crate::key::{Curve, PublicKey};
use crate::wire::KeyInfo;
use crate::wire::hex;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

/// `CKA_APPLICATION` of the data object that holds a key's `kid` when it is not its label.
pub const KID_APPLICATION: &[u8] = b"jwt-agent kid";
/// `CKA_APPLICATION` of the data object that holds the `iss` a key's tokens get by default (a
/// Google service account's `client_email`).
pub const ISS_APPLICATION: &[u8] = b"jwt-agent iss";
/// `CKA_APPLICATION` of the data object that binds an RSA key to the one algorithm it was
/// generated for.
pub const ALG_APPLICATION: &[u8] = b"jwt-agent alg";

/// What kind of key, as far as signing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An EC key on a Weierstrass curve, or Ed25519.
    Ec(Curve),
    /// RSA, with its modulus length in bytes.
    Rsa {
        /// `ceil(bits / 8)`.
        modulus_len: usize,
    },
}

/// A private key on the token that this agent can sign with.
#[derive(Debug)]
pub struct Key {
    /// The private key object's handle, valid across this process's sessions.
    pub handle: ObjectHandle,
    pub kind: KeyKind,
    /// `CKA_ALLOWED_MECHANISMS` (empty: any).
    pub allowed: Vec<MechanismType>,
    /// `CKA_ALWAYS_AUTHENTICATE`: a context-specific login before each signature.
    pub always_authenticate: bool,
    /// The public key, from the key's public object (or, for RSA, the private object itself).
    pub public: Option<PublicKey>,
    pub alg: Alg,
    /// Every algorithm it signs.
    pub algs: Vec<Alg>,
    /// What `keys` says of it.
    pub info: KeyInfo,
    /// The `iss` stored with it, if any.
    pub iss: Option<String>,
    /// `x5t#S256` of its certificate on the token (same `CKA_ID`), if it has one.
    pub x5t_s256: Option<String>,
}

impl Key {
    /// Whether this key makes signatures of `alg`.
    pub fn signs(&self, alg: Alg) -> bool {
        match (self.kind, alg.family()) {
            (KeyKind::Ec(Curve::P256), _) => alg == Alg::Es256,
            (KeyKind::Ec(Curve::P384), _) => alg == Alg::Es384,
            (KeyKind::Ec(Curve::P521), _) => alg == Alg::Es512,
            (KeyKind::Ec(Curve::Ed25519), _) => alg == Alg::EdDsa,
            (KeyKind::Rsa { .. }, Family::RsaPkcs1) => self.allows(RSA_PKCS1),
            (KeyKind::Rsa { .. }, Family::RsaPss) => self.allows(RSA_PSS),
            (KeyKind::Rsa { .. }, _) => false,
        }
    }

    /// What minting needs to know of the key.
    pub fn view(&self) -> KeyView<'_> {
        KeyView {
            label: &self.info.label,
            kid: self.info.kid.as_deref(),
            alg: self.alg,
            algs: &self.algs,
            fingerprint: self.info.fingerprint.as_deref(),
            iss: self.iss.as_deref(),
            x5t_s256: self.x5t_s256.as_deref(),
        }
    }

    /// The algorithm its JWK names: the key's one algorithm, if it has one.
    pub fn jwk_alg(&self) -> Option<Alg> {
        match self.algs.as_slice() {
            [alg] => Some(*alg),
            _ => None,
        }
    }

    /// Every algorithm this key signs, for messages.
    pub fn alg_names(&self) -> String {
        self.algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    }

    fn allows(&self, any_of: &[MechanismType]) -> bool {
        self.allowed.is_empty() || any_of.iter().any(|m| self.allowed.contains(m))
    }
}

/// The RSA PKCS#1 v1.5 signing mechanisms.
pub const RSA_PKCS1: &[MechanismType] = &[
    MechanismType::RSA_PKCS,
    MechanismType::SHA256_RSA_PKCS,
    MechanismType::SHA384_RSA_PKCS,
    MechanismType::SHA512_RSA_PKCS,
];
/// The RSA PSS signing mechanisms (what a key made for PS256/384/512 is limited to).
pub const RSA_PSS: &[MechanismType] = &[
    MechanismType::RSA_PKCS_PSS,
    MechanismType::SHA256_RSA_PKCS_PSS,
    MechanismType::SHA384_RSA_PKCS_PSS,
    MechanismType::SHA512_RSA_PKCS_PSS,
];

/// Finds the one private key `selector` names.
pub fn find(session: &Session, selector: &Selector, name: &str) -> Result<Key, TokenError> {
    // Without the class, a label would match the public key object too.
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = &selector.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &selector.id {
        template.push(Attribute::Id(id.clone()));
    }
    let handles = session.find_objects(&template)?;
    let handle = match handles.as_slice() {
        [handle] => *handle,
        // Private keys are invisible without the login: say that, not that the key is missing.
        [] if !logged_in(session) => return Err(TokenError::NotLoggedIn),
        [] => return Err(TokenError::NoKey(name.to_owned())),
        _ => return Err(TokenError::AmbiguousKey(name.to_owned())),
    };
    describe(session, handle)?.ok_or_else(|| TokenError::UnsupportedKey(name.to_owned()))
}

fn logged_in(session: &Session) -> bool {
    use cryptoki::session::SessionState;
    session
        .get_session_info()
        .is_ok_and(|info| matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser))
}

/// Describes every private key on the token that may sign.
pub fn list(session: &Session) -> Result<Vec<KeyInfo>, TokenError> {
    if !logged_in(session) {
        return Err(TokenError::NotLoggedIn);
    }
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Sign(true)];
    let mut keys = Vec::new();
    for handle in session.find_objects(&template)? {
        match describe(session, handle)? {
            Some(key) => keys.push(key.info),
            None => keys.push(unsupported_info(session, handle)?),
        }
    }
    keys.sort_by(|a, b| a.label.cmp(&b.label).then_with(|| a.id.cmp(&b.id)));
    Ok(keys)
}

/// Whether any object on the token has this label or (for keys) this id.
pub fn taken(session: &Session, label: &str, id: &[u8]) -> Result<Option<String>, TokenError> {
    if !session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])?.is_empty() {
        return Ok(Some(format!("an object labelled {label:?} is already on the token")));
    }
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        if !session.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])?.is_empty() {
            return Ok(Some(format!("a key with id {} is already on the token", hex(id))));
        }
    }
    Ok(None)
}

/// Reads a private key's attributes; `None` when it is of a type this agent does not sign with.
fn describe(session: &Session, handle: ObjectHandle) -> Result<Option<Key>, TokenError> {
    let wanted = [
        AttributeType::Label,
        AttributeType::Id,
        AttributeType::KeyType,
        AttributeType::EcParams,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
        AttributeType::AllowedMechanisms,
        AttributeType::AlwaysAuthenticate,
    ];
    let mut a = Attributes::default();
    // get_attributes drops what the token will not say: match by type, never by position.
    for attribute in session.get_attributes(handle, &wanted)? {
        match attribute {
            Attribute::Label(v) => a.label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::Id(v) => a.id = v,
            Attribute::KeyType(t) => a.key_type = Some(t),
            Attribute::EcParams(v) => a.params = v,
            Attribute::Modulus(v) => a.modulus = v,
            Attribute::PublicExponent(v) => a.exponent = v,
            Attribute::AllowedMechanisms(v) => a.allowed = v,
            Attribute::AlwaysAuthenticate(v) => a.always_authenticate = v,
            _ => {}
        }
    }
    let (kind, public) = match a.key_type {
        Some(t) if t == KeyType::EC || t == KeyType::EC_EDWARDS => {
            let Some(curve) = Curve::from_params(&a.params) else { return Ok(None) };
            let public = public_point(session, &a.id, &a.label)?
                .and_then(|p| PublicKey::from_ec_point(curve, &p).ok());
            (KeyKind::Ec(curve), public)
        }
        Some(t) if t == KeyType::RSA && !a.modulus.is_empty() => {
            let modulus_len = a.modulus.iter().skip_while(|b| **b == 0).count();
            let public = PublicKey::from_rsa(&a.modulus, &a.exponent).ok();
            (KeyKind::Rsa { modulus_len }, public)
        }
        _ => return Ok(None),
    };
    let kid = match stored(session, KID_APPLICATION, &a.label)? {
        Some(kid) => kid,
        // Keys that another tool gave one label need kids of their own: their thumbprints.
        None if shares_label(session, &a.label)? => match &public {
            Some(public) => public.thumbprint(),
            None => format!("{}-{}", a.label, hex(&a.id)),
        },
        None => a.label.clone(),
    };
    let bound = stored(session, ALG_APPLICATION, &a.label)?.and_then(|name| Alg::from_name(&name));
    let iss = stored(session, ISS_APPLICATION, &a.label)?;
    let x5t_s256 = certificate(session, &a.id)?.map(|der| crate::key::cert::thumbprint_s256(&der));
    let mut key = Key {
        handle,
        kind,
        allowed: a.allowed,
        always_authenticate: a.always_authenticate,
        public,
        alg: Alg::Es256,
        algs: Vec::new(),
        info: KeyInfo { label: a.label, id: hex(&a.id), alg: None, kid: Some(kid), fingerprint: None },
        iss,
        x5t_s256,
    };
    key.algs = Alg::ALL.into_iter().filter(|alg| key.signs(*alg)).collect();
    key.alg = default_alg(&key);
    if let Some(alg) = bound.filter(|alg| key.algs.contains(alg)) {
        key.algs = vec![alg];
        key.alg = alg;
    }
    key.info.alg = Some(key.alg.name().to_owned());
    key.info.fingerprint = key.public.as_ref().map(PublicKey::fingerprint);
    Ok(Some(key))
}

#[derive(Default)]
struct Attributes {
    label: String,
    id: Vec<u8>,
    key_type: Option<KeyType>,
    params: Vec<u8>,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
    allowed: Vec<MechanismType>,
    always_authenticate: bool,
}

/// The curve's algorithm for EC keys; for RSA, PS256 when the key allows only PSS, else RS256.
fn default_alg(key: &Key) -> Alg {
    match key.kind {
        KeyKind::Ec(Curve::P256) => Alg::Es256,
        KeyKind::Ec(Curve::P384) => Alg::Es384,
        KeyKind::Ec(Curve::P521) => Alg::Es512,
        KeyKind::Ec(Curve::Ed25519) => Alg::EdDsa,
        KeyKind::Rsa { .. } if !key.signs(Alg::Rs256) && key.signs(Alg::Ps256) => Alg::Ps256,
        KeyKind::Rsa { .. } => Alg::Rs256,
    }
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

/// The DER of the X.509 certificate with this `CKA_ID`, if there is one.
fn certificate(session: &Session, id: &[u8]) -> Result<Option<Vec<u8>>, TokenError> {
    if id.is_empty() {
        return Ok(None);
    }
    let template = [Attribute::Class(ObjectClass::CERTIFICATE), Attribute::Id(id.to_vec())];
    let Some(&object) = session.find_objects(&template)?.first() else {
        return Ok(None);
    };
    let value = session.get_attributes(object, &[AttributeType::Value])?.into_iter().find_map(|a| match a {
        Attribute::Value(v) => Some(v),
        _ => None,
    });
    Ok(value)
}

fn shares_label(session: &Session, label: &str) -> Result<bool, TokenError> {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.as_bytes().to_vec())];
    Ok(session.find_objects(&template)?.len() > 1)
}

/// The value of the data object `application` stored for the key labelled `label`, if any.
fn stored(session: &Session, application: &[u8], label: &str) -> Result<Option<String>, TokenError> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(application.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let Some(&object) = session.find_objects(&template)?.first() else {
        return Ok(None);
    };
    let value = session.get_attributes(object, &[AttributeType::Value])?.into_iter().find_map(|a| match a {
        Attribute::Value(v) => String::from_utf8(v).ok(),
        _ => None,
    });
    Ok(value)
}

fn unsupported_info(session: &Session, handle: ObjectHandle) -> Result<KeyInfo, TokenError> {
    let mut info =
        KeyInfo { label: String::new(), id: String::new(), alg: None, kid: None, fingerprint: None };
    for attribute in session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])? {
        match attribute {
            Attribute::Label(v) => info.label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::Id(v) => info.id = hex(&v),
            _ => {}
        }
    }
    Ok(info)
}
