//! Raft on top of the shared log: the openraft log store for any group. The state machines
//! (shards, metadata) live with what they apply to; the transport is [`crate::transport`].

pub mod log_store;
pub mod network;

pub use log_store::LogStore;
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

#[cfg(test)]
mod cluster_tests;
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
