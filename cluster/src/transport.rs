//! The node's one QUIC endpoint: it serves other nodes' requests and calls theirs.
//!
//! TLS 1.3 always, with a certificate the node generates at start. Nodes do not trust each
//! other's certificates; they trust the cluster secret: the handshake on each connection's
//! first stream proves both ends know it, bound to that TLS session (see `protocol::cluster`).
//!
//! One request = one bidirectional stream ([`Request`] out, [`Response`] back). A peer allows
//! [`MAX_STREAMS`] open streams per connection, so a slow peer pushes back on its callers
//! instead of queueing without bound; every call has a timeout; a failed connection is dropped
//! and the next call reconnects. A streaming request (a live watch) keeps its stream open and
//! receives length-prefixed responses until either end closes it.

pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protocol::cluster::{Channel, Hello, Request, Response, Welcome, MAX_FRAME, VERSION};
use protocol::codec;
use tracing::{debug, info, warn};

/// Open streams a peer may have on one connection.
pub const MAX_STREAMS: u32 = 512;
/// The handshake's own frames are small.
const HELLO_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub node_id: u64,
    pub secret: Vec<u8>,
    /// How long a call may take, connection and handshake included.
    pub request_timeout: Duration,
    /// A connection with no traffic (keep-alives included) for this long is dead.
    pub idle_timeout: Duration,
    /// The certificate the endpoint presents (a new self-signed one if `None`).
    pub certificate: Option<tls::CertificatePem>,
    /// ALPN protocols of client connections ([`ClientService`]) besides the cluster's.
    pub client_alpns: Vec<Vec<u8>>,
}

impl TransportConfig {
    pub fn new(listen: SocketAddr, node_id: u64, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            listen,
            node_id,
            secret: secret.into(),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(4),
            certificate: None,
            client_alpns: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cluster transport: {0}")]
    Setup(String),
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr} refused the handshake: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to {addr}: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("{addr} answered: {message}")]
    Remote {
        addr: SocketAddr,
        message: String,
        retry: bool,
    },
}

impl TransportError {
    /// Whether trying again (after a pause, or at another node) may work.
    pub fn retryable(&self) -> bool {
        match self {
            TransportError::Setup(_) | TransportError::Refused { .. } => false,
            TransportError::Remote { retry, .. } => *retry,
            _ => true,
        }
    }
}

pub type Reply = Pin<Box<dyn Future<Output = Response> + Send>>;

/// What a node does with other nodes' requests (everything but `Ping`).
pub trait Service: Send + Sync + 'static {
    /// `from` is the caller's node id, proven by the handshake.
    fn serve(&self, from: u64, request: Request) -> Reply;

    /// A streaming request ([`Channel::is_stream`]): the service sends responses into `out`
    /// — the first says whether the request is taken — until it is done, or until `out` is
    /// closed because the caller went away. The default refuses.
    fn serve_stream(
        &self,
        _from: u64,
        request: Request,
        out: tokio::sync::mpsc::Sender<Response>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let _ = out
                .send(Response::Err {
                    message: format!("this node does not stream {:?}", request.channel),
                    retry: false,
                })
                .await;
        })
    }
}

/// What a node does with a client's connection: one whose ALPN is not the cluster's (see
/// [`TransportConfig::client_alpns`]). The connection is the service's until it ends.
pub trait ClientService: Send + Sync + 'static {
    fn serve_client(&self, conn: quinn::Connection) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Set once the node can serve clients ([`Transport::set_client_service`]).
type Clients = Arc<OnceLock<Arc<dyn ClientService>>>;

/// Responses of a streaming request after the first, as they arrive
/// ([`Transport::open_stream`]). Dropping it tells the callee to stop.
pub struct Incoming {
    addr: SocketAddr,
    recv: quinn::RecvStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Incoming {
    /// The next response's body; `None` once the callee ended the stream. A refusal or a
    /// broken stream is an error (the caller starts over, perhaps elsewhere).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let addr = self.addr;
        match read_frame(&mut self.recv).await {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => answer(addr, &bytes).map(Some),
            Err(reason) => Err(TransportError::Stream { addr, reason }),
        }
    }
}

