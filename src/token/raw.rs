//! The one PKCS#11 call cryptoki does not offer in the shape needed: a single-part `C_Sign`
//! after our own `C_SignInit`, into a buffer of the signature's known length. cryptoki's `sign`
//! calls `C_SignInit` itself (keys with `CKA_ALWAYS_AUTHENTICATE`, a YubiKey's PIV slot 9c, need
//! a context-specific `C_Login` between the two, and raw ECDSA cannot be done in parts), and it
//! calls `C_Sign` twice, first for the length: a round trip more on a network HSM.

use super::TokenError;
use cryptoki::context::Function;
use cryptoki::error::Rv;
use cryptoki_sys::{CK_FUNCTION_LIST, CK_SESSION_HANDLE, CK_ULONG, CKR_OK};
use std::path::Path;

/// `C_Sign` from the module the token's context loaded.
pub struct RawSign {
    list: CK_FUNCTION_LIST,
    // Keeps the module loaded as long as `list` points into it.
    _library: cryptoki_sys::Pkcs11,
}

impl RawSign {
    /// Loads the module's function list. The context has the module loaded already, so this
    /// only takes another reference to it; nothing is initialized twice.
    pub fn load(module: &Path) -> Result<RawSign, TokenError> {
        let other = |what: String| TokenError::Other(format!("always-authenticate signing: {what}"));
        // SAFETY: loading a shared library runs its initializers; this is the module the
        // PKCS#11 context loaded and initialized already, so they have run.
        let library = unsafe { cryptoki_sys::Pkcs11::new(module) }.map_err(|e| other(e.to_string()))?;
        let get = library.C_GetFunctionList.as_ref().map_err(|e| other(e.to_string()))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList writes one pointer to a list that lives as long as the module.
        let rv = unsafe { get(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(other(format!("C_GetFunctionList returned {rv:#x}")));
        }
        // SAFETY: checked non-null above; the list is a plain struct of function pointers.
        let list = unsafe { *list };
        Ok(RawSign { list, _library: library })
    }

    /// `C_Sign` on a session whose `C_SignInit` (and context login) already happened, with an
    /// output buffer of `max_len` bytes.
    pub fn sign(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, TokenError> {
        let sign = self.list.C_Sign.ok_or_else(|| TokenError::Other("the module has no C_Sign".into()))?;
        let mut signature = vec![0u8; max_len];
        let mut len = max_len as CK_ULONG;
        // SAFETY: `data` and `signature` outlive the call, and `len` holds the buffer's size;
        // the token writes at most `len` bytes and stores the length written there.
        let rv = unsafe {
            sign(session, data.as_ptr().cast_mut(), data.len() as CK_ULONG, signature.as_mut_ptr(), &mut len)
        };
        Rv::from(rv).into_result(Function::Sign)?;
        signature.truncate(usize::try_from(len).unwrap_or(0));
        Ok(signature)
    }
}

// SAFETY: the function list is immutable data and PKCS#11 functions may be called from any
// thread once the module is initialized with OS locking, as the context does.
unsafe impl Send for RawSign {}
// SAFETY: as above; `&RawSign` only reads the list.
unsafe impl Sync for RawSign {}
