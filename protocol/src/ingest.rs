//! The QUIC ingest protocol, `pulseboard-ingest/1`: the specification a third party needs to
//! write a client, and the frame types.
//!
//! # Connection
//! QUIC (RFC 9000) with TLS 1.3 to a node's QUIC address (`--quic`, default port 8081), ALPN
//! [`ALPN`]. The node's certificate is in `<data_dir>/tls/cert.pem` (self-signed and made at
//! first start, or one you put there with its key in `key.pem`); clients trust that
//! certificate (pin it), not a name. The same port carries node-to-node traffic under another
//! ALPN.
//!
//! # Streams and frames
//! The client opens bidirectional streams; each is a session: its first frame is
//! [`ClientFrame::Hello`], answered by [`ServerFrame::Welcome`] (or an
//! [`ServerFrame::Error`] with [`ErrorCode::Unauthorized`], [`ErrorCode::Forbidden`] or
//! [`ErrorCode::UnsupportedVersion`], after which the node finishes the stream). Then the
//! client sends [`ClientFrame::Batch`]es and the node answers each with [`ServerFrame::Ack`]
//! once every point of it is durable (SPEC §6: in the write-ahead log of a majority of its
//! shard's replicas), or with an [`ServerFrame::Error`] naming the batch's `seq`. Answers may
//! come out of order: a node works on up to `Welcome::max_in_flight` batches of a stream at
//! once and stops reading the stream while that many are open (or while it holds as many
//! frame bytes, over all streams, as it allows itself), so QUIC's flow control pushes back on
//! a client that sends faster than the node makes points durable. Use a few streams
//! (one per sending task) on one long-lived connection.
//!
//! A frame is a `u32` little-endian length, then that many bytes: the frame in bincode 2's
//! standard configuration (variable-length integers; an enum is its variant index, then its
//! fields in order; a string or vector is its length, then its items; `Option` is a 0/1 byte,
//! then the value). Frames longer than `Welcome::max_frame_bytes` (and any before the Welcome
//! longer than [`HELLO_MAX`]) end the stream with [`ErrorCode::BadFrame`]; a frame that does
//! not decode is answered with `BadFrame` and the stream goes on with the next frame.
//!
//! # Batches
//! A batch is all or nothing, like an HTTP ingest request, and obeys the same rules (SPEC §1:
//! names, dimensions, finite values, timestamps within retention). `batch_id` is the request's
//! idempotency key: a batch sent again with the same id (after a timeout, or to another node
//! after a failover) is applied once and answered like the first time. A client that gets
//! [`ErrorCode::Overloaded`] or [`ErrorCode::Unavailable`] should wait `retry_after_ms` and
//! send the batch again with the same id; the other codes mean the batch itself is wrong.
//!
//! # Versions
//! [`VERSION`] is in the Hello; a node refuses versions it does not speak. A new version gets
//! a new ALPN (`pulseboard-ingest/2`); frames of a version never change meaning.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::DataPoint;

pub const ALPN: &[u8] = b"pulseboard-ingest/1";
pub const VERSION: u16 = 1;
/// The largest frame before the Welcome (a Hello).
pub const HELLO_MAX: usize = 64 << 10;
/// Bytes of a frame's length prefix.
pub const LEN_BYTES: usize = 4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First on every stream. `api_key`: an API key with the ingest scope (or a session
    /// token). `client`: free text for the node's logs, e.g. `"my-collector/1.2"`.
    Hello {
        version: u16,
        api_key: String,
        client: String,
    },
    /// `seq`: the client's number for the batch, unique on the stream; answers carry it.
    Batch {
        seq: u64,
        batch_id: Option<String>,
        points: Vec<DataPoint>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    Welcome {
        node_id: u64,
        /// Points per batch, at most.
        max_points: u32,
        /// Bytes per frame, at most.
        max_frame_bytes: u32,
        /// Batches of one stream the node works on at once.
        max_in_flight: u32,
    },
    /// Every point of batch `seq` is durable.
    Ack { seq: u64, accepted: u32 },
    /// Batch `seq` (or, without one, the stream) failed.
    Error {
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
        /// For `Overloaded` and `Unavailable`: when to try again.
        retry_after_ms: Option<u64>,
    },
}

/// Why a batch or a stream failed; the HTTP status each corresponds to in brackets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame that does not decode, or is too long [400].
    BadFrame,
    /// No Hello first, or a bad key [401].
    Unauthorized,
    /// The key lacks the ingest scope [403].
    Forbidden,
    /// The Hello's version is not one this node speaks [400].
    UnsupportedVersion,
    /// A point breaks the rules; the message names it [400].
    Invalid,
    /// More points than `max_points` [413].
    TooLarge,
    /// The node is over its in-flight budget; retry after `retry_after_ms` [429].
    Overloaded,
    /// A shard has no leader right now (failover); retry [503].
    Unavailable,
    /// The node failed [500].
    Internal,
}

impl ErrorCode {
    /// Whether sending the same batch again (after `retry_after_ms`) may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

/// A frame ready to write: its length prefix, then its encoding.
pub fn encode_frame<T: Serialize>(frame: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; LEN_BYTES];
    codec::encode_into(frame, &mut out)?;
    let len = u32::try_from(out.len() - LEN_BYTES)
        .map_err(|_| CodecError::Encode("frame over 4 GiB".into()))?;
    out[..LEN_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// The body length a frame's prefix announces, if it is at most `max`.
pub fn frame_len(prefix: [u8; LEN_BYTES], max: usize) -> Result<usize, String> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes; the limit is {max}"));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_length_prefix() {
        let f = ClientFrame::Batch {
            seq: 7,
            batch_id: Some("b-1".into()),
            points: vec![DataPoint {
                metric: "clicks".into(),
                timestamp_ms: 1_700_000_000_000,
                value: 1.0,
                dimensions: vec![("country".into(), "de".into())],
            }],
        };
        let bytes = encode_frame(&f).unwrap();
        let len = frame_len(bytes[..4].try_into().unwrap(), 1 << 20).unwrap();
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(codec::decode::<ClientFrame>(&bytes[4..]).unwrap(), f);
        assert!(frame_len(bytes[..4].try_into().unwrap(), len - 1)
            .unwrap_err()
            .contains("limit"));
    }

    /// The layout the module documentation promises, byte by byte, so a third party's
    /// encoder can be checked against it.
    #[test]
    fn the_documented_layout_holds() {
        let hello = ClientFrame::Hello {
            version: 1,
            api_key: "k".into(),
            client: "c".into(),
        };
        // Variant 0, version 1, "k", "c".
        assert_eq!(
            encode_frame(&hello).unwrap(),
            [6, 0, 0, 0, 0, 1, 1, b'k', 1, b'c']
        );
        let ack = ServerFrame::Ack {
            seq: 300,
            accepted: 2,
        };
        // Variant 1; 300 as varint (251 = u16 follows); 2.
        assert_eq!(encode_frame(&ack).unwrap(), [5, 0, 0, 0, 1, 251, 44, 1, 2]);
    }
}
