//! The PKCS#11 layer: loading the module, finding the token, logging in, finding keys and
//! signing. Every call here blocks; the daemon makes them from the session pool's worker
//! threads ([`pool`]), never from the async reactor.

mod create;
mod error;
mod keys;
pub mod pool;
mod raw;
mod sign;
pub mod uri;

pub use create::NewKey;
pub use error::TokenError;
pub use keys::Key;

use crate::jwt::Alg;
use crate::wire::{KeyInfo, PinCounters, TokenStatus};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use uri::{Identity, Selector, token_text};

/// How long after a rejected `unlock` no other PIN is tried.
pub const UNLOCK_BACKOFF: Duration = Duration::from_secs(30);
/// How often, at most, the agent reloads a module that reads the token's objects only at
/// `C_Initialize` (tpm2-pkcs11), to find keys other programs made since.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// One token in one loaded PKCS#11 module, logged in as the user.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    label: String,
    /// The PIN that logged in, kept to log in again after the token drops the login; `None`
    /// while the agent is locked (locking drops the PIN, which zeroizes it). The mutex also
    /// serializes logins, so that workers recovering at once spend one try, not one each; it
    /// is held across a `C_Login`, so nothing that only asks whether the agent is locked takes
    /// it (that is `locked`).
    pin: Mutex<Option<AuthPin>>,
    /// Whether `pin` is `None`: set with it, read without waiting for a login on a slow token.
    locked: AtomicBool,
    /// How long a signature takes on the device, in microseconds: an exponentially weighted
    /// mean (1/8) of [`sign`](Self::sign)'s calls. The pool calls a token inline while this is
    /// short; calls that never reach the device (a cached key's public half, a refusal) do not
    /// count, so they cannot make a slow token look fast.
    signing_micros: AtomicU64,
    /// Set when the token rejected the PIN: from then on nothing logs in by itself.
    pin_rejected: AtomicBool,
    /// When the token last rejected a PIN `unlock` gave: no other is tried for
    /// [`UNLOCK_BACKOFF`].
    unlock_rejected_at: Mutex<Option<Instant>>,
    mechanisms: Vec<MechanismType>,
    /// Key handles by the name they were asked for, found once. Cleared when the token loses
    /// its objects' handles.
    keys: RwLock<HashMap<String, Arc<Key>>>,
    /// `C_Sign` for always-authenticate keys, loaded the first time one signs.
    raw: OnceLock<Result<raw::RawSign, String>>,
    /// The token's identity, to check key URIs that name a token against it.
    identity: Identity,
    /// Held shared by every PKCS#11 call of the pool, and exclusively to reload the module.
    gate: RwLock<()>,
    /// How many times the module was reloaded: sessions of an older generation are gone.
    generation: AtomicU64,
    /// Whether a reload may be asked for (the pool can do it), and when the last one was.
    reloads: AtomicBool,
    reloaded_at: Mutex<Option<Instant>>,
    /// How tpm2-pkcs11's store file stood when the module last read it.
    store_seen: Mutex<Option<StoreStamp>>,
}

/// A store file's modification time and size: when they change, another program changed the
/// token's objects.
type StoreStamp = (std::time::SystemTime, u64);

/// tpm2-pkcs11's store file, found as the module finds it (`$TPM2_PKCS11_STORE`, then
/// `/etc/tpm2_pkcs11`, then `~/.tpm2_pkcs11`), and how it stands now.
fn tpm_store_stamp() -> Option<StoreStamp> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tpm2_pkcs11"));
    let folders = std::env::var_os("TPM2_PKCS11_STORE").map(PathBuf::from).into_iter();
    let folders = folders.chain([PathBuf::from("/etc/tpm2_pkcs11")]).chain(home);
    folders.filter_map(|folder| std::fs::metadata(folder.join("tpm2_pkcs11.sqlite3")).ok()).find_map(|meta| {
        let modified = meta.modified().ok()?;
        Some((modified, meta.len()))
    })
}

