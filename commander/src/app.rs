//! The running commander: shared state, start-up order and shutdown.
//!
//! Start-up: validate config → data dir (0700) → identity → admin token →
//! store → revoked keys → fleet (registry and rollups, replaying heartbeats
//! stored after the last checkpoint) → ingest writer → QUIC endpoint → HTTP
//! listener → upkeep (checkpoints, retention).
//! Shutdown: stop accepting, close sessions with a reason, drain the
//! ingest queue into the store, checkpoint the fleet, flush.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hashfleet_shared::enroll::token_hash;
use hashfleet_shared::{secure_file, NodeId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::accounts::Accounts;
use crate::actions::service::{ActionPolicy, ActionService};
use crate::config::CommanderConfig;
use crate::fleet::{Fleet, FleetConfig};
use crate::ingest::Ingest;
use crate::keys;
use crate::metrics::Metrics;
use crate::sessions::{RevokedKeys, Sessions};
use crate::store::actions::ActionStore;
use crate::store::{SledStore, Store};
use crate::{http, quic, upkeep};

/// The runtime file in the data dir that holds the bound HTTP address while `serve` runs.
pub const HTTP_ADDR_FILE: &str = "http.addr";

/// State every part of the commander shares.
pub struct App {
    pub config: CommanderConfig,
    /// The serving key (replaced when a commander key rotation switches).
    pub identity: crate::key_rotation::KeyCell,
    /// The next commander key while a rotation is pending.
    pub announcement: crate::key_rotation::Announcement,
    pub store: Arc<dyn Store>,
    pub sessions: Sessions,
    pub revoked: RevokedKeys,
    pub ingest: Ingest,
    /// Checks heartbeat signatures of all sessions in batches.
    pub verifier: crate::verifier::Verifier,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the bootstrap admin token.
    pub admin_token_hash: [u8; 32],
    /// Login throttle and password-hashing slots.
    pub accounts: Accounts,
    pub actions: ActionService,
    /// Wakes the action executor (a new ready action).
    pub action_wakeup: tokio::sync::Notify,
    /// The audit log (and actions) in the store.
    pub action_store: Arc<dyn ActionStore>,
    /// QUIC admission: connection and per-source handshake caps.
    pub admission: crate::quic::admission::Admission,
}

/// A started commander.
pub struct Running {
    pub app: Arc<App>,
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The HTTPS listener, when `https_listen` is set.
    pub https_addr: Option<SocketAddr>,
    pub node_id: NodeId,
    pub admin_token: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    ingest_task: JoinHandle<()>,
    endpoint: quinn::Endpoint,
}

/// Starts the commander; returns once both listeners are bound.
pub async fn start(config: CommanderConfig) -> anyhow::Result<Running> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    secure_file::ensure_private_dir(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let pending_key = crate::key_rotation::settle(&data_dir, hashfleet_shared::now_ms())
        .context("finishing a commander key rotation")?;
    let (identity, created) = keys::load_or_create_identity(&data_dir)?;
    if created {
        info!(node_id = %identity.node_id(), "created the commander identity");
    }
    // The admin token exists before the HTTP listener binds.
    let admin_token = keys::load_or_create_admin_token(&data_dir)?;
    let store_dir = data_dir.join("store");
    let sled = Arc::new(
        SledStore::open(&store_dir)
            .with_context(|| format!("opening the store in {}", store_dir.display()))?,
    );
    let store: Arc<dyn Store> = sled.clone();
    let action_store: Arc<dyn ActionStore> = sled;
    let revoked = RevokedKeys::default();
    for key in store.revoked_keys()? {
        revoked.insert(NodeId::from_public_key(key));
    }
    let mut fleet_config = FleetConfig::new(
        config.timezones.iter().map(|t| t.offset_ms).collect(),
        config.group_metrics.clone(),
        config.status_rules,
    );
    fleet_config.group_tag_prefixes = config.group_tag_prefixes.clone();
    let store2 = store.clone();
    let fleet = Arc::new(
        tokio::task::spawn_blocking(move || Fleet::load(store2.as_ref(), fleet_config))
            .await?
            .context("loading the device registry and rollups")?,
    );
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ingest, ingest_task) = Ingest::spawn(
        store.clone(),
        fleet.clone(),
        metrics.clone(),
        config.ingest_batch_max,
        stop_rx.clone(),
    );

    let endpoint = quic::listener::bind(&identity.node, revoked.clone(), config.quic_listen)?;
    let quic_addr = endpoint.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", config.http_listen))?;
    let http_addr = http_listener.local_addr()?;
    let https = match config.https_listen {
        Some(addr) => {
            let (certs, key) = http::https::load_or_create(
                &data_dir,
                config.https_cert.as_deref(),
                config.https_key.as_deref(),
                &config.https_names,
            )?;
            let tls = Arc::new(http::https::server_config(certs, key)?);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind HTTPS on {addr}"))?;
            Some((listener, tls))
        }
        None => None,
    };
    let https_addr = match &https {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    // Tells `hashfleet-commander backup`/`restore` that this data dir is served, and where.
    secure_file::write_atomic(
        &data_dir.join(HTTP_ADDR_FILE),
        http_addr.to_string().as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", data_dir.join(HTTP_ADDR_FILE).display()))?;
    let node_id = identity.node_id();
    let verifier = crate::verifier::Verifier::start(metrics.clone())
        .context("cannot start the signature verifier thread")?;
    let accounts = Accounts::new(config.auth.login_max_failures, config.auth.login_window);
    let policy = ActionPolicy {
        votes: config.actions.votes.clone(),
        automation: config.actions.automation.iter().cloned().collect(),
        ttl_ms: config.actions.ttl.as_millis() as u64,
    };
    let actions = ActionService::new(action_store.clone(), fleet.clone(), policy);
    let app = Arc::new(App {
        accounts,
        actions,
        action_wakeup: tokio::sync::Notify::new(),
        action_store,
        admission: crate::quic::admission::Admission::new(config.quic),
        config,
        identity: crate::key_rotation::KeyCell::new(identity),
        announcement: Default::default(),
        store,
        sessions: Sessions::default(),
        revoked,
        ingest,
        verifier,
        fleet,
        metrics,
        admin_token_hash: token_hash(&admin_token),
    });
    let mut tasks = vec![
        tokio::spawn(quic::listener::accept_loop(
            app.clone(),
            endpoint.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(http::serve(app.clone(), http_listener, stop_rx.clone())),
        tokio::spawn(upkeep::checkpoints(app.clone(), stop_rx.clone())),
        tokio::spawn(upkeep::retention(app.clone(), stop_rx.clone())),
        tokio::spawn(crate::actions::executor::run(app.clone(), stop_rx.clone())),
        tokio::spawn(crate::key_rotation::watch(
            app.clone(),
            endpoint.clone(),
            stop_rx.clone(),
        )),
    ];
    if let Some(pending) = pending_key {
        info!(next = %pending.key.node_id(), switch_at_ms = pending.switch_at_ms, "a commander key rotation is pending");
    }
    if let Some((listener, tls)) = https {
        info!(https_addr = ?https_addr, "HTTPS listening");
        tasks.push(tokio::spawn(http::https::serve(
            app.clone(),
            listener,
            tls,
            stop_rx,
        )));
    }
    info!(%quic_addr, %http_addr, %node_id, public_key = %node_id.public_key_hex(), "commander listening");
    Ok(Running {
        app,
        quic_addr,
        http_addr,
        https_addr,
        node_id,
        admin_token,
        stop: stop_tx,
        tasks,
        ingest_task,
        endpoint,
    })
}

impl Running {
    /// Stops accepting, closes sessions, drains ingest and flushes.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        info!("commander shutting down");
        let _ = self.stop.send(true);
        self.endpoint.set_server_config(None);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let _ = std::fs::remove_file(self.app.config.data_dir.join(HTTP_ADDR_FILE));
        self.endpoint.close(
            crate::sessions::close::SHUTDOWN.into(),
            b"commander shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), self.ingest_task).await;
        upkeep::checkpoint_now(&self.app).await;
        let store = self.app.store.clone();
        tokio::task::spawn_blocking(move || store.flush()).await??;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!("commander stopped");
        Ok(())
    }
}

/// Runs the commander until `shutdown` resolves.
pub async fn run(
    config: CommanderConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown.await;
    running.shutdown().await
}