/// A response's body, or the error it carries.
fn answer(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, TransportError> {
    match codec::decode::<Response>(bytes) {
        Ok(Response::Ok(body)) => Ok(body),
        Ok(Response::Err { message, retry }) => Err(TransportError::Remote {
            addr,
            message,
            retry,
        }),
        Err(e) => Err(TransportError::Stream {
            addr,
            reason: format!("bad answer: {e}"),
        }),
    }
}

/// Streams a node may have open to its peers at once: each holds a QUIC stream of the
/// peer's [`MAX_STREAMS`] for as long as it lasts, and requests need the rest.
pub const MAX_OPEN_STREAMS: usize = 128;

/// Reads one length-prefixed frame (`u32` little-endian length, then that many bytes);
/// `None` at a clean end of the stream between frames.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "a streamed frame of {len} bytes is over {MAX_FRAME}"
        ));
    }
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| "frame too large".to_string())?;
    send.write_all(&len.to_le_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    config: TransportConfig,
    /// One connection per peer address; the async lock serializes (re)connecting to a peer.
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    /// Small requests waiting to travel to each peer in one frame ([`Transport::call_batched`]).
    batches: Mutex<HashMap<SocketAddr, Batch>>,
    /// Batched requests sent, and the frames that carried them.
    batched: [std::sync::atomic::AtomicU64; 2],
    /// Permits for open streaming requests ([`MAX_OPEN_STREAMS`]).
    open_streams: Arc<tokio::sync::Semaphore>,
    clients: Clients,
    accept: tokio::task::JoinHandle<()>,
}

type Answer = tokio::sync::oneshot::Sender<Result<Vec<u8>, TransportError>>;

/// One peer's queue of batched requests; `sending` while a frame to it is in flight.
#[derive(Default)]
struct Batch {
    waiting: Vec<(Request, Answer)>,
    sending: bool,
}

