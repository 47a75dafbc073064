//! `hashfleet-commander info`: the commander's public identity, read from
//! its identity file (works while `serve` runs).

use std::path::Path;

use serde::Serialize;

use crate::keys;

#[derive(Debug, Serialize)]
pub struct Info {
    pub public_key: String,
    pub node_id: String,
}

pub fn info(data_dir: &Path) -> anyhow::Result<Info> {
    let identity = keys::load_identity(data_dir)?;
    Ok(Info {
        public_key: identity.node_id().public_key_hex(),
        node_id: identity.node_id().to_string(),
    })
}
