//! The QUIC ingest server: `protocol::ingest` (ALPN `pulseboard-ingest/1`) on the node's QUIC
//! endpoint. Each client stream is a session: a Hello with an API key, then batches answered
//! by acks once durable, up to [`MAX_IN_FLIGHT`] at a time per stream — past that the stream
//! is not read, and QUIC's flow control holds the client back.
//!
//! The service holds the node's state weakly, and strongly only while a batch is written, so
//! an open client connection never keeps a stopping node from its final snapshot.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Instant;

use cluster::transport::ClientService;
use protocol::codec;
use protocol::ingest::{
    encode_frame, frame_len, ClientFrame, ErrorCode, ServerFrame, HELLO_MAX, LEN_BYTES, VERSION,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use crate::error::Error;
use crate::http::{ApiError, AppState};
use crate::meta::Action;
use crate::telemetry::Protocol;

/// Batches of one stream written at once.
pub const MAX_IN_FLIGHT: u32 = 8;
/// The largest batch frame: as large as the largest HTTP body, at most 16 MiB (a frame is
/// held whole while it is read).
const FRAME_CAP: usize = 16 << 20;
/// Bytes of batch frames the node holds at once, over every connection and stream, in KiB:
/// a frame is read only once its bytes fit, so many streams (each with batches in flight)
/// wait for each other instead of adding up to gigabytes.
const FRAME_BUDGET_KIB: usize = 256 << 10;

pub struct QuicIngest {
    state: Weak<AppState>,
    budget: Arc<Semaphore>,
}

impl QuicIngest {
    pub fn new(state: &Arc<AppState>) -> Self {
        Self {
            state: Arc::downgrade(state),
            budget: Arc::new(Semaphore::new(FRAME_BUDGET_KIB)),
        }
    }
}

impl ClientService for QuicIngest {
    fn serve_client(
        &self,
        conn: quinn::Connection,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (state, budget) = (self.state.clone(), self.budget.clone());
        Box::pin(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(state.clone(), budget.clone(), send, recv));
            }
        })
    }
}

enum ReadError {
    /// The stream ended inside a frame, or broke.
    Ended(String),
    TooLong(String),
}

/// A frame's bytes, and its share of the node's frame budget (held until the batch is done).
struct Frame {
    body: Vec<u8>,
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The next frame; `None` when the client finished the stream between frames. With a
/// `budget`, waits until the frame's bytes fit in it before reading them.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    budget: Option<&Arc<Semaphore>>,
) -> Result<Option<Frame>, ReadError> {
    let mut prefix = [0u8; LEN_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ReadError::Ended(e.to_string())),
    }
    let len = frame_len(prefix, max).map_err(ReadError::TooLong)?;
    let permit = match budget {
        Some(b) => Some(
            b.clone()
                .acquire_many_owned((len / 1024 + 1) as u32)
                .await
                .map_err(|e| ReadError::Ended(e.to_string()))?,
        ),
        None => None,
    };
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| ReadError::Ended(format!("inside a frame: {e}")))?;
    Ok(Some(Frame {
        body,
        _budget: permit,
    }))
}

