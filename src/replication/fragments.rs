//! Reads that scatter over every shard, wherever its replicas are: this node's own replica
//! where it hosts the shard, else a query fragment (`Channel::Query`) to a node that does —
//! the shard's leader first (it applied the most), then its other replicas. Each node merges
//! its fragment's answers before sending them back.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::cluster::{Channel, Request, Response};
use serde::{Deserialize, Serialize};

use super::RaftGroups;
use crate::error::{Error, Result};
use crate::shard::{Partial, ShardMsg, ShardQuery};

/// What a read asks every shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Ask {
    /// Partial aggregates of a query plan.
    Query(ShardQuery),
    /// Metric names with their series counts.
    Metrics,
    /// For a metric: dimension key → value → series count.
    Dimensions(String),
}

/// The merged answer of some shards.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Partial(Partial),
    Metrics(HashMap<String, u64>),
    Dimensions(HashMap<String, HashMap<String, u64>>),
}

/// `Channel::Query` body.
#[derive(Debug, Serialize, Deserialize)]
struct Fragment {
    shards: Vec<u32>,
    ask: Ask,
}

/// How long a fragment may take at the node answering it.
const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes a shard's part is tried at before the read fails.
const ATTEMPTS: usize = 3;

impl Answer {
    fn empty(ask: &Ask) -> Self {
        match ask {
            Ask::Query(_) => Answer::Partial(HashMap::new()),
            Ask::Metrics => Answer::Metrics(HashMap::new()),
            Ask::Dimensions(_) => Answer::Dimensions(HashMap::new()),
        }
    }

    /// Folds `other` (an answer to the same ask) into this one.
    fn merge(&mut self, other: Answer, sketch: bool) -> Result<()> {
        match (self, other) {
            (Answer::Partial(acc), Answer::Partial(p)) => {
                for (group, run) in p {
                    crate::shard::state::merge_runs(acc.entry(group).or_default(), run, sketch);
                }
            }
            (Answer::Metrics(acc), Answer::Metrics(m)) => {
                for (name, n) in m {
                    *acc.entry(name).or_insert(0) += n;
                }
            }
            (Answer::Dimensions(acc), Answer::Dimensions(d)) => {
                for (k, values) in d {
                    let into = acc.entry(k).or_default();
                    for (v, n) in values {
                        *into.entry(v).or_insert(0) += n;
                    }
                }
            }
            _ => {
                return Err(Error::Internal(
                    "a fragment answered another kind of read".into(),
                ))
            }
        }
        Ok(())
    }
}

fn sketch(ask: &Ask) -> bool {
    matches!(ask, Ask::Query(q) if q.sketch)
}

impl RaftGroups {
    /// Asks every shard and merges the answers.
    pub async fn ask(&self, ask: Ask) -> Result<Answer> {
        let (local, remote): (Vec<u32>, Vec<u32>) =
            (0..self.rafts.len() as u32).partition(|&s| self.hosts(s));
        if remote.is_empty() {
            return self.ask_local(&local, &ask).await;
        }
        let ask = Arc::new(ask);
        let (mine, theirs) = futures_util::future::join(
            self.ask_local(&local, &ask),
            self.ask_remote(remote, ask.clone()),
        )
        .await;
        let mut answer = mine?;
        answer.merge(theirs?, sketch(&ask))?;
        Ok(answer)
    }

    /// This node's replicas of `shards`.
    async fn ask_local(&self, shards: &[u32], ask: &Ask) -> Result<Answer> {
        let timeout = Some(self.query_timeout);
        let actors = shards.iter().filter_map(|&s| self.shards.get(s as usize));
        let answers: Vec<Result<Answer>> = match ask {
            Ask::Query(q) => {
                let q = Arc::new(q.clone());
                futures_util::future::join_all(actors.map(|a| {
                    let q = q.clone();
                    async move {
                        unwrap_call(a.call(|r| ShardMsg::Query(q, r), timeout).await)
                            .map(Answer::Partial)
                    }
                }))
                .await
            }
            Ask::Metrics => {
                futures_util::future::join_all(actors.map(|a| async move {
                    unwrap_call(a.call(ShardMsg::Metrics, timeout).await).map(Answer::Metrics)
                }))
                .await
            }
            Ask::Dimensions(m) => {
                futures_util::future::join_all(actors.map(|a| async move {
                    let m = m.clone();
                    unwrap_call(a.call(|r| ShardMsg::Dimensions(m, r), timeout).await)
                        .map(Answer::Dimensions)
                }))
                .await
            }
        };
        let mut merged = Answer::empty(ask);
        for answer in answers {
            merged.merge(answer?, sketch(ask))?;
        }
        Ok(merged)
    }

