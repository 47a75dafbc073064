//! End-to-end identity rotation: sentry node keys (asked by the sentry, by
//! an operator, resumed after a crash), wallets, and the commander's key.
//! Real QUIC sockets on 127.0.0.1, in-process commander and sentries.

use std::path::Path;
use std::time::Duration;

use hashfleet_agent::outbox::Outbox;
use hashfleet_agent::rotation::{self, Rotate};
use hashfleet_agent::{Session, SessionError};
use hashfleet_shared::codec;
use hashfleet_shared::heartbeat::seal;
use hashfleet_shared::rotation::{bind_wallet, seal_rotation};
use hashfleet_shared::wire::{
    CommanderMessage, Heartbeat, HeartbeatBody, RejectCode, RotationOutcome, RotationRequest,
    SentryMessage, WalletOutcome,
};
use hashfleet_shared::{now_ms, Identity, NodeId, NodeKey, WalletKey};
use hashfleet_tests::{init_logs, raw_session, wait_until, TestCommander, TestSentry};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// The commanders here keep an old node key working this long.
const GRACE: Duration = Duration::from_secs(3);

async fn commander(dir: &Path) -> TestCommander {
    TestCommander::start_with(dir, None, |c| c.rotation_grace = GRACE).await
}

/// Enrolls a sentry-host in `home` with a fresh token and waits until the
/// commander holds `heartbeats` of its heartbeats; returns it and its id.
async fn reporting(c: &TestCommander, home: &Path, heartbeats: u64) -> (TestSentry, String) {
    let token = c.enrollment_token(1).await;
    let sentry = TestSentry::start(c.sentry_config(home, Some(token)));
    let node = sentry.node_id;
    wait_until(WAIT, "the sentry reports", || async {
        c.sentry_by_node(&node)
            .await
            .is_some_and(|s| s["heartbeats"].as_u64() >= Some(heartbeats))
    })
    .await;
    let id = c.sentry_by_node(&node).await.unwrap()["sentry_id"]
        .as_str()
        .unwrap()
        .to_string();
    (sentry, id)
}

/// The next message that is not a re-challenge, ack or announcement.
async fn answer(session: &mut Session) -> CommanderMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), session.rx.recv())
            .await
            .expect("commander answers in time")
            .expect("session alive");
        match msg {
            CommanderMessage::Challenge(_)
            | CommanderMessage::Ack(_)
            | CommanderMessage::KeyAnnouncement(_) => continue,
            other => return other,
        }
    }
}

