//! The persisted identity (`identity.json`): a node key and a wallet key.
//!
//! Field names match the field agent Hashfleet replaces. Keys are lower-case
//! hex: `node_private_key` is the 32-byte Ed25519 seed, `node_public_key`
//! the raw 32-byte key, `wallet_private_key` the 32-byte scalar and
//! `wallet_public_key` the 33-byte compressed point.
//!
//! Loading checks permissions and that every public field matches the
//! private keys. A file that fails is never regenerated over.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::node_id::NodeId;
use crate::node_key::NodeKey;
use crate::secure_file::{self, SecureFileError};
use crate::wallet::{WalletAddress, WalletKey};

/// File name of the identity inside a home directory.
pub const IDENTITY_FILE: &str = "identity.json";
/// No identity file is anywhere near this large.
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Why an identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    File(#[from] SecureFileError),
    #[error(
        "{path} is not a valid Hashfleet identity ({reason}). It was left untouched: restore it from a backup, or move it aside to create a new identity (the sentry then needs a new enrollment)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create home directory {path}: {source}")]
    Home {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A node identity plus wallet, as held in memory.
#[derive(Clone)]
pub struct Identity {
    pub node: NodeKey,
    pub wallet: WalletKey,
    /// RFC 3339.
    pub created_at: String,
    /// Node ids this identity had before rotations, oldest first.
    pub previous_node_ids: Vec<NodeId>,
    /// RFC 3339 time of the last rotation.
    pub rotated_at: Option<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node.node_id())
            .field("wallet_address", &self.wallet.address())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The public half of an identity, safe to print.
#[derive(Debug, Clone, Serialize)]
pub struct PublicIdentity {
    pub node_id: NodeId,
    pub node_public_key: String,
    pub wallet_address: WalletAddress,
    pub wallet_public_key: String,
    pub created_at: String,
    pub previous_node_ids: Vec<NodeId>,
}

/// The on-disk form. Private fields are wiped when it is dropped.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    node_id: String,
    node_key_type: String,
    node_public_key: String,
    node_private_key: String,
    wallet_key_type: String,
    wallet_public_key: String,
    wallet_private_key: String,
    wallet_address: String,
    created_at: String,
    #[serde(default)]
    previous_node_ids: Vec<String>,
    #[serde(default)]
    rotated_at: Option<String>,
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        self.node_private_key.zeroize();
        self.wallet_private_key.zeroize();
    }
}

/// RFC 3339 UTC timestamp, whole seconds.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Identity {
    pub fn generate() -> Self {
        Identity {
            node: NodeKey::generate(),
            wallet: WalletKey::generate(),
            created_at: rfc3339_now(),
            previous_node_ids: Vec::new(),
            rotated_at: None,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    pub fn path_in(home: &Path) -> PathBuf {
        home.join(IDENTITY_FILE)
    }

    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            node_id: self.node_id(),
            node_public_key: self.node_id().public_key_hex(),
            wallet_address: self.wallet.address(),
            wallet_public_key: hex::encode(self.wallet.public_compressed()),
            created_at: self.created_at.clone(),
            previous_node_ids: self.previous_node_ids.clone(),
        }
    }

    /// Loads the identity in `home`, or creates one if the file is absent.
    /// Returns whether it was created. An existing file that cannot be read
    /// or fails its checks is an error: it is never overwritten.
    pub fn load_or_create(home: &Path) -> Result<(Self, bool), IdentityError> {
        secure_file::ensure_private_dir(home).map_err(|source| IdentityError::Home {
            path: home.to_path_buf(),
            source,
        })?;
        let path = Self::path_in(home);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok((Self::load(&path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate();
                identity.save(&path)?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::File(SecureFileError::Io { path, source })),
        }
    }

    /// Loads and checks an identity file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = secure_file::read_private(path, MAX_IDENTITY_FILE)?;
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file: IdentityFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("JSON: {e}")))?;
        Self::from_file(&file).map_err(corrupt)
    }

    fn from_file(file: &IdentityFile) -> Result<Self, String> {
        if file.node_key_type != "ed25519" {
            return Err(format!(
                "node_key_type is `{}`, expected `ed25519`",
                file.node_key_type
            ));
        }
        if file.wallet_key_type != "secp256k1" {
            return Err(format!(
                "wallet_key_type is `{}`, expected `secp256k1`",
                file.wallet_key_type
            ));
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&file.node_private_key, seed.as_mut())
            .map_err(|_| "node_private_key is not 64 hex digits".to_string())?;
        let node = NodeKey::from_seed(&seed);
        let node_id = node.node_id();
        if file.node_public_key != node_id.public_key_hex() {
            return Err("node_public_key does not match node_private_key".into());
        }
        if file.node_id != node_id.to_string() {
            return Err("node_id does not match node_private_key".into());
        }
        let mut scalar = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&file.wallet_private_key, scalar.as_mut())
            .map_err(|_| "wallet_private_key is not 64 hex digits".to_string())?;
        let wallet = WalletKey::from_bytes(&scalar).map_err(|e| e.to_string())?;
        if file.wallet_public_key != hex::encode(wallet.public_compressed()) {
            return Err("wallet_public_key does not match wallet_private_key".into());
        }
        if file.wallet_address != wallet.address().to_string() {
            return Err("wallet_address does not match wallet_private_key".into());
        }
        humantime::parse_rfc3339(&file.created_at)
            .map_err(|_| format!("created_at `{}` is not RFC 3339", file.created_at))?;
        let previous_node_ids = file
            .previous_node_ids
            .iter()
            .map(|s| {
                s.parse::<NodeId>()
                    .map_err(|e| format!("previous_node_ids: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Identity {
            node,
            wallet,
            created_at: file.created_at.clone(),
            previous_node_ids,
            rotated_at: file.rotated_at.clone(),
        })
    }

    /// Writes the identity atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let file = IdentityFile {
            node_id: self.node_id().to_string(),
            node_key_type: "ed25519".into(),
            node_public_key: self.node_id().public_key_hex(),
            node_private_key: hex::encode(self.node.seed().as_ref()),
            wallet_key_type: "secp256k1".into(),
            wallet_public_key: hex::encode(self.wallet.public_compressed()),
            wallet_private_key: hex::encode(self.wallet.secret_bytes().as_ref()),
            wallet_address: self.wallet.address().to_string(),
            created_at: self.created_at.clone(),
            previous_node_ids: self
                .previous_node_ids
                .iter()
                .map(|n| n.to_string())
                .collect(),
            rotated_at: self.rotated_at.clone(),
        };
        let mut json = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&file).expect("identity serializes to JSON"),
        );
        json.push(b'\n');
        secure_file::write_atomic(path, &json, 0o600).map_err(|source| IdentityError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}
