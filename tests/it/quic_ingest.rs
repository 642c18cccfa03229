//! QUIC ingest (`pulseboard-ingest/1`) against the real binary: the Rust client's batches,
//! every acknowledged one queryable; and what a broken or hostile client gets — a bad frame,
//! a wrong key, a truncated stream, an oversized batch — each a clear error that leaves the
//! node healthy.

use protocol::codec;
use protocol::ingest::{encode_frame, ClientFrame, ErrorCode, ServerFrame, VERSION};
use protocol::DataPoint;
use pulseboard_client::{Client, ClientError, Config, Transport};

use crate::harness::{now_ms, sum_of_points, Node};

/// The node's QUIC address (as the cluster view shows it) and its certificate.
async fn quic_of(node: &Node) -> (String, String) {
    let (status, view) = node.get("/api/v1/cluster").await;
    assert_eq!(status, 200, "{view}");
    let addr = view["nodes"][0]["quic_addr"].as_str().unwrap().to_owned();
    let cert = std::fs::read_to_string(node.data_dir.join("tls/cert.pem")).unwrap();
    (addr, cert)
}

fn points(metric: &str, n: usize, ts: i64) -> Vec<DataPoint> {
    (0..n)
        .map(|i| DataPoint {
            metric: metric.into(),
            timestamp_ms: ts - (i % 1000) as i64,
            value: 1.0,
            dimensions: vec![("host".into(), format!("h{}", i % 50).into())],
        })
        .collect()
}

