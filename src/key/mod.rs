//! Keys outside the token: public keys (SPKI, JWK, thumbprints, verification) and the private
//! key files `import` reads.

pub mod cert;
pub mod file;
mod public;

pub use public::{Curve, KeyError, PublicKey};
