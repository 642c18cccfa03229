//! This node as a cluster member: its identity (node id, cluster secret), its QUIC endpoint,
//! and what it serves to other nodes.
//!
//! The node id is drawn once and kept in `<data_dir>/node.id` (Raft never reuses an id). The
//! cluster secret comes from the config (`cluster.secret`, `--cluster-secret`,
//! `PULSEBOARD_CLUSTER_SECRET`) or, on a node's first start without one, is generated into
//! `<data_dir>/cluster.secret` (mode 0600) — a node joining this one needs the same secret.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cluster::raft::Router;
use cluster::transport::{Reply, Service, Transport, TransportConfig, TransportError};
use protocol::cluster::{Channel, Request, Response};
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::replication::RaftGroups;

/// Who this node is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: u64,
    pub secret: Vec<u8>,
}

impl Identity {
    /// Reads (or creates on first start) the node id and the cluster secret.
    pub fn load_or_create(data_dir: &Path, configured_secret: Option<&str>) -> Result<Self> {
        let id_path = data_dir.join("node.id");
        let node_id = match std::fs::read_to_string(&id_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    Error::Storage(format!(
                        "{}: expected a positive node id, found {:?}",
                        id_path.display(),
                        text.trim()
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // 53 bits, like every other id the API shows (exact in JavaScript).
                let id = (rand::random::<u64>() >> 11).max(1);
                write_private(&id_path, id.to_string().as_bytes())?;
                id
            }
            Err(e) => return Err(Error::Storage(format!("read {}: {e}", id_path.display()))),
        };
        let secret = match configured_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let path = data_dir.join("cluster.secret");
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.trim().len() >= 16 => text.trim().as_bytes().to_vec(),
                    Ok(_) => {
                        return Err(Error::Config(crate::config::ConfigError::Invalid(format!(
                            "{} holds fewer than 16 characters; put the cluster's secret there or set PULSEBOARD_CLUSTER_SECRET",
                            path.display()
                        ))))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let secret = hex::encode(rand::random::<[u8; 24]>());
                        write_private(&path, secret.as_bytes())?;
                        secret.into_bytes()
                    }
                    Err(e) => {
                        return Err(Error::Storage(format!("read {}: {e}", path.display())))
                    }
                }
            }
        };
        Ok(Self { node_id, secret })
    }
}

/// The node's TLS certificate and key: `<data_dir>/tls/cert.pem` and `key.pem`, made
/// (self-signed) on first start; a certificate put there (with its key) is used instead.
/// QUIC ingest clients pin the certificate; peers authenticate with the secret instead.
pub fn load_or_create_certificate(
    data_dir: &Path,
) -> Result<cluster::transport::tls::CertificatePem> {
    use cluster::transport::tls::{generate_certificate, parse_certificate, CertificatePem};
    let dir = data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Error::Storage(format!("read {}: {e}", p.display())))
    };
    if cert_path.exists() || key_path.exists() {
        let pem = CertificatePem {
            cert: read(&cert_path)?,
            key: read(&key_path)?,
        };
        parse_certificate(&pem).map_err(|e| {
            Error::Config(crate::config::ConfigError::Invalid(format!(
                "{} / {}: {e}",
                cert_path.display(),
                key_path.display()
            )))
        })?;
        return Ok(pem);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Storage(format!("create {}: {e}", dir.display())))?;
    let pem = generate_certificate().map_err(|e| Error::Internal(e.to_string()))?;
    write_private(&key_path, pem.key.as_bytes())?;
    write_private(&cert_path, pem.cert.as_bytes())?;
    Ok(pem)
}

/// Writes a small file readable by the owner only, durably.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |op: &str, e: std::io::Error| Error::Storage(format!("{op} {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(bytes).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync directory of", e))?;
    }
    Ok(())
}

/// What this node answers to other nodes: Raft RPCs for the groups it hosts, batches
/// forwarded to the shards it leads, metadata commands and read barriers for the metadata
/// group it leads, and joins.
struct NodeService {
    router: Arc<Router>,
    groups: Arc<OnceLock<Arc<RaftGroups>>>,
    invite: Invite,
}

/// Where an invitation goes while this node waits for one (`--await-join`).
type Invite = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<SocketAddr>>>>;

fn refuse(message: String, retry: bool) -> Reply {
    Box::pin(async move { Response::Err { message, retry } })
}

