//! The SQLite store behind metadata, and `apply`.
//!
//! The connection sits behind a std `Mutex`, not a tokio one: it is only used in synchronous
//! code, never held across `.await`, and SQLite calls are short.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::auth::{Role, Scope};
use super::command::{MetaCommand, MetaOutcome};
use protocol::cluster::Refusal;

/// 1: users, sessions, API keys. 2: dashboards and visualizations. 3: alert rules, states,
/// events, dead letters. 4: the metadata Raft group's bookkeeping, the command inbox. (Each
/// version only adds tables.)
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raft_state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
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
    NotFound { what: String, id: String },
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
    /// The metadata group could not take the change (no leader, cut off); retry.
    #[error("metadata: {0}")]
    Unavailable(String),
    /// Applying the command failed on the node that leads the metadata group.
    #[error("metadata: {0}")]
    Failed(String),
}

impl From<MetaError> for Refusal {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound { what, id } => Refusal::NotFound { what, id },
            MetaError::Conflict(m) => Refusal::Conflict(m),
            MetaError::LastAdmin => Refusal::LastAdmin,
            other => Refusal::Failed(other.to_string()),
        }
    }
}

impl From<Refusal> for MetaError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound { what, id } => MetaError::NotFound { what, id },
            Refusal::Conflict(m) => MetaError::Conflict(m),
            Refusal::LastAdmin => MetaError::LastAdmin,
            Refusal::Failed(m) => MetaError::Failed(m),
        }
    }
}

