//! Raft on top of the shared log: the openraft log store for any group. The state machines
//! (shards, metadata) live with what they apply to; the transport is [`crate::transport`].

pub mod log_store;
pub mod network;

pub use log_store::{AppliedMark, LogStore};
pub use network::{decode_append, encode_append};
pub use network::{GroupRpc, Member, Network, Router};

use openraft::{ErrorSubject, ErrorVerb, LogId, StorageError, StoredMembership};
use serde::{Deserialize, Serialize};

/// What a state machine records of its group, written atomically with the state it
/// describes (in a shard's snapshot, in the metadata store's transaction): the last applied
/// log id and the membership.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RaftMeta {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, Member>,
}

impl RaftMeta {
    /// Empty bytes are the state of a group that applied nothing.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        protocol::codec::decode(bytes).map_err(|e| e.to_string())
    }

    pub fn encode(&self) -> Vec<u8> {
        // Log ids and memberships always encode.
        protocol::codec::encode(self).unwrap_or_default()
    }
}

/// A log entry encoded once per node: its payload keeps the encoding (see
/// `protocol::codec::EntryBytes`), so the leader's log store, its replication to each
/// follower and each follower's log store share one encoding.
pub trait EncodedEntry {
    /// The entry's encoding: kept by its payload, or encoded now (and kept).
    fn encoded(&self) -> Result<std::sync::Arc<[u8]>, protocol::codec::CodecError>;
    /// Keeps `bytes` (this entry's encoding, as received) with the payload.
    fn keep(&self, bytes: std::sync::Arc<[u8]>);
    /// Memory the entry holds besides its encoding (see `EntryBytes::held_bytes`).
    fn held_bytes(&self) -> usize;
    /// Decodes an entry [`EncodedEntry::encoded`] wrote, its payload through the payload's
    /// own decoder (see `protocol::codec::EntryBytes::decode_payload`, which may keep
    /// referring to `bytes`).
    fn decode(bytes: &std::sync::Arc<[u8]>) -> Result<Self, protocol::codec::CodecError>
    where
        Self: Sized;
}

/// An entry is its log id, then its payload as an enum: the variant's index, then the
/// variant's fields. `Normal` (index 1) holds application data; its index encodes as one byte.
const NORMAL: u32 = 1;
const NORMAL_TAG: u8 = NORMAL as u8;

impl<C> EncodedEntry for openraft::Entry<C>
where
    C: openraft::RaftTypeConfig,
    C::D: protocol::codec::EntryBytes + serde::de::DeserializeOwned,
{
    fn encoded(&self) -> Result<std::sync::Arc<[u8]>, protocol::codec::CodecError> {
        use protocol::codec::EntryBytes;
        let openraft::EntryPayload::Normal(data) = &self.payload else {
            return protocol::codec::encode(self).map(Into::into);
        };
        // The entry's encoding starts with its log id's: bytes kept for another entry (the
        // same batch proposed again) do not match.
        let prefix = protocol::codec::encode(&self.log_id)?;
        if let Some(bytes) = data.entry_bytes(&prefix) {
            return Ok(bytes);
        }
        // The same bytes `encode(self)` writes: the log id, the payload's variant, the payload
        // (see `decode`).
        let mut out = prefix;
        out.push(NORMAL_TAG);
        let bytes: std::sync::Arc<[u8]> = if data.write_kept_payload(&mut out) {
            out.into()
        } else {
            protocol::codec::encode(self)?.into()
        };
        data.keep_entry_bytes(bytes.clone());
        Ok(bytes)
    }

    fn keep(&self, bytes: std::sync::Arc<[u8]>) {
        use protocol::codec::EntryBytes;
        if let openraft::EntryPayload::Normal(data) = &self.payload {
            data.keep_entry_bytes(bytes);
        }
    }

    fn held_bytes(&self) -> usize {
        use protocol::codec::EntryBytes;
        match &self.payload {
            openraft::EntryPayload::Normal(data) => data.held_bytes(),
            _ => 0,
        }
    }

    fn decode(bytes: &std::sync::Arc<[u8]>) -> Result<Self, protocol::codec::CodecError> {
        use protocol::codec::{decode_with_len, EntryBytes};
        let ((log_id, variant), head): ((openraft::LogId<C::NodeId>, u32), usize) =
            decode_with_len(bytes)?;
        if variant != NORMAL {
            return protocol::codec::decode(bytes);
        }
        Ok(openraft::Entry {
            log_id,
            payload: openraft::EntryPayload::Normal(C::D::decode_payload(bytes, head)?),
        })
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

/// A state machine's failure as openraft takes it.
pub fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}
