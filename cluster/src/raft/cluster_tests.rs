//! Three Raft members in one process, each with its own shared log and QUIC endpoint on
//! loopback: elections, leader loss in the middle of a stream of writes, and a lagging member
//! brought back by a snapshot sent in chunks.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use protocol::cluster::Request;

use super::tests::{open_log, Stored, Sum, SumMachine, TestConfig};
use super::{LogStore, Member, Network, Router};
use crate::transport::{Reply, Service, Transport, TransportConfig};

const SECRET: &[u8] = b"raft test cluster secret";
const GROUP: u32 = 5;

impl Service for Router {
    fn serve(&self, _from: u64, request: Request) -> Reply {
        Router::serve(self, request)
    }
}

struct TestNode {
    raft: Raft<TestConfig>,
    transport: Arc<Transport>,
    state: Arc<std::sync::Mutex<Sum>>,
    /// The machine's snapshot "on disk": it survives a restart.
    snapshot: Arc<std::sync::Mutex<Stored>>,
}

/// Timing and snapshot policy of the in-process test clusters (here and `sim_tests`): short
/// elections, a snapshot every 40 entries with the log purged behind it, 64-byte chunks.
pub(super) fn config() -> Arc<Config> {
    let c = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        install_snapshot_timeout: 3000,
        snapshot_max_chunk_size: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(c.validate().expect("config"))
}

async fn start(
    id: u64,
    dir: &Path,
    addr: SocketAddr,
    snapshot: Arc<std::sync::Mutex<Stored>>,
) -> TestNode {
    let log = open_log(dir);
    let router = Arc::new(Router::default());
    let transport = Arc::new(
        Transport::start(TransportConfig::new(addr, id, SECRET), router.clone()).expect("bind"),
    );
    let sm = SumMachine::restart(snapshot.clone());
    let state = sm.state.clone();
    let raft = Raft::new(
        id,
        config(),
        Network::new(transport.clone(), GROUP),
        LogStore::new(log, GROUP),
        sm,
    )
    .await
    .expect("raft");
    router.insert(GROUP, Arc::new(raft.clone()));
    TestNode {
        raft,
        transport,
        state,
        snapshot,
    }
}

/// Stops a node; returns its snapshot "disk".
async fn stop(node: TestNode) -> Arc<std::sync::Mutex<Stored>> {
    let _ = node.raft.shutdown().await;
    node.transport.shutdown().await;
    node.snapshot
}

async fn leader(nodes: &BTreeMap<u64, TestNode>) -> u64 {
    for _ in 0..100 {
        for n in nodes.values() {
            let m = n.raft.metrics().borrow().clone();
            if let Some(l) = m.current_leader {
                if nodes.contains_key(&l) && m.current_term > 0 {
                    return l;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 5 s");
}

async fn wait_applied(node: &TestNode, want: Option<u64>) {
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(want, "caught up")
        .await
        .expect("applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_mid_stream_and_snapshot_catch_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        nodes.insert(
            id,
            start(id, dirs[id as usize - 1].path(), any, Default::default()).await,
        );
    }
    let addrs: HashMap<u64, SocketAddr> = nodes
        .iter()
        .map(|(id, n)| (*id, n.transport.local_addr()))
        .collect();
    let members: BTreeMap<u64, Member> = addrs
        .iter()
        .map(|(id, a)| {
            (
                *id,
                Member {
                    quic: a.to_string(),
                    http: String::new(),
                },
            )
        })
        .collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("initialize");

    // A stream of writes; the leader is killed part-way through.
    let mut acked = Vec::new();
    let mut last = None;
    let mut killed = None;
    let mut disk = None;
    let mut had = None;
    for v in 1..=300u64 {
        let l = leader(&nodes).await;
        if v == 120 {
            let node = nodes.remove(&l).expect("leader");
            had = node.raft.metrics().borrow().last_log_index;
            disk = Some(stop(node).await);
            killed = Some(l);
            continue;
        }
        // No retries: an unanswered write's fate is unknown, so it is not counted.
        if let Ok(r) = nodes[&l].raft.client_write(v).await {
            acked.push(v);
            last = Some(r.log_id.index);
        }
    }
    assert!(
        acked.len() >= 250,
        "only {} of 300 writes succeeded",
        acked.len()
    );
    let killed = killed.expect("a leader was killed");
    let l = leader(&nodes).await;
    for n in nodes.values() {
        wait_applied(n, last).await;
    }
    for (id, n) in &nodes {
        let values = n.state.lock().expect("state").values.clone();
        let mut seen = std::collections::HashSet::new();
        for v in &values {
            assert!(seen.insert(*v), "node {id} applied {v} twice");
        }
        for v in &acked {
            assert!(seen.contains(v), "node {id} lost acknowledged write {v}");
        }
    }

    // The killed node comes back after the others snapshotted and purged what it missed:
    // it can only catch up through a snapshot, which travels in 64-byte chunks.
    let dir = dirs[killed as usize - 1].path();
    let back = start(killed, dir, addrs[&killed], disk.expect("disk")).await;
    nodes.insert(killed, back);
    let more = nodes[&l]
        .raft
        .client_write(1000)
        .await
        .expect("write after rejoin");
    let want = Some(more.log_id.index);
    for n in nodes.values() {
        wait_applied(n, want).await;
    }
    let reference = nodes[&l].state.lock().expect("state").values.clone();
    let rejoined = nodes[&killed].state.lock().expect("state").values.clone();
    assert_eq!(
        rejoined, reference,
        "the rejoined node's state equals the leader's"
    );
    let m = nodes[&killed].raft.metrics().borrow().clone();
    let had = had.expect("the killed leader had a log");
    assert!(
        m.snapshot.is_some_and(|s| s.index > had + 40),
        "the rejoined node (log up to {had}) was brought back by a newer snapshot ({m:?})"
    );
    for (_, n) in nodes {
        let _ = stop(n).await;
    }
}
