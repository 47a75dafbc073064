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

/// What `validate` checks of the files `serve` uses, creating none: the
/// data directory (when it exists; `serve` creates it) is a directory this
/// user can write; the identity and admin token there (when present) are
/// private and readable; a configured HTTPS certificate is readable and
/// its key private. Run it as the user the commander runs as.
pub fn check_files(
    data_dir: &Path,
    https_cert: Option<&Path>,
    https_key: Option<&Path>,
) -> anyhow::Result<()> {
    match std::fs::metadata(data_dir) {
        Ok(meta) if !meta.is_dir() => {
            anyhow::bail!("data_dir {} is not a directory", data_dir.display())
        }
        Ok(_) => secure_file::probe_writable(data_dir).with_context(|| {
            format!(
                "data_dir {} is not writable by this user: run validate as the user the commander runs as, and give it the directory (mode 0700)",
                data_dir.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot reach data_dir {}: {e}", data_dir.display()),
    }
    let identity = Identity::path_in(data_dir);
    if identity.exists() {
        Identity::load(&identity)?;
    }
    let token = admin_token_path(data_dir);
    if token.exists() {
        secure_file::read_private(&token, 4096)?;
    }
    if let Some(cert) = https_cert {
        std::fs::read(cert)
            .with_context(|| format!("cannot read https_cert {}", cert.display()))?;
    }
    if let Some(key) = https_key {
        secure_file::read_private(key, 64 * 1024)?;
    }
    Ok(())
}
