//! Integration tests: each starts the real `pulseboard` binary on a free port with its own
//! data directory and talks to it over real sockets.

// Test code: a failed unwrap is a failed test, with a backtrace.
#![allow(clippy::unwrap_used)]

mod alerts;
mod auth;
mod browser;
mod chaos;
mod cli;
mod cluster;
mod compat;
mod dashboards;
mod durability;
mod harness;
mod idempotency;
mod ingest_query;
mod live;
mod openapi;
mod quic_ingest;