impl Token {
    /// Loads `module`, finds the token `name` selects (a label, `serial=...` or a PKCS#11
    /// URI) and logs in with `pin`. A rejected PIN is tried exactly once and reported with the
    /// token's PIN counters.
    pub fn open(module: &Path, name: &str, pin: AuthPin) -> Result<(Token, Session), TokenError> {
        let selector = Selector::token(name).map_err(TokenError::BadName)?;
        let ctx = Pkcs11::new(module)
            .map_err(|e| TokenError::Module { path: module.display().to_string(), reason: e.to_string() })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).or_else(|e| match e {
            CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _) => Ok(()),
            e => Err(e),
        })?;
        let (slot, identity) = find_slot(&ctx, &selector, name)?;
        let mechanisms = ctx.get_mechanism_list(slot)?;
        let token = Token {
            ctx,
            slot,
            module: module.to_path_buf(),
            label: identity.label.clone(),
            identity,
            raw: OnceLock::new(),
            pin: Mutex::new(Some(pin)),
            locked: AtomicBool::new(false),
            signing_micros: AtomicU64::new(0),
            pin_rejected: AtomicBool::new(false),
            unlock_rejected_at: Mutex::new(None),
            mechanisms,
            keys: RwLock::new(HashMap::new()),
            gate: RwLock::new(()),
            generation: AtomicU64::new(0),
            reloads: AtomicBool::new(false),
            reloaded_at: Mutex::new(None),
            store_seen: Mutex::new(tpm_store_stamp()),
        };
        let session = token.open_session()?;
        token.login(&session)?;
        Ok((token, session))
    }

    /// Opens a read-only session (signing needs no more).
    pub fn open_session(&self) -> Result<Session, TokenError> {
        Ok(self.ctx.open_ro_session(self.slot)?)
    }

    /// Opens a read-write session, for creating keys.
    pub fn open_rw_session(&self) -> Result<Session, TokenError> {
        Ok(self.ctx.open_rw_session(self.slot)?)
    }

    /// Logs the user in unless the token already has the login. Never tries a PIN the token
    /// has rejected before, and never logs in while the agent is locked.
    pub fn login(&self, session: &Session) -> Result<(), TokenError> {
        let pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let pin = pin.as_ref().ok_or(TokenError::Locked)?;
        if self.pin_rejected.load(Ordering::SeqCst) {
            return Err(TokenError::PinRejectedBefore);
        }
        if let Ok(info) = session.get_session_info()
            && matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser)
        {
            return Ok(());
        }
        self.login_with(session, pin)
    }

    /// One `C_Login`; a rejection is remembered, so that nothing tries that PIN again.
    fn login_with(&self, session: &Session, pin: &AuthPin) -> Result<(), TokenError> {
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                _,
            )) => {
                self.pin_rejected.store(true, Ordering::SeqCst);
                Err(TokenError::PinRejected { rv, counters: self.pin_counters() })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Locks the agent: logs out, forgets the PIN and the key handles. Nothing logs in again
    /// until [`unlock`](Self::unlock).
    pub fn lock(&self, session: &Session) {
        let mut pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        *pin = None;
        self.locked.store(true, Ordering::SeqCst);
        self.logout(session);
        self.forget_keys();
    }

    /// Unlocks the agent with `pin`, tried once. It also serves to give a new PIN after the
    /// token rejected the one the agent held. After a rejected `unlock`, no PIN is tried for
    /// [`UNLOCK_BACKOFF`]; and none at all while the token reports its final try (or a locked
    /// PIN): a YubiKey or a YubiHSM locks after a few wrong PINs, and guessing must not be
    /// what locks it.
    pub fn unlock(&self, session: &Session, pin: AuthPin) -> Result<(), TokenError> {
        let mut held = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() && !self.pin_rejected.load(Ordering::SeqCst) {
            return Err(TokenError::NotLocked);
        }
        let mut rejected_at = self.unlock_rejected_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wait) = rejected_at.and_then(|at| UNLOCK_BACKOFF.checked_sub(at.elapsed())) {
            return Err(TokenError::UnlockTooSoon { wait_secs: wait.as_secs() + 1 });
        }
        let counters = self.pin_counters();
        if counters.final_try || counters.locked {
            return Err(TokenError::FinalTry { counters });
        }
        if let Err(e) = self.login_with(session, &pin) {
            if matches!(e, TokenError::PinRejected { .. }) {
                *rejected_at = Some(Instant::now());
            }
            return Err(e);
        }
        self.pin_rejected.store(false, Ordering::SeqCst);
        *held = Some(pin);
        self.locked.store(false, Ordering::SeqCst);
        Ok(())
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// How long a signature has taken on the device lately, in microseconds (0 before the
    /// first).
    pub fn signing_micros(&self) -> u64 {
        self.signing_micros.load(Ordering::Relaxed)
    }

    /// Logs out (best effort, at shutdown).
    pub fn logout(&self, session: &Session) {
        match session.logout() {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => {}
            Err(e) => crate::warn!("logging out of the token failed: {e}"),
        }
    }

    /// Calls `C_Finalize`. Every session must be closed first.
    pub fn finalize(self) {
        if let Err(e) = self.ctx.finalize() {
            crate::warn!("finalizing the PKCS#11 module failed: {e}");
        }
    }

    /// The session count the token allows, if it says.
    pub fn max_sessions(&self) -> Option<usize> {
        match self.ctx.get_token_info(self.slot).ok()?.max_session_count() {
            Limit::Max(n) => usize::try_from(n).ok(),
            Limit::Unavailable | Limit::Infinite => None,
        }
    }

    /// The token's user PIN flags, as it reports them now.
    pub fn pin_counters(&self) -> PinCounters {
        match self.ctx.get_token_info(self.slot) {
            Ok(info) => PinCounters {
                count_low: info.user_pin_count_low(),
                final_try: info.user_pin_final_try(),
                locked: info.user_pin_locked(),
            },
            Err(_) => PinCounters::default(),
        }
    }

    /// Label, manufacturer, model, serial and state, for `status`.
    pub fn status(&self, session: Option<&Session>) -> TokenStatus {
        let info = self.ctx.get_token_info(self.slot);
        let field = |f: fn(&cryptoki::slot::TokenInfo) -> &str| {
            info.as_ref().map(|i| token_text(f(i))).unwrap_or_default()
        };
        let state = match (&info, session.map(Session::get_session_info)) {
            (Err(e), _) => format!("unreachable: {e}"),
            _ if self.is_locked() => "locked".to_owned(),
            (_, Some(Ok(s))) if matches!(s.session_state(), SessionState::RoUser | SessionState::RwUser) => {
                "logged_in".to_owned()
            }
            (_, Some(Ok(_))) => "logged_out".to_owned(),
            (_, Some(Err(e))) => format!("session lost: {e}"),
            (_, None) => "no session".to_owned(),
        };
        TokenStatus {
            label: self.label.clone(),
            manufacturer: field(|i| i.manufacturer_id()),
            model: field(|i| i.model()),
            serial: field(|i| i.serial_number()),
            module: self.module.display().to_string(),
            state,
            pin: self.pin_counters(),
        }
    }

    /// The key `name` selects (a label or a PKCS#11 URI), from the cache or found on the token.
    pub fn key(&self, session: &Session, name: &str) -> Result<Arc<Key>, TokenError> {
        if let Some(key) = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(key.clone());
        }
        let selector = Selector::key(name).map_err(TokenError::BadName)?;
        if selector.names_token() && !selector.fits(&self.identity) {
            return Err(match &selector.unknown {
                Some(attribute) => {
                    TokenError::UnknownAttribute { key: name.to_owned(), attribute: attribute.clone() }
                }
                None => TokenError::OtherToken { key: name.to_owned(), token: self.identity.label.clone() },
            });
        }
        let key = match keys::find(session, &selector, name) {
            Err(TokenError::NoKey(_)) if self.wants_reload() => return Err(TokenError::Stale),
            found => Arc::new(found?),
        };
        let mut cache = self.keys.write().unwrap_or_else(|e| e.into_inner());
        Ok(cache.entry(name.to_owned()).or_insert(key).clone())
    }

    /// Forgets the cached key handles (after the token dropped its sessions).
    pub fn forget_keys(&self) {
        self.keys.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Lists the signing keys on the token.
    pub fn list_keys(&self, session: &Session) -> Result<Vec<KeyInfo>, TokenError> {
        if self.wants_reload() {
            return Err(TokenError::Stale);
        }
        keys::list(session)
    }

    /// Whether the module should be reloaded before keys are looked for: it is one that reads
    /// the token's objects only at `C_Initialize` (tpm2-pkcs11), the pool can reload it, and
    /// its store changed since it read it (or, when the store cannot be found, no reload was
    /// made in the last [`RELOAD_INTERVAL`]).
    fn wants_reload(&self) -> bool {
        if !(self.is_tpm() && self.reloads.load(Ordering::SeqCst)) || self.is_locked() {
            return false;
        }
        match tpm_store_stamp() {
            Some(now) => *self.store_seen.lock().unwrap_or_else(|e| e.into_inner()) != Some(now),
            None => {
                let at = self.reloaded_at.lock().unwrap_or_else(|e| e.into_inner());
                at.is_none_or(|at| at.elapsed() >= RELOAD_INTERVAL)
            }
        }
    }

    /// Lets [`Stale`](TokenError::Stale) be asked for: the pool, which can reload, runs the calls.
    pub(crate) fn allow_reload(&self) {
        self.reloads.store(true, Ordering::SeqCst);
    }

    /// The gate every call of the pool holds shared, and a reload exclusively.
    pub(crate) fn gate(&self) -> &RwLock<()> {
        &self.gate
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// `C_Finalize` and `C_Initialize` again, so that the module reads the token's objects
    /// anew. Every session dies with it; the caller holds the gate exclusively, and the
    /// workers open new sessions (and log in, once) when they see the new generation.
    pub(crate) fn reload(&self) -> Result<(), TokenError> {
        let _logins = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        *self.reloaded_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        crate::info!("reloading the module to find keys made since it was loaded");
        self.ctx.clone().finalize()?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.forget_keys();
        // What the module reads now; a change after this is seen at the next lookup.
        *self.store_seen.lock().unwrap_or_else(|e| e.into_inner()) = tpm_store_stamp();
        self.ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        Ok(())
    }

    /// Whether the module is tpm2-pkcs11, whose TPM cannot take private keys from outside.
    fn is_tpm(&self) -> bool {
        self.identity.library_manufacturer.starts_with("tpm2-software")
    }

    /// Signs JWS signing input with `key` for `alg`, inside the token. Returns the raw JWS
    /// signature (`r || s` for ECDSA).
    pub fn sign(&self, session: &Session, key: &Key, alg: Alg, input: &[u8]) -> Result<Vec<u8>, TokenError> {
        if !key.signs(alg) {
            return Err(TokenError::WrongAlg {
                key: key.info.label.clone(),
                asked: alg,
                can: key.alg_names(),
            });
        }
        let plan = sign::plan(alg, key, &self.mechanisms)?;
        let data = plan.data(input);
        // One `C_Sign` with a buffer of the known length, not cryptoki's two (the first only
        // asks for the length): on a network HSM, or through a YubiHSM's connector, each call
        // may be a round trip.
        let raw = self
            .raw
            .get_or_init(|| raw::RawSign::load(&self.module).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| TokenError::Other(e.clone()))?;
        let started = Instant::now();
        let signature = self.sign_on_device(session, key, &plan.mechanism, raw, &data, plan.signature_len);
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // One writer at a time is not needed: a lost update only delays the mean a little.
        let mean = self.signing_micros.load(Ordering::Relaxed);
        self.signing_micros.store(mean - mean / 8 + took / 8, Ordering::Relaxed);
        let signature = signature?;
        if signature.len() != plan.signature_len {
            return Err(TokenError::BadSignature { alg, len: signature.len() });
        }
        Ok(signature)
    }

    /// `C_SignInit` and `C_Sign`, with the context-specific login between them that an
    /// always-authenticate key needs.
    fn sign_on_device(
        &self,
        session: &Session,
        key: &Key,
        mechanism: &cryptoki::mechanism::Mechanism,
        raw: &raw::RawSign,
        data: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, TokenError> {
        session.sign_init(mechanism, key.handle)?;
        if key.always_authenticate {
            // The PIN that logged in, once more for this one signature (CKA_ALWAYS_AUTHENTICATE),
            // under the login mutex: a PIN changed behind the agent's back is refused here, and
            // sessions that sign at once must not each spend one of the token's few tries on
            // it. The signature itself is made after the mutex is let go.
            let pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
            let pin = pin.as_ref().ok_or(TokenError::Locked)?;
            if self.pin_rejected.load(Ordering::SeqCst) {
                return Err(TokenError::PinRejectedBefore);
            }
            match session.login(UserType::ContextSpecific, Some(pin)) {
                Ok(()) => {}
                Err(CkError::Pkcs11(
                    rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                    _,
                )) => {
                    self.pin_rejected.store(true, Ordering::SeqCst);
                    return Err(TokenError::PinRejected { rv, counters: self.pin_counters() });
                }
                Err(e) => return Err(e.into()),
            }
        }
        raw.sign(session.handle(), data, len)
    }

    /// Makes a self-signed certificate for `key` of `subject`, valid for `days`, signed inside
    /// the token with the key's own alg, and stores it next to the key (same `CKA_ID` and
    /// label). Returns its DER.
    pub fn make_cert(
        &self,
        session: &Session,
        key: &Key,
        subject: &str,
        days: u32,
    ) -> Result<Vec<u8>, TokenError> {
        let public = key.public.as_ref().ok_or_else(|| TokenError::NoPublicKey(key.info.label.clone()))?;
        if key.x5t_s256.is_some() {
            return Err(TokenError::Exists(format!(
                "key {:?} has a certificate on the token already; delete it first (pkcs11-tool --delete-object --type cert)",
                key.info.label
            )));
        }
        let mut serial = [0u8; 16];
        serial.copy_from_slice(&session.generate_random_vec(16)?);
        let unsigned = crate::key::cert::prepare(public, key.alg, subject, days, serial)
            .map_err(|e| TokenError::BadKey(e.to_string()))?;
        let signature = self.sign(session, key, key.alg, unsigned.to_sign())?;
        let der = unsigned.assemble(&signature).map_err(|e| TokenError::Other(e.to_string()))?;
        let subject = crate::key::cert::subject_der(&der).map_err(|e| TokenError::Other(e.to_string()))?;
        let rw = self.open_rw_session()?;
        let id = crate::wire::parse_hex(&key.info.id).map_err(TokenError::Other)?;
        rw.create_object(&create::certificate_template(&key.info.label, &id, &subject, &der))?;
        // The key's cached description lacks the certificate's thumbprint.
        self.forget_keys();
        Ok(der)
    }

    /// Creates a key on the token: imported from a file, or generated inside it.
    pub fn create(&self, new: &NewKey) -> Result<KeyInfo, TokenError> {
        if let NewKey::Generate { alg: Alg::Es512, .. } = new
            && self.is_tpm()
        {
            // tpm2-pkcs11 makes P-521 keys but cannot sign with them (nor return their point).
            return Err(TokenError::BadKey(
                "a TPM (tpm2-pkcs11) does not sign with P-521 keys, so no ES512".into(),
            ));
        }
        let session = self.open_rw_session()?;
        let label = create::create(&session, new, &self.mechanisms).map_err(|e| {
            match (new, &e) {
            (
                NewKey::Import { .. },
                TokenError::Pkcs11(RvError::AttributeValueInvalid, cryptoki::context::Function::CreateObject),
            ) if self.is_tpm() => TokenError::BadKey(
                "this token is a TPM (tpm2-pkcs11), which takes no private key from outside through PKCS#11: \
                 import the file with `tpm2_ptool import --label TOKEN --key-label LABEL --algorithm ecc \
                 --privkey FILE` (rsa for an RSA key), then sign with it here"
                    .into(),
            ),
            _ => e,
        }
        })?;
        // A key of that label that was deleted behind the agent's back may still be cached.
        self.keys.write().unwrap_or_else(|e| e.into_inner()).remove(&label);
        self.key(&session, &label).map(|key| key.info.clone())
    }
}

fn find_slot(ctx: &Pkcs11, selector: &Selector, name: &str) -> Result<(Slot, Identity), TokenError> {
    if let Some(attribute) = &selector.unknown {
        return Err(TokenError::UnknownAttribute { key: name.to_owned(), attribute: attribute.clone() });
    }
    let library = ctx.get_library_info()?;
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for slot in ctx.get_slots_with_token()? {
        let Ok(info) = ctx.get_token_info(slot) else { continue };
        // An empty slot's token (tpm2-pkcs11 shows one after the last token) cannot be the
        // agent's, and has the same serial as the others there.
        if !info.token_initialized() {
            continue;
        }
        let slot_info = ctx.get_slot_info(slot).ok();
        let version = library.library_version();
        let identity = Identity {
            slot_id: slot.id(),
            label: token_text(info.label()),
            manufacturer: token_text(info.manufacturer_id()),
            model: token_text(info.model()),
            serial: token_text(info.serial_number()),
            slot_description: slot_info
                .as_ref()
                .map(|s| token_text(s.slot_description()))
                .unwrap_or_default(),
            slot_manufacturer: slot_info
                .as_ref()
                .map(|s| token_text(s.manufacturer_id()))
                .unwrap_or_default(),
            library_manufacturer: token_text(library.manufacturer_id()),
            library_description: token_text(library.library_description()),
            library_version: format!("{}.{}", version.major(), version.minor()),
        };
        seen.push(format!("{:?} (serial {})", identity.label, identity.serial));
        if selector.fits(&identity) {
            found.push((slot, identity));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(TokenError::NoToken { name: name.to_owned(), seen }),
        _ => Err(TokenError::AmbiguousToken { name: name.to_owned() }),
    }
}
