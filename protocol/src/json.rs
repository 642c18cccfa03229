//! The JSON ingest body of SPEC §3:
//! `{"source_id": "...", "data_points": [{"metric", "timestamp", "value", "dimensions"}]}`.
//!
//! Parsing is one serde pass over the bytes, with no `serde_json::Value` tree. Point fields are
//! read by lenient visitors that record what was wrong instead of failing at once, so the
//! error can name the point's index and the field ("data_points[2].value: is a string")
//! rather than a line and column. The point count is checked while the array is read, so an
//! oversized batch is refused before it is materialised.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use crate::point::{normalize_dimensions, validate_metric_name, DataPoint, Limits, PointError};

#[derive(Debug)]
pub struct IngestRequest {
    pub source_id: Option<String>,
    pub authentication_token: Option<String>,
    pub batch_id: Option<String>,
    pub points: Vec<DataPoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is not valid JSON: {0}")]
    Body(String),
    #[error("{0}")]
    Point(PointError),
    #[error("batch has {count} points, the limit is {max}")]
    TooManyPoints { count: usize, max: usize },
    #[error("batch has no data points")]
    Empty,
}

pub fn parse_ingest(body: &[u8], limits: &Limits) -> Result<IngestRequest, IngestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = de
        .deserialize_map(BodyVisitor {
            max: limits.max_points,
        })
        .map_err(|e| match e.to_string() {
            m if m.starts_with(TOO_MANY) => IngestError::TooManyPoints {
                count: limits.max_points + 1,
                max: limits.max_points,
            },
            m => IngestError::Body(m),
        })?;
    de.end().map_err(|e| IngestError::Body(e.to_string()))?;
    let Some(raw_points) = raw.data_points else {
        return Err(IngestError::Body("missing field `data_points`".into()));
    };
    if raw_points.is_empty() {
        return Err(IngestError::Empty);
    }
    let mut points = Vec::with_capacity(raw_points.len());
    for (index, p) in raw_points.into_iter().enumerate() {
        points.push(p.validate(index, limits).map_err(IngestError::Point)?);
    }
    Ok(IngestRequest {
        source_id: raw.source_id,
        authentication_token: raw.authentication_token,
        batch_id: raw.batch_id,
        points,
    })
}

/// Just the body's `authentication_token`, for a body that [`parse_ingest`] refused: the
/// caller must know who is asking before it says what is wrong with the points.
pub fn authentication_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Token {
        authentication_token: Option<String>,
    }
    serde_json::from_slice::<Token>(body)
        .ok()
        .and_then(|t| t.authentication_token)
}

const TOO_MANY: &str = "pulseboard: too many points";

struct RawBody {
    source_id: Option<String>,
    authentication_token: Option<String>,
    batch_id: Option<String>,
    data_points: Option<Vec<RawPoint>>,
}

struct BodyVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a `data_points` array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody, A::Error> {
        let mut body = RawBody {
            source_id: None,
            authentication_token: None,
            batch_id: None,
            data_points: None,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "source_id" => body.source_id = map.next_value()?,
                "authentication_token" => body.authentication_token = map.next_value()?,
                "batch_id" => body.batch_id = map.next_value()?,
                "data_points" => {
                    body.data_points = Some(map.next_value_seed(PointsSeed { max: self.max })?)
                }
                // Seed clients send extra fields; they are not ours to refuse.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(body)
    }
}

