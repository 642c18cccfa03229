//! 400/401/403/413 answers, users, roles and API keys.

use serde_json::{json, Value};

use crate::harness::{login, now_ms, point, Node};

async fn post(node: &Node, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = node.client.post(node.url(path)).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn error_bodies_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pb.toml");
    std::fs::write(
        &cfg,
        "[ingest]\nmax_body_bytes = 4096\nmax_points_per_request = 50\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]).await;
    let now = now_ms();

    // 400: which point, which field, why.
    let (status, body) = node
        .ingest(&json!({"data_points": [point("ok", now, 1.0, &[]), point("ok", now, 1.0, &[]), {"metric": "9bad", "timestamp": now, "value": 1}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_body");
    assert_eq!(body["detail"]["index"], 2);
    assert_eq!(body["detail"]["field"], "metric");
    let (status, body) = node
        .ingest(&json!({"data_points": [{"metric": "m", "timestamp": now, "value": "high"}]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["field"], "value", "{body}");
    let (status, body) = node
        .ingest(&json!({"data_points": [point("m", now - 7 * 3_600_000, 1.0, &[])]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["field"], "timestamp", "{body}");
    assert!(
        body["detail"]["reason"].as_str().unwrap().contains("older"),
        "{body}"
    );
    let (status, body) = node
        .write_lines("cpu,host=a usage=1 1\ncpu usage=\n", "s")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["line"], 2, "{body}");
    let (status, body) = node.get("/api/v1/metrics/m/data?aggregation=mean").await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"]["param"], "aggregation", "{body}");
    // All-or-nothing: nothing of the refused batches was stored.
    let (_, body) = node.get("/api/v1/metrics").await;
    assert_eq!(body["metrics"], json!([]), "{body}");

    // 413: over the body limit (and over the point limit, which is a 400).
    let big = "x".repeat(5000);
    let (status, body) = node
        .ingest(&json!({"data_points": [point("m", now, 1.0, &[("k", &big)])]}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let many: Vec<Value> = (0..51)
        .map(|_| json!({"metric":"m","timestamp":now,"value":1}))
        .collect();
    let (status, _) = node.ingest(&json!({"data_points": many})).await;
    assert!(status == 400 || status == 413, "{status}");

    // 401: missing, malformed, unknown credentials; with the reason.
    let (status, body) = post(&node, "/api/v1/ingest", None, json!({"data_points": []})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = post(
        &node,
        "/api/v1/ingest",
        Some("pbk_nope"),
        json!({"data_points": [point("m", now, 1.0, &[])]}),
    )
    .await;
    assert_eq!(status, 401);
    let r = node
        .client
        .get(node.url("/api/v1/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = post(
        &node,
        "/api/v1/auth/login",
        None,
        json!({"username": "admin", "password": "wrong-password"}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn roles_and_api_key_scopes() {
    let node = Node::start().await;
    let admin = node.token.clone();
    let now = now_ms();
    // Users: create a viewer, log in as it.
    let (status, body) = post(
        &node,
        "/api/v1/users",
        Some(&admin),
        json!({"username": "vera", "password": "viewer-pass-1", "role": "viewer"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let vera_id = body["id"].as_u64().expect("id");
    let (status, body) = post(
        &node,
        "/api/v1/users",
        Some(&admin),
        json!({"username": "vera", "password": "viewer-pass-1"}),
    )
    .await;
    assert_eq!(status, 409, "duplicate username: {body}");
    let (status, body) = post(
        &node,
        "/api/v1/users",
        Some(&admin),
        json!({"username": "shorty", "password": "short"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let viewer = login(&node.client, &node.base, "vera", "viewer-pass-1").await;

    // 403: a viewer reads but does not ingest or manage users.
    let (status, body) = post(
        &node,
        "/api/v1/ingest",
        Some(&viewer),
        json!({"data_points": [point("m", now, 1.0, &[])]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let r = node
        .client
        .get(node.url("/api/v1/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = node
        .client
        .get(node.url("/api/v1/users"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // An ingest-only key ingests (header or the seed's body field) and cannot read.
    let (status, body) = post(
        &node,
        "/api/v1/api-keys",
        Some(&admin),
        json!({"name": "collector", "scopes": ["ingest"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().expect("key shown once").to_owned();
    let (status, body) = post(
        &node,
        "/api/v1/ingest",
        Some(&key),
        json!({"data_points": [point("m", now, 1.0, &[])]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &node,
        "/api/v1/ingest",
        None,
        json!({"authentication_token": key, "data_points": [point("m", now, 1.0, &[])]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = node
        .client
        .get(node.url("/api/v1/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = node
        .client
        .get(node.url("/api/v1/api-keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let listed: Value = r.json().await.unwrap();
    assert!(!listed.to_string().contains(&key), "keys are never listed");

    // Disabling a user ends its access; deleting it is admin-only and works.
    let r = node
        .client
        .patch(node.url(&format!("/api/v1/users/{vera_id}")))
        .bearer_auth(&admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = node
        .client
        .get(node.url("/api/v1/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = node
        .client
        .delete(node.url(&format!("/api/v1/users/{vera_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Logout ends the session.
    let r = node
        .client
        .post(node.url("/api/v1/auth/logout"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = node
        .client
        .get(node.url("/api/v1/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Operations endpoints need no token.
    let r = node.client.get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = node.client.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = node.metrics_text().await;
    assert!(
        text.contains("pulseboard_ingest_points_total{protocol=\"json\"} 2"),
        "{text}"
    );
    assert!(text.contains("pulseboard_wal_syncs_total"));
}
