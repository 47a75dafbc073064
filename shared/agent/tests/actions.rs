//! Approved actions on a sentry without a network: `ActionHandler::handle`
//! called directly with requests sealed by a test commander key, a
//! counting executor and a journal in a temp home. Exactly once, replays
//! (also across a restart and after expiry), and every refusal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashfleet_agent::actions::{ActionHandler, Executor, Journal, INTERRUPTED};
use hashfleet_agent::StatusHandle;
use hashfleet_shared::action::{open_result, seal_action};
use hashfleet_shared::wire::{ActionRequest, ActionResultBody, SignedAction, SignedActionResult};
use hashfleet_shared::{Identity, NodeId, NodeKey};
use serde_json::{json, Value};
use tokio::sync::Notify;

const NOW: u64 = 1_767_225_600_000;
const HOUR: u64 = 3_600_000;

/// Counts runs per target; `runHook` succeeds with the run number, `fail`
/// fails, `block` waits until released.
#[derive(Default)]
struct Counting {
    runs: Mutex<BTreeMap<String, usize>>,
    total: AtomicUsize,
    entered: Notify,
    release: Notify,
}

impl Executor for Counting {
    async fn execute(&self, method: &str, params: &Value, target: &str) -> Result<Value, String> {
        self.total.fetch_add(1, Ordering::SeqCst);
        let n = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(target.to_string()).or_default();
            *n += 1;
            *n
        };
        match method {
            "runHook" => Ok(json!({ "run": n, "params": params })),
            "block" => {
                self.entered.notify_one();
                self.release.notified().await;
                Ok(json!({ "run": n }))
            }
            other => Err(format!("test sentry does not support `{other}`")),
        }
    }
}

struct Sentry {
    _home: tempfile::TempDir,
    identity: Arc<Identity>,
    executor: Arc<Counting>,
    status: StatusHandle,
    handler: ActionHandler<Counting>,
}

impl Sentry {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(home.path()).unwrap();
        let identity = Arc::new(identity);
        let executor = Arc::new(Counting::default());
        let status = StatusHandle::default();
        let handler = ActionHandler::open(
            home.path(),
            identity.clone(),
            executor.clone(),
            status.clone(),
        )
        .unwrap();
        Sentry {
            _home: home,
            identity,
            executor,
            status,
            handler,
        }
    }

    /// A restart: the same home, a fresh handler.
    fn restart(&mut self) {
        self.handler = ActionHandler::open(
            self._home.path(),
            self.identity.clone(),
            self.executor.clone(),
            self.status.clone(),
        )
        .unwrap();
    }

    fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    async fn handle(&self, signed: &SignedAction, now: u64) -> Option<SignedActionResult> {
        self.handler
            .handle(&[commander().node_id()], signed, now)
            .await
    }

    /// Handles `signed` and opens the answer as the commander would.
    async fn answer(&self, signed: &SignedAction, now: u64) -> ActionResultBody {
        let result = self.handle(signed, now).await.expect("an answer");
        open_result(&self.node_id(), &result).expect("a result signed by this sentry")
    }

    fn runs(&self) -> usize {
        self.executor.total.load(Ordering::SeqCst)
    }
}

fn commander() -> NodeKey {
    NodeKey::from_seed(&[3u8; 32])
}

fn request(sentry: &Sentry, id: &str, method: &str) -> ActionRequest {
    ActionRequest {
        action_id: id.into(),
        node_id: sentry.node_id(),
        method: method.into(),
        params: r#"["backup"]"#.into(),
        targets: vec![
            "00000000000000a1".into(),
            "gpu-0".into(),
            "00000000000000a1".into(),
        ],
        voters: vec!["alice".into()],
        issued_at_ms: NOW - 1_000,
        expires_at_ms: NOW + HOUR,
    }
}

fn seal(req: &ActionRequest) -> SignedAction {
    seal_action(&commander(), req).unwrap()
}

fn assert_refused(body: &ActionResultBody, id: &str, wanted: &str) {
    assert_eq!(body.action_id, id);
    assert!(!body.replayed);
    let targets: Vec<_> = body.results.iter().map(|o| o.target.as_str()).collect();
    assert_eq!(targets, ["00000000000000a1", "gpu-0"]);
    for o in &body.results {
        assert!(!o.ok, "{o:?}");
        assert!(
            o.detail.starts_with(&format!("refused: {wanted}")),
            "{}",
            o.detail
        );
    }
}

#[tokio::test]
async fn a_valid_action_runs_once_and_a_resend_gets_the_stored_result() {
    let mut sentry = Sentry::new();
    let signed = seal(&request(&sentry, "act-1", "runHook"));

    let first = sentry.answer(&signed, NOW).await;
    assert_eq!(first.action_id, "act-1");
    assert_eq!(first.node_id, sentry.node_id());
    assert!(!first.replayed);
    assert_eq!(first.executed_at_ms, NOW);
    // Each distinct target once, in request order.
    let targets: Vec<_> = first.results.iter().map(|o| o.target.as_str()).collect();
    assert_eq!(targets, ["00000000000000a1", "gpu-0"]);
    for o in &first.results {
        assert!(o.ok);
        let detail: Value = serde_json::from_str(&o.detail).unwrap();
        assert_eq!(detail, json!({ "run": 1, "params": ["backup"] }));
    }
    assert_eq!(sentry.runs(), 2);
    assert_eq!(sentry.status.get().actions_executed, 1);

    // Resent: the stored outcome, marked replayed, nothing runs.
    let again = sentry.answer(&signed, NOW + 5_000).await;
    assert!(again.replayed);
    assert_eq!(again.results, first.results);
    assert_eq!(again.executed_at_ms, first.executed_at_ms);
    assert_eq!(sentry.runs(), 2);

    // After a restart, and after the action expired, still the stored result.
    sentry.restart();
    let later = sentry.answer(&signed, NOW + 2 * HOUR).await;
    assert!(later.replayed);
    assert_eq!(later.results, first.results);
    assert_eq!(sentry.runs(), 2);
    assert_eq!(sentry.status.get().actions_executed, 1);
    assert_eq!(sentry.status.get().actions_refused, 0);
}