async fn rotated(session: &mut Session) -> RotationOutcome {
    match answer(session).await {
        CommanderMessage::Rotated(o) => o,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

async fn wallet_bound(session: &mut Session) -> WalletOutcome {
    match answer(session).await {
        CommanderMessage::WalletBound(o) => o,
        other => panic!("expected WalletBound, got {other:?}"),
    }
}

fn request(session: &Session, old: &NodeKey, new: &NodeKey) -> RotationRequest {
    RotationRequest {
        sentry_id: session.welcome.sentry_id,
        old_node_id: old.node_id(),
        new_node_id: new.node_id(),
        seq: 0,
        session_nonce: session.session_nonce,
        ts_ms: now_ms(),
    }
}

async fn sentry_json(c: &TestCommander, id: &str) -> Value {
    c.get(&format!("/api/v1/sentries/{id}")).await
}

/// Asks a running sentry over its control socket (as `identity rotate` does).
async fn control(home: &Path, op: &'static str) -> rotation::ControlReply {
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || rotation::request(&home, op))
        .await
        .unwrap()
        .expect("control socket answers")
        .expect("a sentry listens on control.sock")
}

fn assert_contiguous(seqs: &[u64]) {
    assert!(!seqs.is_empty());
    let want: Vec<u64> = (seqs[0]..=*seqs.last().unwrap()).collect();
    assert_eq!(
        seqs,
        want.as_slice(),
        "stored seqs have a gap or a duplicate"
    );
    assert_eq!(seqs[0], 1, "the first heartbeat is stored");
}

#[tokio::test]
async fn rotation_while_heartbeats_flow_keeps_every_seq_and_ends_the_old_key() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = commander(&dir.path().join("c")).await;
    let home = dir.path().join("s");
    let (mut sentry, id) = reporting(&c, &home, 5).await;
    let old_id = sentry.node_id;
    let old_identity = Identity::load(&Identity::path_in(&home)).unwrap();

    let reply = control(&home, "rotate").await;
    assert!(reply.ok && reply.done, "{reply:?}");
    assert_eq!(reply.old, old_id.to_string());
    let new_id: NodeId = reply.new.parse().unwrap();
    assert_ne!(new_id, old_id);
    // The identity file holds the new key, with the old one in its history.
    let on_disk = Identity::load(&Identity::path_in(&home)).unwrap();
    assert_eq!(on_disk.node_id(), new_id);
    assert_eq!(on_disk.previous_node_ids, vec![old_id]);
    assert!(!rotation::next_path(&home).exists());

    let s = sentry_json(&c, &id).await;
    assert_eq!(s["node_id"], new_id.to_string());
    assert_eq!(
        s["node_id_history"],
        serde_json::json!([old_id.to_string()])
    );
    assert_eq!(s["rotations"][0]["new_node_id"], new_id.to_string());
    let before = s["heartbeats"].as_u64().unwrap();
    wait_until(WAIT, "heartbeats with the new key", || async {
        sentry_json(&c, &id).await["heartbeats"].as_u64() >= Some(before + 5)
    })
    .await;
    assert_eq!(sentry.status.get().node_id, new_id.to_string());
    assert!(sentry.status.get().connected);

    // The old key still opens a session inside the grace window ...
    let early = raw_session(&c, &old_identity, &[c.node_id], None).await;
    assert!(early.is_ok(), "{:?}", early.err());
    // ... and is refused once it is over, then ever after.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    let late = raw_session(&c, &old_identity, &[c.node_id], None)
        .await
        .err()
        .expect("the old key is refused after the grace window");
    assert!(
        matches!(
            late,
            SessionError::Rejected {
                code: RejectCode::KeyRotated,
                ..
            }
        ),
        "{late}"
    );
    assert!(late.to_string().contains(&new_id.to_string()), "{late}");

    sentry.stop().await;
    let seqs = c.stored_seqs(&id).await;
    assert_contiguous(&seqs);
    assert_eq!(
        c.metric("hashfleet_node_key_rotations_total{result=\"done\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_operator_forced_rotation_happens_at_the_next_contact() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = commander(&dir.path().join("c")).await;
    let home = dir.path().join("s");
    let (mut sentry, id) = reporting(&c, &home, 2).await;
    let old_id = sentry.node_id;
    // Stopped: the request waits for the next contact.
    sentry.stop().await;
    let (status, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/rotate"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rotate_requested"], true);
    assert_eq!(body["node_id"], old_id.to_string());

    let mut sentry = TestSentry::start(c.sentry_config(&home, None));
    wait_until(WAIT, "the forced rotation", || async {
        let s = sentry_json(&c, &id).await;
        s["node_id"] != old_id.to_string() && s["rotate_requested"] == false
    })
    .await;
    let s = sentry_json(&c, &id).await;
    assert_eq!(
        s["node_id_history"],
        serde_json::json!([old_id.to_string()])
    );
    let before = s["heartbeats"].as_u64().unwrap();
    wait_until(WAIT, "heartbeats with the new key", || async {
        sentry_json(&c, &id).await["heartbeats"].as_u64() >= Some(before + 3)
    })
    .await;
    // Forced again, while connected: it rotates at once.
    let (status, _) = c
        .post(
            &format!("/api/v1/sentries/{id}/rotate"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    wait_until(WAIT, "the second forced rotation", || async {
        sentry_json(&c, &id).await["node_id_history"]
            .as_array()
            .is_some_and(|h| h.len() == 2)
    })
    .await;
    sentry.stop().await;
    assert_contiguous(&c.stored_seqs(&id).await);
    // A revoked sentry cannot be marked for rotation.
    let (status, _) = c
        .post(
            &format!("/api/v1/sentries/{id}/revoke"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = c
        .post(
            &format!("/api/v1/sentries/{id}/rotate"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn rotations_signed_by_one_key_or_replayed_are_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = commander(&dir.path().join("c")).await;
    let token = c.enrollment_token(1).await;
    let me = Identity::generate();
    let mut s = raw_session(&c, &me, &[c.node_id], Some(token))
        .await
        .unwrap();
    let id = format!("{:016x}", s.welcome.sentry_id);
    let new = NodeKey::generate();

    // Only the new key signed (in both places).
    let only_new = seal_rotation(&new, &new, &request(&s, &me.node, &new)).unwrap();
    s.tx.send(&SentryMessage::RotateKey(only_new))
        .await
        .unwrap();
    let o = rotated(&mut s).await;
    assert!(!o.accepted && o.message.contains("old key"), "{o:?}");
    // Only the old key signed.
    let only_old = seal_rotation(&me.node, &me.node, &request(&s, &me.node, &new)).unwrap();
    s.tx.send(&SentryMessage::RotateKey(only_old))
        .await
        .unwrap();
    let o = rotated(&mut s).await;
    assert!(!o.accepted && o.message.contains("new key"), "{o:?}");
    assert_eq!(
        sentry_json(&c, &id).await["node_id"],
        me.node_id().to_string()
    );

    // Both: accepted; the same message again answers accepted (idempotent).
    let good = seal_rotation(&me.node, &new, &request(&s, &me.node, &new)).unwrap();
    s.tx.send(&SentryMessage::RotateKey(good.clone()))
        .await
        .unwrap();
    assert!(rotated(&mut s).await.accepted);
    s.tx.send(&SentryMessage::RotateKey(good.clone()))
        .await
        .unwrap();
    assert!(rotated(&mut s).await.accepted);
    assert_eq!(
        sentry_json(&c, &id).await["node_id"],
        new.node_id().to_string()
    );
    s.close("done");

    // Replayed on a later session of the old key (inside the grace window):
    // signed for another session, refused.
    let mut later = raw_session(&c, &me, &[c.node_id], None).await.unwrap();
    later
        .tx
        .send(&SentryMessage::RotateKey(good.clone()))
        .await
        .unwrap();
    let o = rotated(&mut later).await;
    assert!(
        !o.accepted && o.message.contains("another session"),
        "{o:?}"
    );
    // A fresh rotation from the retired key to a third key is refused too.
    let third = NodeKey::generate();
    let from_old = seal_rotation(&me.node, &third, &request(&later, &me.node, &third)).unwrap();
    later
        .tx
        .send(&SentryMessage::RotateKey(from_old))
        .await
        .unwrap();
    let o = rotated(&mut later).await;
    assert!(!o.accepted && o.message.contains("no longer"), "{o:?}");
    later.close("done");
    assert_eq!(
        sentry_json(&c, &id).await["node_id"],
        new.node_id().to_string()
    );
    assert_eq!(
        c.metric("hashfleet_node_key_rotations_total{result=\"refused\"}")
            .await,
        4.0
    );
}

/// Writes `n` heartbeats signed by `identity` into the outbox in `home`.
fn fill_outbox(home: &Path, identity: &Identity, n: usize) {
    let mut outbox = Outbox::open(home, 1000).unwrap();
    for _ in 0..n {
        let hb = Heartbeat {
            node_id: identity.node_id(),
            seq: outbox.next_seq(),
            ts_ms: now_ms(),
            body: HeartbeatBody::default(),
        };
        let bytes = codec::encode(&SentryMessage::Heartbeat(
            seal(&identity.node, &hb).unwrap(),
        ))
        .unwrap();
        outbox.push(hb.seq, bytes).unwrap();
    }
}

/// The files a sentry killed right after the commander rebound it leaves:
/// the next key written and bound, `identity.json` still the old one, and
/// `unsent` heartbeats of the old key in the outbox. Returns the next key.
async fn rebound_not_promoted(
    c: &TestCommander,
    home: &Path,
    current: &Identity,
    unsent: usize,
) -> Identity {
    let next = rotation::prepare(home, current, Rotate::NodeKey).unwrap();
    let mut s = raw_session(c, current, &[c.node_id], None).await.unwrap();
    let signed = seal_rotation(
        &current.node,
        &next.node,
        &request(&s, &current.node, &next.node),
    )
    .unwrap();
    s.tx.send(&SentryMessage::RotateKey(signed)).await.unwrap();
    assert!(rotated(&mut s).await.accepted);
    s.close("killed");
    fill_outbox(home, current, unsent);
    next
}

/// A sentry killed (SIGKILL) between two rotation steps leaves the files
/// of the step before; each case builds that state on disk (every step is
/// one atomic file operation) and checks that a fresh start resumes.
#[tokio::test]
async fn a_sentry_killed_between_rotation_steps_resumes() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = commander(&dir.path().join("c")).await;

    // Enrolls a sentry in `home` (a run of the real runtime), then stops it.
    async fn enrolled(c: &TestCommander, home: &Path) -> (String, Identity) {
        let (mut s, id) = reporting(c, home, 2).await;
        s.stop().await;
        (id, Identity::load(&Identity::path_in(home)).unwrap())
    }

    // Runs the sentry until the commander holds `want` as its node key and
    // a few more heartbeats; then every seq is there exactly once.
    async fn resume(c: &TestCommander, home: &Path, id: &str, want: NodeId) {
        let mut s = TestSentry::start(c.sentry_config(home, None));
        wait_until(WAIT, "the rotation to complete", || async {
            sentry_json(c, id).await["node_id"] == want.to_string()
        })
        .await;
        let before = sentry_json(c, id).await["heartbeats"].as_u64().unwrap();
        wait_until(WAIT, "heartbeats after resuming", || async {
            sentry_json(c, id).await["heartbeats"].as_u64() >= Some(before + 3)
        })
        .await;
        assert_eq!(s.status.get().node_id, want.to_string());
        s.stop().await;
        assert_eq!(
            Identity::load(&Identity::path_in(home)).unwrap().node_id(),
            want
        );
        assert!(!rotation::next_path(home).exists());
        assert_contiguous(&c.stored_seqs(id).await);
    }

    // Step 1 done (next key written), killed before the RotateKey went out.
    // Unsent heartbeats of the old key wait in the outbox too.
    let home = dir.path().join("s1");
    let (id, current) = enrolled(&c, &home).await;
    let next = rotation::prepare(&home, &current, Rotate::NodeKey).unwrap();
    fill_outbox(&home, &current, 5);
    resume(&c, &home, &id, next.node_id()).await;

    // Step 2 done (the commander rebound), killed before identity.json was
    // replaced; restarted inside the grace window: the old key connects and
    // the repeated rotation is answered as done.
    let home = dir.path().join("s2");
    let (id, current) = enrolled(&c, &home).await;
    let next = rebound_not_promoted(&c, &home, &current, 3).await;
    resume(&c, &home, &id, next.node_id()).await;

    // The same, restarted after the grace window: the commander refuses the
    // old key (KeyRotated) and the sentry switches to its next key itself.
    let home = dir.path().join("s3");
    let (id, current) = enrolled(&c, &home).await;
    let next = rebound_not_promoted(&c, &home, &current, 3).await;
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    resume(&c, &home, &id, next.node_id()).await;

    // Step 3 half done: identity.json replaced, killed before the next file
    // was removed and before the outbox was re-signed.
    let home = dir.path().join("s4");
    let (id, current) = enrolled(&c, &home).await;
    let next = rebound_not_promoted(&c, &home, &current, 4).await;
    let mut promoted = next.clone();
    promoted.wallet = current.wallet.clone();
    promoted.previous_node_ids = vec![current.node_id()];
    promoted.save(&Identity::path_in(&home)).unwrap();
    assert!(rotation::next_path(&home).exists());
    resume(&c, &home, &id, next.node_id()).await;
}

#[tokio::test]
async fn a_wallet_is_rebound_only_with_its_own_signature() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let c = commander(&dir.path().join("c")).await;
    let token = c.enrollment_token(1).await;
    let me = Identity::generate();
    let mut s = raw_session(&c, &me, &[c.node_id], Some(token))
        .await
        .unwrap();
    let id = format!("{:016x}", s.welcome.sentry_id);
    let original = me.wallet.address().to_string();
    assert_eq!(sentry_json(&c, &id).await["wallet_address"], original);

    // A claim on a wallet without its signature: another key signed it.
    let wanted = WalletKey::generate();
    let thief = WalletKey::generate();
    let mut claim = bind_wallet(&thief, &me.node_id(), &s.session_nonce);
    claim.wallet_address = wanted.address();
    s.tx.send(&SentryMessage::BindWallet(claim)).await.unwrap();
    let o = wallet_bound(&mut s).await;
    assert!(
        !o.accepted && o.message.contains("does not verify"),
        "{o:?}"
    );
    // The wallet's signature, but over another session's nonce.
    let stale = bind_wallet(&wanted, &me.node_id(), &[7u8; 32]);
    s.tx.send(&SentryMessage::BindWallet(stale)).await.unwrap();
    assert!(!wallet_bound(&mut s).await.accepted);
    assert_eq!(sentry_json(&c, &id).await["wallet_address"], original);

    // A valid binding.
    let good = bind_wallet(&wanted, &me.node_id(), &s.session_nonce);
    s.tx.send(&SentryMessage::BindWallet(good)).await.unwrap();
    let o = wallet_bound(&mut s).await;
    assert!(o.accepted, "{o:?}");
    let body = sentry_json(&c, &id).await;
    assert_eq!(body["wallet_address"], wanted.address().to_string());
    assert_eq!(body["wallet_history"], serde_json::json!([original]));
    s.close("done");

    // The sentry runtime does the same through `identity rotate-wallet`.
    let home = dir.path().join("s");
    let token = c.enrollment_token(1).await;
    let mut sentry = TestSentry::start(c.sentry_config(&home, Some(token)));
    let node = sentry.node_id;
    wait_until(WAIT, "the sentry reports", || async {
        c.sentry_by_node(&node).await.is_some()
    })
    .await;
    let reply = control(&home, "rotate-wallet").await;
    assert!(reply.ok && reply.done, "{reply:?}");
    let body = c.sentry_by_node(&node).await.unwrap();
    assert_eq!(body["wallet_address"], reply.new);
    assert_eq!(body["wallet_history"], serde_json::json!([reply.old]));
    assert_eq!(
        Identity::load(&Identity::path_in(&home))
            .unwrap()
            .wallet
            .address()
            .to_string(),
        reply.new
    );
    sentry.stop().await;
}

#[tokio::test]
async fn the_commander_key_rotates_with_one_sentry_online_and_one_offline() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let c = TestCommander::start_in(&data, None).await;
    let old_key = c.node_id;
    let (home_on, home_off) = (dir.path().join("on"), dir.path().join("off"));
    let mut online =
        TestSentry::start(c.sentry_config(&home_on, Some(c.enrollment_token(1).await)));
    let mut offline =
        TestSentry::start(c.sentry_config(&home_off, Some(c.enrollment_token(1).await)));
    let off_node = offline.node_id;
    wait_until(WAIT, "both sentries enrolled", || async {
        c.sentries().await.len() == 2
    })
    .await;
    offline.stop().await;

    let grace = Duration::from_secs(6);
    let (old, pending, created) =
        hashfleet_commander::key_rotation::begin(&data, grace, now_ms()).unwrap();
    assert!(created);
    assert_eq!(old, old_key);
    let new_key = pending.key.node_id();
    // The online sentry is told at once and pins the new key on disk.
    let pins_on = home_on.join(rotation::PINS_FILE);
    wait_until(WAIT, "the online sentry pins the next key", || async {
        std::fs::read_to_string(&pins_on).is_ok_and(|t| t.contains(&new_key.public_key_hex()))
    })
    .await;
    // The offline sentry comes back while the old key still serves, and
    // learns the new key on connecting.
    let mut offline = TestSentry::start(c.sentry_config(&home_off, None));
    let pins_off = home_off.join(rotation::PINS_FILE);
    wait_until(WAIT, "the returning sentry pins the next key", || async {
        std::fs::read_to_string(&pins_off).is_ok_and(|t| t.contains(&new_key.public_key_hex()))
    })
    .await;

    // After the switch the commander serves the new key; both reconnect.
    let switch = Duration::from_millis(pending.switch_at_ms.saturating_sub(now_ms()));
    tokio::time::sleep(switch).await;
    wait_until(WAIT, "the commander switches to its new key", || async {
        hashfleet_commander::info::info(&data).is_ok_and(|i| i.node_id == new_key.to_string())
    })
    .await;
    let counts = |node: NodeId| {
        let c = &c;
        async move {
            c.sentry_by_node(&node).await.unwrap()["heartbeats"]
                .as_u64()
                .unwrap()
        }
    };
    let (on_before, off_before) = (counts(online.node_id).await, counts(off_node).await);
    wait_until(WAIT, "both sentries report to the new key", || async {
        counts(online.node_id).await >= on_before + 3 && counts(off_node).await >= off_before + 3
    })
    .await;
    // Only the new key is accepted from now on: a sentry pinning just the
    // old key cannot connect.
    let stranger = Identity::generate();
    let err = raw_session(&c, &stranger, &[old_key], None)
        .await
        .err()
        .expect("the old commander key no longer serves");
    assert!(matches!(err, SessionError::NotPinned { .. }), "{err}");
    let pins = rotation::Pins::open(&home_on).unwrap();
    assert_eq!(pins.effective(&[old_key], now_ms()), vec![new_key]);
    online.stop().await;
    offline.stop().await;
}
