//! Raft on top of the shared log: the openraft log store for any group. The state machines
//! (shards, metadata) live with what they apply to; the transport is [`crate::transport`].

pub mod log_store;
pub mod network;

pub use log_store::LogStore;
pub use network::{GroupRpc, Member, Network, Router};

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
