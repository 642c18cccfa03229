//! Dashboards and their visualizations (panels): records, their SQL, and the service calls
//! that check permissions and build commands.
//!
//! A dashboard's `layout` is a JSON object; its `panels` array places visualizations on the
//! grid (`{"id", "x", "y", "w", "h"}`), so one drag is one `PUT` of the dashboard. A panel's
//! `query` and `options` are JSON objects too. JSON travels inside commands as text: the
//! command codec (bincode) cannot carry self-describing values.
//!
//! Who may do what: every signed-in reader reads every dashboard (a team tool), and anyone
//! reads an `is_public` one; editors create dashboards and change their own and `shared`
//! ones; admins change everything. Changes carry the version they were based on, so two
//! editors saving at once get a `409` instead of silently overwriting each other.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::auth::{Principal, Role};
use super::command::MetaCommand;
use super::service::{random_id, require_editor, MetaService};
use super::store::{storage, MetaError};

/// What is stored for a dashboard; also the payload of [`MetaCommand::PutDashboard`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DashboardRecord {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub owner_user_id: u64,
    pub is_public: bool,
    pub shared: bool,
    /// A JSON object.
    pub layout: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Starts at 1; each change adds one.
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PanelRecord {
    pub id: u64,
    pub dashboard_id: u64,
    pub title: String,
    pub chart_type: String,
    /// A JSON object: the panel's query (metric, aggregation, granularity, …).
    pub query: String,
    /// A JSON object: display options.
    pub options: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dashboards (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    owner_user_id INTEGER NOT NULL,
    is_public INTEGER NOT NULL,
    shared INTEGER NOT NULL,
    layout TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS visualizations (
    id INTEGER PRIMARY KEY,
    dashboard_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    chart_type TEXT NOT NULL,
    query TEXT NOT NULL,
    options TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS visualizations_dashboard ON visualizations(dashboard_id);
";

/// The chart types the UI draws (SPEC §8).
pub const CHART_TYPES: &[&str] = &[
    "line", "area", "bar", "scatter", "pie", "donut", "stat", "gauge", "table", "heatmap",
];

const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 4_000;
const MAX_JSON: usize = 64 * 1024;
const MAX_PANELS: usize = 200;

fn not_found(what: &'static str, id: u64) -> MetaError {
    MetaError::NotFound {
        what: what.into(),
        id: id.to_string(),
    }
}

// ---- apply (called from `store::apply_in`, inside its transaction) ----

fn put_dashboard_row(tx: &Connection, d: &DashboardRecord) -> Result<(), MetaError> {
    tx.execute(
        "INSERT INTO dashboards (id, name, description, owner_user_id, is_public, shared, layout, created_ms, updated_ms, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, description = excluded.description,
           owner_user_id = excluded.owner_user_id, is_public = excluded.is_public,
           shared = excluded.shared, layout = excluded.layout, updated_ms = excluded.updated_ms,
           version = excluded.version",
        params![
            d.id as i64,
            d.name,
            d.description,
            d.owner_user_id as i64,
            d.is_public,
            d.shared,
            d.layout,
            d.created_ms,
            d.updated_ms,
            d.version as i64
        ],
    )
    .map_err(storage("write dashboard"))?;
    Ok(())
}

fn put_panel_row(tx: &Connection, p: &PanelRecord) -> Result<(), MetaError> {
    tx.execute(
        "INSERT INTO visualizations (id, dashboard_id, title, chart_type, query, options, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET title = excluded.title, chart_type = excluded.chart_type,
           query = excluded.query, options = excluded.options, updated_ms = excluded.updated_ms",
        params![
            p.id as i64,
            p.dashboard_id as i64,
            p.title,
            p.chart_type,
            p.query,
            p.options,
            p.created_ms,
            p.updated_ms
        ],
    )
    .map_err(storage("write visualization"))?;
    Ok(())
}

fn check_version(tx: &Connection, id: u64, base: Option<u64>) -> Result<(), MetaError> {
    super::store::check_version(tx, "dashboards", "dashboard", id, base)
}

pub(super) fn apply(tx: &Connection, cmd: &MetaCommand) -> Result<(), MetaError> {
    match cmd {
        MetaCommand::PutDashboard {
            dashboard,
            base_version,
        } => {
            check_version(tx, dashboard.id, *base_version)?;
            put_dashboard_row(tx, dashboard)
        }
        MetaCommand::DeleteDashboard { id } => {
            let n = tx
                .execute("DELETE FROM dashboards WHERE id = ?1", [*id as i64])
                .map_err(storage("delete dashboard"))?;
            if n == 0 {
                return Err(not_found("dashboard", *id));
            }
            tx.execute(
                "DELETE FROM visualizations WHERE dashboard_id = ?1",
                [*id as i64],
            )
            .map_err(storage("delete visualizations"))?;
            Ok(())
        }
        MetaCommand::PutPanel { panel, dashboard } => {
            check_version(tx, dashboard.id, Some(dashboard.version - 1))?;
            let owner: Option<i64> = tx
                .query_row(
                    "SELECT dashboard_id FROM visualizations WHERE id = ?1",
                    [panel.id as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage("read visualization"))?;
            if owner.is_some_and(|d| d as u64 != panel.dashboard_id) {
                return Err(MetaError::Conflict(format!(
                    "visualization {} belongs to another dashboard",
                    panel.id
                )));
            }
            put_panel_row(tx, panel)?;
            put_dashboard_row(tx, dashboard)
        }
        MetaCommand::DeletePanel { id, dashboard } => {
            check_version(tx, dashboard.id, Some(dashboard.version - 1))?;
            let n = tx
                .execute(
                    "DELETE FROM visualizations WHERE id = ?1 AND dashboard_id = ?2",
                    params![*id as i64, dashboard.id as i64],
                )
                .map_err(storage("delete visualization"))?;
            if n == 0 {
                return Err(not_found("visualization", *id));
            }
            put_dashboard_row(tx, dashboard)
        }
        MetaCommand::ImportDashboard { dashboard, panels } => {
            check_version(tx, dashboard.id, None)?;
            put_dashboard_row(tx, dashboard)?;
            for p in panels {
                put_panel_row(tx, p)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---- reads ----

fn dashboard_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DashboardRecord> {
    Ok(DashboardRecord {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        description: r.get(2)?,
        owner_user_id: r.get::<_, i64>(3)? as u64,
        is_public: r.get(4)?,
        shared: r.get(5)?,
        layout: r.get(6)?,
        created_ms: r.get(7)?,
        updated_ms: r.get(8)?,
        version: r.get::<_, i64>(9)? as u64,
    })
}

fn panel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PanelRecord> {
    Ok(PanelRecord {
        id: r.get::<_, i64>(0)? as u64,
        dashboard_id: r.get::<_, i64>(1)? as u64,
        title: r.get(2)?,
        chart_type: r.get(3)?,
        query: r.get(4)?,
        options: r.get(5)?,
        created_ms: r.get(6)?,
        updated_ms: r.get(7)?,
    })
}

const DASHBOARD_COLUMNS: &str =
    "id, name, description, owner_user_id, is_public, shared, layout, created_ms, updated_ms, version";
const PANEL_COLUMNS: &str =
    "id, dashboard_id, title, chart_type, query, options, created_ms, updated_ms";

impl super::store::MetaStore {
    pub fn dashboards(&self) -> Result<Vec<(DashboardRecord, u64)>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {DASHBOARD_COLUMNS}, (SELECT COUNT(*) FROM visualizations v WHERE v.dashboard_id = d.id)
                 FROM dashboards d ORDER BY name, id"
            ))
            .map_err(storage("list dashboards"))?;
        let rows = stmt
            .query_map([], |r| Ok((dashboard_row(r)?, r.get::<_, i64>(10)? as u64)))
            .map_err(storage("list dashboards"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list dashboards"))
    }

    pub fn dashboard(&self, id: u64) -> Result<Option<DashboardRecord>, MetaError> {
        self.conn()
            .query_row(
                &format!("SELECT {DASHBOARD_COLUMNS} FROM dashboards WHERE id = ?1"),
                [id as i64],
                dashboard_row,
            )
            .optional()
            .map_err(storage("read dashboard"))
    }

    pub fn panels(&self, dashboard_id: u64) -> Result<Vec<PanelRecord>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {PANEL_COLUMNS} FROM visualizations WHERE dashboard_id = ?1 ORDER BY created_ms, id"
            ))
            .map_err(storage("list visualizations"))?;
        let rows = stmt
            .query_map([dashboard_id as i64], panel_row)
            .map_err(storage("list visualizations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list visualizations"))
    }
}

// ---- validation ----

fn invalid(field: &'static str, reason: impl Into<String>) -> MetaError {
    MetaError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_text(field: &'static str, s: &str, max: usize, required: bool) -> Result<(), MetaError> {
    if required && s.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(invalid(field, format!("at most {max} bytes")));
    }
    Ok(())
}

fn object_text(field: &'static str, v: &Value) -> Result<String, MetaError> {
    if !v.is_object() {
        return Err(invalid(field, "must be a JSON object"));
    }
    let text = v.to_string();
    if text.len() > MAX_JSON {
        return Err(invalid(field, format!("at most {MAX_JSON} bytes of JSON")));
    }
    Ok(text)
}

fn check_chart_type(t: &str) -> Result<(), MetaError> {
    if CHART_TYPES.contains(&t) {
        Ok(())
    } else {
        Err(invalid(
            "type",
            format!(
                "{t:?} is not a chart type; use one of {}",
                CHART_TYPES.join(", ")
            ),
        ))
    }
}

/// A panel query must name a metric and parse as a live subscription would.
fn check_query(q: &Value) -> Result<String, MetaError> {
    let text = object_text("query", q)?;
    crate::query::PanelQuery::from_json(q).map_err(|e| invalid("query", e))?;
    Ok(text)
}

/// `layout.panels`, when present, is an array of `{"id", "x", "y", "w", "h"}` with
/// non-negative integers; other keys of the layout are the UI's own.
fn check_layout(layout: &Value) -> Result<String, MetaError> {
    let text = object_text("layout", layout)?;
    if let Some(panels) = layout.get("panels") {
        let list = panels
            .as_array()
            .ok_or_else(|| invalid("layout", "panels must be an array"))?;
        if list.len() > MAX_PANELS {
            return Err(invalid("layout", format!("at most {MAX_PANELS} panels")));
        }
        for (i, p) in list.iter().enumerate() {
            for key in ["id", "x", "y", "w", "h"] {
                if p.get(key).and_then(Value::as_u64).is_none() {
                    return Err(invalid(
                        "layout",
                        format!("panels[{i}].{key} must be a non-negative integer"),
                    ));
                }
            }
        }
    }
    Ok(text)
}

// ---- views ----

fn parse_object(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

pub fn dashboard_view(d: &DashboardRecord) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "owner_user_id": d.owner_user_id,
        "is_public": d.is_public,
        "shared": d.shared,
        "layout": parse_object(&d.layout),
        "created_ms": d.created_ms,
        "updated_ms": d.updated_ms,
        "version": d.version,
    })
}

pub fn panel_view(p: &PanelRecord) -> Value {
    json!({
        "id": p.id,
        "dashboard_id": p.dashboard_id,
        "title": p.title,
        "type": p.chart_type,
        "query": parse_object(&p.query),
        "options": parse_object(&p.options),
        "created_ms": p.created_ms,
        "updated_ms": p.updated_ms,
    })
}

// ---- request bodies ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_public: Option<bool>,
    pub shared: Option<bool>,
    pub layout: Option<Value>,
    /// For updates: the version the client edited; a mismatch is a `409`.
    pub version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelInput {
    pub title: Option<String>,
    #[serde(rename = "type")]
    pub chart_type: Option<String>,
    pub query: Option<Value>,
    pub options: Option<Value>,
    /// Where to put a new panel on the grid; by default below the others.
    pub position: Option<Position>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub x: u64,
    pub y: u64,
    pub w: u64,
    pub h: u64,
}

/// The export document: ids left out, panels placed by their index in `visualizations`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardDocument {
    pub pulseboard_dashboard: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub is_public: bool,
    #[serde(default = "yes")]
    pub shared: bool,
    /// The layout without `panels` (those travel as each visualization's `position`).
    #[serde(default = "empty_object")]
    pub layout: Value,
    #[serde(default)]
    pub visualizations: Vec<PanelDocument>,
}

fn yes() -> bool {
    true
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelDocument {
    pub title: String,
    #[serde(rename = "type")]
    pub chart_type: String,
    pub query: Value,
    #[serde(default = "empty_object")]
    pub options: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

const DOCUMENT_VERSION: u32 = 1;

// ---- the service ----

fn may_change(p: &Principal, d: &DashboardRecord) -> Result<(), MetaError> {
    require_editor(p, "dashboards")?;
    if p.role == Role::Admin || d.owner_user_id == p.user_id || d.shared {
        Ok(())
    } else {
        Err(MetaError::Forbidden(format!(
            "dashboard {} belongs to another user and is not shared; only its owner or an admin may change it",
            d.id
        )))
    }
}

fn panels_of(layout: &Value) -> Vec<Value> {
    layout
        .get("panels")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn with_panels(layout: &Value, panels: Vec<Value>) -> Value {
    let mut map = layout.as_object().cloned().unwrap_or_else(Map::new);
    map.insert("panels".into(), Value::Array(panels));
    Value::Object(map)
}

/// The grid position for a new panel: `want`, or full-height-6 half-width below the others.
fn place(layout: &Value, id: u64, want: Option<Position>) -> Value {
    let mut panels = panels_of(layout);
    let bottom = panels
        .iter()
        .map(|p| p["y"].as_u64().unwrap_or(0) + p["h"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let pos = want.unwrap_or(Position {
        x: 0,
        y: bottom,
        w: 6,
        h: 6,
    });
    panels.push(json!({"id": id, "x": pos.x, "y": pos.y, "w": pos.w, "h": pos.h}));
    with_panels(layout, panels)
}

impl MetaService {
    /// Linearizable: includes every change acknowledged anywhere in the cluster before.
    pub async fn list_dashboards(
        &self,
        caller: Option<&Principal>,
    ) -> Result<Vec<Value>, MetaError> {
        self.group().sync().await?;
        Ok(self
            .store()
            .dashboards()?
            .into_iter()
            .filter(|(d, _)| caller.is_some() || d.is_public)
            .map(|(d, n)| {
                let mut v = dashboard_view(&d);
                v["visualization_count"] = json!(n);
                v
            })
            .collect())
    }

    /// A dashboard with its visualizations; `None` caller = anonymous (public ones only).
    /// Linearizable, like [`MetaService::list_dashboards`].
    pub async fn get_dashboard(
        &self,
        caller: Option<&Principal>,
        id: u64,
    ) -> Result<Value, MetaError> {
        self.group().sync().await?;
        self.dashboard_value(caller, id)
    }

    /// A dashboard as this node's replica has it (after this node's own write, which waited
    /// for its replica to apply it).
    fn dashboard_value(&self, caller: Option<&Principal>, id: u64) -> Result<Value, MetaError> {
        let d = self.readable(caller, id)?;
        let mut v = dashboard_view(&d);
        v["visualizations"] = self.store().panels(id)?.iter().map(panel_view).collect();
        Ok(v)
    }

    fn readable(&self, caller: Option<&Principal>, id: u64) -> Result<DashboardRecord, MetaError> {
        let d = self
            .store()
            .dashboard(id)?
            .ok_or_else(|| not_found("dashboard", id))?;
        // Anonymous callers learn nothing of private dashboards, not even that they exist.
        if caller.is_none() && !d.is_public {
            return Err(not_found("dashboard", id));
        }
        Ok(d)
    }

    pub async fn create_dashboard(
        &self,
        caller: &Principal,
        input: DashboardInput,
        now_ms: i64,
    ) -> Result<Value, MetaError> {
        require_editor(caller, "dashboards")?;
        let name = input.name.unwrap_or_default();
        check_text("name", &name, MAX_NAME, true)?;
        let description = input.description.unwrap_or_default();
        check_text("description", &description, MAX_DESCRIPTION, false)?;
        let layout = input.layout.unwrap_or_else(|| json!({"panels": []}));
        let layout = check_layout(&layout)?;
        let d = DashboardRecord {
            id: random_id(),
            name,
            description,
            owner_user_id: caller.user_id,
            is_public: input.is_public.unwrap_or(false),
            shared: input.shared.unwrap_or(true),
            layout,
            created_ms: now_ms,
            updated_ms: now_ms,
            version: 1,
        };
        self.propose(MetaCommand::PutDashboard {
            dashboard: d.clone(),
            base_version: None,
        })
        .await?;
        self.dashboard_value(Some(caller), d.id)
    }

    pub async fn update_dashboard(
        &self,
        caller: &Principal,
        id: u64,
        input: DashboardInput,
        now_ms: i64,
    ) -> Result<Value, MetaError> {
        let current = self.readable(Some(caller), id)?;
        may_change(caller, &current)?;
        if let Some(v) = input.version {
            if v != current.version {
                return Err(MetaError::Conflict(format!(
                    "dashboard {id} is at version {}, the change was based on {v}; reload it",
                    current.version
                )));
            }
        }
        let mut next = current.clone();
        if let Some(name) = input.name {
            check_text("name", &name, MAX_NAME, true)?;
            next.name = name;
        }
        if let Some(d) = input.description {
            check_text("description", &d, MAX_DESCRIPTION, false)?;
            next.description = d;
        }
        if let Some(layout) = input.layout {
            next.layout = check_layout(&layout)?;
        }
        // Only the owner or an admin may publish, unpublish or stop sharing.
        if input.is_public.is_some() || input.shared.is_some() {
            if caller.role != Role::Admin && caller.user_id != current.owner_user_id {
                return Err(MetaError::Forbidden(
                    "only the owner or an admin may change is_public or shared".into(),
                ));
            }
            next.is_public = input.is_public.unwrap_or(next.is_public);
            next.shared = input.shared.unwrap_or(next.shared);
        }
        next.updated_ms = now_ms;
        next.version = current.version + 1;
        self.propose(MetaCommand::PutDashboard {
            dashboard: next,
            base_version: Some(current.version),
        })
        .await?;
        self.dashboard_value(Some(caller), id)
    }

    pub async fn delete_dashboard(&self, caller: &Principal, id: u64) -> Result<(), MetaError> {
        let current = self.readable(Some(caller), id)?;
        may_change(caller, &current)?;
        self.propose(MetaCommand::DeleteDashboard { id }).await
    }

    pub fn list_panels(
        &self,
        caller: Option<&Principal>,
        id: u64,
    ) -> Result<Vec<Value>, MetaError> {
        self.readable(caller, id)?;
        Ok(self.store().panels(id)?.iter().map(panel_view).collect())
    }

    /// Creates (`panel_id: None`) or updates a visualization; a new one is placed on the grid.
    pub async fn put_panel(
        &self,
        caller: &Principal,
        dashboard_id: u64,
        panel_id: Option<u64>,
        input: PanelInput,
        now_ms: i64,
    ) -> Result<Value, MetaError> {
        let current = self.readable(Some(caller), dashboard_id)?;
        may_change(caller, &current)?;
        let existing = match panel_id {
            Some(pid) => Some(
                self.store()
                    .panels(dashboard_id)?
                    .into_iter()
                    .find(|p| p.id == pid)
                    .ok_or_else(|| not_found("visualization", pid))?,
            ),
            None => None,
        };
        let mut panel = match existing {
            Some(p) => p,
            None => {
                if self.store().panels(dashboard_id)?.len() >= MAX_PANELS {
                    return Err(invalid(
                        "visualizations",
                        format!("a dashboard holds at most {MAX_PANELS}"),
                    ));
                }
                let query = input
                    .query
                    .as_ref()
                    .ok_or_else(|| invalid("query", "required for a new visualization"))?;
                PanelRecord {
                    id: random_id(),
                    dashboard_id,
                    title: String::new(),
                    chart_type: "line".into(),
                    query: check_query(query)?,
                    options: "{}".into(),
                    created_ms: now_ms,
                    updated_ms: now_ms,
                }
            }
        };
        if let Some(t) = input.title {
            check_text("title", &t, MAX_NAME, false)?;
            panel.title = t;
        }
        if let Some(t) = input.chart_type {
            check_chart_type(&t)?;
            panel.chart_type = t;
        }
        if let Some(q) = &input.query {
            panel.query = check_query(q)?;
        }
        if let Some(o) = &input.options {
            panel.options = object_text("options", o)?;
        }
        panel.updated_ms = now_ms;
        let mut dashboard = current.clone();
        let layout = parse_object(&current.layout);
        let placed = panels_of(&layout)
            .iter()
            .any(|p| p["id"].as_u64() == Some(panel.id));
        if !placed || input.position.is_some() {
            let others: Vec<Value> = panels_of(&layout)
                .into_iter()
                .filter(|p| p["id"].as_u64() != Some(panel.id))
                .collect();
            dashboard.layout =
                place(&with_panels(&layout, others), panel.id, input.position).to_string();
        }
        dashboard.updated_ms = now_ms;
        dashboard.version = current.version + 1;
        self.propose(MetaCommand::PutPanel {
            panel: panel.clone(),
            dashboard,
        })
        .await?;
        Ok(panel_view(&panel))
    }

    pub async fn delete_panel(
        &self,
        caller: &Principal,
        dashboard_id: u64,
        panel_id: u64,
        now_ms: i64,
    ) -> Result<(), MetaError> {
        let current = self.readable(Some(caller), dashboard_id)?;
        may_change(caller, &current)?;
        let layout = parse_object(&current.layout);
        let others: Vec<Value> = panels_of(&layout)
            .into_iter()
            .filter(|p| p["id"].as_u64() != Some(panel_id))
            .collect();
        let mut dashboard = current.clone();
        dashboard.layout = with_panels(&layout, others).to_string();
        dashboard.updated_ms = now_ms;
        dashboard.version = current.version + 1;
        self.propose(MetaCommand::DeletePanel {
            id: panel_id,
            dashboard,
        })
        .await
    }

    pub fn export_dashboard(
        &self,
        caller: Option<&Principal>,
        id: u64,
    ) -> Result<DashboardDocument, MetaError> {
        let d = self.readable(caller, id)?;
        let layout = parse_object(&d.layout);
        let positions: Vec<Value> = panels_of(&layout);
        let mut rest = layout.as_object().cloned().unwrap_or_default();
        rest.remove("panels");
        let visualizations = self
            .store()
            .panels(id)?
            .into_iter()
            .map(|p| PanelDocument {
                position: positions
                    .iter()
                    .find(|x| x["id"].as_u64() == Some(p.id))
                    .and_then(|x| serde_json::from_value::<PosWithId>(x.clone()).ok())
                    .map(|x| Position {
                        x: x.x,
                        y: x.y,
                        w: x.w,
                        h: x.h,
                    }),
                title: p.title,
                chart_type: p.chart_type,
                query: parse_object(&p.query),
                options: parse_object(&p.options),
            })
            .collect();
        Ok(DashboardDocument {
            pulseboard_dashboard: DOCUMENT_VERSION,
            name: d.name,
            description: d.description,
            is_public: d.is_public,
            shared: d.shared,
            layout: Value::Object(rest),
            visualizations,
        })
    }

    /// Creates a new dashboard (owned by the caller) from an export document, in one command.
    pub async fn import_dashboard(
        &self,
        caller: &Principal,
        doc: DashboardDocument,
        now_ms: i64,
    ) -> Result<Value, MetaError> {
        require_editor(caller, "dashboards")?;
        if doc.pulseboard_dashboard != DOCUMENT_VERSION {
            return Err(invalid(
                "pulseboard_dashboard",
                format!(
                    "document version {} is not supported; this node reads version {DOCUMENT_VERSION}",
                    doc.pulseboard_dashboard
                ),
            ));
        }
        check_text("name", &doc.name, MAX_NAME, true)?;
        check_text("description", &doc.description, MAX_DESCRIPTION, false)?;
        if doc.visualizations.len() > MAX_PANELS {
            return Err(invalid(
                "visualizations",
                format!("a dashboard holds at most {MAX_PANELS}"),
            ));
        }
        let id = random_id();
        let mut layout = doc.layout.clone();
        if !layout.is_object() {
            return Err(invalid("layout", "must be a JSON object"));
        }
        layout = with_panels(&layout, Vec::new());
        let mut panels = Vec::with_capacity(doc.visualizations.len());
        for (i, v) in doc.visualizations.iter().enumerate() {
            let field_err = |e: MetaError| match e {
                MetaError::Invalid { field, reason } => MetaError::Invalid {
                    field: "visualizations",
                    reason: format!("[{i}].{field}: {reason}"),
                },
                other => other,
            };
            check_text("title", &v.title, MAX_NAME, false).map_err(field_err)?;
            check_chart_type(&v.chart_type).map_err(field_err)?;
            let query = check_query(&v.query).map_err(field_err)?;
            let options = object_text("options", &v.options).map_err(field_err)?;
            let pid = random_id();
            layout = place(&layout, pid, v.position);
            panels.push(PanelRecord {
                id: pid,
                dashboard_id: id,
                title: v.title.clone(),
                chart_type: v.chart_type.clone(),
                query,
                options,
                // Keeps the document's order when listed.
                created_ms: now_ms + i as i64,
                updated_ms: now_ms,
            });
        }
        let dashboard = DashboardRecord {
            id,
            name: doc.name,
            description: doc.description,
            owner_user_id: caller.user_id,
            is_public: doc.is_public,
            shared: doc.shared,
            layout: check_layout(&layout)?,
            created_ms: now_ms,
            updated_ms: now_ms,
            version: 1,
        };
        self.propose(MetaCommand::ImportDashboard { dashboard, panels })
            .await?;
        self.dashboard_value(Some(caller), id)
    }
}

#[derive(Deserialize)]
struct PosWithId {
    x: u64,
    y: u64,
    w: u64,
    h: u64,
}