    /// Shards this node does not host, as fragments to nodes that do: each shard at its
    /// leader if known, else at another replica; a shard whose node fails is tried at the
    /// next one.
    async fn ask_remote(&self, shards: Vec<u32>, ask: Arc<Ask>) -> Result<Answer> {
        let placement = self.placement();
        // Per shard: the nodes to try, best first.
        let mut pending: Vec<(u32, Vec<u64>)> = shards
            .into_iter()
            .map(|s| {
                let seen = self.seen(s).unwrap_or_default();
                let mut order: Vec<u64> = seen.leader.into_iter().collect();
                order.extend(seen.replicas.iter().copied());
                if let Some(t) = placement.targets.get(s as usize) {
                    order.extend(t.iter().copied());
                }
                let mut deduped = Vec::new();
                for n in order {
                    if n != self.node_id && !deduped.contains(&n) {
                        deduped.push(n);
                    }
                }
                (s, deduped)
            })
            .collect();
        let sketch = sketch(&ask);
        let mut merged = Answer::empty(&ask);
        let mut last_error = None;
        for attempt in 0..ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let mut by_node: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
            for (s, order) in &pending {
                match order.get(attempt) {
                    Some(n) => by_node.entry(*n).or_default().push(*s),
                    None => {
                        return Err(last_error.unwrap_or_else(|| {
                            Error::Unavailable(format!("shard {s}: no node hosts it; retry"))
                        }))
                    }
                }
            }
            let calls = by_node.into_iter().map(|(node, shards)| {
                let addr = placement
                    .nodes
                    .get(&node)
                    .and_then(|m| m.quic.parse::<SocketAddr>().ok());
                let ask = ask.clone();
                async move {
                    let result = match addr {
                        Some(addr) => self.call_fragment(addr, &shards, &ask).await,
                        None => Err(Error::Unavailable(format!("node {node} has no address"))),
                    };
                    (shards, result)
                }
            });
            let mut failed = Vec::new();
            for (shards, result) in futures_util::future::join_all(calls).await {
                match result {
                    Ok(answer) => merged.merge(answer, sketch)?,
                    Err(e) => {
                        failed.extend(shards);
                        last_error = Some(e);
                    }
                }
            }
            pending.retain(|(s, _)| failed.contains(s));
        }
        if let Some((s, _)) = pending.first() {
            return Err(last_error
                .unwrap_or_else(|| Error::Unavailable(format!("shard {s}: no answer; retry"))));
        }
        Ok(merged)
    }

    async fn call_fragment(&self, addr: SocketAddr, shards: &[u32], ask: &Ask) -> Result<Answer> {
        let body = protocol::codec::encode(&Fragment {
            shards: shards.to_vec(),
            ask: ask.clone(),
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let request = Request {
            channel: Channel::Query,
            group: 0,
            body,
        };
        let bytes = self
            .transport
            .call_within(addr, &request, FRAGMENT_TIMEOUT)
            .await
            .map_err(|e| Error::Unavailable(format!("query fragment: {e}")))?;
        protocol::codec::decode(&bytes)
            .map_err(|e| Error::Internal(format!("query fragment answer from {addr}: {e}")))
    }

    /// A fragment another node sent: answered from this node's replicas, merged. Refused
    /// (retry elsewhere) for a shard this node does not host.
    pub async fn serve_fragment(&self, body: &[u8]) -> Response {
        let fragment: Fragment = match protocol::codec::decode(body) {
            Ok(f) => f,
            Err(e) => {
                return Response::Err {
                    message: format!("malformed query fragment: {e}"),
                    retry: false,
                }
            }
        };
        if fragment.shards.len() > self.rafts.len() {
            return Response::Err {
                message: format!(
                    "a fragment names {} shards; there are {}",
                    fragment.shards.len(),
                    self.rafts.len()
                ),
                retry: false,
            };
        }
        if let Some(s) = fragment.shards.iter().find(|&&s| !self.hosts(s)) {
            return Response::Err {
                message: format!("this node does not host shard {s}"),
                retry: true,
            };
        }
        let answer = match self.ask_local(&fragment.shards, &fragment.ask).await {
            Ok(a) => a,
            Err(e) => {
                return Response::Err {
                    message: e.to_string(),
                    retry: true,
                }
            }
        };
        match protocol::codec::encode(&answer) {
            Ok(b) => Response::Ok(b),
            Err(e) => Response::Err {
                message: e.to_string(),
                retry: false,
            },
        }
    }
}

pub(crate) fn unwrap_call<T>(
    r: std::result::Result<ractor::rpc::CallResult<T>, ractor::MessagingErr<ShardMsg>>,
) -> Result<T> {
    match r {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(Error::Unavailable("a shard timed out".into())),
        Ok(ractor::rpc::CallResult::SenderError) => {
            Err(Error::Unavailable("a shard dropped the request".into()))
        }
        Err(e) => Err(Error::Unavailable(format!("a shard is not running: {e}"))),
    }
}
