//! The real commander binary, SIGKILLed mid-stream and restarted: the store
//! must hold every seq the sentry produced exactly once, without gaps.

mod common;

use std::time::{Duration, Instant};

use common::spawn;

use hashfleet_agent::{AgentConfig, CommanderTarget};
use hashfleet_shared::wire::SentryKind;

async fn get(client: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("commander");
    let mut commander = spawn(&data, "127.0.0.1:0", &[]);
    let quic = commander.quic;
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let key = common::commander_key(&data);
    let client = reqwest::Client::new();
    let token = common::enrollment_token(&client, &commander.http, &admin).await;

    let target = CommanderTarget {
        addr: quic.to_string(),
        keys: vec![key],
        enroll_token: Some(token),
    };
    let mut config = AgentConfig::new(dir.path().join("sentry"), vec![target], SentryKind::Host);
    config.interval = Duration::from_millis(100);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    let agent = hashfleet_sentry_host::agent(config).unwrap();
    let status = agent.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sentry = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));

    // Kill at pseudo-random moments while heartbeats stream in.
    let kills = 5;
    let mut reconnect_times = Vec::new();
    let mut resets_seen = 0;
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(0..900))).await;
        commander.kill();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        let acked_before = status.get().last_ack_seq;
        commander = spawn(&data, &quic.to_string(), &[]);
        let restarted = Instant::now();
        let deadline = restarted + Duration::from_secs(20);
        while status.get().last_ack_seq <= acked_before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no ack after restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reconnect_times.push(restarted.elapsed());
        // How the sentry learned the old session was gone. With the
        // identity-derived reset and connection-ID keys it is a stateless
        // reset from the new process, not a timeout.
        if status.get().last_error.is_some_and(|e| e.contains("reset")) {
            resets_seen += 1;
        }
    }
    assert!(
        resets_seen > 0,
        "no round ended in a stateless reset; last error: {:?}",
        status.get().last_error
    );

    // Let the outbox drain, then stop producing and drain the rest.
    let _ = stop_tx.send(());
    sentry.await.unwrap().unwrap();
    let produced = status.get().last_seq;
    let acked = status.get().last_ack_seq;
    assert!(
        produced >= 20,
        "enough heartbeats to mean something: {produced}"
    );

    let sentries = get(
        &client,
        &format!("{}/api/v1/sentries", commander.http),
        &admin,
    )
    .await;
    let s = &sentries[0];
    let id = s["sentry_id"].as_str().unwrap();
    let hbs = get(
        &client,
        &format!(
            "{}/api/v1/sentries/{id}/heartbeats?limit=10000",
            commander.http
        ),
        &admin,
    )
    .await;
    let mut seqs: Vec<u64> = hbs
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    seqs.reverse();
    let max = *seqs.last().unwrap();
    // Every acknowledged seq is there; nothing is there twice; no gaps.
    assert!(max >= acked, "stored up to {max}, acknowledged {acked}");
    assert_eq!(seqs, (1..=max).collect::<Vec<_>>(), "exactly once, no gaps");
    assert_eq!(
        s["heartbeats"].as_u64().unwrap(),
        max,
        "count matches stored seqs"
    );
    assert_eq!(s["last_seq"].as_u64().unwrap(), max);
    // The rollups, rebuilt after each kill from the heartbeats stored after
    // the last checkpoint, count every stored heartbeat exactly once: the
    // host device reports cpu_pct in every heartbeat.
    let start = hbs.as_array().unwrap().last().unwrap()["ts_ms"]
        .as_u64()
        .unwrap();
    let mut samples = 0;
    for resolution in ["1m", "5m", "1h", "1d"] {
        let history = get(
            &client,
            &format!(
                "{}/api/v1/devices/{id}/history?metric=cpu_pct&resolution={resolution}&start={start}&end={}",
                commander.http,
                hashfleet_shared::now_ms()
            ),
            &admin,
        )
        .await;
        samples = history
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            samples, max,
            "{resolution} rollup samples = stored heartbeats: {history}"
        );
    }
    eprintln!(
        "produced {produced}, stored {max}, acknowledged {acked}, rollup samples {samples}; time to first ack after each restart: {reconnect_times:?}"
    );
    commander.kill();
}
