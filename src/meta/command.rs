//! The commands that change metadata. Each carries everything `apply` needs.

use serde::{Deserialize, Serialize};

use super::alerts::AlertRuleRecord;
use super::auth::{Role, Scope};
use super::dashboards::{DashboardRecord, PanelRecord};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    CreateUser {
        id: u64,
        username: String,
        password_hash: String,
        role: Role,
        created_ms: i64,
    },
    UpdateUser {
        id: u64,
        password_hash: Option<String>,
        role: Option<Role>,
        disabled: Option<bool>,
    },
    /// Also deletes the user's sessions and API keys.
    DeleteUser {
        id: u64,
    },
    CreateSession {
        token_hash: String,
        user_id: u64,
        created_ms: i64,
        expires_ms: i64,
    },
    DeleteSession {
        token_hash: String,
    },
    /// Sessions that expired before `before_ms`.
    DeleteExpiredSessions {
        before_ms: i64,
    },
    CreateApiKey {
        id: u64,
        name: String,
        key_hash: String,
        owner_user_id: u64,
        scopes: Vec<Scope>,
        created_ms: i64,
    },
    DeleteApiKey {
        id: u64,
    },
    /// Creates (`base_version: None`) or replaces a dashboard; refused unless the stored
    /// version equals `base_version`.
    PutDashboard {
        dashboard: DashboardRecord,
        base_version: Option<u64>,
    },
    /// Also deletes its visualizations.
    DeleteDashboard {
        id: u64,
    },
    /// Creates or replaces a visualization together with its dashboard's new layout and
    /// version (`dashboard.version - 1` must be the stored one).
    PutPanel {
        panel: PanelRecord,
        dashboard: DashboardRecord,
    },
    DeletePanel {
        id: u64,
        dashboard: DashboardRecord,
    },
    /// Creates (`base_version: None`) or replaces an alert rule; resets its states.
    PutAlertRule {
        rule: AlertRuleRecord,
        base_version: Option<u64>,
    },
    DeleteAlertRule {
        id: u64,
    },
    /// An alert group changed state; `event` also records it in the history.
    AlertTransition {
        rule_id: u64,
        rule_name: String,
        group_key: String,
        state: String,
        severity: String,
        value: Option<f64>,
        at_ms: i64,
        event: bool,
    },
    /// A notification that could not be delivered.
    AlertDeadLetter {
        rule_id: u64,
        channel: String,
        payload: String,
        error: String,
        at_ms: i64,
    },
    /// A whole dashboard with its visualizations, atomically.
    ImportDashboard {
        dashboard: DashboardRecord,
        panels: Vec<PanelRecord>,
    },
}

/// Commands are small: the metadata group's log encodes them again where it needs to.
impl protocol::codec::EntryBytes for MetaCommand {}

/// What applying a command produced.
#[derive(Debug)]
pub enum MetaOutcome {
    Done,
    /// The command was refused (a conflict, a missing record): nothing changed.
    Refused(super::store::MetaError),
    /// The index was at or below the applied index: nothing was done.
    AlreadyApplied,
}
