//! `GET /api/v1/ws` (SPEC §4): one task per socket, translating JSON text frames to calls
//! into `live` and queued updates back to frames.
//!
//! Credentials: `?token=`, an `Authorization` header, or a first message
//! `{"type": "auth", "token": "..."}` (browsers cannot set headers on a WebSocket). A bad
//! token in the URL or header is refused with `401` before the upgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{bearer, ApiResult, Shared};
use crate::live::{Lagged, LiveQuery, Outgoing, Resume, Subscriber};
use crate::meta::{Action, Principal};

const MAX_SUBSCRIPTIONS: usize = 256;
const MAX_MESSAGE: usize = 64 * 1024;
/// A socket whose writes stall this long is closed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(15);
/// Nothing heard (not even a pong) for this long: the peer is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
const AUTH_WITHIN: Duration = Duration::from_secs(10);

pub async fn upgrade(
    State(state): State<Shared>,
    RawQuery(q): RawQuery,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let token = crate::query::pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .or_else(|| bearer(&parts).map(str::to_owned));
    let principal = match token {
        Some(t) => {
            let p = state.meta.authenticate(&t, crate::now_ms()).await?;
            p.require(Action::Read)?;
            Some(p)
        }
        None => None,
    };
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| run(state, socket, principal)))
}

fn error_text(id: Option<&str>, error: &str, detail: impl Into<String>) -> String {
    json!({"type": "error", "id": id, "error": error, "detail": detail.into()}).to_string()
}

struct Sub {
    key: String,
    query: LiveQuery,
}

struct Conn {
    state: Shared,
    socket_id: u64,
    principal: Option<Principal>,
    tx: mpsc::Sender<Outgoing>,
    lagged: Arc<Lagged>,
    /// Lagging subscriptions waiting for the queue to drain before they rejoin.
    pending: Vec<Arc<str>>,
    subs: HashMap<String, Sub>,
}

