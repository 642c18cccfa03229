//! Metric shards: one actor per virtual shard owns that shard's series.
//!
//! `state` is the deterministic state machine (apply a committed batch, answer partial
//! queries); `actor` serialises access to it; `snapshot` persists it; `group` makes it the
//! state machine of the shard's Raft group. The storage algorithms
//! are `ring` (recent raw points, Gorilla-compressed in `gorilla`), `rollup` (fixed-resolution
//! cells, see `cell`) and `sketch` (the mergeable quantile sketch inside cells).

pub mod actor;
pub mod cell;
pub mod gorilla;
pub mod group;
pub mod ring;
pub mod rollup;
pub mod sketch;
pub mod snapshot;
pub mod state;
pub mod watch;

pub use actor::{Shard, ShardArgs, ShardMsg, ShardRef};
pub use state::{Bucketing, Filter, Layout, Partial, ShardQuery, ShardState, ShardStats, Source};
pub use watch::{DeltaSink, Watch};
