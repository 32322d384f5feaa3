//! Where clients meet vigil: listeners and their connection slots, client TLS
//! (certificates, ALPN), limits on client requests, the descriptor budget.

pub mod descriptors;
pub mod limits;
pub mod listener;
pub mod tls;