impl MetaError {
    pub fn status(&self) -> u16 {
        match self {
            MetaError::NotFound { .. } => 404,
            MetaError::Conflict(_) | MetaError::LastAdmin => 409,
            MetaError::Invalid { .. } => 400,
            MetaError::BadCredentials => 401,
            MetaError::Forbidden(_) => 403,
            MetaError::Storage { .. } | MetaError::Corrupt { .. } | MetaError::Failed(_) => 500,
            MetaError::Unavailable(_) => 503,
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
    /// The store's file (`None` in memory): snapshots are staged beside it.
    path: Option<PathBuf>,
}

/// A command left in the inbox, or why it does not parse.
pub type InboxCommand = Result<MetaCommand, String>;

/// Tables that belong to this node, not to the replicated state: a snapshot installed from
/// another node leaves them alone.
const LOCAL_TABLES: [&str; 1] = ["inbox"];

/// Every table of `schema` (but SQLite's own) with its columns, in order.
fn table_columns(conn: &Connection, schema: &str) -> Result<Vec<(String, Vec<String>)>, MetaError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ))
        .map_err(storage("list tables"))?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(storage("list tables"))?
        .collect::<Result<_, _>>()
        .map_err(storage("list tables"))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut stmt = conn
            .prepare(&format!("PRAGMA {schema}.table_info(\"{name}\")"))
            .map_err(storage("list columns"))?;
        let columns: Vec<String> = stmt
            .query_map([], |r| r.get(1))
            .map_err(storage("list columns"))?
            .collect::<Result<_, _>>()
            .map_err(storage("list columns"))?;
        out.push((name, columns));
    }
    Ok(out)
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
        Self::init(conn, Some(path.to_path_buf())).map_err(|e| match e {
            MetaError::Storage { op, source } => corrupt(format!("{op}: {source}")),
            other => other,
        })
    }

    pub fn open_in_memory() -> Result<Self, MetaError> {
        Self::init(Connection::open_in_memory().map_err(storage("open"))?, None)
    }

    fn init(conn: Connection, path: Option<PathBuf>) -> Result<Self, MetaError> {
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
        // A store written before the metadata group existed counted its own indices: the
        // group's log starts at 1 again, so its data stays and the count starts over.
        conn.execute(
            "DELETE FROM meta_state WHERE key = 'applied_index'
             AND NOT EXISTS (SELECT 1 FROM raft_state WHERE key = 'meta')",
            [],
        )
        .map_err(storage("adopt a store from before replication"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(storage("set user_version"))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
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

    /// Applies the metadata group's log entry at `index` — a command, or `None` for Raft's own
    /// entries — in one transaction with recording the index and the group's bookkeeping
    /// (`raft`, a `cluster::raft::RaftMeta`). Indices at or below the applied one are skipped.
    /// A refused command changes nothing but still consumes its index. `Err` is a storage
    /// failure: nothing was recorded.
    pub fn apply(
        &self,
        index: u64,
        cmd: Option<&MetaCommand>,
        raft: &[u8],
    ) -> Result<MetaOutcome, MetaError> {
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(storage("begin"))?;
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
        let mut outcome = MetaOutcome::Done;
        if let Some(cmd) = cmd {
            let mut sp = tx.savepoint().map_err(storage("savepoint"))?;
            match apply_in(&sp, cmd) {
                Ok(()) => sp.commit().map_err(storage("release savepoint"))?,
                Err(e) => {
                    sp.rollback().map_err(storage("roll back savepoint"))?;
                    outcome = MetaOutcome::Refused(e);
                }
            }
        }
        tx.execute(
            "INSERT INTO meta_state (key, value) VALUES ('applied_index', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![index as i64],
        )
        .map_err(storage("record applied index"))?;
        tx.execute(
            "INSERT INTO raft_state (key, value) VALUES ('meta', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![raft],
        )
        .map_err(storage("record the group's state"))?;
        tx.commit().map_err(storage("commit"))?;
        Ok(outcome)
    }

    /// The group's bookkeeping as of the last applied entry (empty before the first).
    pub fn raft_meta(&self) -> Result<Vec<u8>, MetaError> {
        Self::raft_meta_in(&self.conn())
    }

    fn raft_meta_in(conn: &Connection) -> Result<Vec<u8>, MetaError> {
        let v: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM raft_state WHERE key = 'meta'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(storage("read the group's state"))?;
        Ok(v.unwrap_or_default())
    }

    /// A copy of the whole store as one SQLite file's bytes, with the group's bookkeeping it
    /// reflects (read under the same lock, so they agree): a Raft snapshot.
    pub fn snapshot(&self) -> Result<(Vec<u8>, Vec<u8>), MetaError> {
        let tmp = self.scratch_file("snapshot");
        let conn = self.conn();
        let raft = Self::raft_meta_in(&conn)?;
        let _ = std::fs::remove_file(&tmp);
        conn.execute("VACUUM INTO ?1", [tmp.to_string_lossy()])
            .map_err(storage("copy the store (VACUUM INTO)"))?;
        drop(conn);
        let bytes = std::fs::read(&tmp);
        let _ = std::fs::remove_file(&tmp);
        let bytes = bytes.map_err(|e| MetaError::Corrupt {
            path: tmp.clone(),
            reason: format!("read the copy: {e}"),
        })?;
        Ok((bytes, raft))
    }

    /// Replaces every table's rows with those of a snapshot (the bytes of a store file, from
    /// [`MetaStore::snapshot`] on another node), in one transaction, and returns the group's
    /// bookkeeping it carries. Tables the snapshot lacks (an older schema) end up empty.
    pub fn install(&self, bytes: &[u8]) -> Result<Vec<u8>, MetaError> {
        let tmp = self.scratch_file("install");
        let corrupt = |reason: String| MetaError::Corrupt {
            path: tmp.clone(),
            reason,
        };
        std::fs::write(&tmp, bytes).map_err(|e| corrupt(format!("write: {e}")))?;
        let result = self.install_from(&tmp);
        let _ = std::fs::remove_file(&tmp);
        result.map_err(|e| match e {
            MetaError::Storage { op, source } => corrupt(format!("{op}: {source}")),
            other => other,
        })
    }

    fn install_from(&self, file: &Path) -> Result<Vec<u8>, MetaError> {
        let mut conn = self.conn();
        conn.execute("ATTACH DATABASE ?1 AS snap", [file.to_string_lossy()])
            .map_err(storage("attach the snapshot"))?;
        let copied = (|| {
            let version: i64 = conn
                .query_row("PRAGMA snap.user_version", [], |r| r.get(0))
                .map_err(storage("read the snapshot's schema version"))?;
            if version > SCHEMA_VERSION {
                return Err(MetaError::Invalid {
                    field: "snapshot",
                    reason: format!(
                        "schema version {version}; this binary knows up to {SCHEMA_VERSION}"
                    ),
                });
            }
            let tables = table_columns(&conn, "main")?;
            let theirs = table_columns(&conn, "snap")?;
            let tx = conn.transaction().map_err(storage("begin"))?;
            for (table, columns) in &tables {
                if LOCAL_TABLES.contains(&table.as_str()) {
                    continue;
                }
                tx.execute(&format!("DELETE FROM main.\"{table}\""), [])
                    .map_err(storage("clear a table"))?;
                let Some(have) = theirs.iter().find(|(t, _)| t == table).map(|(_, c)| c) else {
                    continue;
                };
                let shared: Vec<String> = columns
                    .iter()
                    .filter(|c| have.contains(c))
                    .map(|c| format!("\"{c}\""))
                    .collect();
                let list = shared.join(", ");
                tx.execute(
                    &format!(
                        "INSERT INTO main.\"{table}\" ({list}) SELECT {list} FROM snap.\"{table}\""
                    ),
                    [],
                )
                .map_err(storage("copy a table"))?;
            }
            let raft = Self::raft_meta_in(&tx)?;
            tx.commit().map_err(storage("commit"))?;
            Ok(raft)
        })();
        let detached = conn
            .execute("DETACH DATABASE snap", [])
            .map_err(storage("detach the snapshot"));
        let raft = copied?;
        detached?;
        Ok(raft)
    }

    /// Leaves a command for the node to propose (`pulseboard user add` runs in another
    /// process: it shares the node's store file, not its Raft group). Returns its number.
    pub fn inbox_push(&self, cmd: &MetaCommand, now_ms: i64) -> Result<i64, MetaError> {
        let text = serde_json::to_string(cmd).map_err(|e| MetaError::Invalid {
            field: "command",
            reason: e.to_string(),
        })?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO inbox (command, created_ms) VALUES (?1, ?2)",
            params![text, now_ms],
        )
        .map_err(storage("queue a command"))?;
        Ok(conn.last_insert_rowid())
    }

    /// Commands waiting in the inbox, oldest first (one that does not parse is an `Err`
    /// naming why, to be recorded as its outcome).
    pub fn inbox_pending(&self) -> Result<Vec<(i64, InboxCommand)>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, command FROM inbox WHERE done = 0 ORDER BY id LIMIT 64")
            .map_err(storage("read the inbox"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(storage("read the inbox"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage("read the inbox"))?;
        Ok(rows
            .into_iter()
            .map(|(id, text)| (id, serde_json::from_str(&text).map_err(|e| e.to_string())))
            .collect())
    }

    pub fn inbox_done(&self, id: i64, error: Option<&str>) -> Result<(), MetaError> {
        self.conn()
            .execute(
                "UPDATE inbox SET done = 1, error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .map_err(storage("record an inbox outcome"))?;
        Ok(())
    }

    /// The outcome of inbox command `id`: `None` while waiting, then `Ok` or the error.
    pub fn inbox_outcome(&self, id: i64) -> Result<Option<Result<(), String>>, MetaError> {
        let row: Option<(i64, Option<String>)> = self
            .conn()
            .query_row("SELECT done, error FROM inbox WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(storage("read an inbox outcome"))?;
        Ok(match row {
            Some((1, None)) => Some(Ok(())),
            Some((1, Some(e))) => Some(Err(e)),
            _ => None,
        })
    }

    /// A file beside the store (or in the temporary directory for an in-memory store).
    fn scratch_file(&self, what: &str) -> PathBuf {
        let name = format!(
            "meta.{what}.{}.{:x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        );
        match &self.path {
            Some(p) => p.with_file_name(name),
            None => std::env::temp_dir().join(name),
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
    tx: &Connection,
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
            what: what.into(),
            id: id.to_string(),
        }),
        (Some(_), None) => Err(MetaError::Conflict(format!("{what} {id} already exists"))),
        (Some(c), Some(b)) => Err(MetaError::Conflict(format!(
            "{what} {id} changed meanwhile (version {c}, the change was based on {b}); reload it"
        ))),
    }
}

/// A user's `(role, disabled)`, or not found.
fn user_role(tx: &Connection, id: u64) -> Result<(String, i64), MetaError> {
    tx.query_row(
        "SELECT role, disabled FROM users WHERE id = ?1",
        [id as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(storage("read user"))?
    .ok_or(MetaError::NotFound {
        what: "user".into(),
        id: id.to_string(),
    })
}

fn enabled_admins_except(tx: &Connection, id: u64) -> Result<i64, MetaError> {
    tx.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?1",
        [id as i64],
        |r| r.get(0),
    )
    .map_err(storage("count admins"))
}

fn apply_in(tx: &Connection, cmd: &MetaCommand) -> Result<(), MetaError> {
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
                    what: "API key".into(),
                    id: id.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, name: &str) -> MetaCommand {
        MetaCommand::CreateUser {
            id,
            username: name.into(),
            password_hash: "h".into(),
            role: Role::Viewer,
            created_ms: 1,
        }
    }

    #[test]
    fn a_snapshot_installs_whole_on_another_store_and_keeps_its_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let a = MetaStore::open(&dir.path().join("a.sqlite")).unwrap();
        a.apply(1, Some(&user(1, "ann")), b"one").unwrap();
        a.apply(2, None, b"two").unwrap();
        a.apply(3, Some(&user(2, "bob")), b"three").unwrap();
        let (bytes, raft) = a.snapshot().unwrap();
        assert_eq!(raft, b"three");

        let b = MetaStore::open(&dir.path().join("b.sqlite")).unwrap();
        b.apply(1, Some(&user(9, "stale")), b"old").unwrap();
        let queued = b.inbox_push(&user(5, "eve"), 7).unwrap();
        assert_eq!(b.install(&bytes).unwrap(), b"three");
        let names: Vec<String> = b.users().unwrap().into_iter().map(|u| u.username).collect();
        assert_eq!(names, ["ann", "bob"]);
        assert_eq!(b.applied_index().unwrap(), 3);
        assert_eq!(b.raft_meta().unwrap(), b"three");
        // The inbox belongs to the node, not to the replicated state.
        assert_eq!(b.inbox_pending().unwrap().len(), 1);
        assert_eq!(b.inbox_outcome(queued).unwrap(), None);
        // What a snapshot is not is refused, and the store is left as it was.
        assert!(b.install(b"not a database").is_err());
        assert_eq!(b.users().unwrap().len(), 2);
        // Entries after the snapshot apply on top.
        b.apply(4, Some(&user(3, "cy")), b"four").unwrap();
        assert_eq!(b.users().unwrap().len(), 3);
    }
}
