//! A UDP relay in front of each node's QUIC endpoint. Nodes advertise their relay's address
//! (`--advertise`), so every node-to-node packet passes through the relay of its destination,
//! which knows the sender by its source address and applies that directed link's faults:
//! drop, delay with jitter (which reorders), duplicate, and cut (a partition, one-way or full).
//! Answers travel back through the same relay, under the reverse link's faults.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Faults on one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Probability that a packet is dropped.
    pub drop: f64,
    /// Fixed delay added to every packet.
    pub delay: Duration,
    /// Extra uniformly random delay (packets overtake each other).
    pub jitter: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Nothing passes (a partition).
    pub cut: bool,
}

impl LinkFault {
    pub const CUT: LinkFault = LinkFault {
        drop: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
        cut: true,
    };
}

/// The faults of every directed link between nodes, by node index.
#[derive(Default)]
pub struct Faults {
    links: Mutex<HashMap<(usize, usize), LinkFault>>,
}

impl Faults {
    pub fn set(&self, from: usize, to: usize, fault: LinkFault) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if fault == LinkFault::default() {
            links.remove(&(from, to));
        } else {
            links.insert((from, to), fault);
        }
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.set(x, y, LinkFault::CUT);
                self.set(y, x, LinkFault::CUT);
            }
        }
    }

    pub fn heal(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn get(&self, from: usize, to: usize) -> LinkFault {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }
}

/// Index used for senders that are not nodes (never faulted).
const OUTSIDER: usize = usize::MAX;

pub struct Relay {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// A relay for node `to` (listening on `target`); `senders` maps each node's own QUIC
    /// address to its index.
    pub async fn start(
        to: usize,
        target: SocketAddr,
        senders: Arc<HashMap<SocketAddr, usize>>,
        faults: Arc<Faults>,
    ) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let task = tokio::spawn(forward(front, to, target, senders, faults));
        Ok(Relay { addr, task })
    }
}

async fn forward(
    front: Arc<UdpSocket>,
    to: usize,
    target: SocketAddr,
    senders: Arc<HashMap<SocketAddr, usize>>,
    faults: Arc<Faults>,
) {
    // One upstream socket per sender, so the node's answers can be told apart.
    let mut upstream: HashMap<SocketAddr, Upstream> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, src)) = front.recv_from(&mut buf).await else {
            // ICMP errors from a previous send surface here; the socket stays usable.
            continue;
        };
        let from = senders.get(&src).copied().unwrap_or(OUTSIDER);
        let sock = match upstream.entry(src) {
            Entry::Occupied(e) => e.get().sock.clone(),
            Entry::Vacant(slot) => {
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if sock.connect(target).await.is_err() {
                    continue;
                }
                let sock = Arc::new(sock);
                let back = tokio::spawn(backward(
                    sock.clone(),
                    front.clone(),
                    src,
                    to,
                    from,
                    faults.clone(),
                ));
                slot.insert(Upstream {
                    sock: sock.clone(),
                    back,
                });
                sock
            }
        };
        let fault = if from == OUTSIDER {
            LinkFault::default()
        } else {
            faults.get(from, to)
        };
        deliver(fault, buf[..n].to_vec(), Dest::Connected(sock));
    }
}

/// The socket that speaks to the node for one sender, and the task carrying the answers.
struct Upstream {
    sock: Arc<UdpSocket>,
    back: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.back.abort();
    }
}

/// The node's answers to one sender.
async fn backward(
    sock: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    node: usize,
    client_index: usize,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // While the node is down, sends are refused and the refusal surfaces on receive.
        let Ok(n) = sock.recv(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let fault = if client_index == OUTSIDER {
            LinkFault::default()
        } else {
            faults.get(node, client_index)
        };
        deliver(fault, buf[..n].to_vec(), Dest::To(front.clone(), client));
    }
}

enum Dest {
    Connected(Arc<UdpSocket>),
    To(Arc<UdpSocket>, SocketAddr),
}

