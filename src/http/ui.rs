//! The browser UI, embedded in the binary: `web/src` (ours) and the pinned libraries from
//! `web/node_modules` (see build.rs). Served with an ETag so browsers revalidate cheaply.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

macro_rules! web {
    ($p:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $p))
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// (path under /assets/, content type, bytes)
static ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, web!("src/app.js")),
    ("app.css", CSS, web!("src/app.css")),
    (
        "vendor/uPlot.iife.min.js",
        JS,
        web!("node_modules/uplot/dist/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        CSS,
        web!("node_modules/uplot/dist/uPlot.min.css"),
    ),
    (
        "vendor/gridstack-all.js",
        JS,
        web!("node_modules/gridstack/dist/gridstack-all.js"),
    ),
    (
        "vendor/gridstack.min.css",
        CSS,
        web!("node_modules/gridstack/dist/gridstack.min.css"),
    ),
];

static INDEX: &[u8] = web!("src/index.html");

fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(bytes)[..8]))
}

fn serve(
    headers: &HeaderMap,
    content_type: &'static str,
    bytes: &'static [u8],
    tag: &str,
) -> Response {
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag);
    let etag = HeaderValue::from_str(tag).unwrap_or(HeaderValue::from_static("\"0\""));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, etag),
        ],
        bytes,
    )
        .into_response()
}

pub async fn index(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    serve(
        &headers,
        "text/html; charset=utf-8",
        INDEX,
        TAG.get_or_init(|| etag(INDEX)),
    )
}

pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| ASSETS.iter().map(|(_, _, b)| etag(b)).collect());
    match ASSETS.iter().position(|(p, _, _)| *p == path) {
        Some(i) => serve(&headers, ASSETS[i].1, ASSETS[i].2, &tags[i]),
        None => super::ApiError(crate::error::Error::NotFound {
            what: format!("asset {path}"),
        })
        .into_response(),
    }
}
