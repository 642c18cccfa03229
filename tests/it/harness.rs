//! Starting, killing and restarting real nodes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub struct Node {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    /// A fresh node in a new temporary data directory.
    pub async fn start() -> Node {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let mut node = Self::start_in(&path, extra).await;
        node._dir = Some(dir);
        node
    }

    /// A node on an existing data directory (a restart).
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Node {
        Self::start_command("serve", data_dir, extra).await
    }

    /// `pulseboard demo` in a fresh temporary data directory.
    pub async fn start_demo() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let mut node = Self::start_command("demo", &path, &[]).await;
        node._dir = Some(dir);
        node
    }

    async fn start_command(command: &str, data_dir: &Path, extra: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulseboard"));
        cmd.args([command, "--http", "127.0.0.1:0"]);
        if !extra.contains(&"--quic") {
            cmd.args(["--quic", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("PULSEBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PULSEBOARD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pulseboard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("pulseboard ready: http://") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not report ready within 60 s");
        let client = reqwest::Client::new();
        let base = format!("http://{addr}");
        let token = login(&client, &base, "admin", ADMIN_PASSWORD).await;
        Node {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            token,
            client,
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown, no final snapshot.
    pub fn kill9(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
        (self.data_dir.clone(), self._dir.take())
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the node's process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "node exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "node did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.data_dir.clone(), self._dir.take())
    }

    pub async fn ingest(&self, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/api/v1/ingest"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Ingests with an idempotency key, retrying 503s for up to 15 s like a client riding
    /// out a failover; returns the last answer.
    pub async fn ingest_retrying(&self, body: &Value, key: &str) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self
                .client
                .post(self.url("/api/v1/ingest"))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .json(body)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let answer = r.json().await.unwrap_or(Value::Null);
            if status != 503 || Instant::now() > deadline {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn write_lines(&self, body: &str, precision: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/api/v1/write?precision={precision}")))
            .bearer_auth(&self.token)
            .body(body.to_owned())
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path_and_query))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Node {
    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the counter `series` (its name, and its labels if any) in `/metrics`.
    pub async fn counter(&self, series: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} is not in /metrics:\n{text}"))
    }

    /// A new API key with the ingest scope (as the admin makes it).
    pub async fn ingest_key(&self) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/api-keys",
                Some(&self.token),
                Some(&json!({"name": "ingest", "scopes": ["ingest"]})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["key"]
            .as_str()
            .expect("the key, shown once")
            .to_owned()
    }

    /// Any request: `token` None sends no credentials.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn login(client: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let r = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200, "login as {user}");
    let v: Value = r.json().await.expect("login json");
    v["token"].as_str().expect("token").to_owned()
}

/// The sum of every value in a `/data` answer (0 for an answer without series).
pub fn sum_of_points(body: &Value) -> f64 {
    body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().into_iter().flatten())
        .filter_map(|p| p[1].as_f64())
        .sum()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// One point of the JSON ingest body.
pub fn point(metric: &str, ts: i64, value: f64, dims: &[(&str, &str)]) -> Value {
    let d: serde_json::Map<String, Value> = dims
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({"metric": metric, "timestamp": ts, "value": value, "dimensions": d})
}