/// Requests in one batched frame, at most.
const BATCH_MAX: usize = 1024;
/// How long a batched frame waits for more requests before it leaves: groups' heartbeat
/// timers are not aligned, and a round trip on a local network is shorter than the gaps
/// between them, so without a wait few frames would carry more than one request. Far below
/// the heartbeat interval and the leader lease.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// Socket buffers the endpoint asks for: a burst of append-entries from two leaders must not
/// overflow the kernel's default (~200 KiB) and be dropped, which QUIC reads as congestion.
/// The kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// The endpoint's socket, bound to `addr`, with [`UDP_BUFFER_BYTES`] asked for.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, it only drops sooner under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Transport {
    /// Binds the endpoint and starts serving `service`.
    pub fn start(
        config: TransportConfig,
        service: Arc<dyn Service>,
    ) -> Result<Self, TransportError> {
        if config.secret.len() < 16 {
            return Err(TransportError::Setup(
                "the cluster secret must be at least 16 bytes".into(),
            ));
        }
        let (server, client) = tls::configs(
            config.idle_timeout,
            config.certificate.as_ref(),
            &config.client_alpns,
        )?;
        let bind = |e: std::io::Error| {
            TransportError::Setup(format!("cannot bind QUIC {}: {e}", config.listen))
        };
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            udp_socket(config.listen).map_err(bind)?,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind)?;
        endpoint.set_default_client_config(client);
        let clients = Clients::default();
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            config.node_id,
            Arc::new(config.secret.clone()),
            service,
            clients.clone(),
        ));
        Ok(Self {
            endpoint,
            config,
            peers: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            batched: Default::default(),
            open_streams: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_STREAMS)),
            clients,
            accept,
        })
    }

    /// Starts handing client connections to `service`; until then they are closed with
    /// "starting". Set once; later calls are ignored.
    pub fn set_client_service(&self, service: Arc<dyn ClientService>) {
        let _ = self.clients.set(service);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or(self.config.listen)
    }

    /// Sends `request` to the node at `addr` and returns its answer's body.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<Vec<u8>, TransportError> {
        self.call_within(addr, request, self.config.request_timeout)
            .await
    }

    /// Like [`Transport::call`], with its own timeout.
    pub async fn call_within(
        &self,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        match tokio::time::timeout(timeout, self.call_inner(addr, request)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        }
    }

    /// Like [`Transport::call_within`], but the request shares a frame with the other small
    /// requests to the same peer: while a frame to `addr` is in flight, requests queue, and
    /// the next frame carries all of them (so a node hosting many groups sends their
    /// heartbeats to a peer as a few frames, not one stream each). A frame leaves
    /// [`BATCH_LINGER`] after its first request.
    pub async fn call_batched(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            let batch = batches.entry(addr).or_default();
            batch.waiting.push((request, tx));
            !std::mem::replace(&mut batch.sending, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.send_batches(addr, timeout).await });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(TransportError::Stream {
                addr,
                reason: "the batch was dropped".into(),
            }),
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        }
    }

    /// Sends `addr`'s queued requests, a frame at a time, until none are left; each frame
    /// waits [`BATCH_LINGER`] for more to join it.
    async fn send_batches(&self, addr: SocketAddr, timeout: Duration) {
        loop {
            tokio::time::sleep(BATCH_LINGER).await;
            let batch: Vec<(Request, Answer)> = {
                let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
                let Some(b) = batches.get_mut(&addr) else {
                    return;
                };
                if b.waiting.is_empty() {
                    b.sending = false;
                    return;
                }
                let n = b.waiting.len().min(BATCH_MAX);
                b.waiting.drain(..n).collect()
            };
            let (requests, answers): (Vec<Request>, Vec<Answer>) = batch.into_iter().unzip();
            use std::sync::atomic::Ordering::Relaxed;
            self.batched[0].fetch_add(requests.len() as u64, Relaxed);
            self.batched[1].fetch_add(1, Relaxed);
            let result = match codec::encode(&requests) {
                Ok(body) => {
                    let frame = Request {
                        channel: Channel::Batch,
                        group: 0,
                        body,
                    };
                    self.call_within(addr, &frame, timeout).await
                }
                Err(e) => Err(TransportError::Stream {
                    addr,
                    reason: e.to_string(),
                }),
            };
            let responses = result.and_then(|body| {
                codec::decode::<Vec<Response>>(&body)
                    .ok()
                    .filter(|r| r.len() == answers.len())
                    .ok_or_else(|| TransportError::Stream {
                        addr,
                        reason: "bad batch answer".into(),
                    })
            });
            match responses {
                Ok(responses) => {
                    for (answer, response) in answers.into_iter().zip(responses) {
                        let _ = answer.send(match response {
                            Response::Ok(body) => Ok(body),
                            Response::Err { message, retry } => Err(TransportError::Remote {
                                addr,
                                message,
                                retry,
                            }),
                        });
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    for answer in answers {
                        let _ = answer.send(Err(match &e {
                            TransportError::Timeout { timeout, .. } => TransportError::Timeout {
                                addr,
                                timeout: *timeout,
                            },
                            TransportError::Connect { .. } => TransportError::Connect {
                                addr,
                                reason: reason.clone(),
                            },
                            _ => TransportError::Stream {
                                addr,
                                reason: reason.clone(),
                            },
                        }));
                    }
                }
            }
        }
    }

    /// Opens a streaming request ([`Channel::is_stream`]) to `addr`: returns the first
    /// response's body (within `timeout`) and the responses that follow.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Incoming), TransportError> {
        let permit =
            self.open_streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| TransportError::Stream {
                    addr,
                    reason: format!(
                        "this node already has {MAX_OPEN_STREAMS} streams open to its peers"
                    ),
                })?;
        let open = async {
            let bytes = codec::encode(request).map_err(|e| TransportError::Stream {
                addr,
                reason: e.to_string(),
            })?;
            let conn = self.connection(addr).await?;
            let stream = |reason: String| TransportError::Stream { addr, reason };
            let (mut send, recv) = conn.open_bi().await.map_err(|e| {
                self.forget(addr, &conn);
                stream(e.to_string())
            })?;
            send.write_all(&bytes)
                .await
                .map_err(|e| stream(e.to_string()))?;
            send.finish().map_err(|e| stream(e.to_string()))?;
            let mut incoming = Incoming {
                addr,
                recv,
                _permit: permit,
            };
            match incoming.next().await? {
                Some(first) => Ok((first, incoming)),
                None => Err(stream("the stream ended before its first answer".into())),
            }
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        }
    }

    /// `(requests, frames)`: how many batched requests were sent, in how many frames.
    pub fn batched(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.batched[0].load(Relaxed), self.batched[1].load(Relaxed))
    }

    /// Asks `addr` for its node id (and proves the secret both ways).
    pub async fn ping(&self, addr: SocketAddr) -> Result<u64, TransportError> {
        let body = self
            .call(
                addr,
                &Request {
                    channel: Channel::Ping,
                    group: 0,
                    body: Vec::new(),
                },
            )
            .await?;
        codec::decode(&body).map_err(|e| TransportError::Stream {
            addr,
            reason: format!("bad ping answer: {e}"),
        })
    }

    async fn call_inner(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<Vec<u8>, TransportError> {
        let head = request.encode_head().map_err(|e| TransportError::Stream {
            addr,
            reason: e.to_string(),
        })?;
        let conn = self.connection(addr).await?;
        let result = exchange(&conn, &[&head, &request.body], MAX_FRAME).await;
        let bytes = match result {
            Ok(b) => b,
            Err(reason) => {
                // The connection may be dead: forget it so the next call reconnects.
                self.forget(addr, &conn);
                return Err(TransportError::Stream { addr, reason });
            }
        };
        answer(addr, &bytes)
    }

    fn slot(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Option<quinn::Connection>>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.entry(addr).or_default().clone()
    }

    fn forget(&self, addr: SocketAddr, dead: &quinn::Connection) {
        let slot = self.slot(addr);
        if let Ok(mut guard) = slot.try_lock() {
            if guard
                .as_ref()
                .is_some_and(|c| c.stable_id() == dead.stable_id())
            {
                *guard = None;
            }
        };
    }

    /// The live, authenticated connection to `addr`, made if needed.
    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let connecting =
            self.endpoint
                .connect(addr, tls::SERVER_NAME)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
        let conn = connecting.await.map_err(|e| TransportError::Connect {
            addr,
            reason: e.to_string(),
        })?;
        let node_id = client_handshake(&conn, self.config.node_id, &self.config.secret)
            .await
            .map_err(|e| match e {
                Handshake::Refused(reason) => TransportError::Refused { addr, reason },
                Handshake::Failed(reason) => TransportError::Stream { addr, reason },
            })?;
        debug!(%addr, peer = node_id, "connected");
        *guard = Some(conn.clone());
        Ok(conn)
    }

    pub async fn shutdown(&self) {
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A request's send half: if the call is abandoned (a timeout drops it) before the request
/// is fully written, the stream is reset, so an unwanted request stops using the link.
struct Sending(Option<quinn::SendStream>);

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.reset(0u32.into());
        }
    }
}

