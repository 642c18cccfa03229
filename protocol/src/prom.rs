//! Prometheus remote write 1.0: a snappy-compressed (block format) protobuf `WriteRequest`.
//!
//! Each sample becomes a point: the `__name__` label is the metric, the other labels are its
//! dimensions, the timestamp is already in milliseconds. What Pulseboard cannot store is
//! counted, never dropped silently: non-finite samples (Prometheus' staleness markers and
//! NaN/±Inf values) and native histograms are skipped and counted; a series whose name or
//! labels break Pulseboard's rules (SPEC §1) is rejected with the reason, and the rest of the
//! request is still written (as Prometheus-compatible receivers do: the sender does not retry
//! a 400, and resending the bad series would not make it good).

use prost::Message;

use crate::point::{normalize_dimensions, validate_metric_name, DataPoint, Limits, Name};

/// `prometheus.WriteRequest`: only what Pulseboard reads. Unknown fields (metadata) are
/// skipped by the decoder.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`. Histograms are kept as bytes only to count them.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// What a request held, ready to write.
#[derive(Debug, Default)]
pub struct PromBatch {
    pub points: Vec<DataPoint>,
    /// Samples whose value is NaN or infinite (staleness markers included).
    pub ignored_samples: usize,
    /// Native histogram samples (not stored).
    pub ignored_histograms: usize,
    /// Series refused, with the first few reasons (`series[i] {labels}: reason`).
    pub rejected_series: usize,
    pub rejections: Vec<String>,
}

/// Why a whole request cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromError {
    #[error("body is not snappy (block format): {0}")]
    Snappy(String),
    #[error("body decompresses to {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not a protobuf WriteRequest: {0}")]
    Protobuf(String),
    #[error("request has {points} samples, the limit is {limit}")]
    TooManyPoints { points: usize, limit: usize },
}

/// How many rejection reasons a batch keeps.
const KEPT_REASONS: usize = 5;

/// Decompresses and decodes a remote-write body; `max_bytes` bounds the decompressed size
/// (checked against the size snappy declares, before allocating).
pub fn decode_write(
    body: &[u8],
    max_bytes: usize,
    limits: &Limits,
) -> Result<PromBatch, PromError> {
    let size = snap::raw::decompress_len(body).map_err(|e| PromError::Snappy(e.to_string()))?;
    if size > max_bytes {
        return Err(PromError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| PromError::Snappy(e.to_string()))?;
    let request =
        WriteRequest::decode(raw.as_slice()).map_err(|e| PromError::Protobuf(e.to_string()))?;
    to_points(request, limits)
}

fn to_points(request: WriteRequest, limits: &Limits) -> Result<PromBatch, PromError> {
    let samples: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    if samples > limits.max_points {
        return Err(PromError::TooManyPoints {
            points: samples,
            limit: limits.max_points,
        });
    }
    let mut out = PromBatch {
        points: Vec::with_capacity(samples),
        ..PromBatch::default()
    };
    for (i, series) in request.timeseries.into_iter().enumerate() {
        out.ignored_histograms += series.histograms.len();
        let (metric, dimensions) = match series_identity(series.labels, limits) {
            Ok(id) => id,
            Err(reason) => {
                out.rejected_series += 1;
                if out.rejections.len() < KEPT_REASONS {
                    out.rejections.push(format!("timeseries[{i}]: {reason}"));
                }
                continue;
            }
        };
        for s in series.samples {
            if !s.value.is_finite() {
                out.ignored_samples += 1;
                continue;
            }
            out.points.push(DataPoint {
                metric: metric.clone(),
                timestamp_ms: s.timestamp,
                value: s.value,
                dimensions: dimensions.clone(),
            });
        }
    }
    Ok(out)
}

fn series_identity(
    labels: Vec<Label>,
    limits: &Limits,
) -> Result<(Name, Vec<(Name, Name)>), String> {
    let mut metric = None;
    let mut dims = Vec::with_capacity(labels.len().saturating_sub(1));
    for l in labels {
        if l.name == "__name__" {
            metric = Some(l.value);
        } else {
            dims.push((Name::from(l.name), Name::from(l.value)));
        }
    }
    let metric = metric.ok_or("has no __name__ label")?;
    validate_metric_name(&metric).map_err(|r| format!("metric name {metric:?} {r}"))?;
    let dims = normalize_dimensions(dims, limits).map_err(|r| format!("{metric}: labels {r}"))?;
    Ok((Name::from(metric), dims))
}

/// Encodes a request as Prometheus sends it (tests, and `pulseboard load`-style tools).
pub fn encode_write(request: &WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            histograms: Vec::new(),
        }
    }

    #[test]
    fn samples_become_points_and_what_cannot_be_stored_is_counted() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut with_histogram = series(&[("__name__", "h")], &[]);
        with_histogram.histograms.push(vec![8, 1]);
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("job", "node"), ("__name__", "up"), ("instance", "a:9100")],
                    &[(1_000, 1.0), (2_000, stale), (3_000, 0.0)],
                ),
                series(&[("job", "x")], &[(1_000, 1.0)]),
                series(&[("__name__", "9bad")], &[(1_000, 1.0)]),
                with_histogram,
            ],
        };
        let body = encode_write(&req);
        let b = decode_write(&body, 1 << 20, &Limits::default()).unwrap();
        assert_eq!(b.points.len(), 2);
        assert_eq!(b.points[0].metric, "up");
        assert_eq!(b.points[0].timestamp_ms, 1_000);
        // Labels sorted by key, `__name__` not among them.
        let keys: Vec<&str> = b.points[0]
            .dimensions
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["instance", "job"]);
        assert_eq!(b.ignored_samples, 1);
        assert_eq!(b.ignored_histograms, 1);
        assert_eq!(b.rejected_series, 2);
        assert!(
            b.rejections[0].contains("timeseries[1]: has no __name__"),
            "{:?}",
            b.rejections
        );
        assert!(b.rejections[1].contains("\"9bad\""), "{:?}", b.rejections);
    }

    #[test]
    fn damaged_or_oversized_bodies_are_clear_errors() {
        let l = Limits::default();
        assert!(matches!(
            decode_write(b"not snappy at all", 1 << 20, &l),
            Err(PromError::Snappy(_) | PromError::Protobuf(_))
        ));
        // Valid snappy, not protobuf.
        let junk = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
        assert!(matches!(
            decode_write(&junk, 1 << 20, &l),
            Err(PromError::Protobuf(_))
        ));
        // Declared size over the limit: refused before decompressing.
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; 10_000])
            .unwrap();
        assert_eq!(
            decode_write(&big, 1_000, &l).unwrap_err(),
            PromError::TooLarge {
                size: 10_000,
                limit: 1_000
            }
        );
        let many = WriteRequest {
            timeseries: vec![series(&[("__name__", "m")], &[(1, 1.0); 11])],
        };
        let small = Limits {
            max_points: 10,
            ..Limits::default()
        };
        assert_eq!(
            decode_write(&encode_write(&many), 1 << 20, &small).unwrap_err(),
            PromError::TooManyPoints {
                points: 11,
                limit: 10
            }
        );
        // Truncations never panic.
        let body = encode_write(&many);
        for cut in 0..body.len() {
            let _ = decode_write(&body[..cut], 1 << 20, &l);
        }
    }
}