async fn run(state: Shared, socket: WebSocket, principal: Option<Principal>) {
    let (mut sink, mut stream) = socket.split();
    let queue = state.config.live.client_queue.max(2);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(queue);
    let mut conn = Conn {
        socket_id: state.live.new_socket_id(),
        state: state.clone(),
        principal,
        tx,
        lagged: Arc::new(Lagged::default()),
        pending: Vec::new(),
        subs: HashMap::new(),
    };
    let stats = state.live.stats.clone();
    stats
        .clients
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut closing = state.live.closing();
    let mut alerts = state.live.alert_feed();
    let mut ping = tokio::time::interval(PING_EVERY);
    let connected = Instant::now();
    let mut last_heard = Instant::now();
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    let mut dropped = false;
    loop {
        tokio::select! {
            _ = closing.changed() => {
                let _ = sink.send(close(1001, "node stopping")).await;
                break;
            }
            incoming = stream.next() => {
                let Some(Ok(msg)) = incoming else { break };
                last_heard = Instant::now();
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    Message::Binary(_) => {
                        let _ = conn.tx.try_send(Outgoing::Text(error_text(None, "bad_message", "send JSON text frames")));
                        continue;
                    }
                    _ => continue,
                };
                conn.handle(text.as_str()).await;
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                let frame = Message::Text(out.render().into());
                match tokio::time::timeout(SEND_TIMEOUT, sink.send(frame)).await {
                    Ok(Ok(())) => {}
                    _ => { dropped = true; break; }
                }
                conn.rejoin_when_drained().await;
            }
            alert = alerts.recv() => {
                match alert {
                    Ok(text) if conn.principal.is_some() => {
                        let _ = conn.tx.try_send(Outgoing::Text(text.to_string()));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    // The hub is gone: the node is stopping (never poll a closed feed again).
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            _ = conn.lagged.notify.notified() => {
                let ids = conn.lagged.take();
                conn.pending.extend(ids);
                conn.rejoin_when_drained().await;
            }
            _ = ping.tick() => {
                if conn.principal.is_none() && connected.elapsed() >= AUTH_WITHIN {
                    let _ = sink.send(Message::Text(error_text(None, "unauthorized", "send {\"type\": \"auth\", \"token\": ...} first").into())).await;
                    let _ = sink.send(close(1008, "unauthorized")).await;
                    break;
                }
                if last_heard.elapsed() >= IDLE_LIMIT {
                    dropped = true;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    for (id, sub) in conn.subs.drain() {
        state.live.leave(&sub.key, conn.socket_id, json_id(&id));
    }
    stats
        .clients
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if dropped {
        stats
            .dropped_clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn json_id(id: &str) -> Arc<str> {
    Value::String(id.to_owned()).to_string().into()
}

impl Conn {
    fn send_error(&self, id: Option<&str>, error: &str, detail: impl Into<String>) {
        // A socket too slow to take its error messages is cut by the send timeout.
        let _ = self
            .tx
            .try_send(Outgoing::Text(error_text(id, error, detail)));
    }

    async fn handle(&mut self, text: &str) {
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.send_error(None, "bad_message", format!("not JSON: {e}")),
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let id = msg.get("id").and_then(Value::as_str);
        if kind == "auth" {
            let token = msg.get("token").and_then(Value::as_str).unwrap_or("");
            match self.state.meta.authenticate(token, crate::now_ms()).await {
                Ok(p) => match p.require(Action::Read) {
                    Ok(()) => {
                        self.principal = Some(p);
                        let _ = self
                            .tx
                            .try_send(Outgoing::Text(json!({"type": "authenticated"}).to_string()));
                    }
                    Err(e) => self.send_error(None, "forbidden", e.to_string()),
                },
                Err(e) => self.send_error(None, "unauthorized", e.to_string()),
            }
            return;
        }
        if self.principal.is_none() {
            return self.send_error(
                id,
                "unauthorized",
                "send {\"type\": \"auth\", \"token\": ...} first",
            );
        }
        match kind {
            "subscribe" | "resume" => self.subscribe(kind, id, &msg).await,
            "unsubscribe" => {
                let Some(id) = id else {
                    return self.send_error(None, "bad_message", "unsubscribe needs an id");
                };
                match self.subs.remove(id) {
                    Some(sub) => self.state.live.leave(&sub.key, self.socket_id, json_id(id)),
                    None => self.send_error(
                        Some(id),
                        "unknown_subscription",
                        "no subscription with this id",
                    ),
                }
            }
            other => self.send_error(
                id,
                "bad_message",
                format!("unknown type {other:?}; use auth, subscribe, unsubscribe or resume"),
            ),
        }
    }

    async fn subscribe(&mut self, kind: &str, id: Option<&str>, msg: &Value) {
        let Some(id) = id.filter(|i| !i.is_empty() && i.len() <= 128) else {
            return self.send_error(
                None,
                "bad_message",
                format!("{kind} needs an id of 1 to 128 characters"),
            );
        };
        // A resume on the same socket may leave out the query; after a reconnect it repeats it.
        let query = match (msg.get("query"), self.subs.get(id)) {
            (Some(q), _) => {
                let min = msg.get("min_interval_ms").and_then(Value::as_u64);
                match LiveQuery::parse(q, min, self.state.live.layout(), crate::now_ms()) {
                    Ok(q) => q,
                    Err(e) => return self.send_error(Some(id), "bad_query", e),
                }
            }
            (None, Some(sub)) => sub.query.clone(),
            (None, None) => {
                return self.send_error(Some(id), "bad_message", format!("{kind} needs a query"))
            }
        };
        let resume = match kind {
            "resume" => match msg.get("after_seq").and_then(Value::as_u64) {
                Some(after_seq) => Some(Resume {
                    stream: msg.get("stream").and_then(Value::as_u64),
                    after_seq,
                }),
                None => return self.send_error(Some(id), "bad_message", "resume needs after_seq"),
            },
            _ => None,
        };
        if let Some(old) = self.subs.remove(id) {
            self.state.live.leave(&old.key, self.socket_id, json_id(id));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return self.send_error(
                Some(id),
                "too_many_subscriptions",
                format!("at most {MAX_SUBSCRIPTIONS} per socket"),
            );
        }
        match self
            .state
            .live
            .join(&query, self.subscriber(id), resume)
            .await
        {
            Ok(()) => {
                self.subs.insert(
                    id.to_owned(),
                    Sub {
                        key: query.key.clone(),
                        query,
                    },
                );
            }
            Err(e) => self.send_error(Some(id), "unavailable", e),
        }
    }

    fn subscriber(&self, id: &str) -> Subscriber {
        Subscriber {
            socket: self.socket_id,
            id: json_id(id),
            tx: self.tx.clone(),
            lagged: self.lagged.clone(),
        }
    }

    /// Lagging subscriptions rejoin from a fresh snapshot once at least half the queue is
    /// free again (rejoining into a full queue would only lag again).
    async fn rejoin_when_drained(&mut self) {
        if self.pending.is_empty() || self.tx.capacity() < self.tx.max_capacity() / 2 {
            return;
        }
        let mut ids = std::mem::take(&mut self.pending);
        ids.sort();
        ids.dedup();
        for json_id_lit in ids {
            let id: String = serde_json::from_str(&json_id_lit).unwrap_or_default();
            let Some(sub) = self.subs.get(&id) else {
                continue;
            };
            let query = sub.query.clone();
            if let Err(e) = self
                .state
                .live
                .join(&query, self.subscriber(&id), None)
                .await
            {
                self.send_error(Some(&id), "unavailable", e);
            }
        }
    }
}