/// One request/response on a new stream; the request is written as the parts given.
async fn exchange(
    conn: &quinn::Connection,
    request: &[&[u8]],
    limit: usize,
) -> Result<Vec<u8>, String> {
    let (send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut sending = Sending(Some(send));
    if let Some(send) = sending.0.as_mut() {
        for part in request {
            send.write_all(part).await.map_err(|e| e.to_string())?;
        }
        send.finish().map_err(|e| e.to_string())?;
    }
    // Fully written and finished: from here a dropped call leaves the request to complete.
    sending.0 = None;
    recv.read_to_end(limit).await.map_err(|e| e.to_string())
}

enum Handshake {
    Refused(String),
    Failed(String),
}

fn exported(conn: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, protocol::cluster::EXPORTER_LABEL, b"")
        .map_err(|_| "TLS keying material export failed".to_string())?;
    Ok(out)
}

/// What a handshake proof covers: the prover's role, its node id, the session's keying material.
fn proof_message(role: &[u8], node_id: u64, exported: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(role.len() + 8 + 32);
    msg.extend_from_slice(role);
    msg.extend_from_slice(&node_id.to_le_bytes());
    msg.extend_from_slice(exported);
    msg
}

/// HMAC-SHA256 under the cluster secret.
fn proof(secret: &[u8], role: &[u8], node_id: u64, exported: &[u8; 32]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &proof_message(role, node_id, exported));
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag.as_ref()[..32]);
    out
}

