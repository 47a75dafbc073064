//! Identity rotation on the sentry: the next identity on disk, promotion,
//! re-signing the outbox, the commander pins a key announcement adds, and
//! the local control socket that `identity rotate` talks to.
//!
//! **Node key rotation** is crash-safe by its order:
//! 1. the next identity is written to `identity.next.json` (0600, atomic);
//! 2. a `RotateKey` signed by the current and the next key goes out on a
//!    session of the current key;
//! 3. once the commander answers `Rotated`, `identity.json` is replaced
//!    (atomic), then `identity.next.json` is removed, then the outbox
//!    entries not yet acknowledged are re-signed with the new key, and the
//!    sentry reconnects with it.
//!
//! A crash between any two steps resumes: before 3 the sentry still holds
//! the old key and the same next key, so it sends the same rotation again
//! (the commander answers an already-done rotation as done, inside its
//! grace window; after it, the commander refuses the old key with
//! `KeyRotated` and the sentry promotes its next key by itself). After 3
//! only leftovers remain, which [`settle`] tidies at start.
//!
//! **Wallet rotation** uses the same file: its wallet differs from the
//! current one until the commander has bound it (`BindWallet`, signed by
//! the wallet over the node id and the session's nonce).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hashfleet_shared::codec;
use hashfleet_shared::heartbeat;
use hashfleet_shared::identity::rfc3339_now;
use hashfleet_shared::wire::{Heartbeat, KeyAnnouncement, SentryMessage};
use hashfleet_shared::{secure_file, Identity, IdentityError, NodeId, NodeKey, WalletKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::outbox::Outbox;

pub const NEXT_IDENTITY_FILE: &str = "identity.next.json";
pub const PINS_FILE: &str = "commander-pins.json";
pub const CONTROL_SOCKET: &str = "control.sock";
/// Successor pins kept at most (oldest dropped).
const MAX_SUCCESSORS: usize = 64;
/// How long the control socket waits for a rotation to complete.
const CONTROL_WAIT: Duration = Duration::from_secs(20);
/// Longest request line on the control socket.
const MAX_CONTROL_LINE: u64 = 1024;

/// The sentry's identity, replaced when a rotation completes. Clones share it.
#[derive(Clone)]
pub struct IdentityCell(Arc<watch::Sender<Arc<Identity>>>);

impl IdentityCell {
    pub fn new(identity: Identity) -> Self {
        IdentityCell(Arc::new(watch::Sender::new(Arc::new(identity))))
    }

    pub fn current(&self) -> Arc<Identity> {
        self.0.borrow().clone()
    }

    pub fn replace(&self, identity: Identity) {
        self.0.send_replace(Arc::new(identity));
    }

    /// Wakes on every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Identity>> {
        self.0.subscribe()
    }
}

impl From<Arc<Identity>> for IdentityCell {
    fn from(identity: Arc<Identity>) -> Self {
        IdentityCell(Arc::new(watch::Sender::new(identity)))
    }
}

pub fn next_path(home: &Path) -> PathBuf {
    home.join(NEXT_IDENTITY_FILE)
}

/// The next identity, if one is waiting (checked like `identity.json`).
pub fn load_next(home: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = next_path(home);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Identity::load(&path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityError::File(secure_file::SecureFileError::Io {
            path,
            source: e,
        })),
    }
}

/// What the next identity still has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Nothing,
    /// Its node key is not bound yet.
    NodeKey,
    /// Its node key is current; its wallet is not bound yet.
    Wallet,
}

pub fn pending(current: &Identity, next: Option<&Identity>) -> Pending {
    match next {
        Some(n) if n.node_id() != current.node_id() => Pending::NodeKey,
        Some(n) if n.wallet.address() != current.wallet.address() => Pending::Wallet,
        _ => Pending::Nothing,
    }
}

/// What to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    NodeKey,
    Wallet,
}

/// Writes (or keeps) the next identity with a new node key or wallet.
/// A next key or wallet already waiting is reused, so asking twice is one
/// rotation.
pub fn prepare(home: &Path, current: &Identity, what: Rotate) -> anyhow::Result<Identity> {
    let next = load_next(home)?;
    let node_waiting = next
        .as_ref()
        .filter(|n| n.node_id() != current.node_id())
        .map(|n| n.node.clone());
    let wallet_waiting = next
        .as_ref()
        .filter(|n| n.wallet.address() != current.wallet.address())
        .map(|n| n.wallet.clone());
    let node = match (what, node_waiting) {
        (_, Some(key)) => key,
        (Rotate::NodeKey, None) => NodeKey::generate(),
        (Rotate::Wallet, None) => current.node.clone(),
    };
    let wallet = match (what, wallet_waiting) {
        (_, Some(w)) => w,
        (Rotate::Wallet, None) => WalletKey::generate(),
        (Rotate::NodeKey, None) => current.wallet.clone(),
    };
    let next = Identity {
        node,
        wallet,
        created_at: current.created_at.clone(),
        previous_node_ids: current.previous_node_ids.clone(),
        rotated_at: current.rotated_at.clone(),
    };
    if pending(current, Some(&next)) != Pending::Nothing {
        next.save(&next_path(home))?;
    }
    Ok(next)
}

