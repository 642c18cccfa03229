//! The command line: `user add` through a node's data directory, `load` against a running node, and
//! configuration errors that name what is wrong.

use std::process::Command;

use crate::harness::{login, Node};

fn pulseboard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pulseboard"));
    c.env("PULSEBOARD_LOG", "warn");
    c
}

#[tokio::test]
async fn user_add_then_log_in() {
    let node = Node::start().await;
    let out = pulseboard()
        .args([
            "user",
            "add",
            "--username",
            "carol",
            "--role",
            "editor",
            "--data-dir",
        ])
        .arg(&node.data_dir)
        .env("PULSEBOARD_USER_PASSWORD", "carol-password")
        .output()
        .expect("run user add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(user["role"], "editor");
    // The running node proposed it to the cluster's metadata group: carol logs in.
    login(&node.client, &node.base, "carol", "carol-password").await;
    // The group's refusal comes back to the command line.
    let out = pulseboard()
        .args(["user", "add", "--username", "carol", "--data-dir"])
        .arg(&node.data_dir)
        .env("PULSEBOARD_USER_PASSWORD", "other-password")
        .output()
        .expect("run user add");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    // A bad role is refused with the allowed values.
    let out = pulseboard()
        .args([
            "user",
            "add",
            "--username",
            "dan",
            "--role",
            "root",
            "--password",
            "dan-password",
            "--data-dir",
        ])
        .arg(&node.data_dir)
        .output()
        .expect("run user add");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer, editor or admin"));
}

/// `load` over each protocol: line protocol over HTTP, and through the Rust client, JSON
/// over HTTP and batches over QUIC (pinning the node's certificate).
#[tokio::test]
async fn load_drives_a_node_and_every_point_lands() {
    let node = Node::start().await;
    let cert = node.data_dir.join("tls/cert.pem");
    for protocol in ["line", "json", "quic"] {
        let metric = format!("load_{protocol}");
        let out = pulseboard()
            .args([
                "load",
                "--url",
                &node.base,
                "--protocol",
                protocol,
                "--metric",
                &metric,
                "--points",
                "20000",
                "--batch",
                "2000",
                "--series",
                "50",
                "--connections",
                "2",
                "--json",
            ])
            .arg("--cert")
            .arg(&cert)
            .env("PULSEBOARD_TOKEN", &node.token)
            .output()
            .expect("run load");
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
        assert_eq!(summary["points"], 20000, "{protocol}: {summary}");
        assert_eq!(summary["errors"], 0, "{protocol}: {summary}");
        assert!(summary["points_per_second"].as_f64().unwrap() > 0.0);
        let (status, body) = node
            .get(&format!(
                "/api/v1/metrics/{metric}.value/window?window=2h&aggregation=count"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["series"][0]["value"], 20000.0, "{protocol}: {body}");
    }
    let (_, body) = node.get("/api/v1/metrics").await;
    for m in body["metrics"].as_array().unwrap() {
        assert_eq!(m["series"], 50, "{body}");
    }
}

#[test]
fn bad_configuration_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pb.toml");
    std::fs::write(&cfg, "[storage]\nshards = 0\n").unwrap();
    let out = pulseboard()
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("storage.shards"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&cfg, "[storage]\nshardz = 4\n").unwrap();
    let out = pulseboard()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run serve");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shardz"));
    let out = pulseboard()
        .args(["serve", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .args(["--cluster-secret", "too short", "--data-dir"])
        .arg(dir.path().join("d3"))
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cluster.secret is 9 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A data directory created with 16 shards refuses to start with 8.
    let data = dir.path().join("d2");
    let mut first = pulseboard()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("PULSEBOARD_ADMIN_PASSWORD", "admin-password")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the layout file, then stop it.
    let layout = data.join("shards").join("layout.json");
    for _ in 0..600 {
        if layout.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = first.kill();
    let _ = first.wait();
    let out = pulseboard()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--shards",
            "8",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("16 shards"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