/// Checks a proof in constant time.
fn verify(secret: &[u8], role: &[u8], node_id: u64, exported: &[u8; 32], got: &[u8; 32]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &proof_message(role, node_id, exported), got).is_ok()
}

async fn client_handshake(
    conn: &quinn::Connection,
    node_id: u64,
    secret: &[u8],
) -> Result<u64, Handshake> {
    let ekm = exported(conn).map_err(Handshake::Failed)?;
    let hello = Hello {
        version: VERSION,
        node_id,
        proof: proof(secret, b"client", node_id, &ekm),
    };
    let bytes = codec::encode(&hello).map_err(|e| Handshake::Failed(e.to_string()))?;
    let answer = exchange(conn, &[&bytes], HELLO_MAX)
        .await
        .map_err(Handshake::Failed)?;
    match codec::decode::<Welcome>(&answer) {
        Ok(Welcome::Accepted {
            node_id: peer,
            proof,
        }) => {
            if verify(secret, b"server", peer, &ekm, &proof) {
                Ok(peer)
            } else {
                conn.close(1u32.into(), b"bad proof");
                Err(Handshake::Refused(
                    "its proof of the cluster secret is wrong (a different cluster?)".into(),
                ))
            }
        }
        Ok(Welcome::Refused { reason }) => Err(Handshake::Refused(reason)),
        Err(e) => Err(Handshake::Failed(format!("bad handshake answer: {e}"))),
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    node_id: u64,
    secret: Arc<Vec<u8>>,
    service: Arc<dyn Service>,
    clients: Clients,
) {
    while let Some(incoming) = endpoint.accept().await {
        let secret = secret.clone();
        let service = service.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(%remote, cause = %e, "incoming connection failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            if alpn.as_deref() != Some(protocol::cluster::ALPN) {
                match clients.get() {
                    Some(s) => s.serve_client(conn).await,
                    None => conn.close(2u32.into(), b"starting"),
                }
                return;
            }
            match tokio::time::timeout(
                Duration::from_secs(5),
                server_handshake(&conn, node_id, &secret),
            )
            .await
            {
                Ok(Ok(peer)) => serve_connection(conn, peer, node_id, service).await,
                Ok(Err(Handshake::Failed(reason))) => {
                    debug!(%remote, %reason, "node-to-node handshake did not complete");
                }
                Ok(Err(Handshake::Refused(reason))) => {
                    warn!(%remote, %reason, "refused a node-to-node connection");
                    // Give the refusal a moment to reach the caller before closing.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    conn.close(1u32.into(), b"refused");
                }
                Err(_) => {
                    warn!(%remote, "no handshake within 5 s");
                    conn.close(1u32.into(), b"handshake timeout");
                }
            }
        });
    }
}

