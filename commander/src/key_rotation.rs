//! Rotation of the commander's own key.
//!
//! `hashfleet-commander rotate-key` writes the next key to
//! `DATA_DIR/key-rotation.json` (0600, atomic) with the moment it takes
//! over. A running commander notices the file within a second
//! ([`watch`]): it announces the next key to every live session, and to
//! every session that starts later, in a message signed by the serving key
//! and the next key. Sentries pin the next key (persisted) and keep the old
//! one until the switch. At the switch the commander writes the next key
//! into `identity.json`, deletes the rotation file, serves the new key and
//! closes the live sessions so that they reconnect to it. A commander that
//! was stopped during the switch completes it when it starts.
//!
//! Sentries that are offline for the whole grace period learn nothing and
//! cannot connect afterwards: they need the new key configured by hand.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use hashfleet_shared::rotation::seal_announcement;
use hashfleet_shared::wire::{KeyAnnouncement, SignedKeyAnnouncement};
use hashfleet_shared::{identity::rfc3339_now, now_ms, secure_file, Identity, NodeId, NodeKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info};
use zeroize::Zeroize;

use crate::app::App;
use crate::sessions::{close, Control};

pub const ROTATION_FILE: &str = "key-rotation.json";
/// Default time between the announcement and the switch.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(86_400);
/// How often a running commander looks for a rotation.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The commander's serving identity; replaced at a key switch.
pub struct KeyCell(RwLock<Arc<Identity>>);

impl KeyCell {
    pub fn new(identity: Identity) -> Self {
        KeyCell(RwLock::new(Arc::new(identity)))
    }

    pub fn current(&self) -> Arc<Identity> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, identity: Identity) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(identity);
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationFile {
    new_node_id: String,
    new_node_private_key: String,
    announced_at_ms: u64,
    switch_at_ms: u64,
}

impl Drop for RotationFile {
    fn drop(&mut self) {
        self.new_node_private_key.zeroize();
    }
}

/// A rotation under way.
#[derive(Clone)]
pub struct PendingKey {
    pub key: NodeKey,
    pub announced_at_ms: u64,
    pub switch_at_ms: u64,
}

impl std::fmt::Debug for PendingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingKey")
            .field("node_id", &self.key.node_id())
            .field("announced_at_ms", &self.announced_at_ms)
            .field("switch_at_ms", &self.switch_at_ms)
            .finish()
    }
}

impl PendingKey {
    /// The announcement, signed by the serving key `current` and the next key.
    pub fn announcement(&self, current: &NodeKey) -> anyhow::Result<SignedKeyAnnouncement> {
        let ann = KeyAnnouncement {
            old_key: current.node_id(),
            new_key: self.key.node_id(),
            announced_at_ms: self.announced_at_ms,
            switch_at_ms: self.switch_at_ms,
        };
        Ok(seal_announcement(current, &self.key, &ann)?)
    }
}

pub fn rotation_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ROTATION_FILE)
}

/// Reads the pending rotation, if there is one.
pub fn load_pending(data_dir: &Path) -> anyhow::Result<Option<PendingKey>> {
    let path = rotation_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = zeroize::Zeroizing::new(secure_file::read_private(&path, 4096)?);
    let corrupt = |why: String| {
        anyhow::anyhow!(
            "{} is corrupt ({why}): delete it and run `hashfleet-commander rotate-key` again",
            path.display()
        )
    };
    let file: RotationFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&file.new_node_private_key, seed.as_mut())
        .map_err(|_| corrupt("new_node_private_key is not 64 hex digits".into()))?;
    let key = NodeKey::from_seed(&seed);
    if key.node_id().to_string() != file.new_node_id {
        return Err(corrupt("new_node_id does not match the key".into()));
    }
    Ok(Some(PendingKey {
        key,
        announced_at_ms: file.announced_at_ms,
        switch_at_ms: file.switch_at_ms,
    }))
}

/// Starts a rotation: writes the next key, switching `grace` from now.
/// With a rotation already pending, returns that one (`false`).
pub fn begin(
    data_dir: &Path,
    grace: Duration,
    now_ms: u64,
) -> anyhow::Result<(NodeId, PendingKey, bool)> {
    let identity = crate::keys::load_identity(data_dir)?;
    if let Some(pending) = load_pending(data_dir)? {
        return Ok((identity.node_id(), pending, false));
    }
    let key = NodeKey::generate();
    let file = RotationFile {
        new_node_id: key.node_id().to_string(),
        new_node_private_key: hex::encode(key.seed().as_ref()),
        announced_at_ms: now_ms,
        switch_at_ms: now_ms.saturating_add(grace.as_millis() as u64),
    };
    let json = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&file)?);
    let path = rotation_path(data_dir);
    secure_file::write_atomic(&path, &json, 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    let pending = PendingKey {
        key,
        announced_at_ms: file.announced_at_ms,
        switch_at_ms: file.switch_at_ms,
    };
    Ok((identity.node_id(), pending, true))
}

