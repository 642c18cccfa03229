//! The InfluxDB line protocol:
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! Each numeric field becomes a point of metric `measurement.field`; tags become dimensions.
//! Floats, integers (`12i`), unsigned integers (`12u`) and booleans (1.0 / 0.0) are numbers.
//! String fields are not: they are skipped and counted in
//! [`LineBatch::ignored_string_fields`], never dropped silently. A batch is all or nothing:
//! the first bad line fails it with its line number and the reason.
//!
//! Hand-written at the byte level (no regex, no parser combinators) because ingest speed is a
//! product target: the parser borrows slices of the body and allocates only the output
//! strings. The `influxdb-line-protocol` crate on crates.io parses with nom into an owned
//! intermediate form and was not chosen for that reason.

use std::borrow::Cow;

use crate::point::{
    normalize_dimensions, validate_metric_name, DataPoint, Dimensions, Limits, Name,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
    /// Minutes and hours: InfluxDB 1.x's `/write` accepts them.
    M,
    H,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ns" | "n" => Ok(Precision::Ns),
            "us" | "u" | "µs" => Ok(Precision::Us),
            "ms" => Ok(Precision::Ms),
            "s" => Ok(Precision::S),
            "m" => Ok(Precision::M),
            "h" => Ok(Precision::H),
            other => Err(format!(
                "{other:?} is not a precision; use ns, us, ms, s, m or h"
            )),
        }
    }
}

impl Precision {
    fn to_ms(self, t: i64) -> Option<i64> {
        Some(match self {
            Precision::Ns => t.div_euclid(1_000_000),
            Precision::Us => t.div_euclid(1_000),
            Precision::Ms => t,
            Precision::S => t.checked_mul(1_000)?,
            Precision::M => t.checked_mul(60_000)?,
            Precision::H => t.checked_mul(3_600_000)?,
        })
    }
}

#[derive(Debug)]
pub struct LineBatch {
    pub points: Vec<DataPoint>,
    pub ignored_string_fields: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

pub fn parse_lines(
    body: &str,
    precision: Precision,
    now_ms: i64,
    limits: &Limits,
) -> Result<LineBatch, LineError> {
    let mut out = LineBatch {
        points: Vec::new(),
        ignored_string_fields: 0,
    };
    for (i, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        parse_line(trimmed, precision, now_ms, limits, &mut out).map_err(|reason| LineError {
            line: i + 1,
            reason,
        })?;
        if out.points.len() > limits.max_points {
            return Err(LineError {
                line: i + 1,
                reason: format!(
                    "batch has more than {} points (the limit)",
                    limits.max_points
                ),
            });
        }
    }
    Ok(out)
}

/// Finds the first unescaped byte of `stops` at or after `from`; `\` escapes the next byte.
fn scan(b: &[u8], from: usize, stops: &[u8]) -> usize {
    let mut i = from;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if stops.contains(&c) {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Removes backslash escapes (`\,`, `\ `, `\=`, `\\`); borrows when there are none.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | ' ' | '=' | '\\' | '"')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

enum Field {
    Number(f64),
    Str,
}

fn parse_field_value(v: &str) -> Result<Field, String> {
    let Some(&first) = v.as_bytes().first() else {
        return Err("a field has no value".into());
    };
    if first == b'"' {
        return Ok(Field::Str);
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Field::Number(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Field::Number(0.0)),
        _ => {}
    }
    if let Some(int) = v.strip_suffix('i') {
        return int
            .parse::<i64>()
            .map(|n| Field::Number(n as f64))
            .map_err(|_| format!("{v:?} is not an integer field value"));
    }
    if let Some(uint) = v.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .map(|n| Field::Number(n as f64))
            .map_err(|_| format!("{v:?} is not an unsigned integer field value"));
    }
    // Rust's float parser accepts "inf"/"nan"; line protocol does not.
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Err(format!("{v:?} is not a number, boolean or quoted string"));
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Field::Number(f)),
        Ok(_) => Err(format!("{v:?} is not a finite number")),
        Err(_) => Err(format!("{v:?} is not a number, boolean or quoted string")),
    }
}

