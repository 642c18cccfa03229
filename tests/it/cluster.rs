//! The node's cluster endpoint: identity, `GET /api/v1/cluster`, and the QUIC handshake from
//! another process's point of view (a real transport talking to the real binary).

use std::sync::Arc;

use cluster::transport::{Reply, Service, Transport, TransportConfig, TransportError};
use protocol::cluster::{Channel, Request, Response};

use crate::harness::Node;

struct Nothing;
impl Service for Nothing {
    fn serve(&self, _: u64, _: Request) -> Reply {
        Box::pin(async {
            Response::Err {
                message: "test peer serves nothing".into(),
                retry: false,
            }
        })
    }
}

fn peer(secret: &[u8]) -> Transport {
    let cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap(), 77, secret.to_vec());
    Transport::start(cfg, Arc::new(Nothing)).unwrap()
}

#[tokio::test]
async fn a_node_shows_itself_and_answers_only_peers_with_the_secret() {
    let node = Node::start().await;
    let (status, view) = node.get("/api/v1/cluster").await;
    assert_eq!(status, 200, "{view}");
    let id: u64 = std::fs::read_to_string(node.data_dir.join("node.id"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(view["meta_leader"], id, "{view}");
    assert_eq!(view["nodes"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["nodes"][0]["id"], id);
    assert_eq!(view["nodes"][0]["alive"], true);
    assert_eq!(
        format!("http://{}", view["nodes"][0]["http_addr"].as_str().unwrap()),
        node.base
    );
    let shards = view["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 16);
    assert!(shards
        .iter()
        .all(|s| s["leader"] == id && s["replicas"][0] == id));
    let quic: std::net::SocketAddr = view["nodes"][0]["quic_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The generated secret is in the data directory, readable by the owner only.
    let secret_path = node.data_dir.join("cluster.secret");
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "cluster.secret is private (mode {mode:o})");

    let friend = peer(secret.trim().as_bytes());
    assert_eq!(friend.ping(quic).await.unwrap(), id);
    // A request for a group the node does not host is an error, not a hang or a crash.
    let err = friend
        .call(
            quic,
            &Request {
                channel: Channel::RaftVote,
                group: 4242,
                body: vec![1, 2, 3],
            },
        )
        .await
        .expect_err("no such group");
    assert!(err.to_string().contains("not hosted"), "{err}");

    let stranger = peer(b"not this cluster's secret at all");
    let err = stranger.ping(quic).await.expect_err("refused");
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    // Still healthy, still serving its peers.
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(friend.ping(quic).await.unwrap(), id);

    // Signed-out callers do not see the cluster.
    let status = node
        .client
        .get(format!("{}/api/v1/cluster", node.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}

const SECRET: &str = "secret shared by the test cluster";

/// A free UDP port on loopback (nodes of a cluster keep their QUIC address across restarts,
/// so the test picks them).
fn free_quic_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

async fn cluster_node(dir: &std::path::Path, quic: &str, join: Option<&str>) -> Node {
    let mut args = vec!["--quic", quic, "--cluster-secret", SECRET];
    if let Some(peer) = join {
        args.extend(["--join", peer]);
    }
    Node::start_in(dir, &args).await
}

/// Polls `node` until its counts per batch equal `want` (followers apply what the leader
/// committed a heartbeat later).
async fn converges(node: &Node, want: &std::collections::BTreeMap<String, f64>) {
    let mut last = None;
    for _ in 0..100 {
        let got = crate::durability::counts_by_batch(node, "events").await;
        if &got == want {
            return;
        }
        last = Some(got);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{} never converged: got {last:?}, want {want:?}", node.base);
}

#[tokio::test]
async fn three_nodes_replicate_every_shard_and_survive_a_leader_kill() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, view) = three_nodes(root.path()).await;
    let members = view["nodes"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    assert!(
        members
            .iter()
            .all(|n| n["alive"] == true && n["role"] == "voter"),
        "{view}"
    );
    for s in view["shards"].as_array().unwrap() {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{view}");
        assert_ne!(s["leader"], 0, "{view}");
    }

    // Writes through any node land once; every node answers queries with all of them.
    let base = crate::harness::now_ms() - 60_000;
    let mut want = std::collections::BTreeMap::new();
    for b in 0..6 {
        write_batch(&nodes[b % 3], b, 100, base, &mut want).await;
    }
    for n in &nodes {
        converges(n, &want).await;
    }

    // Kill -9 the node that leads shard 0; writes through the others go on after an election.
    let (victim_index, victim_quic) = shard_0_leader(&nodes, &view);
    let killed = nodes.remove(victim_index);
    let (victim_dir, _keep) = killed.kill9();
    let mut failed_before = Vec::new();
    for n in &nodes {
        failed_before.push(handovers(n, "failed").await);
    }
    for b in 6..12 {
        // A write in flight to the dead leader may fail (503): the client retries with its
        // key, and the batch counts once.
        write_batch(&nodes[b % 2], b, 100, base, &mut want).await;
    }
    for n in &nodes {
        converges(n, &want).await;
    }
    // The shards the dead node should lead stay with the new leaders: no hand-over is tried
    // (each would pause the shard's writes) while it answers no probe — long enough for the
    // new leaders to have led for the 3 s a hand-over waits for.
    for b in 12..20 {
        write_batch(&nodes[b % 2], b, 100, base, &mut want).await;
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    for (n, before) in nodes.iter().zip(failed_before) {
        assert_eq!(handovers(n, "failed").await, before, "{}", n.base);
    }

    // The killed node comes back with its data directory and its address, and catches up;
    // the shards it led are handed back to it, and writes go on across the hand-overs.
    let back = cluster_node(&victim_dir, &victim_quic, None).await;
    converges(&back, &want).await;
    nodes.push(back);
    let balanced = std::sync::atomic::AtomicBool::new(false);
    let writes = async {
        let mut b = 20;
        // (A write is never cut short: one not acknowledged may have landed in part.)
        while !balanced.load(std::sync::atomic::Ordering::Relaxed) {
            write_batch(&nodes[b % 3], b, 100, base, &mut want).await;
            b += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let balance = async {
        leaders_balanced(&nodes[2]).await;
        balanced.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(balance, writes);
    for n in &nodes {
        converges(n, &want).await;
    }
}

/// Writes batch `b` of `size` points through `node` like a client riding out a failover
/// (idempotency key, retries on 503) and records what every node must then count.
async fn write_batch(
    node: &Node,
    b: usize,
    size: usize,
    base: i64,
    want: &mut std::collections::BTreeMap<String, f64>,
) {
    let body = crate::durability::batch_body(b, size, base);
    let (status, answer) = node.ingest_retrying(&body, &format!("b{b}")).await;
    assert_eq!(status, 200, "write {b} through {}: {answer}", node.base);
    want.insert(b.to_string(), size as f64);
}

/// Which of `nodes` leads shard 0 in `view`, and its QUIC address.
fn shard_0_leader(nodes: &[Node], view: &serde_json::Value) -> (usize, String) {
    let leader = view["shards"][0]["leader"].as_u64().unwrap();
    let member = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(leader))
        .expect("the leader is a member");
    let http = member["http_addr"].as_str().unwrap();
    let index = nodes
        .iter()
        .position(|n| n.base.ends_with(http))
        .expect("the leader is one of ours");
    (index, member["quic_addr"].as_str().unwrap().to_owned())
}

/// Starts three nodes joined into one cluster; returns them and the view from the last.
async fn three_nodes(root: &std::path::Path) -> (Vec<Node>, serde_json::Value) {
    let quic: Vec<String> = (0..3).map(|_| free_quic_addr()).collect();
    let mut nodes = vec![cluster_node(&root.join("n0"), &quic[0], None).await];
    for (i, q) in quic.iter().enumerate().skip(1) {
        nodes.push(cluster_node(&root.join(format!("n{i}")), q, Some(&quic[0])).await);
    }
    let view = leaders_balanced(&nodes[2]).await;
    (nodes, view)
}

/// Shard leaderships `node` handed over with `outcome` (`done` or `failed`), from /metrics.
async fn handovers(node: &Node, outcome: &str) -> u64 {
    node.counter(&format!(
        "pulseboard_leader_handovers_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

/// The ids of the nodes in a cluster view.
fn node_ids(view: &serde_json::Value) -> Vec<u64> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

/// The leader each shard should have (the shard map's: `protocol::point::leaders`), for the
/// nodes in `view` and the default replication factor.
fn preferred_leaders(view: &serde_json::Value) -> Vec<u64> {
    let ids = node_ids(view);
    let shards = view["shards"].as_array().unwrap().len() as u32;
    protocol::point::shard_leaders(shards, &ids, 3)
        .into_iter()
        .map(|l| l.unwrap())
        .collect()
}

/// Whether every shard in `view` is on the replicas the shard map puts it on (a node's view
/// of a shard it does not hold is what it last heard, so it can lag behind a move).
fn replicas_as_mapped(view: &serde_json::Value) -> bool {
    let ids = node_ids(view);
    view["shards"].as_array().unwrap().iter().all(|s| {
        let mut listed: Vec<u64> = s["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect();
        let mut mapped = protocol::point::placement(s["shard"].as_u64().unwrap() as u32, &ids, 3);
        listed.sort_unstable();
        mapped.sort_unstable();
        listed == mapped
    })
}

/// Polls `node`'s cluster view until every shard is on the replicas and led by the node the
/// shard map says (a cluster grown from one node starts with every leader on the first; the
/// leaders hand their shards over) and returns it.
async fn leaders_balanced(node: &Node) -> serde_json::Value {
    let mut view = serde_json::Value::Null;
    for _ in 0..600 {
        let (status, v) = node.get("/api/v1/cluster").await;
        assert_eq!(status, 200, "{v}");
        view = v;
        let led: Vec<u64> = view["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["leader"].as_u64().unwrap_or(0))
            .collect();
        if led == preferred_leaders(&view) && replicas_as_mapped(&view) {
            return view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("leaders never reached where the shard map puts them within 60 s: {view}");
}

#[tokio::test]
async fn leaders_stay_where_elections_put_them_when_balancing_is_off() {
    let root = tempfile::tempdir().unwrap();
    let quic = [free_quic_addr(), free_quic_addr()];
    let off = |i: usize| -> Vec<&str> {
        let mut a = vec!["--quic", &quic[i], "--cluster-secret", SECRET];
        a.extend(["--balance-leaders", "false"]);
        if i > 0 {
            a.extend(["--join", &quic[0]]);
        }
        a
    };
    let first = Node::start_in(&root.path().join("n0"), &off(0)).await;
    let second = Node::start_in(&root.path().join("n1"), &off(1)).await;
    let view = every_shard_led(&second).await;
    let first_id = view["meta_leader"].as_u64().unwrap();
    // Long enough for a balancing node to have handed over its share (3 s settled, 3 s led).
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let (_, view) = first.get("/api/v1/cluster").await;
    let shards = view["shards"].as_array().unwrap();
    assert!(
        shards
            .iter()
            .all(|s| s["replicas"].as_array().unwrap().len() == 2),
        "{view}"
    );
    assert!(shards.iter().all(|s| s["leader"] == first_id), "{view}");
    assert!(
        preferred_leaders(&view).iter().any(|&l| l != first_id),
        "{view}"
    );
}

#[tokio::test]
async fn a_paused_leader_is_replaced_and_rejoins_as_follower() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, view) = three_nodes(root.path()).await;
    let base = crate::harness::now_ms() - 60_000;
    let (paused, _) = shard_0_leader(&nodes, &view);
    // SIGSTOP for longer than the election timeout: the others elect new leaders and keep
    // accepting writes; the paused node, when it wakes, must not undo anything.
    nodes[paused].signal("STOP");
    let mut want = std::collections::BTreeMap::new();
    let others: Vec<&Node> = (0..3).filter(|i| *i != paused).map(|i| &nodes[i]).collect();
    for b in 0..6 {
        write_batch(others[b % 2], b, 50, base, &mut want).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    nodes[paused].signal("CONT");
    for b in 6..9 {
        write_batch(&nodes[paused], b, 50, base, &mut want).await;
    }
    for n in &nodes {
        converges(n, &want).await;
    }
}

/// Creates a dashboard named `name` through `node`, retrying through an election (503).
async fn create_dashboard(node: &Node, token: &str, name: &str) -> u64 {
    let body = serde_json::json!({ "name": name });
    for _ in 0..100 {
        let (status, v) = node
            .call(
                reqwest::Method::POST,
                "/api/v1/dashboards",
                Some(token),
                Some(&body),
            )
            .await;
        match status {
            201 => return v["id"].as_u64().expect("id"),
            503 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            other => panic!("create dashboard {name} through {}: {other} {v}", node.base),
        }
    }
    panic!("dashboard {name} not created through {} in 10 s", node.base);
}

async fn dashboard_names(node: &Node, token: &str) -> Vec<String> {
    let (status, v) = node
        .call(
            reqwest::Method::GET,
            "/api/v1/dashboards",
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<String> = v["dashboards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn metadata_is_one_replicated_store_that_outlives_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, view) = three_nodes(root.path()).await;
    // One admin for the whole cluster: joining nodes did not create their own.
    let (status, users) = nodes[1].get("/api/v1/users").await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");

    // A user created through one node logs in through another at once, and its session
    // works on the third.
    let (status, v) = nodes[0]
        .call(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(&nodes[0].token),
            Some(&serde_json::json!({"username": "carol", "password": "carol-password", "role": "editor"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let carol =
        crate::harness::login(&nodes[2].client, &nodes[2].base, "carol", "carol-password").await;
    // A dashboard written through one node is read through another right after
    // (linearizable reads).
    let ops = create_dashboard(&nodes[1], &carol, "ops").await;
    let (status, d) = nodes[2]
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/dashboards/{ops}"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["name"], "ops");

    // Kill -9 the metadata group's leader: metadata writes go on through the others, and
    // nothing acknowledged is lost.
    let leader = view["meta_leader"].as_u64().unwrap();
    let (status, view) = nodes[0].get("/api/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(view["meta_leader"].as_u64(), Some(leader), "{view}");
    let member = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(leader))
        .unwrap()
        .clone();
    let http = member["http_addr"].as_str().unwrap();
    let quic = member["quic_addr"].as_str().unwrap();
    let victim = nodes.iter().position(|n| n.base.ends_with(http)).unwrap();
    let (victim_dir, _keep) = nodes.remove(victim).kill9();
    create_dashboard(&nodes[0], &carol, "after").await;
    for n in &nodes {
        assert_eq!(dashboard_names(n, &carol).await, ["after", "ops"]);
    }
    // The killed node comes back and has what was written while it was down.
    let back = cluster_node(&victim_dir, quic, None).await;
    assert_eq!(dashboard_names(&back, &carol).await, ["after", "ops"]);
}

/// Webhook deliveries that landed, by state.
fn delivered(receiver: &crate::alerts::Receiver, state: &str) -> usize {
    receiver
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, b)| *s == 200 && b["state"] == state)
        .count()
}

#[tokio::test]
async fn a_cluster_notifies_each_alert_once_and_hands_it_over_with_the_metadata_leader() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, view) = three_nodes(root.path()).await;
    let (hook, receiver) = crate::alerts::start_receiver(0).await;
    // Created through one node, evaluated by the metadata group's leader only.
    crate::alerts::create_rule(
        &nodes[1],
        serde_json::json!({"name": "cpu high", "query": {"metric": "cpu", "aggregation": "max", "window": "4s", "granularity": "1s"},
               "condition": ">", "threshold": 90,
               "notification_channels": [{"type": "webhook", "url": hook}]}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let breach = serde_json::json!({"data_points": [crate::harness::point("cpu", crate::harness::now_ms(), 97.0, &[])]});
    let (status, v) = nodes[2].ingest(&breach).await;
    assert_eq!(status, 200, "{v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while delivered(&receiver, "firing") == 0 {
        assert!(std::time::Instant::now() < deadline, "never fired");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Three nodes watch the same data; one notification.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(delivered(&receiver, "firing"), 1, "{:?}", receiver.log);

    // The metadata leader dies while the alert fires: the new leader takes the firing state
    // over from the replicated store (no second "firing") and resolves it once.
    let leader = view["meta_leader"].as_u64().unwrap();
    let http = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(leader))
        .unwrap()["http_addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = nodes.iter().position(|n| n.base.ends_with(&http)).unwrap();
    drop(nodes.remove(victim).kill9());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while delivered(&receiver, "resolved") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved: {:?}",
            receiver.log
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(delivered(&receiver, "firing"), 1, "{:?}", receiver.log);
    assert_eq!(delivered(&receiver, "resolved"), 1, "{:?}", receiver.log);
}

/// Replicas per node, from a cluster view.
fn replicas_per_node(view: &serde_json::Value) -> std::collections::BTreeMap<u64, usize> {
    let mut per = std::collections::BTreeMap::new();
    for s in view["shards"].as_array().unwrap() {
        for r in s["replicas"].as_array().unwrap() {
            *per.entry(r.as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    per
}

/// Polls `node`'s cluster view until every shard has a leader.
async fn every_shard_led(node: &Node) -> serde_json::Value {
    let mut view = serde_json::Value::Null;
    for _ in 0..100 {
        view = node.get("/api/v1/cluster").await.1;
        if view["shards"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["leader"] != 0))
        {
            return view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("some shard has no leader after 10 s: {view}");
}

#[tokio::test]
async fn a_fourth_node_takes_a_share_of_the_shards_and_a_removed_node_is_drained() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = three_nodes(root.path()).await;
    let base = crate::harness::now_ms() - 60_000;
    let mut want = std::collections::BTreeMap::new();
    for (b, node) in nodes.iter().enumerate() {
        write_batch(node, b, 100, base, &mut want).await;
    }
    // A fourth node joins: the shard map (replication factor 3) now puts each shard on three
    // of the four nodes, and the join moves the replicas before it answers.
    let (_, view) = nodes[0].get("/api/v1/cluster").await;
    let first_quic = view["nodes"][0]["quic_addr"].as_str().unwrap().to_owned();
    let fourth = cluster_node(
        &root.path().join("n3"),
        &free_quic_addr(),
        Some(&first_quic),
    )
    .await;
    nodes.push(fourth);
    // Every node reads every shard, its own or another node's (query fragments).
    for n in &nodes {
        converges(n, &want).await;
    }
    // A leader that moved its shard off itself stepped down; the group elects another.
    let view = every_shard_led(&nodes[3]).await;
    let shards = view["shards"].as_array().unwrap().len();
    for s in view["shards"].as_array().unwrap() {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{view}");
    }
    let per = replicas_per_node(&view);
    assert_eq!(per.len(), 4, "every node holds some shards: {view}");
    assert_eq!(per.values().sum::<usize>(), 3 * shards, "{view}");
    let id_of = |node: &Node| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| node.base.ends_with(n["http_addr"].as_str().unwrap()))
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };

    // A live query on a node that lacks some shards (the one holding fewest, node 1 aside:
    // it leaves below) follows them through the nodes that have them.
    let few = [0, 2, 3]
        .into_iter()
        .min_by_key(|&i| per[&id_of(&nodes[i])])
        .unwrap();
    assert!(per[&id_of(&nodes[few])] < shards, "{view}");
    let mut ws = count_by_batch(&nodes[few]).await;
    let mut live = std::collections::BTreeMap::new();
    live_until(&mut ws, &mut live, &want).await;

    for b in 3..6 {
        write_batch(&nodes[b % 4], b, 100, base, &mut want).await;
    }
    for n in &nodes {
        converges(n, &want).await;
    }
    live_until(&mut ws, &mut live, &want).await;
    let (status, metrics) = nodes[3].get("/api/v1/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.to_string().contains("events"), "{metrics}");

    // The original nodes gave up the copies of the shards the map moved to the fourth: once
    // idle, they leave memory (kept on disk only). (Node ids are random, and the map may
    // leave every shard on one of them: about one cluster in a hundred.)
    let gave_up: Vec<usize> = (0..3).map(|i| shards - per[&id_of(&nodes[i])]).collect();
    assert!(gave_up.iter().sum::<usize>() > 0, "{view}");
    for (i, &gave_up) in gave_up.iter().enumerate() {
        let want_line = format!("pulseboard_shards_asleep {gave_up}\n");
        let mut text = String::new();
        for _ in 0..60 {
            text = nodes[i].metrics_text().await;
            if text.contains(&want_line) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert!(
            text.contains(&want_line),
            "node {i} wants {want_line}: {text}"
        );
    }

    // Unknown nodes and callers who are not admins are refused.
    let (status, _) = nodes[0]
        .call(
            reqwest::Method::DELETE,
            "/api/v1/cluster/nodes/12345",
            Some(&nodes[0].token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = nodes[0]
        .call(
            reqwest::Method::DELETE,
            "/api/v1/cluster/nodes/12345",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);

    // `pulseboard cluster remove` through node 0 takes node 1 out of every group.
    let leaving = id_of(&nodes[1]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args([
            "cluster",
            "remove",
            &leaving.to_string(),
            "--url",
            &nodes[0].base,
        ])
        .env("PULSEBOARD_TOKEN", &nodes[0].token)
        .output()
        .expect("run cluster remove");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = nodes.remove(1);
    drop(gone.terminate());

    let (_, view) = nodes[0].get("/api/v1/cluster").await;
    let members = view["nodes"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    assert!(members.iter().all(|n| n["id"] != leaving), "{view}");
    for s in view["shards"].as_array().unwrap() {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{view}");
        assert!(
            !s["replicas"].as_array().unwrap().contains(&leaving.into()),
            "{view}"
        );
    }
    // The cluster goes on taking writes, and every node has every acknowledged point (the
    // three left hold every shard again: the copies that slept are read back and caught up);
    // the live query, whose shards moved, still counts every one once.
    for b in 6..12 {
        write_batch(&nodes[b % 3], b, 100, base, &mut want).await;
    }
    for n in &nodes {
        converges(n, &want).await;
    }
    live_until(&mut ws, &mut live, &want).await;
    for n in &nodes {
        let text = n.metrics_text().await;
        assert!(text.contains("pulseboard_shards_asleep 0\n"), "{text}");
    }
}

/// A WebSocket on `node` subscribed to the count of `events` points per batch.
async fn count_by_batch(node: &Node) -> crate::live::Ws {
    let mut ws = crate::live::connect(node, &node.token).await;
    crate::live::send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "id": "c", "query": {
            "metric": "events", "aggregation": "count", "granularity": "1s",
            "window": "10m", "group_by": "batch"}}),
    )
    .await;
    ws
}

/// Reads live messages, keeping window totals per `batch`, until they equal `want`.
async fn live_until(
    ws: &mut crate::live::Ws,
    totals: &mut std::collections::BTreeMap<String, f64>,
    want: &std::collections::BTreeMap<String, f64>,
) {
    while totals != want {
        let Some(m) = crate::live::next(ws, std::time::Duration::from_secs(15)).await else {
            panic!("no live message; totals {totals:?}, want {want:?}");
        };
        assert_ne!(m["type"], "error", "{m}");
        for t in m["totals"].as_array().into_iter().flatten() {
            let key = t["dimensions"]["batch"].as_str().unwrap_or("").to_owned();
            totals.insert(key, t["value"].as_f64().unwrap());
        }
    }
}

#[tokio::test]
async fn the_only_node_cannot_be_removed() {
    let node = Node::start().await;
    let (_, view) = node.get("/api/v1/cluster").await;
    let me = view["nodes"][0]["id"].as_u64().unwrap();
    let (status, v) = node
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/cluster/nodes/{me}"),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["detail"]["message"]
            .as_str()
            .unwrap()
            .contains("only node"),
        "{v}"
    );
}

#[tokio::test]
async fn a_live_query_follows_its_remote_shards_across_a_node_kill() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, view) = three_nodes(root.path()).await;
    let first_quic = view["nodes"][0]["quic_addr"].as_str().unwrap().to_owned();
    nodes.push(
        cluster_node(
            &root.path().join("n3"),
            &free_quic_addr(),
            Some(&first_quic),
        )
        .await,
    );
    // Settled: a view taken while replicas move or leaders are handed over can name as a
    // shard's leader a node it no longer lists among the shard's replicas.
    let view = leaders_balanced(&nodes[0]).await;
    let id_of = |node: &Node| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| node.base.ends_with(n["http_addr"].as_str().unwrap()))
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let ids: Vec<u64> = nodes.iter().map(id_of).collect();
    // The node holding fewest shards watches the others' through their nodes; the victim is
    // the node leading the most shards it lacks.
    let per = replicas_per_node(&view);
    let watcher = (0..4).min_by_key(|&i| per[&ids[i]]).unwrap();
    let mut lacked_led = std::collections::BTreeMap::<u64, usize>::new();
    for s in view["shards"].as_array().unwrap() {
        if !s["replicas"]
            .as_array()
            .unwrap()
            .contains(&ids[watcher].into())
        {
            *lacked_led.entry(s["leader"].as_u64().unwrap()).or_default() += 1;
        }
    }
    let victim_id = *lacked_led.iter().max_by_key(|(_, n)| **n).unwrap().0;
    let victim = ids.iter().position(|&id| id == victim_id).unwrap();
    assert_ne!(victim, watcher);

    let base = crate::harness::now_ms() - 60_000;
    let mut want = std::collections::BTreeMap::new();
    write_batch(&nodes[watcher], 0, 100, base, &mut want).await;
    let mut ws = count_by_batch(&nodes[watcher]).await;
    let mut live = std::collections::BTreeMap::new();
    live_until(&mut ws, &mut live, &want).await;

    // kill -9 of the node the watch reads most of its remote shards from; writes go on
    // through the others (each shard keeps two of its three replicas), and the live totals
    // catch up with every acknowledged point, none counted twice.
    let killed = nodes.remove(victim);
    drop(killed.kill9());
    let writers: Vec<&Node> = nodes.iter().collect();
    for b in 1..9 {
        write_batch(writers[b % writers.len()], b, 100, base, &mut want).await;
    }
    live_until(&mut ws, &mut live, &want).await;
    assert_eq!(live, want);
}

#[tokio::test]
async fn a_node_awaiting_an_invitation_is_added_through_the_api() {
    let root = tempfile::tempdir().unwrap();
    let first = cluster_node(&root.path().join("n0"), &free_quic_addr(), None).await;
    let add = |quic_addr: serde_json::Value| {
        let first = &first;
        async move {
            first
                .call(
                    reqwest::Method::POST,
                    "/api/v1/cluster/nodes",
                    Some(&first.token),
                    Some(&serde_json::json!({ "quic_addr": quic_addr })),
                )
                .await
        }
    };
    let message = |v: &serde_json::Value| v["detail"]["message"].as_str().unwrap_or("").to_owned();
    let (status, v) = add("nowhere".into()).await;
    assert_eq!(status, 400, "{v}");
    assert!(message(&v).contains("quic_addr"), "{v}");
    // Nobody there.
    let (status, v) = add(free_quic_addr().into()).await;
    assert_eq!(status, 503, "{v}");
    // A node that founded its own cluster (same secret) is not waiting to be added.
    let founder_quic = free_quic_addr();
    let founder = cluster_node(&root.path().join("other"), &founder_quic, None).await;
    let (status, v) = add(founder_quic.clone().into()).await;
    assert_eq!(status, 409, "{v}");
    assert!(message(&v).contains("not waiting"), "{v}");
    drop(founder);

    let before = crate::harness::now_ms() - 60_000;
    let mut want = std::collections::BTreeMap::new();
    write_batch(&first, 0, 100, before, &mut want).await;
    let quic = free_quic_addr();
    let dir = root.path().join("n1");
    let waiting = {
        let (dir, quic) = (dir.clone(), quic.clone());
        tokio::spawn(async move {
            Node::start_in(
                &dir,
                &["--quic", &quic, "--cluster-secret", SECRET, "--await-join"],
            )
            .await
        })
    };
    // The waiting node's endpoint may not be up yet: 503 until it is.
    let mut answer = None;
    for _ in 0..100 {
        let (status, v) = add(quic.clone().into()).await;
        if status != 503 {
            answer = Some((status, v));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, v) = answer.expect("the waiting node never answered");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["quic_addr"], quic.as_str(), "{v}");
    assert_eq!(v["alive"], true, "{v}");
    let second = waiting.await.unwrap();
    // A member now: it reads what was written before it joined and takes writes.
    write_batch(&second, 1, 100, before, &mut want).await;
    for n in [&first, &second] {
        converges(n, &want).await;
    }
    let view = every_shard_led(&first).await;
    assert_eq!(view["nodes"].as_array().unwrap().len(), 2, "{view}");
    // It is not waiting any more.
    let (status, v) = add(quic.clone().into()).await;
    assert_eq!(status, 409, "{v}");
}
