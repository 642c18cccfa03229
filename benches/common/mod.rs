//! Shared by the bench harnesses: the real release binary on a free port, logged in.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

pub const PASSWORD: &str = "bench-password";
pub const CLUSTER_SECRET: &str = "bench cluster shared secret";

pub struct Server {
    child: Child,
    pub base: String,
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP address from the node's "ready" line (the rest of stdout is dropped).
fn ready_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("pulseboard ready: http://") {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
    }
    panic!("the node exited before it was ready");
}

/// The node binary: this build's, or `PULSEBOARD_BENCH_BIN` (to compare two builds on the
/// same machine: run the bench once with each).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("PULSEBOARD_BENCH_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_pulseboard").into(), Into::into)
}

pub async fn start() -> Server {
    start_with(&[]).await
}

/// [`start`] with more `serve` flags.
pub async fn start_with(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .env("PULSEBOARD_ADMIN_PASSWORD", PASSWORD)
        .env("PULSEBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = ready_addr(&mut child);
    let base = format!("http://{addr}");
    let token = login(&base).await;
    Server {
        child,
        base,
        token,
        _dir: dir,
    }
}

/// The node's `/metrics` text.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name` (with its labels, if any) in a `/metrics` text; 0 if absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A session token for `admin` on the node at `base`.
pub async fn login(base: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops the node with SIGTERM (its clean shutdown) and waits for it.
    pub fn terminate(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM, then up to 60 s for the process to exit (then SIGKILL).
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU seconds (user + system) the server process has used so far.
pub fn cpu_seconds(server: &Server) -> f64 {
    process_cpu_seconds(server.child.id())
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A node of a bench cluster: its QUIC address is chosen by the bench and kept across
/// restarts (the other members know it by that address).
pub struct ClusterNode {
    pub child: Child,
    pub base: String,
    pub dir: std::path::PathBuf,
    pub quic: String,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free UDP port on loopback.
pub fn free_quic() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// Starts (or restarts) a cluster node; with `join`, a fresh one joins that member. `extra`
/// are more `serve` flags.
pub fn start_cluster_node(
    dir: &std::path::Path,
    quic: &str,
    join: Option<&str>,
    extra: &[&str],
) -> ClusterNode {
    let mut cmd = Command::new(binary());
    cmd.args([
        "serve",
        "--http",
        "127.0.0.1:0",
        "--quic",
        quic,
        "--data-dir",
    ])
    .arg(dir)
    .args(["--cluster-secret", CLUSTER_SECRET])
    .env("PULSEBOARD_ADMIN_PASSWORD", PASSWORD)
    .env("PULSEBOARD_LOG", "error")
    .stdout(Stdio::piped());
    if let Some(peer) = join {
        cmd.args(["--join", peer]);
    }
    cmd.args(extra);
    let mut child = cmd.spawn().unwrap();
    let addr = ready_addr(&mut child);
    ClusterNode {
        child,
        base: format!("http://{addr}"),
        dir: dir.to_path_buf(),
        quic: quic.to_owned(),
    }
}

/// Waits (up to a minute) until every shard of the cluster `base` belongs to is led where the
/// shard map puts its leader (`protocol::point::leaders`): the state a cluster settles in,
/// leaders spread over the nodes. Returns how many shards each node leads.
pub async fn leaders_balanced(base: &str) -> std::collections::BTreeMap<u64, usize> {
    let client = reqwest::Client::new();
    let token = login(base).await;
    let mut view = Value::Null;
    for _ in 0..600 {
        view = client
            .get(format!("{base}/api/v1/cluster"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<u64> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect();
        let shards = view["shards"].as_array().unwrap();
        let want = protocol::point::shard_leaders(shards.len() as u32, &ids, 3);
        let led: Vec<Option<u64>> = shards.iter().map(|s| s["leader"].as_u64()).collect();
        if led == want {
            let mut per = std::collections::BTreeMap::new();
            for l in led.into_iter().flatten() {
                *per.entry(l).or_insert(0) += 1;
            }
            return per;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("leaders not where the shard map puts them within a minute: {view}");
}