fn parse_line(
    line: &str,
    precision: Precision,
    now_ms: i64,
    limits: &Limits,
    out: &mut LineBatch,
) -> Result<(), String> {
    let b = line.as_bytes();
    // Measurement.
    let m_end = scan(b, 0, b", ");
    let measurement = unescape(&line[..m_end]);
    if measurement.is_empty() {
        return Err("missing measurement".into());
    }
    // Tags.
    let mut tags: Dimensions = Vec::new();
    let mut pos = m_end;
    while pos < b.len() && b[pos] == b',' {
        let start = pos + 1;
        let end = scan(b, start, b", ");
        let pair = &line[start..end];
        let eq = scan(pair.as_bytes(), 0, b"=");
        if eq >= pair.len() {
            return Err(format!("tag {pair:?} has no '='"));
        }
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        if k.is_empty() || v.is_empty() {
            return Err(format!("tag {pair:?} has an empty key or value"));
        }
        tags.push((Name::from(unescape(k)), Name::from(unescape(v))));
        pos = end;
    }
    if pos >= b.len() {
        return Err("missing fields (expected a space, then field=value)".into());
    }
    let dims = normalize_dimensions(tags, limits).map_err(|r| format!("tags: {r}"))?;
    // Fields: up to the first unescaped space outside a quoted string.
    let fields_start = pos + 1;
    let mut fields: Vec<(Cow<'_, str>, Field)> = Vec::new();
    let mut i = fields_start;
    loop {
        let k_end = scan(b, i, b"= ,");
        if k_end >= b.len() || b[k_end] != b'=' {
            return Err(format!(
                "field {:?} has no '='",
                &line[i..k_end.min(b.len())]
            ));
        }
        let key = unescape(&line[i..k_end]);
        if key.is_empty() {
            return Err("a field has an empty name".into());
        }
        let v_start = k_end + 1;
        let v_end = if b.get(v_start) == Some(&b'"') {
            // A quoted string: find the closing unescaped quote.
            let mut j = v_start + 1;
            loop {
                match b.get(j) {
                    None => return Err(format!("field {key:?}: unterminated string")),
                    Some(b'\\') => j += 2,
                    Some(b'"') => break j + 1,
                    Some(_) => j += 1,
                }
            }
        } else {
            scan(b, v_start, b", ")
        };
        let value = parse_field_value(&line[v_start..v_end.min(b.len())])
            .map_err(|r| format!("field {key:?}: {r}"))?;
        fields.push((key, value));
        i = v_end;
        match b.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
    // Timestamp.
    let rest = line[i.min(line.len())..].trim();
    let ts_ms = if rest.is_empty() {
        now_ms
    } else {
        let t: i64 = rest
            .parse()
            .map_err(|_| format!("timestamp {rest:?} is not an integer"))?;
        precision
            .to_ms(t)
            .ok_or_else(|| format!("timestamp {rest:?} is out of range"))?
    };
    // The last numeric field takes the tags; the others copy them (one allocation a point
    // for the usual single-field line, instead of two).
    let last_number = fields
        .iter()
        .rposition(|(_, v)| matches!(v, Field::Number(_)));
    let mut dims = Some(dims);
    for (i, (key, value)) in fields.into_iter().enumerate() {
        match value {
            Field::Str => out.ignored_string_fields += 1,
            Field::Number(v) => {
                let mut metric = Name::with_capacity(measurement.len() + 1 + key.len());
                metric.push_str(&measurement);
                metric.push('.');
                metric.push_str(&key);
                validate_metric_name(&metric).map_err(|r| format!("metric {metric:?} {r}"))?;
                out.points.push(DataPoint {
                    metric,
                    timestamp_ms: ts_ms,
                    value: v,
                    dimensions: if Some(i) == last_number {
                        dims.take().unwrap_or_default()
                    } else {
                        dims.clone().unwrap_or_default()
                    },
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<LineBatch, LineError> {
        parse_lines(body, Precision::Ns, 42, &Limits::default())
    }

    #[test]
    fn fields_tags_types_and_timestamps() {
        let b = parse("cpu,host=a,region=eu usage=1.5,cores=4i,big=7u,up=true,name=\"x y\" 1700000000123000000\n").unwrap();
        assert_eq!(b.ignored_string_fields, 1);
        let names: Vec<&str> = b.points.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(names, ["cpu.usage", "cpu.cores", "cpu.big", "cpu.up"]);
        assert_eq!(b.points[1].value, 4.0);
        assert_eq!(b.points[3].value, 1.0);
        assert_eq!(b.points[0].timestamp_ms, 1_700_000_000_123);
        assert_eq!(
            b.points[0].dimensions,
            vec![("host".into(), "a".into()), ("region".into(), "eu".into())]
        );
        // No timestamp → now; comments, blank lines and CRLF are fine.
        let b = parse("# hello\r\n\r\nmem free=3\r\n").unwrap();
        assert_eq!(b.points[0].timestamp_ms, 42);
        assert_eq!(b.points[0].value, 3.0);
    }

    #[test]
    fn escapes() {
        let b = parse("disk,path=C:\\\\dir\\ x,k=v\\,w\\=z used=1 0").unwrap();
        assert_eq!(
            b.points[0].dimensions,
            vec![
                ("k".into(), "v,w=z".into()),
                ("path".into(), "C:\\dir x".into())
            ]
        );
        // Dimension keys follow the metric-name rules, escaped or not.
        assert!(parse("m,k\\=y=v used=1")
            .unwrap_err()
            .reason
            .contains("'='"));
        let b = parse("m s=\"a \\\" b, c=d\",v=2 0").unwrap();
        assert_eq!(b.points.len(), 1);
        assert_eq!(b.ignored_string_fields, 1);
    }

    #[test]
    fn precisions() {
        for (p, ts, want) in [
            (Precision::S, "1700000000", 1_700_000_000_000),
            (Precision::Ms, "1700000000123", 1_700_000_000_123),
            (Precision::Us, "1700000000123456", 1_700_000_000_123),
            (Precision::Ns, "-1", -1),
            (Precision::M, "28333333", 1_699_999_980_000),
            (Precision::H, "472222", 1_699_999_200_000),
        ] {
            let b = parse_lines(&format!("m v=1 {ts}"), p, 0, &Limits::default()).unwrap();
            assert_eq!(b.points[0].timestamp_ms, want, "{p:?}");
        }
        assert!("x"
            .parse::<Precision>()
            .unwrap_err()
            .contains("ns, us, ms, s, m or h"));
        assert_eq!("m".parse::<Precision>(), Ok(Precision::M));
        assert!(parse_lines(
            "m v=1 99999999999999999",
            Precision::S,
            0,
            &Limits::default()
        )
        .is_err());
    }

    #[test]
    fn errors_name_the_line() {
        for (body, line, needle) in [
            ("m v=1\nm\n", 2, "missing fields"),
            ("m v=\n", 1, "no value"),
            ("m v=abc\n", 1, "not a number"),
            ("m v=1x 0\n", 1, "not a number"),
            ("m,t v=1\n", 1, "no '='"),
            ("m v=1 abc\n", 1, "timestamp"),
            ("m v=\"open\n", 1, "unterminated"),
            ("m v=1i5\n", 1, "not a number"),
            ("9m v=1\n", 1, "metric"),
            ("m,=x v=1\n", 1, "empty"),
            ("m v=inf\n", 1, "not a number"),
            ("m v=1,v2\n", 1, "no '='"),
        ] {
            let e = parse(body)
                .err()
                .unwrap_or_else(|| panic!("{body:?} should fail"));
            assert_eq!(e.line, line, "{body:?}: {e}");
            assert!(e.reason.contains(needle), "{body:?}: {e}");
        }
        let limits = Limits {
            max_points: 2,
            ..Limits::default()
        };
        assert!(parse_lines("m a=1,b=2,c=3", Precision::Ns, 0, &limits)
            .unwrap_err()
            .reason
            .contains("limit"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn generated_lines_round_trip(
            lines in proptest::collection::vec(
                ("[a-z][a-z0-9_]{0,8}", proptest::collection::btree_map("[a-z][a-z0-9]{0,4}", "[a-z0-9 ,=]{1,6}", 0..3),
                 "[a-z][a-z0-9]{0,4}", -1e9f64..1e9, 0i64..4_000_000_000_000),
                1..20)
        ) {
            let esc = |s: &str| s.replace(' ', "\\ ").replace(',', "\\,").replace('=', "\\=");
            let mut body = String::new();
            for (m, tags, f, v, ts) in &lines {
                body.push_str(m);
                for (k, tv) in tags {
                    body.push_str(&format!(",{k}={}", esc(tv)));
                }
                body.push_str(&format!(" {f}={v:?} {ts}\n"));
            }
            let b = parse_lines(&body, Precision::Ms, 0, &Limits::default()).unwrap();
            prop_assert_eq!(b.points.len(), lines.len());
            for (p, (m, tags, f, v, ts)) in b.points.iter().zip(&lines) {
                prop_assert_eq!(&p.metric, &format!("{m}.{f}"));
                prop_assert_eq!(p.value, *v);
                prop_assert_eq!(p.timestamp_ms, *ts);
                let want: Dimensions = tags.iter().map(|(k, v)| (k.into(), v.into())).collect();
                prop_assert_eq!(&p.dimensions, &want);
            }
        }
    }
}
