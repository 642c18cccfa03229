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