impl NodeService {
    /// A member asks this node to join through it: accepted once, and only while the node
    /// waits for it.
    fn invited(&self, body: &[u8]) -> Reply {
        let addr = match protocol::codec::decode::<String>(body)
            .map_err(|e| e.to_string())
            .and_then(|a| a.parse::<SocketAddr>().map_err(|e| format!("{a:?}: {e}")))
        {
            Ok(a) => a,
            Err(e) => return refuse(format!("malformed invitation: {e}"), false),
        };
        let waiting = self.invite.lock().ok().and_then(|mut w| w.take());
        match waiting.map(|tx| tx.send(addr)) {
            Some(Ok(())) => Box::pin(async { Response::Ok(Vec::new()) }),
            _ => refuse(
                "this node is not waiting to be added: it already founded or joined a cluster (start a new node with --await-join)".into(),
                false,
            ),
        }
    }
}

impl Service for NodeService {
    fn serve(&self, _from: u64, request: Request) -> Reply {
        if matches!(
            request.channel,
            Channel::RaftAppend | Channel::RaftVote | Channel::RaftSnapshot
        ) {
            return self.router.serve(request);
        }
        if request.channel == Channel::Invite {
            return self.invited(&request.body);
        }
        let Some(groups) = self.groups.get().cloned() else {
            return refuse("this node is starting; retry".into(), true);
        };
        match request.channel {
            Channel::Ingest => {
                Box::pin(async move { groups.serve_ingest(request.group, &request.body).await })
            }
            Channel::Query => Box::pin(async move { groups.serve_fragment(&request.body).await }),
            Channel::Groups => {
                let status = groups.status();
                Box::pin(async move {
                    match protocol::codec::encode(&status) {
                        Ok(b) => Response::Ok(b),
                        Err(e) => Response::Err {
                            message: e.to_string(),
                            retry: false,
                        },
                    }
                })
            }
            Channel::Membership => Box::pin(async move {
                let change = match protocol::codec::decode(&request.body) {
                    Ok(c) => c,
                    Err(e) => {
                        return Response::Err {
                            message: format!("malformed membership request: {e}"),
                            retry: false,
                        }
                    }
                };
                match groups.change_membership(change).await {
                    Ok(answer) => match protocol::codec::encode(&answer) {
                        Ok(b) => Response::Ok(b),
                        Err(e) => Response::Err {
                            message: e.to_string(),
                            retry: false,
                        },
                    },
                    Err(e) => Response::Err {
                        message: e.to_string(),
                        retry: e.status_code() >= 500,
                    },
                }
            }),
            Channel::MetaWrite => {
                Box::pin(async move { groups.meta().serve_write(&request.body).await })
            }
            Channel::TakeLead => Box::pin(async move { groups.take_lead(request.group).await }),
            Channel::MetaReadIndex => {
                Box::pin(async move { groups.meta().serve_read_index().await })
            }
            other => refuse(
                format!("this node does not serve {other:?} requests"),
                false,
            ),
        }
    }

    fn serve_stream(
        &self,
        _from: u64,
        request: Request,
        out: tokio::sync::mpsc::Sender<Response>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let groups = self.groups.get().cloned();
        Box::pin(async move {
            let Some(groups) = groups else {
                let _ = out
                    .send(Response::Err {
                        message: "this node is starting; retry".into(),
                        retry: true,
                    })
                    .await;
                return;
            };
            match request.channel {
                Channel::Watch => groups.serve_watch(&request.body, out).await,
                other => {
                    let _ = out
                        .send(Response::Err {
                            message: format!("this node does not stream {other:?}"),
                            retry: false,
                        })
                        .await;
                }
            }
        })
    }
}

/// This node's membership: identity, endpoint, and the Raft groups it hosts.
pub struct Membership {
    pub identity: Identity,
    pub transport: Arc<Transport>,
    pub router: Arc<Router>,
    groups: Arc<OnceLock<Arc<RaftGroups>>>,
    http_addr: SocketAddr,
    advertise: Option<SocketAddr>,
    invite: Invite,
}

/// `GET /api/v1/cluster` (SPEC §3).
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub meta_leader: u64,
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub http_addr: String,
    pub quic_addr: String,
    pub role: &'static str,
    pub alive: bool,
}

#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub leader: u64,
    pub replicas: Vec<u64>,
}

