//! Dashboards and visualizations: CRUD, roles and ownership, public reads, optimistic
//! concurrency, export/import round trip, and survival across a restart.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{login, Node};

async fn user(node: &Node, name: &str, role: &str) -> String {
    let (s, b) = node
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&node.token),
            Some(&json!({"username": name, "password": "password-123", "role": role})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    login(&node.client, &node.base, name, "password-123").await
}

fn clicks_query() -> Value {
    json!({"metric": "clicks", "aggregation": "sum", "granularity": "10s", "window": "15m",
           "group_by": "country", "filter": ["campaign:spring"]})
}

#[tokio::test]
async fn dashboards_roles_concurrency_export_and_restart() {
    let node = Node::start().await;
    let admin = node.token.clone();
    let ed = user(&node, "ed", "editor").await;
    let eve = user(&node, "eve", "editor").await;
    let vic = user(&node, "vic", "viewer").await;

    // An editor creates a private, unshared dashboard and two panels.
    let (s, d) = node
        .call(
            Method::POST,
            "/api/v1/dashboards",
            Some(&ed),
            Some(&json!({"name": "Ads", "description": "clicks", "shared": false})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    let id = d["id"].as_u64().unwrap();
    assert_eq!(d["version"], 1);
    let panels = format!("/api/v1/dashboards/{id}/visualizations");
    let (s, p1) = node
        .call(
            Method::POST,
            &panels,
            Some(&ed),
            Some(
                &json!({"title": "Clicks by country", "type": "bar", "query": clicks_query(),
                         "options": {"stacked": true}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{p1}");
    let (s, p2) = node
        .call(
            Method::POST,
            &panels,
            Some(&ed),
            Some(&json!({"title": "Total", "type": "stat",
                         "query": {"metric": "clicks", "aggregation": "sum", "window": "1m"}})),
        )
        .await;
    assert_eq!(s, 201, "{p2}");
    let (_, d) = node
        .call(
            Method::GET,
            &format!("/api/v1/dashboards/{id}"),
            Some(&vic),
            None,
        )
        .await;
    assert_eq!(d["visualizations"].as_array().unwrap().len(), 2, "{d}");
    assert_eq!(d["version"], 3);
    // New panels are placed below each other on the grid.
    let grid = d["layout"]["panels"].as_array().unwrap();
    assert_eq!(grid.len(), 2);
    assert_eq!(grid[1]["y"], 6, "{d}");

    // Bad input is named.
    let (s, b) = node
        .call(
            Method::POST,
            &panels,
            Some(&ed),
            Some(&json!({"type": "sparkles", "query": clicks_query()})),
        )
        .await;
    assert_eq!(
        (s, b["detail"]["field"].as_str()),
        (400, Some("type")),
        "{b}"
    );
    let (s, b) = node
        .call(
            Method::POST,
            &panels,
            Some(&ed),
            Some(&json!({"query": {"metric": "clicks", "aggregation": "mean"}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("aggregation"), "{b}");
    let (s, b) = node
        .call(
            Method::POST,
            "/api/v1/dashboards",
            Some(&ed),
            Some(&json!({"name": "x", "layout": {"panels": [{"id": 1}]}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("panels[0].x"), "{b}");

    // Roles: viewers read but do not write; another editor may not change an unshared
    // dashboard; an admin may.
    let path = format!("/api/v1/dashboards/{id}");
    let (s, b) = node
        .call(
            Method::PUT,
            &path,
            Some(&vic),
            Some(&json!({"name": "mine"})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = node
        .call(
            Method::PUT,
            &path,
            Some(&eve),
            Some(&json!({"name": "mine"})),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.to_string().contains("not shared"), "{b}");
    // The owner shares it; now the other editor may edit, but not unshare it.
    let (s, _) = node
        .call(
            Method::PUT,
            &path,
            Some(&ed),
            Some(&json!({"shared": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = node
        .call(
            Method::PUT,
            &path,
            Some(&eve),
            Some(&json!({"name": "Ads (eve)"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = node
        .call(
            Method::PUT,
            &path,
            Some(&eve),
            Some(&json!({"shared": false})),
        )
        .await;
    assert_eq!(s, 403);

    // Two editors saving the same version: the second gets a 409.
    let (_, cur) = node.call(Method::GET, &path, Some(&ed), None).await;
    let v = cur["version"].as_u64().unwrap();
    let mut layout = cur["layout"].clone();
    layout["panels"][0]["w"] = json!(12);
    let (s, b) = node
        .call(
            Method::PUT,
            &path,
            Some(&ed),
            Some(&json!({"layout": layout, "version": v})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = node
        .call(
            Method::PUT,
            &path,
            Some(&eve),
            Some(&json!({"name": "late", "version": v})),
        )
        .await;
    assert_eq!(s, 409, "{b}");

    // Public dashboards are readable without login; private ones look absent.
    let (s, _) = node.call(Method::GET, &path, None, None).await;
    assert_eq!(s, 404);
    let (s, _) = node
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(&json!({"is_public": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = node.call(Method::GET, &path, None, None).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = node
        .call(Method::PUT, &path, None, Some(&json!({"name": "anon"})))
        .await;
    assert_eq!(s, 401);
    let (s, b) = node
        .call(Method::GET, "/api/v1/dashboards", None, None)
        .await;
    assert_eq!(
        (s, b["dashboards"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    // Export → import → export gives the same document.
    let (s, doc) = node
        .call(Method::GET, &format!("{path}/export"), Some(&vic), None)
        .await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["visualizations"][0]["position"]["w"], 12, "{doc}");
    assert!(doc.get("id").is_none());
    let (s, copy) = node
        .call(
            Method::POST,
            "/api/v1/dashboards/import",
            Some(&eve),
            Some(&doc),
        )
        .await;
    assert_eq!(s, 201, "{copy}");
    assert_ne!(copy["id"], json!(id));
    assert_eq!(copy["owner_user_id"], node_user_id(&node, "eve").await);
    let copy_id = copy["id"].as_u64().unwrap();
    let (_, doc2) = node
        .call(
            Method::GET,
            &format!("/api/v1/dashboards/{copy_id}/export"),
            Some(&eve),
            None,
        )
        .await;
    assert_eq!(doc, doc2);
    let mut bad = doc.clone();
    bad["visualizations"][1]["query"] = json!({"metric": ""});
    let (s, b) = node
        .call(
            Method::POST,
            "/api/v1/dashboards/import",
            Some(&eve),
            Some(&bad),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("[1].query"), "{b}");

    // Panels: update and delete keep the layout in step.
    let p1_id = p1["id"].as_u64().unwrap();
    let p2_id = p2["id"].as_u64().unwrap();
    let (s, b) = node
        .call(
            Method::PUT,
            &format!("{panels}/{p1_id}"),
            Some(&ed),
            Some(&json!({"type": "line"})),
        )
        .await;
    assert_eq!((s, b["type"].as_str()), (200, Some("line")), "{b}");
    let (s, _) = node
        .call(
            Method::DELETE,
            &format!("{panels}/{p2_id}"),
            Some(&ed),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, d) = node.call(Method::GET, &path, Some(&ed), None).await;
    assert_eq!(d["layout"]["panels"].as_array().unwrap().len(), 1, "{d}");

    // A restart keeps everything.
    let (dir, guard) = node.terminate();
    let node = Node::start_in(&dir, &[]).await;
    let (_, d) = node.call(Method::GET, &path, None, None).await;
    assert_eq!(d["name"], "Ads (eve)");
    assert_eq!(
        d["visualizations"][0]["query"]["filter"][0], "campaign:spring",
        "{d}"
    );
    let (s, _) = node
        .call(Method::DELETE, &path, Some(&node.token), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = node
        .call(Method::GET, &panels, Some(&node.token), None)
        .await;
    assert_eq!(s, 404);
    drop(guard);
}

async fn node_user_id(node: &Node, name: &str) -> Value {
    let (_, b) = node
        .call(Method::GET, "/api/v1/users", Some(&node.token), None)
        .await;
    b["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .map(|u| u["id"].clone())
        .unwrap()
}
