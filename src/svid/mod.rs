//! X.509-SVIDs (SPEC §9): the node's CA, the CSRs pods send, and the
//! SPIFFE bundle that carries the trust domain's authorities.

pub mod authority;
pub mod bundle;
pub mod csr;

pub use authority::{AuthorityError, X509Authority, MAX_SVID_TTL};