impl Dest {
    async fn send(&self, packet: &[u8]) {
        let _ = match self {
            Dest::Connected(s) => s.send(packet).await,
            Dest::To(s, addr) => s.send_to(packet, addr).await,
        };
    }
}

fn deliver(fault: LinkFault, packet: Vec<u8>, dest: Dest) {
    if fault.cut {
        return;
    }
    let mut rng = rand::rng();
    if fault.drop > 0.0 && rng.random_bool(fault.drop.min(1.0)) {
        return;
    }
    let copies = if fault.duplicate > 0.0 && rng.random_bool(fault.duplicate.min(1.0)) {
        2
    } else {
        1
    };
    let mut delays = Vec::with_capacity(copies);
    for _ in 0..copies {
        let jitter = if fault.jitter.is_zero() {
            Duration::ZERO
        } else {
            rng.random_range(Duration::ZERO..fault.jitter)
        };
        delays.push(fault.delay + jitter);
    }
    if delays.iter().all(|d| d.is_zero()) {
        tokio::spawn(async move {
            for _ in 0..copies {
                dest.send(&packet).await;
            }
        });
        return;
    }
    let dest = Arc::new(dest);
    let packet = Arc::new(packet);
    for d in delays {
        let (dest, packet) = (dest.clone(), packet.clone());
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            dest.send(&packet).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket, Relay, Arc<Faults>) {
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let senders = Arc::new(HashMap::from([(client.local_addr().unwrap(), 0usize)]));
        let faults = Arc::new(Faults::default());
        let relay = Relay::start(1, node.local_addr().unwrap(), senders, faults.clone())
            .await
            .unwrap();
        (node, client, relay, faults)
    }

    async fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 100];
        let r = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await;
        r.ok()
            .and_then(Result::ok)
            .map(|(n, a)| (buf[..n].to_vec(), a))
    }

    #[tokio::test]
    async fn relays_both_ways_and_cuts_one_way() {
        let (node, client, relay, faults) = pair().await;
        client.send_to(b"ping", relay.addr).await.unwrap();
        let (msg, from) = recv(&node).await.expect("forwarded");
        assert_eq!(msg, b"ping");
        node.send_to(b"pong", from).await.unwrap();
        let (msg, via) = recv(&client).await.expect("answered");
        assert_eq!((msg.as_slice(), via), (&b"pong"[..], relay.addr));

        // Cut the answers only: requests still arrive.
        faults.set(1, 0, LinkFault::CUT);
        client.send_to(b"ping2", relay.addr).await.unwrap();
        let (msg, from) = recv(&node).await.expect("still forwarded");
        assert_eq!(msg, b"ping2");
        node.send_to(b"pong2", from).await.unwrap();
        assert!(recv(&client).await.is_none(), "answer must be cut");

        faults.partition(&[0], &[1]);
        client.send_to(b"ping3", relay.addr).await.unwrap();
        assert!(recv(&node).await.is_none(), "request must be cut");
        faults.heal();
        client.send_to(b"ping4", relay.addr).await.unwrap();
        assert_eq!(recv(&node).await.expect("healed").0, b"ping4");
    }

    #[tokio::test]
    async fn duplicates_and_delays() {
        let (node, client, relay, faults) = pair().await;
        faults.set(
            0,
            1,
            LinkFault {
                duplicate: 1.0,
                delay: Duration::from_millis(50),
                ..LinkFault::default()
            },
        );
        let sent = std::time::Instant::now();
        client.send_to(b"twice", relay.addr).await.unwrap();
        assert_eq!(recv(&node).await.expect("first").0, b"twice");
        assert!(sent.elapsed() >= Duration::from_millis(50));
        assert_eq!(recv(&node).await.expect("second").0, b"twice");
        faults.set(
            0,
            1,
            LinkFault {
                drop: 1.0,
                ..LinkFault::default()
            },
        );
        client.send_to(b"lost", relay.addr).await.unwrap();
        assert!(recv(&node).await.is_none());
    }
}