impl Membership {
    /// Loads the identity and opens the QUIC endpoint on `config.quic`.
    pub fn start(config: &Config, http_addr: SocketAddr) -> Result<Self> {
        let identity =
            Identity::load_or_create(&config.data_dir, config.cluster.secret.as_deref())?;
        let router = Arc::new(Router::default());
        let groups = Arc::new(OnceLock::new());
        let invite = Invite::default();
        let mut transport_config =
            TransportConfig::new(config.quic, identity.node_id, identity.secret.clone());
        transport_config.certificate = Some(load_or_create_certificate(&config.data_dir)?);
        transport_config.client_alpns = vec![protocol::ingest::ALPN.to_vec()];
        let transport = Transport::start(
            transport_config,
            Arc::new(NodeService {
                router: router.clone(),
                groups: groups.clone(),
                invite: invite.clone(),
            }),
        )
        .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(Self {
            identity,
            transport: Arc::new(transport),
            router,
            groups,
            http_addr,
            advertise: config.cluster.advertise,
            invite,
        })
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// This node as its Raft groups know it: at its advertised QUIC address.
    pub fn member(&self) -> cluster::raft::Member {
        cluster::raft::Member {
            quic: self
                .advertise
                .unwrap_or_else(|| self.quic_addr())
                .to_string(),
            http: self.http_addr.to_string(),
        }
    }

    /// Hands the node's shard groups to the service answering other nodes.
    pub fn attach(&self, groups: Arc<RaftGroups>) {
        let _ = self.groups.set(groups);
    }

    /// The cluster as this node's shard groups see it.
    pub async fn view(&self) -> ClusterView {
        match self.groups.get() {
            Some(g) => g.view().await,
            None => ClusterView {
                nodes: Vec::new(),
                meta_leader: 0,
                shards: Vec::new(),
            },
        }
    }

    /// Waits until a member invites this node (see [`Membership::invite`]); answers the
    /// member's QUIC address, to join through.
    pub async fn await_invite(&self) -> Result<SocketAddr> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.invite.lock() {
            *w = Some(tx);
        }
        rx.await
            .map_err(|_| Error::Internal("the invitation channel closed".into()))
    }

    /// Asks the node at `addr` (started with `--await-join` and this cluster's secret) to
    /// join the cluster through this node, then waits up to `within` until it is a member;
    /// answers it as `GET /api/v1/cluster` shows it, or `None` if it is still joining.
    pub async fn invite(&self, addr: SocketAddr, within: Duration) -> Result<Option<NodeView>> {
        let unreachable = |e: TransportError| {
            Error::Unavailable(format!(
                "no node of this cluster answered at {addr} (is it running, with --await-join and this cluster's secret?): {e}"
            ))
        };
        // The handshake names the node: it is a member once the view lists that id.
        let id = self.transport.ping(addr).await.map_err(unreachable)?;
        let me = self.member().quic;
        let body = protocol::codec::encode(&me).map_err(|e| Error::Internal(e.to_string()))?;
        let request = Request {
            channel: Channel::Invite,
            group: 0,
            body,
        };
        match self
            .transport
            .call_within(addr, &request, Duration::from_secs(10))
            .await
        {
            Ok(_) => {}
            Err(TransportError::Remote { message, .. }) => {
                return Err(Error::Meta(crate::meta::MetaError::Conflict(format!(
                    "the node at {addr} refused: {message}"
                ))))
            }
            Err(e) => return Err(unreachable(e)),
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let view = self.view().await;
            if let Some(n) = view.nodes.into_iter().find(|n| n.id == id && n.alive) {
                return Ok(Some(n));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes node `id` from every group (see `RaftGroups::remove_node`).
    pub async fn remove_node(&self, id: u64) -> Result<protocol::cluster::MembershipAnswer> {
        match self.groups.get() {
            Some(g) => g.remove_node(id).await,
            None => Err(Error::Unavailable("this node is starting; retry".into())),
        }
    }

    pub async fn shutdown(&self) {
        self.transport.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let a = Identity::load_or_create(dir.path(), None).expect("create");
        let b = Identity::load_or_create(dir.path(), None).expect("reload");
        assert_eq!(a.node_id, b.node_id);
        assert_eq!(a.secret, b.secret);
        assert!(a.secret.len() >= 16);
        let c = Identity::load_or_create(dir.path(), Some("configured secret value")).expect("cfg");
        assert_eq!(c.node_id, a.node_id);
        assert_eq!(c.secret, b"configured secret value");
        std::fs::write(dir.path().join("node.id"), "zero").expect("write");
        let err = Identity::load_or_create(dir.path(), None).expect_err("bad id");
        assert!(err.to_string().contains("node.id"), "{err}");
    }
}
