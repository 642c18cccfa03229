//! Starting and stopping a node: components start in dependency order (metadata, storage
//! engine, HTTP) and stop in reverse, each stop logged with how long it took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::meta::{MetaService, MetaStore};
use crate::telemetry::Telemetry;

/// A running node. Dropping it without [`Node::stop`] aborts without the final snapshot
/// (like `kill -9`: safe, the log has everything acknowledged).
pub struct Node {
    http_addr: SocketAddr,
    state: Arc<AppState>,
    stop_http: Option<oneshot::Sender<()>>,
    http_task: JoinHandle<std::io::Result<()>>,
    /// The alert actor; it stops when live updates close.
    alert_task: JoinHandle<()>,
    /// Proposes what `pulseboard user add` leaves in the inbox; aborted at stop.
    inbox_task: JoinHandle<()>,
}

/// What the first start prints once: the generated admin password, if one was generated.
pub struct Started {
    pub node: Node,
    pub generated_admin_password: Option<String>,
}

pub async fn start(config: Config, admin_password: Option<String>) -> Result<Started> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Storage(format!(
            "create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let t = Instant::now();
    let store = Arc::new(MetaStore::open(&config.data_dir.join("meta.sqlite"))?);
    info!(ms = t.elapsed().as_millis() as u64, "metadata store open");

    let listener = TcpListener::bind(config.http)
        .await
        .map_err(|e| Error::Storage(format!("bind HTTP {}: {e}", config.http)))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let membership = crate::membership::Membership::start(&config, http_addr)?;
    info!(
        node_id = membership.identity.node_id,
        quic_addr = %membership.quic_addr(),
        "cluster endpoint listening"
    );

    let t = Instant::now();
    let engine = Engine::open(&config, &membership, store.clone()).await?;
    info!(
        ms = t.elapsed().as_millis() as u64,
        shards = engine.shard_count(),
        "storage engine recovered"
    );
    let meta = MetaService::new(store, engine.meta_group().clone(), config.auth.session_ttl)?;
    // The node that founds the cluster creates the first admin; a joining node has the
    // cluster's users already (replicated).
    let generated_admin_password = match config.join {
        None => meta.bootstrap(admin_password).await?,
        Some(_) => None,
    };

    let live = crate::live::LiveHub::new(
        engine.shard_set(),
        engine.layout().clone(),
        config.live.linger,
    );
    let (alerts, alert_rx) = crate::alert::evaluator::channel();
    let state = Arc::new(AppState {
        alerts,
        live,
        engine,
        meta,
        telemetry: Telemetry::default(),
        membership,
        config,
    });
    state
        .membership
        .transport
        .set_client_service(Arc::new(crate::quic_ingest::QuicIngest::new(&state)));
    let alert_task = tokio::spawn(crate::alert::evaluator::run(state.clone(), alert_rx));
    let inbox = state.clone();
    let inbox_task = tokio::spawn(async move { inbox.meta.serve_inbox().await });
    let app = http::router(state.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    info!(%http_addr, "http listening");
    Ok(Started {
        node: Node {
            http_addr,
            state,
            stop_http: Some(stop_tx),
            http_task,
            alert_task,
            inbox_task,
        },
        generated_admin_password,
    })
}

impl Node {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The node's shared state (for in-process drivers such as the demo). Drop every clone
    /// before [`Node::stop`], or the stop cannot take the final snapshot.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Graceful stop: finish in-flight requests, snapshot every shard, close the log.
    pub async fn stop(mut self) {
        let t = Instant::now();
        if let Some(tx) = self.stop_http.take() {
            let _ = tx.send(());
        }
        match (&mut self.http_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(cause = %e, "http server stopped with an error"),
            Err(e) => warn!(cause = %e, "http server task failed"),
        }
        info!(ms = t.elapsed().as_millis() as u64, "http stopped");
        let t = Instant::now();
        self.inbox_task.abort();
        let _ = (&mut self.inbox_task).await;
        self.state.live.shutdown().await;
        if let Err(e) = (&mut self.alert_task).await {
            warn!(cause = %e, "alert actor failed");
        }
        // Socket tasks hold the state until they have sent their close frames.
        let state = self.state;
        for _ in 0..250 {
            if Arc::strong_count(&state) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        info!(ms = t.elapsed().as_millis() as u64, "live updates stopped");
        let t = Instant::now();
        match Arc::try_unwrap(state) {
            Ok(state) => {
                state.engine.shutdown().await;
                state.membership.shutdown().await;
                info!(
                    ms = t.elapsed().as_millis() as u64,
                    "storage engine stopped"
                );
            }
            Err(_) => warn!("requests still hold the engine; stopping without a final snapshot"),
        }
    }
}
