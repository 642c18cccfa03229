//! A Rust client for Pulseboard.
//!
//! [`Client::send`] writes one batch of points and returns once every point is durable on
//! the cluster; it gives the batch an id, so when a node times out or fails over and the
//! client sends the batch again (after a backoff, to the next node when the first cannot be
//! reached), the points are applied once. [`Batcher`] gathers single points into batches.
//!
//! Two transports, the same guarantees:
//! - [`Transport::Quic`]: the `pulseboard-ingest/1` protocol (see `protocol::ingest`) on a
//!   node's QUIC address, trusting the node's certificate (`<data_dir>/tls/cert.pem`), one
//!   connection with a stream per concurrent [`Client::send`].
//! - [`Transport::Http`]: `POST /api/v1/ingest` (JSON) with an `Idempotency-Key`.
//!
//! ```no_run
//! # async fn example() -> Result<(), pulseboard_client::ClientError> {
//! use pulseboard_client::{Client, Config, Transport};
//! let cert = std::fs::read_to_string("pulseboard-data/tls/cert.pem").unwrap();
//! let client = Client::new(Config::new(
//!     vec!["127.0.0.1:8081".into()],
//!     "pb_my_api_key",
//!     Transport::Quic { certificate_pem: cert },
//! ))?;
//! let point = protocol::DataPoint {
//!     metric: "clicks".into(),
//!     timestamp_ms: 1_700_000_000_000,
//!     value: 1.0,
//!     dimensions: vec![("country".into(), "de".into())],
//! };
//! client.send(&[point]).await?;
//! # Ok(()) }
//! ```

mod http;
mod quic;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
pub use protocol::ingest::ErrorCode;
pub use protocol::DataPoint;

#[derive(Clone, Debug)]
pub enum Transport {
    /// Nodes are QUIC addresses (`host:port`); `certificate_pem` is the certificate (chain)
    /// the nodes present — every node's, concatenated, when they differ.
    Quic { certificate_pem: String },
    /// Nodes are HTTP base URLs (`http://host:port`).
    Http,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: Vec<String>,
    pub api_key: String,
    pub transport: Transport,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
    /// How long a batch may keep being retried before [`ClientError::GaveUp`].
    pub retry_for: Duration,
    /// Free text the node logs (QUIC).
    pub client_name: String,
}

impl Config {
    pub fn new(nodes: Vec<String>, api_key: impl Into<String>, transport: Transport) -> Self {
        Self {
            nodes,
            api_key: api_key.into(),
            transport,
            attempt_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            client_name: concat!("pulseboard-client/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("configuration: {0}")]
    Config(String),
    /// The node refused the batch for a reason sending it again will not fix.
    #[error("{node} refused the batch ({code:?}): {message}")]
    Refused {
        node: String,
        code: ErrorCode,
        message: String,
    },
    /// Every attempt within `retry_for` failed; the last failure.
    #[error("gave up after {attempts} attempts over {elapsed:?}; last: {last}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
}

/// One attempt's failure.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The batch is wrong, or the key: do not retry.
    Fatal { code: ErrorCode, message: String },
    /// Try again (after `after` if the node said so); `switch`: at another node.
    Retry {
        message: String,
        after: Option<Duration>,
        switch: bool,
    },
}

/// What a [`Sender`] answers: the points the node accepted, or why not.
pub(crate) type SendFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Failure>> + Send + 'a>>;

pub(crate) trait Sender: Send + Sync {
    fn send<'a>(
        &'a self,
        node: &'a str,
        batch_id: &'a str,
        points: &'a [DataPoint],
    ) -> SendFuture<'a>;
}

/// A client of a cluster: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    sender: Box<dyn Sender>,
    /// The node batches go to; moves on when one cannot be reached.
    current: AtomicUsize,
}

impl Client {
    pub fn new(config: Config) -> Result<Self, ClientError> {
        if config.nodes.is_empty() {
            return Err(ClientError::Config("no nodes given".into()));
        }
        let sender: Box<dyn Sender> = match &config.transport {
            Transport::Quic { certificate_pem } => Box::new(quic::QuicSender::new(
                certificate_pem,
                &config.api_key,
                &config.client_name,
                config.attempt_timeout,
            )?),
            Transport::Http => Box::new(http::HttpSender::new(
                &config.api_key,
                config.attempt_timeout,
            )?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                sender,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// Sends one batch (all or nothing) and returns how many points were accepted once they
    /// are durable. Retries what may succeed on retry — overload, failover, timeouts, lost
    /// connections — with exponential backoff and jitter, moving to the next node when one
    /// cannot be reached, always under the same batch id.
    pub async fn send(&self, points: &[DataPoint]) -> Result<u32, ClientError> {
        let batch_id = format!("pbc-{:032x}", rand::random::<u128>());
        self.send_with_id(&batch_id, points).await
    }

    /// [`Client::send`] with the caller's batch id (to carry one across process restarts).
    pub async fn send_with_id(
        &self,
        batch_id: &str,
        points: &[DataPoint],
    ) -> Result<u32, ClientError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let i = inner.current.load(Ordering::Relaxed) % inner.config.nodes.len();
            let node = &inner.config.nodes[i];
            let (message, after, switch) = match inner.sender.send(node, batch_id, points).await {
                Ok(n) => return Ok(n),
                Err(Failure::Fatal { code, message }) => {
                    return Err(ClientError::Refused {
                        node: node.clone(),
                        code,
                        message,
                    })
                }
                Err(Failure::Retry {
                    message,
                    after,
                    switch,
                }) => (message, after, switch),
            };
            if switch {
                let _ = inner.current.compare_exchange(
                    i,
                    (i + 1) % inner.config.nodes.len(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let delay = delays
                .next()
                .unwrap_or(Duration::from_secs(2))
                .max(after.unwrap_or_default());
            if started.elapsed() + delay > inner.config.retry_for {
                return Err(ClientError::GaveUp {
                    attempts,
                    elapsed: started.elapsed(),
                    last: format!("{node}: {message}"),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// A bare QUIC connection to `node` speaking `pulseboard-ingest/1`, trusting
/// `certificate_pem`: for tools (and tests) that write the protocol's frames themselves.
pub async fn connect_quic(
    node: &str,
    certificate_pem: &str,
) -> Result<quinn::Connection, ClientError> {
    let sender = quic::QuicSender::new(certificate_pem, "", "", Duration::from_secs(10))?;
    sender.connect(node).await
}

/// Gathers points into batches of `batch_size` and sends each full one; [`Batcher::flush`]
/// sends what is left. Points pushed are durable once a `push` that sent them, or `flush`,
/// returns `Ok`; after an error they are still pending, and the next `flush` sends them again
/// (a new batch id: call it only if the failed batch was refused, not lost).
pub struct Batcher {
    client: Client,
    batch_size: usize,
    pending: Vec<DataPoint>,
}

impl Batcher {
    pub fn new(client: Client, batch_size: usize) -> Self {
        Self {
            client,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
        }
    }

    pub async fn push(&mut self, point: DataPoint) -> Result<(), ClientError> {
        self.pending.push(point);
        if self.pending.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.client.send(&self.pending).await?;
        self.pending.clear();
        Ok(())
    }
}