struct PointsSeed {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for PointsSeed {
    type Value = Vec<RawPoint>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PointsSeed {
    type Value = Vec<RawPoint>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`data_points` as an array of points")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(4096));
        while let Some(p) = seq.next_element::<RawPoint>()? {
            if out.len() == self.max {
                return Err(de::Error::custom(TOO_MANY));
            }
            out.push(p);
        }
        Ok(out)
    }
}

/// A field value that may be wrong; what was wrong is kept for the error message.
type Loose<T> = Result<T, String>;

/// Dimension pairs as read, each value possibly wrong.
type LoosePairs = Vec<(String, Loose<String>)>;

#[derive(Default)]
struct RawPoint {
    metric: Option<Loose<String>>,
    timestamp: Option<Loose<i64>>,
    value: Option<Loose<f64>>,
    dimensions: Option<Loose<LoosePairs>>,
}

impl RawPoint {
    fn validate(self, index: usize, limits: &Limits) -> Result<DataPoint, PointError> {
        let err = |field: &str, reason: String| PointError {
            index,
            field: field.into(),
            reason,
        };
        let metric = self
            .metric
            .ok_or_else(|| err("metric", "is missing".into()))?
            .map_err(|r| err("metric", r))?;
        validate_metric_name(&metric).map_err(|r| err("metric", r))?;
        let timestamp_ms = self
            .timestamp
            .ok_or_else(|| err("timestamp", "is missing".into()))?
            .map_err(|r| err("timestamp", r))?;
        let value = self
            .value
            .ok_or_else(|| err("value", "is missing".into()))?
            .map_err(|r| err("value", r))?;
        if !value.is_finite() {
            return Err(err("value", format!("{value} is not a finite number")));
        }
        let dims = match self.dimensions {
            None => Vec::new(),
            Some(d) => {
                let pairs = d.map_err(|r| err("dimensions", r))?;
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let v = v.map_err(|r| err(&format!("dimensions.{k}"), r))?;
                    out.push((k.into(), v.into()));
                }
                normalize_dimensions(out, limits).map_err(|r| err("dimensions", r))?
            }
        };
        Ok(DataPoint {
            metric: metric.into(),
            timestamp_ms,
            value,
            dimensions: dims,
        })
    }
}

impl<'de> serde::Deserialize<'de> for RawPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PointVisitor)
    }
}

struct PointVisitor;

impl<'de> Visitor<'de> for PointVisitor {
    type Value = RawPoint;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a point object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPoint, A::Error> {
        let mut p = RawPoint::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "metric" => p.metric = Some(map.next_value::<LooseString>()?.0),
                "timestamp" => p.timestamp = Some(map.next_value::<LooseTimestamp>()?.0),
                "value" => p.value = Some(map.next_value::<LooseNumber>()?.0),
                "dimensions" => p.dimensions = Some(map.next_value::<LooseDims>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }

    // A point that is not an object becomes a point with every field missing, so the error
    // names its index.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawPoint, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawPoint::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawPoint, E> {
        Ok(RawPoint::default())
    }
}

/// Implements the "anything else" arms of a lenient visitor: consume, and say what it was.
macro_rules! lenient_rest {
    ($what:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::from(Err(format!(
                "is the boolean {v}; {}",
                $what
            ))))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::from(Err(format!("is null; {}", $what))))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Self::Value::from(Err(format!("is an array; {}", $what))))
        }
    };
}

macro_rules! lenient_map_is_wrong {
    ($what:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Self::Value::from(Err(format!("is an object; {}", $what))))
        }
    };
}

