//! The commander's own secrets in its data directory: its Ed25519 identity
//! (`identity.json`, outside sled so `info` works while `serve` runs) and
//! the bootstrap admin API token (`admin.token`). Both are 0600 and written
//! atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hashfleet_shared::enroll::generate_token;
use hashfleet_shared::secure_file;
use hashfleet_shared::Identity;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Loads the commander identity, creating it on first start.
pub fn load_or_create_identity(data_dir: &Path) -> anyhow::Result<(Identity, bool)> {
    Identity::load_or_create(data_dir).map_err(anyhow::Error::from)
}

/// Loads the identity without creating one (for `info`).
pub fn load_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let path = Identity::path_in(data_dir);
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: start `hashfleet-commander serve --data-dir {}` once to create the commander identity",
            path.display(),
            data_dir.display()
        );
    }
    Ok(Identity::load(&path)?)
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// Reads the admin token, writing a new one first if there is none.
pub fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = admin_token_path(data_dir);
    if !path.exists() {
        let token = generate_token("hfa_");
        secure_file::write_atomic(&path, token.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(token);
    }
    let bytes = secure_file::read_private(&path, 4096)?;
    let token = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is not text: delete it to have a new admin token made",
            path.display()
        )
    })?;
    let token = token.trim().to_string();
    if token.len() < 16 {
        anyhow::bail!(
            "{} holds a token shorter than 16 characters: delete it to have a new one made",
            path.display()
        );
    }
    Ok(token)
}