/// The commander bound `next`'s node key: it becomes the identity.
pub fn promote_node(home: &Path, current: &Identity, next: &Identity) -> anyhow::Result<Identity> {
    let mut previous = current.previous_node_ids.clone();
    previous.push(current.node_id());
    let promoted = Identity {
        node: next.node.clone(),
        wallet: current.wallet.clone(),
        created_at: current.created_at.clone(),
        previous_node_ids: previous,
        rotated_at: Some(rfc3339_now()),
    };
    promoted.save(&Identity::path_in(home))?;
    tidy(home, &promoted)?;
    Ok(promoted)
}

/// The commander bound `next`'s wallet: it becomes the identity's.
pub fn promote_wallet(
    home: &Path,
    current: &Identity,
    next: &Identity,
) -> anyhow::Result<Identity> {
    let promoted = Identity {
        node: current.node.clone(),
        wallet: next.wallet.clone(),
        created_at: current.created_at.clone(),
        previous_node_ids: current.previous_node_ids.clone(),
        rotated_at: current.rotated_at.clone(),
    };
    promoted.save(&Identity::path_in(home))?;
    tidy(home, &promoted)?;
    Ok(promoted)
}

/// The commander refused a rotation for good: forget that part of the
/// next identity (the other part, if any, stays).
pub fn abandon(home: &Path, current: &Identity, what: Rotate) -> anyhow::Result<()> {
    let Some(mut next) = load_next(home)? else {
        return Ok(());
    };
    match what {
        Rotate::NodeKey => next.node = current.node.clone(),
        Rotate::Wallet => next.wallet = current.wallet.clone(),
    }
    if pending(current, Some(&next)) == Pending::Nothing {
        remove_next(home)
    } else {
        Ok(next.save(&next_path(home))?)
    }
}

/// Removes a next identity with nothing left to do, and rewrites one
/// whose node key was promoted but whose wallet still waits.
pub fn tidy(home: &Path, current: &Identity) -> anyhow::Result<()> {
    let Some(mut next) = load_next(home)? else {
        return Ok(());
    };
    match pending(current, Some(&next)) {
        Pending::Nothing => remove_next(home),
        Pending::NodeKey => Ok(()),
        Pending::Wallet => {
            // Keep its wallet; its node key is the current one now.
            if next.node_id() != current.node_id() {
                next.node = current.node.clone();
                next.save(&next_path(home))?;
            }
            Ok(())
        }
    }
}

