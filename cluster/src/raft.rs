//! Raft on top of the shared log: the openraft log store for any group. The state machines
//! (shards, metadata) live with what they apply to; the transport is [`crate::transport`].

pub mod log_store;

pub use log_store::LogStore;

#[cfg(test)]
mod tests;