async fn server_handshake(
    conn: &quinn::Connection,
    node_id: u64,
    secret: &[u8],
) -> Result<u64, Handshake> {
    let failed = |e: String| Handshake::Failed(e);
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| failed(e.to_string()))?;
    let bytes = recv
        .read_to_end(HELLO_MAX)
        .await
        .map_err(|e| failed(format!("reading hello: {e}")))?;
    let ekm = exported(conn).map_err(failed)?;
    let refusal = match codec::decode::<Hello>(&bytes) {
        Err(e) => Err(format!("malformed hello: {e}")),
        Ok(h) if h.version != VERSION => {
            Err(format!("protocol version {} is not {VERSION}", h.version))
        }
        Ok(h) if !verify(secret, b"client", h.node_id, &ekm, &h.proof) => {
            Err("wrong cluster secret".to_string())
        }
        Ok(h) => Ok(h.node_id),
    };
    let answer = match &refusal {
        Ok(_) => Welcome::Accepted {
            node_id,
            proof: proof(secret, b"server", node_id, &ekm),
        },
        Err(reason) => Welcome::Refused {
            reason: reason.clone(),
        },
    };
    let bytes = codec::encode(&answer).map_err(|e| failed(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| failed(e.to_string()))?;
    send.finish().map_err(|e| failed(e.to_string()))?;
    refusal.map_err(Handshake::Refused)
}

async fn serve_connection(
    conn: quinn::Connection,
    peer: u64,
    node_id: u64,
    service: Arc<dyn Service>,
) {
    info!(remote = %conn.remote_address(), peer, "node connected");
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer, cause = %e, "node connection ended");
                return;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let response = match recv.read_to_end(MAX_FRAME).await {
                Err(e) => Response::Err {
                    message: format!("request not read: {e}"),
                    retry: true,
                },
                Ok(bytes) => match codec::decode::<Request>(&bytes) {
                    Err(e) => Response::Err {
                        message: format!("malformed request: {e}"),
                        retry: false,
                    },
                    Ok(r) if r.channel == Channel::Ping => match codec::encode(&node_id) {
                        Ok(b) => Response::Ok(b),
                        Err(e) => Response::Err {
                            message: e.to_string(),
                            retry: false,
                        },
                    },
                    Ok(r) if r.channel == Channel::Batch => {
                        serve_batch(&service, peer, &r.body).await
                    }
                    Ok(r) if r.channel.is_stream() => {
                        serve_stream(&service, peer, r, send).await;
                        return;
                    }
                    Ok(r) => service.serve(peer, r).await,
                },
            };
            if let Ok(bytes) = codec::encode(&response) {
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        });
    }
}

/// A streaming request: the service's responses go out as length-prefixed frames until the
/// service is done (the stream is finished) or the caller stops reading (the service's
/// sender closes, which is how it learns to stop).
async fn serve_stream(
    service: &Arc<dyn Service>,
    peer: u64,
    request: Request,
    mut send: quinn::SendStream,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Response>(16);
    let serving = tokio::spawn(service.serve_stream(peer, request, tx));
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some(response) = next else {
                    let _ = send.finish();
                    break;
                };
                let Ok(bytes) = codec::encode(&response) else { break };
                if write_frame(&mut send, &bytes).await.is_err() {
                    break;
                }
            }
            _ = send.stopped() => break,
        }
    }
    // Dropping the receiver closes the service's sender; it stops on its next send.
    drop(rx);
    let _ = serving.await;
}

/// A `Channel::Batch` frame: every request served at once, the answers in order.
async fn serve_batch(service: &Arc<dyn Service>, peer: u64, body: &[u8]) -> Response {
    let requests: Vec<Request> = match codec::decode(body) {
        Ok(r) => r,
        Err(e) => {
            return Response::Err {
                message: format!("malformed batch: {e}"),
                retry: false,
            }
        }
    };
    if requests.len() > BATCH_MAX {
        return Response::Err {
            message: format!("a batch holds at most {BATCH_MAX} requests"),
            retry: false,
        };
    }
    let answers = requests.into_iter().map(|r| {
        let reply: Reply = match r.channel {
            Channel::Batch | Channel::Ping | Channel::Watch => Box::pin(async move {
                Response::Err {
                    message: format!("{:?} requests cannot travel in a batch", r.channel),
                    retry: false,
                }
            }),
            _ => service.serve(peer, r),
        };
        reply
    });
    let answers = futures_util::future::join_all(answers).await;
    match codec::encode(&answers) {
        Ok(b) => Response::Ok(b),
        Err(e) => Response::Err {
            message: e.to_string(),
            retry: false,
        },
    }
}

#[cfg(test)]
mod tests;
