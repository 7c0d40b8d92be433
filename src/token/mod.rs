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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use uri::{Identity, Selector, token_text};

/// How long after a rejected `unlock` no other PIN is tried.
pub const UNLOCK_BACKOFF: Duration = Duration::from_secs(30);

/// One token in one loaded PKCS#11 module, logged in as the user.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    label: String,
    /// The PIN that logged in, kept to log in again after the token drops the login; `None`
    /// while the agent is locked (locking drops the PIN, which zeroizes it). The mutex also
    /// serializes logins, so that workers recovering at once spend one try, not one each.
    pin: Mutex<Option<AuthPin>>,
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
            pin_rejected: AtomicBool::new(false),
            unlock_rejected_at: Mutex::new(None),
            mechanisms,
            keys: RwLock::new(HashMap::new()),
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
        Ok(())
    }

    pub fn is_locked(&self) -> bool {
        self.pin.lock().unwrap_or_else(|e| e.into_inner()).is_none()
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
        let key = Arc::new(keys::find(session, &selector, name)?);
        let mut cache = self.keys.write().unwrap_or_else(|e| e.into_inner());
        Ok(cache.entry(name.to_owned()).or_insert(key).clone())
    }

    /// Forgets the cached key handles (after the token dropped its sessions).
    pub fn forget_keys(&self) {
        self.keys.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Lists the signing keys on the token.
    pub fn list_keys(&self, session: &Session) -> Result<Vec<KeyInfo>, TokenError> {
        keys::list(session)
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
        let signature = if key.always_authenticate {
            let raw = self
                .raw
                .get_or_init(|| raw::RawSign::load(&self.module).map_err(|e| e.to_string()))
                .as_ref()
                .map_err(|e| TokenError::Other(e.clone()))?;
            let pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
            let pin = pin.as_ref().ok_or(TokenError::Locked)?;
            if self.pin_rejected.load(Ordering::SeqCst) {
                return Err(TokenError::PinRejectedBefore);
            }
            session.sign_init(&plan.mechanism, key.handle)?;
            // The PIN that logged in, once more for this one signature (CKA_ALWAYS_AUTHENTICATE).
            // A PIN changed behind the agent's back is refused here: remember that, or every
            // signature would spend one more of the token's few tries.
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
            raw.sign(session.handle(), &data, plan.signature_len)?
        } else {
            session.sign(&plan.mechanism, key.handle, &data)?
        };
        if signature.len() != plan.signature_len {
            return Err(TokenError::BadSignature { alg, len: signature.len() });
        }
        Ok(signature)
    }

    /// Creates a key on the token: imported from a file, or generated inside it.
    pub fn create(&self, new: &NewKey) -> Result<KeyInfo, TokenError> {
        let session = self.open_rw_session()?;
        let label = create::create(&session, new, &self.mechanisms)?;
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