struct LooseString(Loose<String>);
impl From<Loose<String>> for LooseString {
    fn from(v: Loose<String>) -> Self {
        Self(v)
    }
}
impl<'de> serde::Deserialize<'de> for LooseString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseString, E> {
                Ok(LooseString(Ok(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<LooseString, E> {
                Ok(LooseString(Ok(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseString, E> {
                Ok(LooseString(Err(format!(
                    "is the number {v}; a string is required"
                ))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseString, E> {
                Ok(LooseString(Err(format!(
                    "is the number {v}; a string is required"
                ))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseString, E> {
                Ok(LooseString(Err(format!(
                    "is the number {v}; a string is required"
                ))))
            }
            lenient_rest!("a string is required");
            lenient_map_is_wrong!("a string is required");
        }
        d.deserialize_any(V)
    }
}

struct LooseNumber(Loose<f64>);
impl From<Loose<f64>> for LooseNumber {
    fn from(v: Loose<f64>) -> Self {
        Self(v)
    }
}
impl<'de> serde::Deserialize<'de> for LooseNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseNumber;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseNumber, E> {
                Ok(LooseNumber(Ok(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseNumber, E> {
                Ok(LooseNumber(Ok(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseNumber, E> {
                Ok(LooseNumber(Ok(v as f64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseNumber, E> {
                Ok(LooseNumber(Err(format!(
                    "is the string {:?}; a JSON number is required",
                    truncate(v)
                ))))
            }
            lenient_rest!("a JSON number is required");
            lenient_map_is_wrong!("a JSON number is required");
        }
        d.deserialize_any(V)
    }
}

struct LooseTimestamp(Loose<i64>);
impl From<Loose<i64>> for LooseTimestamp {
    fn from(v: Loose<i64>) -> Self {
        Self(v)
    }
}
impl<'de> serde::Deserialize<'de> for LooseTimestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WANT: &str = "integer milliseconds since the epoch or an RFC 3339 string is required";
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WANT)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseTimestamp, E> {
                Ok(LooseTimestamp(Ok(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseTimestamp, E> {
                Ok(LooseTimestamp(
                    i64::try_from(v).map_err(|_| format!("{v} is out of range")),
                ))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseTimestamp, E> {
                Ok(LooseTimestamp(Err(format!(
                    "{v} is not an integer; {WANT}"
                ))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseTimestamp, E> {
                Ok(LooseTimestamp(crate::time::parse_rfc3339_ms(v)))
            }
            lenient_rest!(WANT);
            lenient_map_is_wrong!(WANT);
        }
        d.deserialize_any(V)
    }
}

struct LooseDims(Loose<LoosePairs>);
impl From<Loose<LoosePairs>> for LooseDims {
    fn from(v: Loose<LoosePairs>) -> Self {
        Self(v)
    }
}
impl<'de> serde::Deserialize<'de> for LooseDims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WANT: &str = "an object of string values is required";
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseDims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WANT)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LooseDims, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v = map.next_value::<LooseDimValue>()?;
                    out.push((k, v.0));
                }
                Ok(LooseDims(Ok(out)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<LooseDims, E> {
                Ok(LooseDims(Err(format!("is a string; {WANT}"))))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LooseDims, E> {
                Ok(LooseDims(Err(format!("is a number; {WANT}"))))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LooseDims, E> {
                Ok(LooseDims(Err(format!("is a number; {WANT}"))))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LooseDims, E> {
                Ok(LooseDims(Err(format!("is a number; {WANT}"))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LooseDims, E> {
                // `"dimensions": null` means none.
                Ok(LooseDims(Ok(Vec::new())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LooseDims, E> {
                Ok(LooseDims(Err(format!("is a boolean; {WANT}"))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LooseDims, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LooseDims(Err(format!("is an array; {WANT}"))))
            }
        }
        d.deserialize_any(V)
    }
}

/// Dimension values: strings as they are; numbers and booleans in their JSON spelling.
struct LooseDimValue(Loose<String>);
impl From<Loose<String>> for LooseDimValue {
    fn from(v: Loose<String>) -> Self {
        Self(v)
    }
}
impl<'de> serde::Deserialize<'de> for LooseDimValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const WANT: &str = "a string, number or boolean is required";
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseDimValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(WANT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Ok(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LooseDimValue, E> {
                Ok(LooseDimValue(Err(format!("is null; {WANT}"))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LooseDimValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LooseDimValue(Err(format!("is an array; {WANT}"))))
            }
            lenient_map_is_wrong!(WANT);
        }
        d.deserialize_any(V)
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<IngestRequest, IngestError> {
        parse_ingest(body.as_bytes(), &Limits::default())
    }

    fn point_err(body: &str) -> PointError {
        match parse(body) {
            Err(IngestError::Point(p)) => p,
            Err(other) => panic!("expected a point error, got {other}"),
            Ok(_) => panic!("expected a point error, got Ok"),
        }
    }

    #[test]
    fn the_seed_shape_parses() {
        let r = parse(r#"{"source_id":"web","extra":{"x":[1,2]},"data_points":[
            {"metric":"clicks","timestamp":1700000000123,"value":1,"dimensions":{"country":"de","n":3,"b":true}},
            {"metric":"clicks","timestamp":"2023-11-14T22:13:20.123Z","value":2.5}]}"#)
        .unwrap();
        assert_eq!(r.source_id.as_deref(), Some("web"));
        assert_eq!(r.points.len(), 2);
        assert_eq!(r.points[0].dimensions[0], ("b".into(), "true".into()));
        assert_eq!(r.points[0].dimensions[2], ("n".into(), "3".into()));
        assert_eq!(r.points[1].timestamp_ms, 1_700_000_000_123);
        assert_eq!(r.points[1].value, 2.5);
    }

    #[test]
    fn errors_name_index_and_field() {
        let e = point_err(
            r#"{"data_points":[{"metric":"a","timestamp":1,"value":1},{"metric":"9x","timestamp":1,"value":1}]}"#,
        );
        assert_eq!((e.index, e.field.as_str()), (1, "metric"));
        let e = point_err(r#"{"data_points":[{"metric":"a","timestamp":1,"value":"high"}]}"#);
        assert_eq!(e.field, "value");
        assert!(e.reason.contains("string"), "{}", e.reason);
        let e = point_err(r#"{"data_points":[{"metric":"a","timestamp":1.5,"value":1}]}"#);
        assert_eq!(e.field, "timestamp");
        let e = point_err(r#"{"data_points":[{"metric":"a","timestamp":"yesterday","value":1}]}"#);
        assert!(e.reason.contains("RFC 3339"), "{}", e.reason);
        let e = point_err(r#"{"data_points":[{"metric":"a","value":1}]}"#);
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("timestamp", "is missing")
        );
        let e = point_err(
            r#"{"data_points":[{"metric":"a","timestamp":1,"value":1,"dimensions":{"k":null}}]}"#,
        );
        assert_eq!(e.field, "dimensions.k");
        let e = point_err(
            r#"{"data_points":[{"metric":"a","timestamp":1,"value":1,"dimensions":[1]}]}"#,
        );
        assert_eq!(e.field, "dimensions");
        let e = point_err(
            r#"{"data_points":[{"metric":"a","timestamp":1,"value":1,"dimensions":{"a":"1","a":"2"}}]}"#,
        );
        assert!(e.reason.contains("twice"));
        let e = point_err(r#"{"data_points":[3]}"#);
        assert_eq!((e.index, e.field.as_str()), (0, "metric"));
        // Out of f64's range is refused by the JSON reader itself, with a position.
        assert!(matches!(
            parse(r#"{"data_points":[{"metric":"a","timestamp":1,"value":1e400}]}"#),
            Err(IngestError::Body(m)) if m.contains("out of range")
        ));
    }

    #[test]
    fn token_of_a_refused_body() {
        let body = br#"{"authentication_token":"pbk_1","data_points":[{"metric":"9"}]}"#;
        assert!(parse_ingest(body, &Limits::default()).is_err());
        assert_eq!(authentication_token(body).as_deref(), Some("pbk_1"));
        assert_eq!(authentication_token(b"nonsense"), None);
    }

    #[test]
    fn body_errors() {
        assert!(matches!(parse("not json"), Err(IngestError::Body(_))));
        assert!(matches!(parse("{}"), Err(IngestError::Body(m)) if m.contains("data_points")));
        assert!(matches!(
            parse(r#"{"data_points":[]}"#),
            Err(IngestError::Empty)
        ));
        assert!(matches!(
            parse(r#"{"data_points":{}}"#),
            Err(IngestError::Body(_))
        ));
        assert!(matches!(
            parse(r#"{"data_points":[]} trailing"#),
            Err(IngestError::Body(_))
        ));
        let limits = Limits {
            max_points: 2,
            ..Limits::default()
        };
        let body = r#"{"data_points":[{"metric":"a","timestamp":1,"value":1},{"metric":"a","timestamp":1,"value":1},{"metric":"a","timestamp":1,"value":1}]}"#;
        assert!(matches!(
            parse_ingest(body.as_bytes(), &limits),
            Err(IngestError::TooManyPoints { max: 2, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_ingest(&bytes, &Limits::default());
        }

        #[test]
        fn generated_bodies_round_trip(
            points in proptest::collection::vec(
                ("[a-z_][a-z0-9_]{0,10}", -1_000_000_000_000i64..4_000_000_000_000, -1e12f64..1e12,
                 proptest::collection::btree_map("[a-z][a-z0-9]{0,5}", "[ -~]{0,12}", 0..4)),
                1..20)
        ) {
            let json_points: Vec<serde_json::Value> = points.iter().map(|(m, t, v, d)| {
                serde_json::json!({"metric": m, "timestamp": t, "value": v, "dimensions": d})
            }).collect();
            let body = serde_json::to_vec(&serde_json::json!({"data_points": json_points})).unwrap();
            let r = parse_ingest(&body, &Limits::default()).unwrap();
            prop_assert_eq!(r.points.len(), points.len());
            for (got, (m, t, v, d)) in r.points.iter().zip(&points) {
                prop_assert_eq!(&got.metric, m);
                prop_assert_eq!(got.timestamp_ms, *t);
                prop_assert_eq!(got.value, *v);
                let want: crate::Dimensions = d.iter().map(|(k, v)| (k.into(), v.into())).collect();
                prop_assert_eq!(&got.dimensions, &want);
            }
        }
    }
}