fn remove_next(home: &Path) -> anyhow::Result<()> {
    let path = next_path(home);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Re-signs every outbox entry that another key signed (after a rotation,
/// or a crash during the last re-signing). Returns how many changed.
pub fn reseal_outbox(outbox: &mut Outbox, identity: &Identity) -> anyhow::Result<usize> {
    let me = identity.node_id();
    let mut changed = 0;
    for seq in outbox.pending_after(0) {
        let Some(bytes) = outbox.load(seq)? else {
            continue;
        };
        let Ok(SentryMessage::Heartbeat(signed)) = codec::decode::<SentryMessage>(&bytes) else {
            warn!(seq, "outbox entry is not a heartbeat; left as it is");
            continue;
        };
        let Ok(mut hb) = codec::decode::<Heartbeat>(&signed.payload) else {
            warn!(seq, "outbox entry does not decode; left as it is");
            continue;
        };
        if hb.node_id == me {
            continue;
        }
        hb.node_id = me;
        let signed = heartbeat::seal(&identity.node, &hb)?;
        outbox.rewrite(seq, codec::encode(&SentryMessage::Heartbeat(signed))?)?;
        changed += 1;
    }
    Ok(changed)
}

/// At start: tidies what a crash after a promotion left behind.
pub fn settle(home: &Path, identity: &Identity, outbox: &mut Outbox) -> anyhow::Result<()> {
    tidy(home, identity)?;
    let resealed = reseal_outbox(outbox, identity)?;
    if resealed > 0 {
        info!(
            resealed,
            "re-signed outbox entries of an earlier node key with the current one"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Commander pins learnt from key announcements.

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    successors: Vec<Successor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Successor {
    /// Public keys as hex.
    old: String,
    new: String,
    switch_at_ms: u64,
}

/// Commander keys announced as successors of pinned keys
/// (`home/commander-pins.json`, 0600). A successor is pinned as soon as
/// it is announced; its predecessor is dropped at the switch time.
pub struct Pins {
    path: PathBuf,
    file: Mutex<PinsFile>,
}

impl Pins {
    pub fn open(home: &Path) -> anyhow::Result<Self> {
        let path = home.join(PINS_FILE);
        let file = if path.exists() {
            let bytes = secure_file::read_private(&path, 64 * 1024)?;
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt: fix it, or delete it and pin the commander's current key in the config",
                    path.display()
                )
            })?
        } else {
            PinsFile::default()
        };
        Ok(Pins {
            path,
            file: Mutex::new(file),
        })
    }

    /// The keys to accept for a commander configured with `configured`.
    pub fn effective(&self, configured: &[NodeId], now_ms: u64) -> Vec<NodeId> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: BTreeSet<String> = configured.iter().map(|k| k.public_key_hex()).collect();
        // Follow chains of successors (bounded: a chain cannot loop forever).
        for _ in 0..MAX_SUCCESSORS {
            let before = keys.len();
            for s in &file.successors {
                if keys.contains(&s.old) {
                    keys.insert(s.new.clone());
                }
            }
            if keys.len() == before {
                break;
            }
        }
        for s in &file.successors {
            if now_ms >= s.switch_at_ms && keys.contains(&s.new) {
                keys.remove(&s.old);
            }
        }
        keys.iter()
            .filter_map(|hex_key| {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(hex_key, &mut raw).ok()?;
                Some(NodeId::from_public_key(raw))
            })
            .collect()
    }

    /// Pins an announced key (persisted before it returns). False when it
    /// was already known.
    pub fn learn(&self, ann: &KeyAnnouncement) -> anyhow::Result<bool> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Successor {
            old: ann.old_key.public_key_hex(),
            new: ann.new_key.public_key_hex(),
            switch_at_ms: ann.switch_at_ms,
        };
        if file.successors.contains(&entry) {
            return Ok(false);
        }
        let mut next = file.clone();
        next.successors
            .retain(|s| !(s.old == entry.old && s.new == entry.new));
        next.successors.push(entry);
        while next.successors.len() > MAX_SUCCESSORS {
            next.successors.remove(0);
        }
        let json = serde_json::to_vec_pretty(&next)?;
        secure_file::write_atomic(&self.path, &json, 0o600)
            .with_context(|| format!("writing {}", self.path.display()))?;
        *file = next;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------
// The control socket.

/// A request on the control socket (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// `rotate` or `rotate-wallet`.
    pub op: String,
}

/// The answer (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    /// Node ids for `rotate`, wallet addresses for `rotate-wallet`.
    pub old: String,
    pub new: String,
    /// True when the commander has bound the new key or wallet already;
    /// false when it completes at the next connection.
    pub done: bool,
    pub message: String,
}

/// What the control socket and the connector share.
#[derive(Clone)]
pub struct Rotator {
    pub home: PathBuf,
    pub identity: IdentityCell,
    /// Wakes the connector: something to rotate.
    pub wake: Arc<Notify>,
    /// Serialises changes to the identity files.
    pub files: Arc<Mutex<()>>,
}

impl Rotator {
    /// Writes (or reuses) the next identity for `what`.
    pub fn prepare(&self, what: Rotate) -> anyhow::Result<Identity> {
        let _guard = self.files.lock().unwrap_or_else(|p| p.into_inner());
        prepare(&self.home, &self.identity.current(), what)
    }

