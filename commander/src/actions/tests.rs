use super::*;

fn target(sentry: u64, device: &str, kind: &str) -> Target {
    Target {
        sentry_id: sentry,
        device_id: device.into(),
        device_type: kind.into(),
    }
}

fn req(votes: u32, targets: Vec<Target>) -> PushRequest {
    PushRequest {
        id: "a1".into(),
        batch_uid: None,
        method: "runHook".into(),
        params: "[\"NAME\"]".into(),
        creator: "alice".into(),
        targets,
        req_votes_pos: votes,
        automation: false,
        now_ms: 1_000,
        ttl_ms: 60_000,
    }
}

fn all(_: &str) -> bool {
    true
}

fn hosts_only(t: &str) -> bool {
    t == "host"
}

#[test]
fn one_vote_actions_are_ready_at_once_and_need_write_on_every_target_type() {
    let a = push(req(1, vec![target(1, "h1", "host")]), &all).unwrap();
    assert_eq!(a.state, State::Ready);
    assert_eq!(a.votes.get("alice"), Some(&true));
    assert_eq!(a.required_perms, vec!["host:w"]);

    let mixed = vec![target(1, "h1", "host"), target(1, "m1", "miner")];
    let err = push(req(1, mixed.clone()), &hosts_only).unwrap_err();
    assert_eq!(err.code(), "ERR_MISSING_WRITE_PERMISSIONS");
    assert!(err.to_string().contains("miner:w"), "{err}");
    assert_eq!(
        push(req(1, mixed), &all).unwrap().required_perms,
        vec!["host:w", "miner:w"]
    );

    assert_eq!(
        push(req(1, vec![]), &all).unwrap_err().code(),
        "ERR_ORK_ACTION_CALLS_EMPTY"
    );
    let mut bad = req(1, vec![target(1, "h1", "host")]);
    bad.method = "rm -rf".into();
    assert_eq!(push(bad, &all).unwrap_err().code(), "ERR_ACTION_INVALID");
}

#[test]
fn votes_reach_the_threshold_once_per_voter_and_one_no_cancels() {
    let mut a = push(req(3, vec![target(1, "h1", "host")]), &all).unwrap();
    assert_eq!(a.state, State::Voting);
    assert_eq!(
        vote(&mut a, "alice", true, &all, 2).unwrap_err().code(),
        "ERR_VOTER_EXISTS"
    );
    assert_eq!(
        vote(&mut a, "mallory", true, &|t| t == "miner", 2)
            .unwrap_err()
            .code(),
        "ERR_ACTION_DENIED"
    );
    vote(&mut a, "bob", true, &all, 2).unwrap();
    assert_eq!(a.state, State::Voting);
    vote(&mut a, "carol", true, &all, 3).unwrap();
    assert_eq!(a.state, State::Ready);
    assert_eq!(
        vote(&mut a, "dave", true, &all, 4).unwrap_err().code(),
        "ERR_ACTION_NOT_VOTING"
    );

    let mut b = push(req(2, vec![target(1, "h1", "host")]), &all).unwrap();
    vote(&mut b, "bob", false, &all, 5).unwrap();
    assert_eq!(b.state, State::Cancelled);
    assert!(b.reason.as_deref().unwrap().contains("bob"));
    assert_eq!(start(&mut b, 6).unwrap_err().code(), "ERR_ACTION_STATE");
}

#[test]
fn automation_skips_voting() {
    let mut r = req(5, vec![target(1, "h1", "host")]);
    r.automation = true;
    assert_eq!(push(r, &all).unwrap().state, State::Ready);
}

#[test]
fn only_the_creator_or_an_admin_cancels_and_only_before_execution() {
    let mut a = push(req(2, vec![target(1, "h1", "host")]), &all).unwrap();
    assert_eq!(
        cancel(&mut a, "bob", false, 2).unwrap_err().code(),
        "ERR_CALLER_NOT_CREATOR"
    );
    cancel(&mut a, "root", true, 2).unwrap();
    assert_eq!(a.state, State::Cancelled);

    let mut b = push(req(1, vec![target(1, "h1", "host")]), &all).unwrap();
    start(&mut b, 2).unwrap();
    assert_eq!(
        cancel(&mut b, "alice", false, 3).unwrap_err().code(),
        "ERR_ACTION_STATE"
    );
}

#[test]
fn results_complete_the_action_and_duplicates_are_ignored() {
    let mut a = push(
        req(1, vec![target(1, "h1", "host"), target(2, "h2", "host")]),
        &all,
    )
    .unwrap();
    let r = |ok| TargetResult {
        ok,
        detail: "x".into(),
        at_ms: 9,
    };
    assert_eq!(
        record_result(&mut a, "0000000000000001/h1", r(true))
            .unwrap_err()
            .code(),
        "ERR_ACTION_STATE"
    );
    start(&mut a, 2).unwrap();
    assert!(record_result(&mut a, "0000000000000001/h1", r(true)).unwrap());
    assert!(
        !record_result(&mut a, "0000000000000001/h1", r(false)).unwrap(),
        "second answer ignored"
    );
    assert!(a.results["0000000000000001/h1"].ok);
    assert_eq!(a.state, State::Executing);
    assert!(record_result(&mut a, "0000000000000009/x", r(true)).is_err());
    record_result(&mut a, "0000000000000002/h2", r(false)).unwrap();
    assert_eq!(a.state, State::Done);
}

#[test]
fn expiry_cancels_waiting_actions_and_fails_silent_targets() {
    let mut voting = push(req(2, vec![target(1, "h1", "host")]), &all).unwrap();
    assert!(!expire(&mut voting, 60_999));
    assert!(expire(&mut voting, 61_000));
    assert_eq!(voting.state, State::Cancelled);

    let mut running = push(
        req(1, vec![target(1, "h1", "host"), target(2, "h2", "host")]),
        &all,
    )
    .unwrap();
    start(&mut running, 2).unwrap();
    record_result(
        &mut running,
        "0000000000000001/h1",
        TargetResult {
            ok: true,
            detail: "{}".into(),
            at_ms: 3,
        },
    )
    .unwrap();
    assert!(expire(&mut running, 61_000));
    assert_eq!(running.state, State::Done);
    assert!(!running.results["0000000000000002/h2"].ok);
    assert!(running.results["0000000000000002/h2"]
        .detail
        .contains("expired"));
    assert!(
        running.results["0000000000000001/h1"].ok,
        "answered targets keep their result"
    );
    assert!(!expire(&mut running, 99_000));
}
