//! Real QUIC endpoints on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::cluster::{Channel, Request, Response};

use super::*;

const SECRET: &[u8] = b"a cluster secret of some length";

/// Echoes the body reversed, prefixed with the caller's id; sleeps when asked to.
struct Echo;
impl Service for Echo {
    fn serve(&self, from: u64, request: Request) -> Reply {
        Box::pin(async move {
            if request.channel == Channel::Query {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            if request.channel == Channel::Membership {
                return Response::Err {
                    message: "not the leader".into(),
                    retry: true,
                };
            }
            let mut body = from.to_le_bytes().to_vec();
            body.extend(request.body.iter().rev());
            Response::Ok(body)
        })
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn start(node_id: u64, secret: &[u8]) -> Transport {
    let mut cfg = TransportConfig::new(loopback(), node_id, secret);
    cfg.request_timeout = Duration::from_secs(3);
    Transport::start(cfg, Arc::new(Echo)).expect("start")
}

fn req(channel: Channel, body: &[u8]) -> Request {
    Request {
        channel,
        group: 1,
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn calls_carry_the_proven_caller_and_many_run_at_once() {
    let a = start(1, SECRET);
    let b = Arc::new(start(2, SECRET));
    assert_eq!(a.ping(b.local_addr()).await.expect("ping"), 2);
    let got = b
        .call(a.local_addr(), &req(Channel::Ingest, b"abc"))
        .await
        .expect("call");
    assert_eq!(&got[..8], &2u64.to_le_bytes());
    assert_eq!(&got[8..], b"cba");
    // More concurrent calls than a connection's stream limit: they queue, none fails.
    let addr = a.local_addr();
    let mut tasks = Vec::new();
    for i in 0..(MAX_STREAMS as usize + 200) {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let body = (i as u32).to_le_bytes();
            let got = b.call(addr, &req(Channel::Ingest, &body)).await?;
            let mut want = body.to_vec();
            want.reverse();
            assert_eq!(&got[8..], &want[..]);
            Ok::<_, TransportError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("call");
    }
    // A large frame goes through whole.
    let big = vec![7u8; 2 << 20];
    let got = b
        .call(addr, &req(Channel::Ingest, &big))
        .await
        .expect("big");
    assert_eq!(got.len(), 8 + big.len());
}

#[tokio::test]
async fn a_wrong_secret_is_refused_both_ways_and_the_node_stays_healthy() {
    let a = start(1, SECRET);
    let stranger = start(9, b"another cluster's secret value");
    let err = stranger.ping(a.local_addr()).await.expect_err("refused");
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("wrong cluster secret"), "{err}");
    assert!(!err.retryable());
    let err = a.ping(stranger.local_addr()).await.expect_err("refused");
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    let friend = start(3, SECRET);
    assert_eq!(friend.ping(a.local_addr()).await.expect("ping"), 1);
    let short = TransportConfig::new(loopback(), 4, b"short".to_vec());
    let err = Transport::start(short, Arc::new(Echo))
        .err()
        .expect("short secret");
    assert!(err.to_string().contains("at least 16 bytes"), "{err}");
}

#[tokio::test]
async fn garbage_on_the_wire_gets_an_error_not_a_crash() {
    let a = start(1, SECRET);
    let b = start(2, SECRET);
    // An authenticated peer sending a frame that is not a Request.
    let conn = b.connection(a.local_addr()).await.expect("connect");
    let answer = exchange(&conn, &[&[0xff, 0xfe, 0xfd]], 1 << 20)
        .await
        .expect("answer");
    match codec::decode::<Response>(&answer).expect("response") {
        Response::Err { message, retry } => {
            assert!(message.contains("malformed request"), "{message}");
            assert!(!retry);
        }
        other => panic!("garbage accepted: {other:?}"),
    }
    // A service error comes back as such.
    let err = b
        .call(a.local_addr(), &req(Channel::Membership, b""))
        .await
        .expect_err("service error");
    assert!(
        matches!(err, TransportError::Remote { retry: true, .. }),
        "{err}"
    );
    // A slow answer times out; the connection still serves the next call.
    let err = b
        .call(a.local_addr(), &req(Channel::Query, b""))
        .await
        .expect_err("timeout");
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    assert_eq!(b.ping(a.local_addr()).await.expect("ping"), 1);
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected_and_a_dead_one_is_reported() {
    let a = start(1, SECRET);
    let b = start(2, SECRET);
    let addr = b.local_addr();
    assert_eq!(a.ping(addr).await.expect("ping"), 2);
    b.shutdown().await;
    drop(b);
    let err = a.ping(addr).await.expect_err("down");
    assert!(err.retryable(), "{err}");
    // Same address, new process (new certificate, new id).
    let mut cfg = TransportConfig::new(addr, 5, SECRET);
    cfg.request_timeout = Duration::from_secs(3);
    let b2 = Transport::start(cfg, Arc::new(Echo)).expect("restart");
    let mut last = None;
    for _ in 0..20 {
        match a.ping(addr).await {
            Ok(id) => {
                last = Some(id);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(last, Some(5));
    b2.shutdown().await;
}

#[tokio::test]
async fn batched_calls_share_frames_and_each_gets_its_own_answer() {
    let a = start(1, SECRET);
    let b = Arc::new(start(2, SECRET));
    let addr = a.local_addr();
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let body = i.to_le_bytes();
            // Every tenth is refused by the service: only that one fails.
            let channel = if i % 10 == 0 {
                Channel::Membership
            } else {
                Channel::RaftAppend
            };
            let got = b
                .call_batched(addr, req(channel, &body), Duration::from_secs(3))
                .await;
            (i, got)
        }));
    }
    for t in tasks {
        let (i, got) = t.await.expect("join");
        if i % 10 == 0 {
            assert!(
                matches!(got, Err(TransportError::Remote { retry: true, .. })),
                "{i}: {got:?}"
            );
        } else {
            let got = got.expect("answer");
            let mut want = i.to_le_bytes().to_vec();
            want.reverse();
            assert_eq!(&got[8..], &want[..], "request {i} got another's answer");
        }
    }
    let (requests, frames) = b.batched();
    assert_eq!(requests, 300);
    assert!(frames < 300, "{frames} frames for 300 requests");
    // A batch cannot hide a nested batch or a ping.
    let nested = req(Channel::Batch, b"");
    assert!(b
        .call_batched(addr, nested, Duration::from_secs(3))
        .await
        .is_err());
    // A peer that is not there: every waiting request fails, none hangs.
    let gone: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let failed = b
        .call_batched(
            gone,
            req(Channel::RaftVote, b"x"),
            Duration::from_millis(500),
        )
        .await;
    assert!(failed.is_err());
}

/// Streams `body[0]` numbered answers and ends; with `body[1] == 1` it goes on until the
/// caller stops reading, then records that it noticed.
struct Counter(Arc<std::sync::atomic::AtomicBool>);
impl Service for Counter {
    fn serve(&self, _from: u64, _request: Request) -> Reply {
        Box::pin(async { Response::Ok(Vec::new()) })
    }

    fn serve_stream(
        &self,
        _from: u64,
        request: Request,
        out: tokio::sync::mpsc::Sender<Response>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let noticed = self.0.clone();
        Box::pin(async move {
            if request.body.is_empty() {
                let _ = out
                    .send(Response::Err {
                        message: "say how many".into(),
                        retry: false,
                    })
                    .await;
                return;
            }
            let forever = request.body.get(1) == Some(&1);
            let mut i = 0u8;
            while forever || i < request.body[0] {
                if out.send(Response::Ok(vec![i])).await.is_err() {
                    noticed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                i = i.wrapping_add(1);
                if forever {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    }
}

#[tokio::test]
async fn a_stream_delivers_every_answer_in_order_and_its_callee_hears_when_the_caller_leaves() {
    let noticed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = TransportConfig::new(loopback(), 1, SECRET);
    cfg.request_timeout = Duration::from_secs(3);
    let a = Transport::start(cfg, Arc::new(Counter(noticed.clone()))).expect("start");
    let b = start(2, SECRET);
    let wait = Duration::from_secs(3);

    let (first, mut rest) = b
        .open_stream(a.local_addr(), &req(Channel::Watch, &[5]), wait)
        .await
        .expect("open");
    assert_eq!(first, vec![0]);
    for i in 1..5u8 {
        assert_eq!(rest.next().await.expect("next"), Some(vec![i]));
    }
    assert_eq!(rest.next().await.expect("end"), None);

    // A refusal is the first answer's error.
    let err = b
        .open_stream(a.local_addr(), &req(Channel::Watch, &[]), wait)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("say how many"), "{err}");
    // An endless stream: the callee notices the caller dropping it.
    let (_, mut endless) = b
        .open_stream(a.local_addr(), &req(Channel::Watch, &[1, 1]), wait)
        .await
        .expect("open");
    assert!(endless.next().await.expect("next").is_some());
    drop(endless);
    for _ in 0..100 {
        if noticed.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(noticed.load(std::sync::atomic::Ordering::Relaxed));
}