#[tokio::test]
async fn a_failing_method_fails_per_target_and_is_not_retried() {
    let sentry = Sentry::new();
    let signed = seal(&request(&sentry, "act-2", "pauseMiner"));
    let body = sentry.answer(&signed, NOW).await;
    assert_eq!(body.results.len(), 2);
    for o in &body.results {
        assert!(!o.ok);
        assert_eq!(o.detail, "test sentry does not support `pauseMiner`");
    }
    let again = sentry.answer(&signed, NOW + 1).await;
    assert!(again.replayed);
    assert_eq!(again.results, body.results);
    assert_eq!(sentry.runs(), 2);
}

#[tokio::test]
async fn mis_signed_unsigned_expired_and_misaddressed_actions_are_refused_and_reported() {
    let sentry = Sentry::new();
    let req = request(&sentry, "act-3", "runHook");

    // Signed by a key the sentry does not pin.
    let stranger = NodeKey::from_seed(&[9u8; 32]);
    let mis_signed = seal_action(&stranger, &req).unwrap();
    let body = sentry.answer(&mis_signed, NOW).await;
    assert_refused(
        &body,
        "act-3",
        "the action is not signed by a commander key this sentry pins",
    );

    // Unsigned.
    let mut unsigned = seal(&req);
    unsigned.signature = [0u8; 64];
    let body = sentry.answer(&unsigned, NOW).await;
    assert_refused(&body, "act-3", "the action is not signed");

    // Expired (and never executed before).
    let body = sentry.answer(&seal(&req), req.expires_at_ms).await;
    assert_refused(&body, "act-3", "the action expired");

    // For another sentry.
    let mut other = req.clone();
    other.node_id = NodeKey::from_seed(&[7u8; 32]).node_id();
    let body = sentry.answer(&seal(&other), NOW).await;
    assert_refused(&body, "act-3", "the action is for sentry");
    assert_eq!(body.node_id, sentry.node_id(), "signed as this sentry");

    // Unreadable: nothing to answer, but counted.
    let garbage = SignedAction {
        payload: vec![0xff; 12],
        signature: [0u8; 64],
    };
    assert!(sentry.handle(&garbage, NOW).await.is_none());

    assert_eq!(sentry.runs(), 0);
    let status = sentry.status.get();
    assert_eq!(status.actions_refused, 5);
    assert_eq!(status.actions_executed, 0);

    // Refusals are not journaled: the genuine request still runs, once.
    let body = sentry.answer(&seal(&req), NOW).await;
    assert!(!body.replayed);
    assert!(body.results.iter().all(|o| o.ok));
    assert_eq!(sentry.runs(), 2);
}

#[tokio::test]
async fn an_action_cut_short_by_a_restart_is_reported_interrupted_not_rerun() {
    let mut sentry = Sentry::new();
    let req = request(&sentry, "act-4", "runHook");
    // The journal says it started; the process died before it finished.
    {
        let mut journal =
            Journal::open(sentry._home.path(), 10, Duration::from_secs(30 * 24 * 3600)).unwrap();
        journal.start(&req, NOW).unwrap();
    }
    sentry.restart();
    let body = sentry.answer(&seal(&req), NOW + 1_000).await;
    assert!(body.replayed);
    assert_eq!(body.results.len(), 2);
    for o in &body.results {
        assert!(!o.ok);
        assert_eq!(o.detail, INTERRUPTED);
    }
    assert_eq!(sentry.runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_during_execution_waits_for_the_one_run() {
    let sentry = Arc::new(Sentry::new());
    let mut req = request(&sentry, "act-5", "block");
    req.targets = vec!["00000000000000a1".into()];
    let signed = seal(&req);

    let first = tokio::spawn({
        let (sentry, signed) = (sentry.clone(), signed.clone());
        async move { sentry.answer(&signed, NOW).await }
    });
    sentry.executor.entered.notified().await;
    let second = tokio::spawn({
        let (sentry, signed) = (sentry.clone(), signed.clone());
        async move { sentry.answer(&signed, NOW + 10).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !second.is_finished(),
        "the resend waits for the running action"
    );
    sentry.executor.release.notify_one();

    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.results, second.results);
    assert_eq!(sentry.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_execution_is_reported_interrupted_not_rerun() {
    let sentry = Arc::new(Sentry::new());
    let mut req = request(&sentry, "act-6", "block");
    req.targets = vec!["00000000000000a1".into()];
    let signed = seal(&req);

    // The sentry stops while the action runs: its task is cancelled.
    let running = tokio::spawn({
        let (sentry, signed) = (sentry.clone(), signed.clone());
        async move { sentry.answer(&signed, NOW).await }
    });
    sentry.executor.entered.notified().await;
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());

    let body = sentry.answer(&signed, NOW + 10).await;
    assert!(body.replayed);
    assert_eq!(body.executed_at_ms, NOW);
    assert_eq!(body.results.len(), 1);
    assert!(!body.results[0].ok);
    assert_eq!(body.results[0].detail, INTERRUPTED);
    assert_eq!(sentry.runs(), 1);
}
