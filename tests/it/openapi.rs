//! `GET /api/v1/openapi.json` lists exactly the routes the router has, with their methods.

use std::collections::BTreeSet;

use crate::harness::Node;

/// (path, method) pairs from the router's source: `.route("/x", get(..).post(..))`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http.rs")).unwrap();
    let api_start = src.find("let api = Router::new()").expect("the api router");
    let api_end = src[api_start..].find(".fallback(").unwrap() + api_start;
    let mut out = BTreeSet::new();
    let mut rest = &src[api_start..];
    let mut offset = api_start;
    while let Some(i) = rest.find(".route(") {
        let at = offset + i;
        // The call runs to the parenthesis that closes `.route(`.
        let call = &src[at..];
        let mut depth = 0;
        let mut end = call.len();
        for (j, c) in call.char_indices().skip(".route".len()) {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &call[..end];
        let path = call.split('"').nth(1).unwrap().to_owned();
        let prefix = if at < api_end { "/api/v1" } else { "" };
        for m in ["get", "post", "put", "patch", "delete"] {
            let used = call.contains(&format!("{m}(")) && !call.contains(&format!("_{m}("))
                || call.contains(&format!(".{m}("))
                || call.contains(&format!("routing::{m}("));
            if used {
                out.insert((format!("{prefix}{path}"), m.to_owned()));
            }
        }
        offset = at + 7;
        rest = &src[offset..];
    }
    // The UI's routes are not part of the API.
    out.retain(|(p, _)| p != "/" && !p.starts_with("/assets"));
    out
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let node = Node::start().await;
    let r = node
        .client
        .get(node.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served without credentials");
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["responses"].is_object(), "{method} {path} has responses");
            documented.insert((path.clone(), method.clone()));
        }
    }
    let routed = routes_in_source();
    assert!(routed.len() > 20, "parsed the router: {routed:?}");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "openapi.json lists routes the router lacks: {stale:?}"
    );
}
