//! `libkryoptic_pkcs11.so` for the tests: kryoptic's function list behind `C_GetFunctionList`
//! alone. Without `C_GetInterface`, OpenSC's pkcs11-spy forwards every call (it would hand out
//! kryoptic's own 3.0 interface otherwise, and log nothing after it).

use kryoptic_lib::fns::general::fn_get_function_list;
use kryoptic_lib::pkcs11::{CK_FUNCTION_LIST_PTR_PTR, CK_RV};

/// The PKCS#11 entry point.
#[unsafe(no_mangle)]
pub extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    fn_get_function_list(list)
}
