//! The crate's error type and the one place that maps errors to HTTP status codes and to the
//! `{"error": kind, "detail": ...}` body of SPEC §3.

use protocol::PointError;
use serde_json::{json, Value};

use crate::meta::{AuthError, Forbidden, MetaError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    IngestBody(#[from] protocol::json::IngestError),
    #[error("{0}")]
    Line(#[from] protocol::line::LineError),
    #[error("{0}")]
    Point(PointError),
    #[error("data_points[{index}]: metric {metric} already has {limit} series (the cardinality limit); the point would create a new one")]
    Cardinality {
        index: usize,
        metric: String,
        limit: u64,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the node is ingesting at capacity ({inflight} points in flight); retry after {retry_after_s} s")]
    Overloaded { inflight: usize, retry_after_s: u64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("query parameter `{param}`: {reason}")]
    BadQuery { param: &'static str, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Forbidden(#[from] Forbidden),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status for this error: the single mapping the HTTP layer uses.
    pub fn status_code(&self) -> u16 {
        match self {
            Error::IngestBody(_)
            | Error::Line(_)
            | Error::Point(_)
            | Error::Cardinality { .. }
            | Error::BadQuery { .. }
            | Error::BadRequest(_) => 400,
            Error::TooLarge { .. } => 413,
            Error::Overloaded { .. } => 429,
            Error::Unavailable(_) => 503,
            Error::NotFound { .. } => 404,
            Error::Meta(e) => e.status(),
            Error::Auth(e) => e.status(),
            Error::Forbidden(e) => e.status(),
            Error::Config(_) | Error::Storage(_) | Error::Internal(_) => 500,
        }
    }

    /// A stable, machine-readable name for the `error` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::IngestBody(_) => "invalid_body",
            Error::Line(_) => "invalid_line_protocol",
            Error::Point(_) => "invalid_point",
            Error::Cardinality { .. } => "cardinality_limit",
            Error::TooLarge { .. } => "payload_too_large",
            Error::Overloaded { .. } => "overloaded",
            Error::Unavailable(_) => "unavailable",
            Error::BadQuery { .. } => "invalid_query",
            Error::NotFound { .. } => "not_found",
            Error::BadRequest(_) => "bad_request",
            Error::Meta(e) => match e {
                MetaError::NotFound { .. } => "not_found",
                MetaError::Conflict(_) | MetaError::LastAdmin => "conflict",
                MetaError::Invalid { .. } => "invalid_field",
                MetaError::BadCredentials => "unauthorized",
                MetaError::Forbidden(_) => "forbidden",
                MetaError::Storage { .. } | MetaError::Corrupt { .. } | MetaError::Failed(_) => {
                    "metadata"
                }
                MetaError::Unavailable(_) => "unavailable",
            },
            Error::Auth(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Config(_) => "config",
            Error::Storage(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }

    /// Structured detail: which point, which field, why; or the message.
    pub fn detail(&self) -> Value {
        match self {
            Error::Point(p) => {
                json!({"index": p.index, "field": p.field, "reason": p.reason, "message": self.to_string()})
            }
            Error::IngestBody(protocol::json::IngestError::Point(p)) => {
                json!({"index": p.index, "field": p.field, "reason": p.reason, "message": self.to_string()})
            }
            Error::Line(l) => {
                json!({"line": l.line, "reason": l.reason, "message": self.to_string()})
            }
            Error::Cardinality {
                index,
                metric,
                limit,
            } => {
                json!({"index": index, "metric": metric, "limit": limit, "message": self.to_string()})
            }
            Error::BadQuery { param, reason } => {
                json!({"param": param, "reason": reason, "message": self.to_string()})
            }
            Error::Meta(MetaError::Invalid { field, reason }) => {
                json!({"field": field, "reason": reason, "message": self.to_string()})
            }
            _ => json!({"message": self.to_string()}),
        }
    }

    /// Seconds a client should wait before retrying, for overload answers.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            Error::Unavailable(_) | Error::Meta(MetaError::Unavailable(_)) => Some(1),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
