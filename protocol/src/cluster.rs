//! Node-to-node frames (QUIC, ALPN [`ALPN`]).
//!
//! Every exchange is one bidirectional QUIC stream carrying one [`Request`] from the caller,
//! then one [`Response`] back; each is the `codec` encoding of the value, and the stream's end
//! ends the frame (no length prefix; readers cap a frame at [`MAX_FRAME`] bytes).
//!
//! A connection's first stream is the handshake: the caller sends [`Hello`], the callee
//! answers [`Welcome`]. Both prove they know the cluster secret with an HMAC-SHA256 over the
//! TLS session's exported keying material (label [`EXPORTER_LABEL`]), so a proof cannot be
//! replayed on another connection and a man in the middle (who has two TLS sessions) cannot
//! forward it. Streams before a successful handshake are refused.
//!
//! `body` bytes are themselves `codec` encodings of the channel's own types (openraft's RPCs
//! for the Raft channels; Pulseboard's for ingest and queries); the frame does not look inside.

use serde::{Deserialize, Serialize};

pub const ALPN: &[u8] = b"pulseboard-cluster/1";
/// The version a caller speaks; a callee refuses any other with [`Welcome::Refused`].
/// 2: `Channel::RaftAppend` carries each entry as its own length-prefixed encoding;
/// `Channel::Query` and `Channel::Watch` serve other nodes' reads.
/// 3: a shard's log entry is a `ShardEntry` (the batches proposed together), not one batch.
pub const VERSION: u16 = 3;
/// The label of the TLS keying-material export the handshake proofs cover.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-pulseboard-cluster-auth";
/// The largest frame a node reads (a Raft snapshot chunk or an ingest batch fits easily).
pub const MAX_FRAME: usize = 64 << 20;

/// The caller's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    /// The caller's node id, or 0 for a node that has none yet (joining).
    pub node_id: u64,
    /// HMAC-SHA256(secret, "client" ‖ node_id (LE) ‖ exported keying material).
    pub proof: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// HMAC-SHA256(secret, "server" ‖ node_id (LE) ‖ exported keying material).
    Accepted {
        node_id: u64,
        proof: [u8; 32],
    },
    Refused {
        reason: String,
    },
}

/// Which service a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// openraft's append-entries: the request without its entries, then each entry's own
    /// encoding, each part a `u32` little-endian length and its bytes (see
    /// `cluster::raft::encode_append`: an entry is encoded once for every follower).
    RaftAppend,
    RaftVote,
    RaftSnapshot,
    /// Cluster membership: the body is a [`MembershipRequest`], the answer a
    /// [`MembershipAnswer`].
    Membership,
    /// An ingest batch forwarded to a shard's leader: the body is a `ShardBatch`, the answer
    /// empty once the shard's group committed and applied it.
    Ingest,
    /// A query fragment for shards the answering node hosts (the body and answer are the
    /// server's own types: the shards, and what to read from each).
    Query,
    /// Liveness and identity; answered by the transport itself.
    Ping,
    /// The shard groups the answering node hosts, each as `(shard, last log index, whether it
    /// leads)` (a `Vec<(u32, u64, bool)>`): the failure detector's probe, which must tell a
    /// dead leader from a live node that no longer leads, and which voter has the longest log.
    Groups,
    /// A metadata command forwarded to the metadata group's leader: the body is the command,
    /// the answer a [`MetaWritten`] once the leader applied it.
    MetaWrite,
    /// A read barrier: the metadata group's leader confirms its leadership with a majority
    /// and answers the log index a linearizable read must wait for (a `u64`).
    MetaReadIndex,
    /// Several small requests in one frame (a `Vec<Request>`, none of them a `Batch`); the
    /// answer is their responses in the same order (a `Vec<Response>`). Heartbeats and votes
    /// of every group bound for one peer travel this way.
    Batch,
    /// A live watch on shards the answering node hosts (streaming: the first answer is the
    /// watched query's result as of registration, each later one a delta of an applied
    /// batch; the caller ends it by closing the stream).
    Watch,
    /// A member asks a node started with `--await-join` to join the cluster through it: the
    /// body is the member's QUIC address (a `String`); the answer is empty once the node set
    /// out to join, an error if it is not waiting (it founded or joined a cluster already).
    Invite,
    /// Leader balancing: a shard group's leader asks this node to take the lead — to call an
    /// election in `Request::group`. The leader has stopped proposing in that group and this
    /// node's replica holds its whole log, so the leader grants the vote and steps down. The
    /// answer is empty once the election is called.
    TakeLead,
}

