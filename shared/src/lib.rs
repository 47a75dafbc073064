//! `hashfleet-shared`: what the commander and every sentry must agree on.
//!
//! This crate owns identities, the v1 wire messages, the frame codec,
//! domain-separated signing and the protocol state machines. It does **no
//! network I/O**: the only I/O it performs is reading and writing identity
//! and other private files (`secure_file`). Everything here can therefore be
//! tested with plain function calls, without sockets.
//!
//! Layout:
//! - [`node_id`], [`node_key`]: the Ed25519 node identity and its libp2p Peer ID.
//! - [`wallet`]: the secp256k1 wallet key, EIP-55 addresses, EIP-191 proofs.
//! - [`identity`]: the persisted `identity.json` of a sentry or commander.
//! - [`secure_file`]: atomic 0600 writes and permission checks.
//! - [`wire`]: the v1 message types, [`codec`]: length-prefixed frames.
//! - [`sign`]: domain tags and signing inputs.
//! - [`handshake`], [`heartbeat`], [`enroll`], [`action`]: pure protocol logic.
//! - [`tls`]: rustls configurations with RFC 7250 raw public keys.
//! - [`liveness`]: keep-alive, timeouts and reconnect backoff.

pub mod action;
pub mod batch;
pub mod codec;
pub mod enroll;
pub mod handshake;
pub mod heartbeat;
pub mod identity;
pub mod liveness;
pub mod node_id;
pub mod node_key;
pub mod rotation;
pub mod secure_file;
pub mod sign;
pub mod tls;
pub mod wallet;
pub mod wire;

pub use identity::{Identity, IdentityError};
pub use node_id::NodeId;
pub use node_key::NodeKey;
pub use wallet::{WalletAddress, WalletKey};

/// Milliseconds since the Unix epoch, by the local clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fresh random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand_core::RngCore;
    let mut out = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}