    /// Handles one control request: prepare, wake the connector, wait a
    /// while for the commander to bind it.
    pub async fn handle(&self, request: &ControlRequest) -> ControlReply {
        let what = match request.op.as_str() {
            "rotate" => Rotate::NodeKey,
            "rotate-wallet" => Rotate::Wallet,
            other => {
                return ControlReply {
                    ok: false,
                    old: String::new(),
                    new: String::new(),
                    done: false,
                    message: format!("unknown op `{other}`: use `rotate` or `rotate-wallet`"),
                }
            }
        };
        let current = self.identity.current();
        let me = self.clone();
        let prepared = tokio::task::spawn_blocking(move || me.prepare(what)).await;
        let next = match prepared {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => return failed(&current, what, format!("{e:#}")),
            Err(e) => return failed(&current, what, e.to_string()),
        };
        let (old, new) = describe(&current, &next, what);
        let mut changes = self.identity.subscribe();
        self.wake.notify_one();
        let bound = |id: &Identity| match what {
            Rotate::NodeKey => id.node_id() == next.node_id(),
            Rotate::Wallet => id.wallet.address() == next.wallet.address(),
        };
        let done = tokio::time::timeout(CONTROL_WAIT, changes.wait_for(|id| bound(id)))
            .await
            .is_ok_and(|r| r.is_ok());
        ControlReply {
            ok: true,
            old,
            new,
            done,
            message: if done {
                "the commander bound it".into()
            } else {
                "pending: it completes when the sentry next reaches its commander".into()
            },
        }
    }
}

fn describe(current: &Identity, next: &Identity, what: Rotate) -> (String, String) {
    match what {
        Rotate::NodeKey => (current.node_id().to_string(), next.node_id().to_string()),
        Rotate::Wallet => (
            current.wallet.address().to_string(),
            next.wallet.address().to_string(),
        ),
    }
}

fn failed(current: &Identity, what: Rotate, message: String) -> ControlReply {
    let (old, _) = describe(current, current, what);
    ControlReply {
        ok: false,
        old,
        new: String::new(),
        done: false,
        message,
    }
}

/// Binds `home/control.sock` (0600), replacing a stale socket file.
pub fn bind_control(home: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let path = home.join(CONTROL_SOCKET);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "{} answers: another sentry runs with this home directory; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(listener)
}

/// Serves the control socket until `stop`.
pub async fn serve_control(
    listener: tokio::net::UnixListener,
    rotator: Rotator,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::runtime::until_stopped(&mut stop) => break,
        };
        let rotator = rotator.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(MAX_CONTROL_LINE));
            let reply =
                match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(line.trim()) {
                        Ok(req) => rotator.handle(&req).await,
                        Err(e) => ControlReply {
                            ok: false,
                            old: String::new(),
                            new: String::new(),
                            done: false,
                            message: format!("bad request ({e}): send {{\"op\":\"rotate\"}}"),
                        },
                    },
                    _ => return,
                };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

