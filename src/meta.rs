//! Control-plane metadata: users, sessions, API keys, dashboards and their visualizations,
//! in SQLite.
//!
//! State changes only through [`MetaStore::apply`]`(index, command)`: a [`MetaCommand`] carries
//! every id, hash and timestamp it needs (decided by the proposer in [`MetaService`]), so
//! applying reads no clock and draws no random number, and re-applying an index is a no-op.
//! That is the seam the meta Raft group replicates: later, the service proposes commands to
//! the group and every node applies them to its own SQLite.

mod alerts;
mod auth;
mod command;
mod dashboards;
mod service;
mod store;

pub use alerts::{rule_view, AlertRuleRecord, AlertSpec, AlertStateRow, Channel};
pub use auth::{Action, AuthError, Forbidden, Principal, Role, Scope, Via};
pub use command::{MetaCommand, MetaOutcome};
pub use dashboards::{DashboardDocument, DashboardInput, PanelInput, CHART_TYPES};
pub use service::{ApiKeyView, MetaService, Session, UserView};
pub use store::{MetaError, MetaStore};
