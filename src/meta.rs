//! Control-plane metadata: users, sessions, API keys, dashboards and their visualizations,
//! alert rules and states, in SQLite, replicated by the metadata Raft group (`group`).
//!
//! State changes only through [`MetaStore::apply`]`(index, command)`, called by the group's
//! state machine for each committed entry: a [`MetaCommand`] carries every id, hash and
//! timestamp it needs (decided by the proposer in [`MetaService`]), so applying reads no clock
//! and draws no random number, every node's store ends up the same, and re-applying an index
//! is a no-op.

mod alerts;
mod auth;
mod command;
mod dashboards;
pub mod group;
mod service;
mod store;

pub use alerts::{rule_view, AlertRuleRecord, AlertSpec, AlertStateRow, Channel};
pub use auth::{Action, AuthError, Forbidden, Principal, Role, Scope, Via};
pub use command::{MetaCommand, MetaOutcome};
pub use dashboards::{DashboardDocument, DashboardInput, PanelInput, CHART_TYPES};
pub use service::{create_user_command, ApiKeyView, MetaService, Session, UserView};
pub use store::{MetaError, MetaStore};