/// Makes the next key the commander's identity: `identity.json` first
/// (atomic), then the rotation file goes. Safe to repeat after a crash.
pub fn complete(data_dir: &Path, pending: &PendingKey) -> anyhow::Result<Identity> {
    let identity = crate::keys::load_identity(data_dir)?;
    let identity = if identity.node_id() == pending.key.node_id() {
        identity
    } else {
        let mut previous = identity.previous_node_ids.clone();
        previous.push(identity.node_id());
        let next = Identity {
            node: pending.key.clone(),
            wallet: identity.wallet.clone(),
            created_at: identity.created_at.clone(),
            previous_node_ids: previous,
            rotated_at: Some(rfc3339_now()),
        };
        next.save(&Identity::path_in(data_dir))?;
        next
    };
    let path = rotation_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(identity)
}

/// At start: finishes a rotation whose switch time has passed (or that a
/// crash left half done). Returns the rotation still pending, if any.
pub fn settle(data_dir: &Path, now_ms: u64) -> anyhow::Result<Option<PendingKey>> {
    let Some(pending) = load_pending(data_dir)? else {
        return Ok(None);
    };
    let current = crate::keys::load_identity(data_dir)?.node_id();
    if now_ms >= pending.switch_at_ms || current == pending.key.node_id() {
        complete(data_dir, &pending)?;
        info!(node_id = %pending.key.node_id(), previous = %current, "commander key rotation completed at start");
        return Ok(None);
    }
    Ok(Some(pending))
}

/// What the sessions announce while a rotation is pending.
#[derive(Default)]
pub struct Announcement(Mutex<Option<(PendingKey, SignedKeyAnnouncement)>>);

impl Announcement {
    pub fn get(&self) -> Option<SignedKeyAnnouncement> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    pub fn set(&self, value: Option<(PendingKey, SignedKeyAnnouncement)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn pending(&self) -> Option<PendingKey> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(p, _)| p.clone())
    }
}

/// Watches for a rotation, announces it, and switches when it is due.
pub async fn watch(app: Arc<App>, endpoint: quinn::Endpoint, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hashfleet_agent::runtime::until_stopped(&mut stop) => return,
        }
        if let Err(e) = step(&app, &endpoint).await {
            error!("commander key rotation: {e:#}");
        }
    }
}

async fn step(app: &Arc<App>, endpoint: &quinn::Endpoint) -> anyhow::Result<()> {
    let data_dir = app.config.data_dir.clone();
    let pending = match app.announcement.pending() {
        Some(p) => p,
        None => {
            let dir = data_dir.clone();
            let Some(pending) = tokio::task::spawn_blocking(move || load_pending(&dir)).await??
            else {
                return Ok(());
            };
            let signed = pending.announcement(&app.identity.current().node)?;
            app.announcement
                .set(Some((pending.clone(), signed.clone())));
            let told = app.sessions.tell_all(&Control::Announce(Box::new(signed)));
            info!(next = %pending.key.node_id(), switch_at_ms = pending.switch_at_ms, sessions = told, "announcing the commander's next key");
            pending
        }
    };
    if now_ms() < pending.switch_at_ms {
        return Ok(());
    }
    let dir = data_dir.clone();
    let p2 = pending.clone();
    let identity = tokio::task::spawn_blocking(move || complete(&dir, &p2)).await??;
    let server = crate::quic::listener::server_config(&identity.node, app.revoked.clone())?;
    let previous = app.identity.current().node_id();
    app.identity.replace(identity);
    endpoint.set_server_config(Some(server));
    app.announcement.set(None);
    app.sessions.close_all(
        close::KEY_ROTATED,
        "the commander key rotated: reconnect to its new key",
    );
    info!(node_id = %pending.key.node_id(), %previous, "commander key switched; sessions reconnect to the new key");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_is_idempotent_and_complete_survives_a_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Identity::load_or_create(dir.path()).unwrap();
        let (old, pending, created) = begin(dir.path(), Duration::from_secs(60), 1_000).unwrap();
        assert!(created);
        assert_eq!(old, first.node_id());
        assert_eq!(pending.switch_at_ms, 61_000);
        let mode = std::fs::metadata(rotation_path(dir.path()))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let (_, again, created) = begin(dir.path(), Duration::from_secs(5), 2_000).unwrap();
        assert!(!created);
        assert_eq!(again.key.node_id(), pending.key.node_id());
        // Not yet due: still pending at start.
        assert!(settle(dir.path(), 60_999).unwrap().is_some());
        // Due: completed at start, and the identity keeps its wallet.
        assert!(settle(dir.path(), 61_000).unwrap().is_none());
        let now = crate::keys::load_identity(dir.path()).unwrap();
        assert_eq!(now.node_id(), pending.key.node_id());
        assert_eq!(now.previous_node_ids, vec![first.node_id()]);
        assert_eq!(now.wallet.address(), first.wallet.address());
        assert!(!rotation_path(dir.path()).exists());
        // A crash after identity.json was written but before the file went:
        // the next start finishes the job without another switch.
        let (_, p2, _) = begin(dir.path(), Duration::from_secs(60), 0).unwrap();
        let mut half = crate::keys::load_identity(dir.path()).unwrap();
        half.node = p2.key.clone();
        half.save(&Identity::path_in(dir.path())).unwrap();
        assert!(settle(dir.path(), 1).unwrap().is_none());
        assert!(!rotation_path(dir.path()).exists());
        assert_eq!(
            crate::keys::load_identity(dir.path()).unwrap().node_id(),
            p2.key.node_id()
        );
    }
}