impl Channel {
    /// Whether the channel streams: after the request, the callee sends any number of
    /// [`Response`]s, each as a `u32` little-endian length and that many bytes, and ends
    /// the stream when done; the caller stops it when no longer interested.
    pub fn is_stream(self) -> bool {
        matches!(self, Channel::Watch)
    }
}

/// The Raft group of the cluster's metadata (users, keys, dashboards, alert rules); shard
/// groups are numbered from 0 and stay far below it.
pub const META_GROUP: u32 = 0x0FFF_FFFF;

/// The leader's answer to a forwarded metadata command: the log index it was applied at (so
/// the forwarding node can wait until its own replica has it) and, if the command was
/// refused, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWritten {
    pub index: u64,
    pub refused: Option<Refusal>,
}

/// Why a replicated metadata command was refused when applied (every replica refuses it
/// alike).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    NotFound {
        what: String,
        id: String,
    },
    Conflict(String),
    /// It would leave no enabled admin.
    LastAdmin,
    Failed(String),
}

/// `Channel::Membership` body: a change of a node's place in the groups, carried out by each
/// group's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRequest {
    pub node_id: u64,
    pub change: MemberChange,
    /// The groups to change (shard numbers, [`META_GROUP`]); `None` for every group.
    pub groups: Option<Vec<u32>>,
    /// How many nodes passed the request on (a member passes the groups it does not lead to
    /// their leaders; past 2 hops the change fails instead of chasing elections).
    pub hops: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// The node becomes a replica (a voter while a group has fewer than the replication
    /// factor, else a learner). Its QUIC and HTTP addresses, as other nodes should use them.
    Join { quic: String, http: String },
    /// The node stops being a replica; a learner takes its vote where there is one.
    Leave,
}

/// The answer to a [`MembershipRequest`]: the groups changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipAnswer {
    pub groups: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub channel: Channel,
    /// The Raft group (shard number, or the metadata group) the request is for.
    pub group: u32,
    /// Written as one byte string, not byte by byte (the same bytes on the wire).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Request {
    /// The request's encoding up to its body: this, then the body's bytes, are the bytes
    /// [`crate::codec::encode`] writes for the request. A sender writes the two parts as they
    /// are instead of copying a body of many entries into one frame first.
    pub fn encode_head(&self) -> Result<Vec<u8>, crate::codec::CodecError> {
        crate::codec::encode(&(self.channel, self.group, self.body.len() as u64))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The callee could not serve the request; `retry` says whether another try (perhaps at
    /// another node) may succeed.
    Err {
        message: String,
        retry: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let r = Request {
            channel: Channel::RaftAppend,
            group: 3,
            body: vec![1, 2, 3],
        };
        let bytes = codec::encode(&r).expect("encode");
        assert_eq!(codec::decode::<Request>(&bytes).expect("decode"), r);
        for len in [0, 3, 250, 251, 70_000] {
            let r = Request {
                channel: Channel::Batch,
                group: 70_000,
                body: vec![7; len],
            };
            let mut parts = r.encode_head().expect("head");
            parts.extend_from_slice(&r.body);
            assert_eq!(parts, codec::encode(&r).expect("encode"));
        }
        assert!(codec::decode::<Request>(&bytes[..bytes.len() - 1]).is_err());
        assert!(codec::decode::<Request>(&[0xff; 16]).is_err());
        let w = Welcome::Refused {
            reason: "wrong secret".into(),
        };
        assert_eq!(
            codec::decode::<Welcome>(&codec::encode(&w).expect("encode")).expect("decode"),
            w
        );
    }

    #[test]
    fn bodies_are_byte_strings_with_the_same_bytes_as_before() {
        // The frame layout of version 2 as first written: the body as a sequence of u8.
        #[derive(Serialize)]
        struct Plain {
            channel: Channel,
            group: u32,
            body: Vec<u8>,
        }
        let body: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let r = Request {
            channel: Channel::Ingest,
            group: 7,
            body: body.clone(),
        };
        let plain = Plain {
            channel: Channel::Ingest,
            group: 7,
            body: body.clone(),
        };
        let bytes = codec::encode(&r).expect("encode");
        assert_eq!(bytes, codec::encode(&plain).expect("encode"));
        assert_eq!(codec::decode::<Request>(&bytes).expect("decode"), r);
        let ok = Response::Ok(body.clone());
        assert_eq!(
            codec::decode::<Response>(&codec::encode(&ok).expect("encode")).expect("decode"),
            ok
        );
    }
}