fn error(seq: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        seq,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::Receiver<ServerFrame>) {
    while let Some(frame) = rx.recv().await {
        let Ok(bytes) = encode_frame(&frame) else {
            continue;
        };
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn serve_stream(
    state: Weak<AppState>,
    budget: Arc<Semaphore>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (tx, rx) = mpsc::channel::<ServerFrame>(2 * MAX_IN_FLIGHT as usize);
    let writer = tokio::spawn(write_frames(send, rx));
    if let Some(limits) = hello(&state, &mut recv, &tx).await {
        serve_batches(&state, &budget, &mut recv, &tx, limits).await;
    }
    drop(tx);
    let _ = writer.await;
}

/// What a welcomed stream may send.
#[derive(Clone, Copy)]
struct Limits {
    max_points: usize,
    max_frame: usize,
}

/// Reads and checks the Hello; answers Welcome, or an error (and `None`).
async fn hello(
    state: &Weak<AppState>,
    recv: &mut quinn::RecvStream,
    tx: &mpsc::Sender<ServerFrame>,
) -> Option<Limits> {
    let refuse = |code, message: String| async move {
        let _ = tx.send(error(None, code, message)).await;
        None
    };
    let bytes = match read_frame(recv, HELLO_MAX, None).await {
        Ok(Some(f)) => f.body,
        Ok(None) => return None,
        Err(ReadError::Ended(e)) => {
            debug!(cause = %e, "ingest stream ended before its hello");
            return None;
        }
        Err(ReadError::TooLong(e)) => {
            return refuse(ErrorCode::BadFrame, format!("hello: {e}")).await
        }
    };
    let (version, api_key, client) = match codec::decode::<ClientFrame>(&bytes) {
        Ok(ClientFrame::Hello {
            version,
            api_key,
            client,
        }) => (version, api_key, client),
        Ok(ClientFrame::Batch { .. }) => {
            return refuse(
                ErrorCode::Unauthorized,
                "the first frame of a stream must be a Hello with an API key".into(),
            )
            .await
        }
        Err(e) => return refuse(ErrorCode::BadFrame, format!("hello does not decode: {e}")).await,
    };
    if version != VERSION {
        return refuse(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version} is not {VERSION}"),
        )
        .await;
    }
    let state = state.upgrade()?;
    let principal = match state.meta.authenticate(&api_key, crate::now_ms()).await {
        Ok(p) => p,
        Err(e) => return refuse(ErrorCode::Unauthorized, e.to_string()).await,
    };
    if let Err(e) = principal.require(Action::Ingest) {
        return refuse(ErrorCode::Forbidden, e.to_string()).await;
    }
    let limits = Limits {
        max_points: state.limits().max_points,
        max_frame: state.config.ingest.max_body_bytes.min(FRAME_CAP),
    };
    debug!(%client, "ingest stream welcomed");
    let welcome = ServerFrame::Welcome {
        node_id: state.membership.identity.node_id,
        max_points: limits.max_points as u32,
        max_frame_bytes: limits.max_frame as u32,
        max_in_flight: MAX_IN_FLIGHT,
    };
    tx.send(welcome).await.ok()?;
    Some(limits)
}

async fn serve_batches(
    state: &Weak<AppState>,
    budget: &Arc<Semaphore>,
    recv: &mut quinn::RecvStream,
    tx: &mpsc::Sender<ServerFrame>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    loop {
        // Not reading while every slot is taken is the back-pressure.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let frame = match read_frame(recv, limits.max_frame, Some(budget)).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ReadError::Ended(e)) => {
                debug!(cause = %e, "ingest stream ended mid-frame; the partial frame is dropped");
                break;
            }
            Err(ReadError::TooLong(e)) => {
                // The stream cannot be read past a frame it will not take.
                let _ = tx.send(error(None, ErrorCode::BadFrame, e)).await;
                break;
            }
        };
        let (seq, batch_id, points) = match codec::decode::<ClientFrame>(&frame.body) {
            Ok(ClientFrame::Batch {
                seq,
                batch_id,
                points,
            }) => (seq, batch_id, points),
            Ok(ClientFrame::Hello { .. }) => {
                let _ = tx
                    .send(error(
                        None,
                        ErrorCode::BadFrame,
                        "a second Hello on the stream",
                    ))
                    .await;
                continue;
            }
            Err(e) => {
                let _ = tx
                    .send(error(
                        None,
                        ErrorCode::BadFrame,
                        format!("frame does not decode: {e}"),
                    ))
                    .await;
                continue;
            }
        };
        let Some(node) = state.upgrade() else {
            let _ = tx
                .send(error(
                    Some(seq),
                    ErrorCode::Unavailable,
                    "the node is stopping",
                ))
                .await;
            break;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let answer = write_batch(&node, seq, batch_id, points, limits).await;
            drop(node);
            drop(frame);
            let _ = tx.send(answer).await;
            drop(slot);
        });
    }
    // Every batch read is answered before the stream is finished.
    let _ = slots.acquire_many(MAX_IN_FLIGHT).await;
}

async fn write_batch(
    state: &AppState,
    seq: u64,
    batch_id: Option<String>,
    points: Vec<protocol::DataPoint>,
    limits: Limits,
) -> ServerFrame {
    let started = Instant::now();
    let result = async {
        if points.len() > limits.max_points {
            return Err(Error::TooLarge {
                limit: limits.max_points,
            });
        }
        let lim = state.limits();
        let points = points
            .into_iter()
            .enumerate()
            .map(|(i, p)| protocol::point::validate_point(p, i, &lim))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::Point)?;
        state
            .engine
            .write_idempotent(points, crate::now_ms(), batch_id.as_deref())
            .await
    }
    .await
    .map_err(ApiError);
    state
        .telemetry
        .record_ingest(Protocol::Quic, &result, started.elapsed());
    match result {
        Ok(n) => ServerFrame::Ack {
            seq,
            accepted: n as u32,
        },
        Err(ApiError(e)) => {
            let (code, retry_after_ms) = match &e {
                Error::Overloaded { retry_after_s, .. } => {
                    (ErrorCode::Overloaded, Some(retry_after_s * 1000))
                }
                Error::Unavailable(_) => (ErrorCode::Unavailable, Some(500)),
                Error::TooLarge { .. } => (ErrorCode::TooLarge, None),
                e if e.status_code() == 400 => (ErrorCode::Invalid, None),
                _ => (ErrorCode::Internal, Some(1000)),
            };
            ServerFrame::Error {
                seq: Some(seq),
                code,
                message: e.to_string(),
                retry_after_ms,
            }
        }
    }
}