async fn count(node: &Node, metric: &str) -> f64 {
    let (status, body) = node
        .get(&format!(
            "/api/v1/metrics/{metric}/data?start=now-1h&granularity=1h&aggregation=count"
        ))
        .await;
    if status == 404 {
        return 0.0;
    }
    assert_eq!(status, 200, "{body}");
    sum_of_points(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_ingests_and_every_acknowledged_batch_is_queryable() {
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let (addr, cert) = quic_of(&node).await;
    let client = Client::new(Config::new(
        vec![addr],
        key.clone(),
        Transport::Quic {
            certificate_pem: cert.clone(),
        },
    ))
    .unwrap();
    let ts = now_ms() - 5_000;
    // Four senders at once (four streams on one connection), 10 batches of 500 each.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = 0;
                for _ in 0..10 {
                    acked += client.send(&points("quic_clicks", 500, ts)).await.unwrap();
                }
                acked
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(acked, 20_000);
    assert_eq!(count(&node, "quic_clicks").await, 20_000.0);

    // The same batch id again: answered, applied once.
    let batch = points("quic_retried", 300, ts);
    assert_eq!(client.send_with_id("retry-1", &batch).await.unwrap(), 300);
    assert_eq!(client.send_with_id("retry-1", &batch).await.unwrap(), 300);
    assert_eq!(count(&node, "quic_retried").await, 300.0);

    // The same client over HTTP.
    let http = Client::new(Config::new(vec![node.base.clone()], key, Transport::Http)).unwrap();
    assert_eq!(
        http.send(&points("http_clicks", 250, ts)).await.unwrap(),
        250
    );
    assert_eq!(count(&node, "http_clicks").await, 250.0);
    // Acknowledged points per protocol: the retried batch was acknowledged twice.
    let metrics = node.metrics_text().await;
    assert!(
        metrics.contains("pulseboard_ingest_points_total{protocol=\"quic\"} 20600\n"),
        "{metrics}"
    );

    // A client pinned to another certificate does not talk to this node.
    let other = cluster::transport::tls::generate_certificate()
        .unwrap()
        .cert;
    let mut config = Config::new(
        vec![quic_of(&node).await.0],
        "k",
        Transport::Quic {
            certificate_pem: other,
        },
    );
    config.retry_for = std::time::Duration::from_secs(1);
    match Client::new(config).unwrap().send(&points("m", 1, ts)).await {
        Err(ClientError::GaveUp { last, .. }) => assert!(last.contains("connecting"), "{last}"),
        other => panic!("expected the connection to fail, got {other:?}"),
    }
}

/// One raw stream: writes frames, reads the node's answers.
struct Raw {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Raw {
    async fn open(conn: &quinn::Connection) -> Raw {
        let (send, recv) = conn.open_bi().await.unwrap();
        Raw { send, recv }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    async fn frame(&mut self, f: &ClientFrame) {
        self.write(&encode_frame(f).unwrap()).await;
    }

    /// The next answer, or `None` when the node finished the stream.
    async fn answer(&mut self) -> Option<ServerFrame> {
        let mut prefix = [0u8; 4];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.recv.read_exact(&mut prefix),
        )
        .await
        .expect("an answer within 10 s")
        .ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
        self.recv.read_exact(&mut body).await.unwrap();
        Some(codec::decode(&body).unwrap())
    }

    async fn hello(&mut self, key: &str) -> ServerFrame {
        self.frame(&ClientFrame::Hello {
            version: VERSION,
            api_key: key.into(),
            client: "test".into(),
        })
        .await;
        self.answer().await.expect("an answer to the hello")
    }
}

fn code_of(f: &ServerFrame) -> Option<(Option<u64>, ErrorCode, String)> {
    match f {
        ServerFrame::Error {
            seq, code, message, ..
        } => Some((*seq, *code, message.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_wrong_keys_truncated_streams_and_oversized_batches_get_clear_errors() {
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let (addr, cert) = quic_of(&node).await;
    let ts = now_ms() - 5_000;

    // A wrong key, through the client: refused, not retried.
    let wrong = Client::new(Config::new(
        vec![addr.clone()],
        "pb_not_a_key",
        Transport::Quic {
            certificate_pem: cert.clone(),
        },
    ))
    .unwrap();
    match wrong.send(&points("m", 1, ts)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Unauthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let conn = pulseboard_client::connect_quic(&addr, &cert).await.unwrap();

    // A batch before any hello.
    let mut s = Raw::open(&conn).await;
    s.frame(&ClientFrame::Batch {
        seq: 1,
        batch_id: None,
        points: points("m", 1, ts),
    })
    .await;
    let (_, code, message) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    assert!(message.contains("Hello"), "{message}");
    assert!(s.answer().await.is_none(), "the stream is finished");

    // A welcomed stream: a frame that does not decode is answered and the stream goes on.
    let mut s = Raw::open(&conn).await;
    let ServerFrame::Welcome {
        max_points,
        max_frame_bytes,
        ..
    } = s.hello(&key).await
    else {
        panic!("no welcome")
    };
    s.write(&[3, 0, 0, 0, 9, 9, 9]).await;
    let (seq, code, message) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!((seq, code), (None, ErrorCode::BadFrame), "{message}");
    assert!(message.contains("decode"), "{message}");
    // A point breaking the rules: the batch is refused, naming the point.
    let mut bad = points("fine", 3, ts);
    bad[2].metric = "9starts-with-a-digit".into();
    s.frame(&ClientFrame::Batch {
        seq: 2,
        batch_id: None,
        points: bad,
    })
    .await;
    let (seq, code, message) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!((seq, code), (Some(2), ErrorCode::Invalid), "{message}");
    assert!(message.contains("data_points[2].metric"), "{message}");
    // One point more than the node takes in a batch.
    s.frame(&ClientFrame::Batch {
        seq: 3,
        batch_id: None,
        points: points("big", max_points as usize + 1, ts),
    })
    .await;
    let (seq, code, message) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!((seq, code), (Some(3), ErrorCode::TooLarge), "{message}");
    // A good batch on the same stream still works.
    s.frame(&ClientFrame::Batch {
        seq: 4,
        batch_id: None,
        points: points("after_errors", 10, ts),
    })
    .await;
    assert_eq!(
        s.answer().await.unwrap(),
        ServerFrame::Ack {
            seq: 4,
            accepted: 10
        }
    );
    // A frame announcing more than the node takes: refused, and the stream ends (it cannot
    // be read past it).
    s.write(&(max_frame_bytes + 1).to_le_bytes()).await;
    let (seq, code, message) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!((seq, code), (None, ErrorCode::BadFrame), "{message}");
    assert!(message.contains("limit"), "{message}");
    assert!(s.answer().await.is_none());

    // A stream cut inside a batch frame: nothing of it is written, nothing is acknowledged.
    let mut s = Raw::open(&conn).await;
    assert!(matches!(s.hello(&key).await, ServerFrame::Welcome { .. }));
    let whole = encode_frame(&ClientFrame::Batch {
        seq: 1,
        batch_id: None,
        points: points("truncated", 100, ts),
    })
    .unwrap();
    s.write(&whole[..whole.len() / 2]).await;
    s.send.finish().unwrap();
    assert!(s.answer().await.is_none(), "no answer to half a frame");
    // A wrong protocol version.
    let mut s = Raw::open(&conn).await;
    s.frame(&ClientFrame::Hello {
        version: 99,
        api_key: key.clone(),
        client: "future".into(),
    })
    .await;
    let (_, code, _) = code_of(&s.answer().await.unwrap()).unwrap();
    assert_eq!(code, ErrorCode::UnsupportedVersion);

    // The node is healthy: ready, and a good client writes as before.
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 200);
    let good = Client::new(Config::new(
        vec![addr],
        key,
        Transport::Quic {
            certificate_pem: cert,
        },
    ))
    .unwrap();
    assert_eq!(good.send(&points("healthy", 5, ts)).await.unwrap(), 5);
    assert_eq!(count(&node, "truncated").await, 0.0);
    assert_eq!(count(&node, "after_errors").await, 10.0);
    assert_eq!(count(&node, "big").await, 0.0);
}
