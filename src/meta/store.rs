//! The SQLite store behind metadata, and `apply`.
//!
//! The connection sits behind a std `Mutex`, not a tokio one: it is only used in synchronous
//! code, never held across `.await`, and SQLite calls are short.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::auth::{Role, Scope};
use super::command::{MetaCommand, MetaOutcome};

/// 1: users, sessions, API keys. 2: dashboards and visualizations. 3: alert rules, states,
/// events, dead letters. (Each version only adds tables.)
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    owner_user_id INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(String),
    #[error("refused: this would leave no enabled admin")]
    LastAdmin,
    #[error("metadata store: {op}: {source}")]
    Storage {
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("metadata store {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl MetaError {
    pub fn status(&self) -> u16 {
        match self {
            MetaError::NotFound { .. } => 404,
            MetaError::Conflict(_) | MetaError::LastAdmin => 409,
            MetaError::Invalid { .. } => 400,
            MetaError::BadCredentials => 401,
            MetaError::Forbidden(_) => 403,
            MetaError::Storage { .. } | MetaError::Corrupt { .. } => 500,
        }
    }
}

pub(super) fn storage(op: &'static str) -> impl FnOnce(rusqlite::Error) -> MetaError {
    move |source| MetaError::Storage { op, source }
}

/// A user row.
#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: u64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug)]
pub struct KeyRow {
    pub id: u64,
    pub name: String,
    pub owner_user_id: u64,
    pub scopes: Vec<Scope>,
    pub created_ms: i64,
}

pub struct MetaStore {
    conn: Mutex<Connection>,
}

fn parse_role(s: String) -> Role {
    s.parse().unwrap_or(Role::Viewer)
}

fn parse_scopes(s: &str) -> Vec<Scope> {
    s.split(',').filter_map(|x| x.parse().ok()).collect()
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let corrupt = |reason: String| MetaError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let conn = Connection::open(path).map_err(|e| corrupt(e.to_string()))?;
        Self::init(conn).map_err(|e| match e {
            MetaError::Storage { op, source } => corrupt(format!("{op}: {source}")),
            other => other,
        })
    }

    pub fn open_in_memory() -> Result<Self, MetaError> {
        Self::init(Connection::open_in_memory().map_err(storage("open"))?)
    }

    fn init(conn: Connection) -> Result<Self, MetaError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage("set journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage("set busy_timeout"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(storage("read user_version"))?;
        if version > SCHEMA_VERSION {
            return Err(MetaError::Invalid {
                field: "schema",
                reason: format!(
                    "the metadata store has schema version {version}; this binary knows up to {SCHEMA_VERSION}"
                ),
            });
        }
        conn.execute_batch(SCHEMA)
            .map_err(storage("create schema"))?;
        conn.execute_batch(super::dashboards::SCHEMA)
            .map_err(storage("create schema"))?;
        conn.execute_batch(super::alerts::SCHEMA)
            .map_err(storage("create schema"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(storage("set user_version"))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn applied_index(&self) -> Result<u64, MetaError> {
        let v: Option<i64> = self
            .conn()
            .query_row(
                "SELECT value FROM meta_state WHERE key = 'applied_index'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage("read applied index"))?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Applies `cmd` at log `index`, atomically with recording the index. Indices at or below
    /// the applied one are skipped. A refused command changes nothing (but still consumes its
    /// index, as a replicated log entry would).
    pub fn apply(&self, index: u64, cmd: &MetaCommand) -> Result<MetaOutcome, MetaError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(storage("begin"))?;
        let applied: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta_state WHERE key = 'applied_index'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(storage("read applied index"))?;
        if index <= applied as u64 {
            return Ok(MetaOutcome::AlreadyApplied);
        }
        let result = apply_in(&tx, cmd);
        tx.execute(
            "INSERT INTO meta_state (key, value) VALUES ('applied_index', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![index as i64],
        )
        .map_err(storage("record applied index"))?;
        match result {
            Ok(()) => {
                tx.commit().map_err(storage("commit"))?;
                Ok(MetaOutcome::Done)
            }
            Err(e) => {
                // Undo the change but keep the index consumed.
                drop(tx);
                conn.execute(
                    "INSERT INTO meta_state (key, value) VALUES ('applied_index', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![index as i64],
                )
                .map_err(storage("record applied index"))?;
                Err(e)
            }
        }
    }

    pub fn user_count(&self) -> Result<u64, MetaError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
            .map_err(storage("count users"))?;
        Ok(n as u64)
    }

    fn user_where(
        &self,
        clause: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<UserRow>, MetaError> {
        self.conn()
            .query_row(
                &format!("SELECT id, username, password_hash, role, disabled, created_ms FROM users WHERE {clause}"),
                [arg],
                user_row,
            )
            .optional()
            .map_err(storage("read user"))
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, MetaError> {
        self.user_where("username = ?1", &name)
    }

    pub fn user_by_id(&self, id: u64) -> Result<Option<UserRow>, MetaError> {
        self.user_where("id = ?1", &(id as i64))
    }

    pub fn users(&self) -> Result<Vec<UserRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, username, password_hash, role, disabled, created_ms FROM users ORDER BY username")
            .map_err(storage("list users"))?;
        let rows = stmt
            .query_map([], user_row)
            .map_err(storage("list users"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list users"))
    }

    /// The user of a live session: `(user, expires_ms)`.
    pub fn session(&self, token_hash: &str) -> Result<Option<(u64, i64)>, MetaError> {
        self.conn()
            .query_row(
                "SELECT user_id, expires_ms FROM sessions WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
            .map_err(storage("read session"))
    }

    pub fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRow>, MetaError> {
        self.conn()
            .query_row(
                "SELECT id, name, owner_user_id, scopes, created_ms FROM api_keys WHERE key_hash = ?1",
                [key_hash],
                key_row,
            )
            .optional()
            .map_err(storage("read API key"))
    }

    pub fn api_keys(&self, owner: Option<u64>) -> Result<Vec<KeyRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, name, owner_user_id, scopes, created_ms FROM api_keys
                 WHERE ?1 IS NULL OR owner_user_id = ?1 ORDER BY created_ms, id",
            )
            .map_err(storage("list API keys"))?;
        let rows = stmt
            .query_map([owner.map(|o| o as i64)], key_row)
            .map_err(storage("list API keys"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list API keys"))
    }
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get::<_, i64>(0)? as u64,
        username: r.get(1)?,
        password_hash: r.get(2)?,
        role: parse_role(r.get(3)?),
        disabled: r.get::<_, i64>(4)? != 0,
        created_ms: r.get(5)?,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        owner_user_id: r.get::<_, i64>(2)? as u64,
        scopes: parse_scopes(&r.get::<_, String>(3)?),
        created_ms: r.get(4)?,
    })
}

/// The optimistic-concurrency precondition of a versioned row (`dashboards`, `alert_rules`):
/// `base` is the version a change was computed from, `None` for a new row.
pub(super) fn check_version(
    tx: &Transaction<'_>,
    table: &str,
    what: &'static str,
    id: u64,
    base: Option<u64>,
) -> Result<(), MetaError> {
    let current: Option<i64> = tx
        .query_row(
            &format!("SELECT version FROM {table} WHERE id = ?1"),
            [id as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage("read version"))?;
    match (current.map(|v| v as u64), base) {
        (None, None) => Ok(()),
        (Some(c), Some(b)) if c == b => Ok(()),
        (None, Some(_)) => Err(MetaError::NotFound {
            what,
            id: id.to_string(),
        }),
        (Some(_), None) => Err(MetaError::Conflict(format!("{what} {id} already exists"))),
        (Some(c), Some(b)) => Err(MetaError::Conflict(format!(
            "{what} {id} changed meanwhile (version {c}, the change was based on {b}); reload it"
        ))),
    }
}

/// A user's `(role, disabled)`, or not found.
fn user_role(tx: &Transaction<'_>, id: u64) -> Result<(String, i64), MetaError> {
    tx.query_row(
        "SELECT role, disabled FROM users WHERE id = ?1",
        [id as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(storage("read user"))?
    .ok_or(MetaError::NotFound {
        what: "user",
        id: id.to_string(),
    })
}

fn enabled_admins_except(tx: &Transaction<'_>, id: u64) -> Result<i64, MetaError> {
    tx.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?1",
        [id as i64],
        |r| r.get(0),
    )
    .map_err(storage("count admins"))
}

fn apply_in(tx: &Transaction<'_>, cmd: &MetaCommand) -> Result<(), MetaError> {
    match cmd {
        MetaCommand::CreateUser {
            id,
            username,
            password_hash,
            role,
            created_ms,
        } => {
            let taken: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1 OR id = ?2)",
                    params![username, *id as i64],
                    |r| r.get(0),
                )
                .map_err(storage("check username"))?;
            if taken {
                return Err(MetaError::Conflict(format!(
                    "user {username:?} already exists"
                )));
            }
            tx.execute(
                "INSERT INTO users (id, username, password_hash, role, disabled, created_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                params![*id as i64, username, password_hash, role.as_str(), created_ms],
            )
            .map_err(storage("insert user"))?;
        }
        MetaCommand::UpdateUser {
            id,
            password_hash,
            role,
            disabled,
        } => {
            let (cur_role, cur_disabled) = user_role(tx, *id)?;
            let was_admin = cur_role == "admin" && cur_disabled == 0;
            let stays_admin = role.map_or(cur_role == "admin", |r| r == Role::Admin)
                && !disabled.unwrap_or(cur_disabled != 0);
            if was_admin && !stays_admin && enabled_admins_except(tx, *id)? == 0 {
                return Err(MetaError::LastAdmin);
            }
            if let Some(h) = password_hash {
                tx.execute(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2",
                    params![h, *id as i64],
                )
                .map_err(storage("update password"))?;
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", [*id as i64])
                    .map_err(storage("end sessions"))?;
            }
            if let Some(r) = role {
                tx.execute(
                    "UPDATE users SET role = ?1 WHERE id = ?2",
                    params![r.as_str(), *id as i64],
                )
                .map_err(storage("update role"))?;
            }
            if let Some(d) = disabled {
                tx.execute(
                    "UPDATE users SET disabled = ?1 WHERE id = ?2",
                    params![*d as i64, *id as i64],
                )
                .map_err(storage("update disabled"))?;
                if *d {
                    tx.execute("DELETE FROM sessions WHERE user_id = ?1", [*id as i64])
                        .map_err(storage("end sessions"))?;
                }
            }
        }
        MetaCommand::DeleteUser { id } => {
            let (role, disabled) = user_role(tx, *id)?;
            if role == "admin" && disabled == 0 && enabled_admins_except(tx, *id)? == 0 {
                return Err(MetaError::LastAdmin);
            }
            for sql in [
                "DELETE FROM sessions WHERE user_id = ?1",
                "DELETE FROM api_keys WHERE owner_user_id = ?1",
                "DELETE FROM users WHERE id = ?1",
            ] {
                tx.execute(sql, [*id as i64])
                    .map_err(storage("delete user"))?;
            }
        }
        MetaCommand::CreateSession {
            token_hash,
            user_id,
            created_ms,
            expires_ms,
        } => {
            tx.execute(
                "INSERT INTO sessions (token_hash, user_id, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, *user_id as i64, created_ms, expires_ms],
            )
            .map_err(storage("insert session"))?;
        }
        MetaCommand::DeleteSession { token_hash } => {
            tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])
                .map_err(storage("delete session"))?;
        }
        MetaCommand::DeleteExpiredSessions { before_ms } => {
            tx.execute("DELETE FROM sessions WHERE expires_ms < ?1", [before_ms])
                .map_err(storage("delete expired sessions"))?;
        }
        MetaCommand::CreateApiKey {
            id,
            name,
            key_hash,
            owner_user_id,
            scopes,
            created_ms,
        } => {
            tx.execute(
                "INSERT INTO api_keys (id, name, key_hash, owner_user_id, scopes, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![*id as i64, name, key_hash, *owner_user_id as i64, scopes_text(scopes), created_ms],
            )
            .map_err(storage("insert API key"))?;
        }
        MetaCommand::PutDashboard { .. }
        | MetaCommand::DeleteDashboard { .. }
        | MetaCommand::PutPanel { .. }
        | MetaCommand::DeletePanel { .. }
        | MetaCommand::ImportDashboard { .. } => super::dashboards::apply(tx, cmd)?,
        MetaCommand::PutAlertRule { .. }
        | MetaCommand::DeleteAlertRule { .. }
        | MetaCommand::AlertTransition { .. }
        | MetaCommand::AlertDeadLetter { .. } => super::alerts::apply(tx, cmd)?,
        MetaCommand::DeleteApiKey { id } => {
            let n = tx
                .execute("DELETE FROM api_keys WHERE id = ?1", [*id as i64])
                .map_err(storage("delete API key"))?;
            if n == 0 {
                return Err(MetaError::NotFound {
                    what: "API key",
                    id: id.to_string(),
                });
            }
        }
    }
    Ok(())
}
