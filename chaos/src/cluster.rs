//! N real `pulseboard serve` processes on loopback, each behind its relay, with fixed ports
//! so a restarted node comes back at the same addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::relay::{Faults, Relay};

pub const PASSWORD: &str = "chaos-admin-password";
const SECRET: &str = "chaos suite cluster secret";

/// What happened to a node last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Down,
    /// Removed from the cluster (and stopped): no longer checked or restarted.
    Removed,
}

/// How long a node may take to stop after SIGTERM (see [`Cluster::stop`]).
const STOP_WITHIN: Duration = Duration::from_secs(60);

pub struct Node {
    pub index: usize,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub relay: SocketAddr,
    pub dir: PathBuf,
    pub id: u64,
    pub state: State,
    child: Option<Child>,
}

impl Node {
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }
}

pub struct Cluster {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    pub faults: Arc<Faults>,
    _relays: Vec<Relay>,
    client: reqwest::Client,
    /// Session tokens by node (logging in costs a password hash on the node: once per start).
    tokens: std::sync::Mutex<HashMap<usize, String>>,
    _root: tempfile::TempDir,
}

fn free_tcp() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_udp() -> Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

impl Cluster {
    /// Starts `n` nodes: the first creates the cluster, the others join it through its relay.
    /// `spare` more slots (addresses, relays) are made for nodes that join later
    /// ([`Cluster::join`]).
    pub async fn start(bin: &Path, n: usize, spare: usize) -> Result<Cluster> {
        if !bin.exists() {
            bail!("pulseboard binary not found at {}", bin.display());
        }
        let root = tempfile::Builder::new()
            .prefix("pulseboard-chaos")
            .disable_cleanup(std::env::var_os("CHAOS_KEEP").is_some())
            .tempdir()?;
        let faults = Arc::new(Faults::default());
        let mut quic = Vec::new();
        for _ in 0..n + spare {
            quic.push(free_udp()?);
        }
        let senders: Arc<HashMap<SocketAddr, usize>> =
            Arc::new(quic.iter().enumerate().map(|(i, a)| (*a, i)).collect());
        let mut relays = Vec::new();
        let mut nodes = Vec::new();
        for (i, q) in quic.iter().enumerate() {
            let relay = Relay::start(i, *q, senders.clone(), faults.clone()).await?;
            nodes.push(Node {
                index: i,
                http: free_tcp()?,
                quic: *q,
                relay: relay.addr,
                dir: root.path().join(format!("n{i}")),
                id: 0,
                state: State::Down,
                child: None,
            });
            relays.push(relay);
        }
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            nodes,
            faults,
            _relays: relays,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            tokens: Default::default(),
            _root: root,
        };
        let seed = cluster.nodes[0].relay;
        for i in 0..n {
            cluster.launch(i, (i > 0).then_some(seed)).await?;
        }
        Ok(cluster)
    }

    async fn launch(&mut self, i: usize, join: Option<SocketAddr>) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())?;
        let seen = log.metadata()?.len();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .args(["--http", &node.http.to_string()])
            .args(["--quic", &node.quic.to_string()])
            .args(["--advertise", &node.relay.to_string()])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(["--cluster-secret", SECRET])
            .env("PULSEBOARD_ADMIN_PASSWORD", PASSWORD)
            .env(
                "PULSEBOARD_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some(peer) = join {
            cmd.args(["--join", &peer.to_string()]);
        }
        node.child = Some(cmd.spawn().context("starting pulseboard")?);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read(node.log_path()).unwrap_or_default();
            let fresh = String::from_utf8_lossy(text.get(seen as usize..).unwrap_or_default());
            if fresh.contains("pulseboard ready: http://") {
                break;
            }
            if let Some(Ok(Some(status))) = node.child.as_mut().map(|c| c.try_wait()) {
                bail!("node {i} exited with {status} while starting:\n{fresh}");
            }
            if Instant::now() > deadline {
                bail!("node {i} not ready after 90 s:\n{fresh}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.id = std::fs::read_to_string(node.dir.join("node.id"))?
            .trim()
            .parse()
            .context("node.id")?;
        node.state = State::Running;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&i);
        Ok(())
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self.nodes[i]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .ok_or_else(|| anyhow!("node {i} is not running"))?;
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} node {i} failed");
        }
        Ok(())
    }

    /// `kill -9`.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().await?;
        }
        self.nodes[i].state = State::Down;
        Ok(())
    }

    /// SIGTERM, waiting for the node to exit: up to a minute, because a clean stop snapshots
    /// every shard copy the node holds (waiting up to 30 s for them through Raft), and the
    /// debug binary in `tests/run` does that on two cores shared with the other tests
    /// (651 ms alone; more than 20 s once under that load).
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        self.signal(i, "TERM")?;
        if let Some(mut c) = self.nodes[i].child.take() {
            if tokio::time::timeout(STOP_WITHIN, c.wait()).await.is_err() {
                c.kill().await?;
                bail!(
                    "node {i} did not stop within {} s of SIGTERM",
                    STOP_WITHIN.as_secs()
                );
            }
        }
        self.nodes[i].state = State::Down;
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "STOP")?;
        self.nodes[i].state = State::Paused;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.signal(i, "CONT")?;
        self.nodes[i].state = State::Running;
        Ok(())
    }

    /// Starts the first spare node (never started yet), joining the cluster through node 0's
    /// relay; returns its index.
    pub async fn join(&mut self) -> Result<usize> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == 0 && n.state == State::Down)
            .ok_or_else(|| anyhow!("no spare node left to join"))?;
        let seed = self.nodes[0].relay;
        self.launch(i, Some(seed)).await?;
        Ok(i)
    }

    /// Removes node `i` from the cluster through another running node
    /// (`DELETE /api/v1/cluster/nodes/{id}`, which returns once its shards moved), then stops
    /// it for good.
    pub async fn remove(&mut self, i: usize) -> Result<()> {
        let via = self
            .running()
            .into_iter()
            .find(|&o| o != i)
            .ok_or_else(|| anyhow!("no other running node to remove node {i} through"))?;
        let token = self.token(via).await?;
        let r = self
            .client
            .delete(format!(
                "{}/api/v1/cluster/nodes/{}",
                self.nodes[via].base(),
                self.nodes[i].id
            ))
            .bearer_auth(token)
            .timeout(Duration::from_secs(120))
            .send()
            .await?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "removing node {i}: {status} {}",
                r.text().await.unwrap_or_default()
            );
        }
        self.stop(i).await?;
        self.nodes[i].state = State::Removed;
        Ok(())
    }

    /// Starts a node that is down again on its data directory.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].state != State::Down {
            bail!("node {i} is not down");
        }
        self.launch(i, None).await
    }

    /// Cuts `bytes` off the end of the node's newest log segment (the node must be down).
    pub fn truncate_log(&self, i: usize, bytes: u64) -> Result<u64> {
        let node = &self.nodes[i];
        if node.state != State::Down {
            bail!("node {i} must be down to truncate its log");
        }
        let mut newest: Option<PathBuf> = None;
        let mut stack = vec![node.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "wal")
                    && newest
                        .as_ref()
                        .is_none_or(|n| p.file_name() > n.file_name())
                {
                    newest = Some(p);
                }
            }
        }
        let path = newest.ok_or_else(|| anyhow!("node {i} has no log segment"))?;
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = f.metadata()?.len();
        let cut = bytes.min(len / 2);
        f.set_len(len - cut)?;
        Ok(cut)
    }

    /// The last `max` bytes of every node's log (each node's stdout and stderr, all its runs).
    pub fn log_tails(&self, max: u64) -> Vec<(usize, String)> {
        use std::io::{Read, Seek, SeekFrom};
        self.nodes
            .iter()
            .map(|n| {
                let mut text = String::new();
                if let Ok(mut f) = std::fs::File::open(n.log_path()) {
                    let len = f.metadata().map_or(0, |m| m.len());
                    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
                    let mut bytes = Vec::new();
                    let _ = f.read_to_end(&mut bytes);
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
                (n.index, text)
            })
            .collect()
    }

    pub fn running(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.state == State::Running)
            .map(|n| n.index)
            .collect()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub async fn token(&self, i: usize) -> Result<String> {
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&i)
        {
            return Ok(t.clone());
        }
        let t = login(&self.client, &self.nodes[i].base()).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(i, t.clone());
        Ok(t)
    }

    /// `GET /api/v1/cluster` from the first running node other than `except` that answers.
    pub async fn view_from(&self, except: Option<usize>) -> Result<Value> {
        let mut last = anyhow!("no running node");
        for i in self.running().into_iter().filter(|&i| Some(i) != except) {
            let base = self.nodes[i].base();
            let attempt = async {
                let token = self.token(i).await?;
                let r = self
                    .client
                    .get(format!("{base}/api/v1/cluster"))
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await?;
                anyhow::Ok(r.error_for_status()?.json::<Value>().await?)
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub async fn view(&self) -> Result<Value> {
        self.view_from(None).await
    }

    /// How many shards each node leads, by node index, as the cluster reports it.
    pub async fn leaders(&self) -> Result<Vec<usize>> {
        let view = self.view().await?;
        let mut led = vec![0; self.nodes.len()];
        for s in view["shards"].as_array().into_iter().flatten() {
            if let Some(i) = s["leader"].as_u64().and_then(|id| self.index_of(id)) {
                led[i] += 1;
            }
        }
        Ok(led)
    }

    /// The running node leading the most shards.
    pub async fn busiest_leader(&self) -> Result<usize> {
        let led = self.leaders().await?;
        self.running()
            .into_iter()
            .max_by_key(|&i| led[i])
            .ok_or_else(|| anyhow!("no running node"))
    }

    /// A running node leading the fewest shards.
    pub async fn quietest(&self) -> Result<usize> {
        let led = self.leaders().await?;
        self.running()
            .into_iter()
            .min_by_key(|&i| led[i])
            .ok_or_else(|| anyhow!("no running node"))
    }

    /// Waits until every shard has a running leader other than `except`, as a running node
    /// other than `except` sees it; returns how long that took.
    pub async fn wait_leaders(&self, except: Option<usize>, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if let Ok(view) = self.view_from(except).await {
                let ok = view["shards"].as_array().is_some_and(|shards| {
                    shards.iter().all(|s| {
                        s["leader"]
                            .as_u64()
                            .and_then(|id| self.index_of(id))
                            .is_some_and(|i| {
                                self.nodes[i].state == State::Running && Some(i) != except
                            })
                    })
                });
                if ok {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > within {
                bail!("shards without a running leader after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every shard has a running leader.
    pub async fn wait_settled(&self, within: Duration) -> Result<()> {
        self.wait_leaders(None, within).await.map(|_| ())
    }
}

pub async fn login(client: &reqwest::Client, base: &str) -> Result<String> {
    let r: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    r["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("login answered without a token: {r}"))
}