/// Asks a running sentry over `home/control.sock`. `None` when no sentry
/// listens there.
pub fn request(home: &Path, op: &str) -> anyhow::Result<Option<ControlReply>> {
    let path = home.join(CONTROL_SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    stream.set_read_timeout(Some(CONTROL_WAIT + Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(&ControlRequest { op: op.into() })?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(std::io::Read::take(&stream, 64 * 1024))
        .read_line(&mut reply)
        .with_context(|| format!("reading the answer on {}", path.display()))?;
    if reply.trim().is_empty() {
        anyhow::bail!(
            "the sentry on {} closed the control socket without answering (did it stop?); \
             a key it had already prepared is bound when it starts again, \
             `identity show` tells whether one is pending",
            path.display()
        );
    }
    let reply = serde_json::from_str(reply.trim()).with_context(|| {
        format!(
            "the sentry on {} answered `{}`",
            path.display(),
            reply.trim()
        )
    })?;
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_rotation_is_prepared_once_and_promoted_with_history() {
        let home = tempfile::tempdir().unwrap();
        let (current, _) = Identity::load_or_create(home.path()).unwrap();
        let next = prepare(home.path(), &current, Rotate::NodeKey).unwrap();
        assert_ne!(next.node_id(), current.node_id());
        assert_eq!(next.wallet.address(), current.wallet.address());
        // Asking again reuses the waiting key.
        let again = prepare(home.path(), &current, Rotate::NodeKey).unwrap();
        assert_eq!(again.node_id(), next.node_id());
        let mode = std::fs::metadata(next_path(home.path()))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(
            pending(&current, load_next(home.path()).unwrap().as_ref()),
            Pending::NodeKey
        );
        let promoted = promote_node(home.path(), &current, &next).unwrap();
        assert_eq!(promoted.node_id(), next.node_id());
        assert_eq!(promoted.previous_node_ids, vec![current.node_id()]);
        assert!(!next_path(home.path()).exists());
        let loaded = Identity::load(&Identity::path_in(home.path())).unwrap();
        assert_eq!(loaded.node_id(), next.node_id());
    }

    #[test]
    fn node_and_wallet_rotations_wait_side_by_side() {
        let home = tempfile::tempdir().unwrap();
        let (current, _) = Identity::load_or_create(home.path()).unwrap();
        let w = prepare(home.path(), &current, Rotate::Wallet).unwrap();
        let n = prepare(home.path(), &current, Rotate::NodeKey).unwrap();
        assert_eq!(
            n.wallet.address(),
            w.wallet.address(),
            "the waiting wallet is kept"
        );
        assert_ne!(n.node_id(), current.node_id());
        // The node key goes first; the wallet still waits after it.
        let after_node = promote_node(home.path(), &current, &n).unwrap();
        let next = load_next(home.path()).unwrap().unwrap();
        assert_eq!(pending(&after_node, Some(&next)), Pending::Wallet);
        let after_wallet = promote_wallet(home.path(), &after_node, &next).unwrap();
        assert_eq!(after_wallet.wallet.address(), w.wallet.address());
        assert_eq!(after_wallet.node_id(), n.node_id());
        assert!(!next_path(home.path()).exists());
    }

    #[test]
    fn abandoning_keeps_the_other_half() {
        let home = tempfile::tempdir().unwrap();
        let (current, _) = Identity::load_or_create(home.path()).unwrap();
        prepare(home.path(), &current, Rotate::Wallet).unwrap();
        prepare(home.path(), &current, Rotate::NodeKey).unwrap();
        abandon(home.path(), &current, Rotate::NodeKey).unwrap();
        let next = load_next(home.path()).unwrap().unwrap();
        assert_eq!(pending(&current, Some(&next)), Pending::Wallet);
        abandon(home.path(), &current, Rotate::Wallet).unwrap();
        assert!(load_next(home.path()).unwrap().is_none());
    }

    #[test]
    fn the_outbox_is_resealed_with_the_new_key() {
        let home = tempfile::tempdir().unwrap();
        let (old, _) = Identity::load_or_create(home.path()).unwrap();
        let mut outbox = Outbox::open(home.path(), 100).unwrap();
        for _ in 0..3 {
            let hb = Heartbeat {
                node_id: old.node_id(),
                seq: outbox.next_seq(),
                ts_ms: 1,
                body: Default::default(),
            };
            let bytes = codec::encode(&SentryMessage::Heartbeat(
                heartbeat::seal(&old.node, &hb).unwrap(),
            ))
            .unwrap();
            outbox.push(hb.seq, bytes).unwrap();
        }
        let next = prepare(home.path(), &old, Rotate::NodeKey).unwrap();
        let new = promote_node(home.path(), &old, &next).unwrap();
        assert_eq!(reseal_outbox(&mut outbox, &new).unwrap(), 3);
        assert_eq!(reseal_outbox(&mut outbox, &new).unwrap(), 0);
        let reopened = Outbox::open(home.path(), 100).unwrap();
        for seq in reopened.pending_after(0) {
            let bytes = reopened.load(seq).unwrap().unwrap();
            let SentryMessage::Heartbeat(signed) = codec::decode(&bytes).unwrap() else {
                panic!("not a heartbeat")
            };
            let hb = heartbeat::open(&new.node_id(), &signed, seq - 1, 2).unwrap();
            assert_eq!(hb.seq, seq);
        }
    }

    #[test]
    fn pins_follow_announcements_and_drop_the_old_key_at_the_switch() {
        let home = tempfile::tempdir().unwrap();
        let (k1, k2, k3) = (
            NodeKey::generate().node_id(),
            NodeKey::generate().node_id(),
            NodeKey::generate().node_id(),
        );
        let pins = Pins::open(home.path()).unwrap();
        assert_eq!(pins.effective(&[k1], 0), vec![k1]);
        let ann = KeyAnnouncement {
            old_key: k1,
            new_key: k2,
            announced_at_ms: 10,
            switch_at_ms: 100,
        };
        assert!(pins.learn(&ann).unwrap());
        assert!(!pins.learn(&ann).unwrap());
        let mut both = pins.effective(&[k1], 50);
        both.sort_by_key(|k| k.public_key_hex());
        let mut want = vec![k1, k2];
        want.sort_by_key(|k| k.public_key_hex());
        assert_eq!(both, want);
        assert_eq!(pins.effective(&[k1], 100), vec![k2]);
        // Persisted, and chains are followed.
        let reopened = Pins::open(home.path()).unwrap();
        reopened
            .learn(&KeyAnnouncement {
                old_key: k2,
                new_key: k3,
                announced_at_ms: 200,
                switch_at_ms: 300,
            })
            .unwrap();
        assert_eq!(reopened.effective(&[k1], 300), vec![k3]);
        // An unrelated commander is not affected.
        let other = NodeKey::generate().node_id();
        assert_eq!(reopened.effective(&[other], 300), vec![other]);
    }
}
