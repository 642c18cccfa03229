//! Anomaly detection that needs no tuning per series: a robust, adaptive band.
//!
//! The level is an exponentially weighted moving average (EWMA) of the samples and the scale
//! an EWMA of absolute deviations from it (a running mean absolute deviation). A sample is
//! anomalous when it lies more than `k` scales from the level. Three choices make it robust:
//! - anomalous samples move the level and scale only as far as the band's edge, so a spike
//!   does not drag the baseline up behind it;
//! - a run of anomalies on the same side is a level shift: after `ADOPT` samples the baseline
//!   jumps to the new level (the shift alerts, the new normal stops alerting);
//! - the level's time constant (about 8 samples) follows a daily shape sampled every minute
//!   while spikes, drops and shifts of a few samples still stand out; the scale's is longer
//!   (about 50 samples) so the band does not collapse in quiet stretches.
//!
//! The band is exposed so the UI can draw it.

use serde::{Deserialize, Serialize};

const LEVEL_ALPHA: f64 = 0.12;
const SCALE_ALPHA: f64 = 0.02;
/// Samples before the detector judges anything.
const WARMUP: u32 = 30;
/// Consecutive same-side anomalies after which the new level is adopted.
const ADOPT: u32 = 12;
/// Mean absolute deviation → standard deviation for normal noise.
const MAD_TO_SIGMA: f64 = 1.2533;

/// How many standard deviations away counts as anomalous.
pub fn sensitivity_k(sensitivity: &str) -> Result<f64, String> {
    match sensitivity {
        "low" => Ok(6.0),
        "medium" => Ok(4.5),
        "high" => Ok(3.5),
        other => other
            .parse::<f64>()
            .ok()
            .filter(|k| (1.0..=20.0).contains(k))
            .ok_or_else(|| {
                format!("sensitivity {other:?}: use low, medium, high or a number of deviations from 1 to 20")
            }),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    k: f64,
    level: f64,
    /// Mean absolute deviation.
    mad: f64,
    seen: u32,
    /// +n: n anomalies above in a row; -n: below.
    run: i32,
    run_sum: f64,
    /// After a level shift: how far the level jumped, so a jump back by about as much is a
    /// return to the old normal, not a new anomaly. Cleared after `RETURN_WITHIN` samples.
    shift: Option<(f64, u32)>,
}

/// How long after a level shift a jump back counts as its end.
const RETURN_WITHIN: u32 = 24 * 60;

/// What one sample was judged against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub anomalous: bool,
    pub lower: f64,
    pub upper: f64,
}

impl Detector {
    pub fn new(k: f64) -> Self {
        Self {
            k,
            level: 0.0,
            mad: 0.0,
            seen: 0,
            run: 0,
            run_sum: 0.0,
            shift: None,
        }
    }

    /// The band samples are judged against now (`None` while warming up).
    pub fn band(&self) -> Option<(f64, f64)> {
        (self.seen >= WARMUP).then(|| {
            let w = self.width();
            (self.level - w, self.level + w)
        })
    }

    fn width(&self) -> f64 {
        // A floor keeps a flat series (MAD 0) from flagging rounding noise.
        let floor = 1e-9_f64.max(self.level.abs() * 1e-3);
        self.k * (self.mad * MAD_TO_SIGMA).max(floor)
    }

    pub fn observe(&mut self, v: f64) -> Verdict {
        if !v.is_finite() {
            let (lower, upper) = self.band().unwrap_or((f64::NAN, f64::NAN));
            return Verdict {
                anomalous: false,
                lower,
                upper,
            };
        }
        if self.seen == 0 {
            self.level = v;
        }
        self.seen = self.seen.saturating_add(1);
        let w = self.width();
        let (lower, upper) = (self.level - w, self.level + w);
        let judged = self.seen > WARMUP;
        if let Some((offset, left)) = self.shift {
            self.shift = (left > 1).then_some((offset, left - 1));
            if judged && (v - self.level).abs() > w && (v - (self.level - offset)).abs() <= w {
                // The shift is over: back to the old normal, which is not news.
                self.level -= offset;
                self.shift = None;
                self.run = 0;
                self.run_sum = 0.0;
                return Verdict {
                    anomalous: false,
                    lower,
                    upper,
                };
            }
        }
        let dev = v - self.level;
        let anomalous = judged && dev.abs() > w;
        if anomalous {
            let side = if dev > 0.0 { 1 } else { -1 };
            if self.run.signum() == side {
                self.run += side;
                self.run_sum += v;
            } else {
                self.run = side;
                self.run_sum = v;
            }
            if self.run.unsigned_abs() >= ADOPT {
                // A level shift: the new values are the new normal.
                let new_level = self.run_sum / self.run.unsigned_abs() as f64;
                self.shift = Some((new_level - self.level, RETURN_WITHIN));
                self.level = new_level;
                self.run = 0;
                self.run_sum = 0.0;
                return Verdict {
                    anomalous,
                    lower,
                    upper,
                };
            }
            // Learn only up to the band's edge.
            let clipped = self.level + dev.signum() * w;
            self.level += LEVEL_ALPHA * 0.25 * (clipped - self.level);
        } else {
            self.run = 0;
            self.run_sum = 0.0;
            let alpha = if judged { LEVEL_ALPHA } else { 0.3 };
            self.level += alpha * dev;
            let s_alpha = if judged { SCALE_ALPHA } else { 0.2 };
            self.mad += s_alpha * (dev.abs() - self.mad);
        }
        Verdict {
            anomalous,
            lower,
            upper,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut StdRng) -> f64 {
        // Box–Muller.
        let u1: f64 = rng.random_range(1e-12..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    const DAY: usize = 1_440; // one sample a minute

    fn seasonal(i: usize, rng: &mut StdRng) -> f64 {
        100.0 + 40.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin() + 3.0 * normal(rng)
    }

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Spike,
        LevelShift,
        Drop,
    }

    /// A week with injected anomalies: (series, spans of [start, end) that are anomalous).
    fn week_with_anomalies(seed: u64) -> (Vec<f64>, Vec<(usize, usize, Kind)>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = 7 * DAY;
        let mut v: Vec<f64> = (0..n).map(|i| seasonal(i, &mut rng)).collect();
        let mut spans = Vec::new();
        let mut i = 300;
        let kinds = [Kind::Spike, Kind::LevelShift, Kind::Drop];
        let mut j = 0;
        while i + 200 < n {
            let kind = kinds[j % 3];
            j += 1;
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            match kind {
                Kind::Spike => {
                    let len = rng.random_range(1..=3);
                    let size = rng.random_range(30.0..60.0) * sign;
                    for x in &mut v[i..i + len] {
                        *x += size;
                    }
                    spans.push((i, i + len, kind));
                }
                Kind::LevelShift => {
                    let len = rng.random_range(90..180);
                    let size = rng.random_range(25.0..40.0) * sign;
                    for x in &mut v[i..i + len] {
                        *x += size;
                    }
                    // The shift is anomalous where it starts; its end is a return to normal.
                    spans.push((i, i + 15, kind));
                }
                Kind::Drop => {
                    let len = rng.random_range(5..30);
                    let frac = rng.random_range(0.4..0.7);
                    for x in &mut v[i..i + len] {
                        *x *= 1.0 - frac;
                    }
                    spans.push((i, i + len, kind));
                }
            }
            i += rng.random_range(300..700);
        }
        (v, spans)
    }

    /// Precision (flagged samples inside an anomaly span) and recall (spans with a flag).
    fn score(series: &[f64], spans: &[(usize, usize, Kind)], k: f64) -> (f64, f64, usize) {
        let mut d = Detector::new(k);
        let flags: Vec<bool> = series.iter().map(|v| d.observe(*v).anomalous).collect();
        let inside = |i: usize| spans.iter().any(|(s, e, _)| i >= *s && i < *e);
        let flagged: Vec<usize> = (0..series.len()).filter(|i| flags[*i]).collect();
        let true_flags = flagged.iter().filter(|i| inside(**i)).count();
        let found = spans
            .iter()
            .filter(|(s, e, _)| (*s..*e).any(|i| flags[i]))
            .count();
        let precision = true_flags as f64 / flagged.len().max(1) as f64;
        let recall = found as f64 / spans.len().max(1) as f64;
        (precision, recall, flagged.len() - true_flags)
    }

    #[test]
    fn precision_and_recall_on_injected_anomalies() {
        let k = sensitivity_k("medium").unwrap();
        let (mut p_sum, mut r_sum, mut n) = (0.0, 0.0, 0);
        for seed in 1..=5 {
            let (series, spans) = week_with_anomalies(seed);
            let (p, r, false_flags) = score(&series, &spans, k);
            println!(
                "anomaly detection, seed {seed}: {} anomalies, precision {p:.3}, recall {r:.3}, {false_flags} false flags",
                spans.len()
            );
            p_sum += p;
            r_sum += r;
            n += 1;
        }
        let (p, r) = (p_sum / n as f64, r_sum / n as f64);
        println!("anomaly detection over 5 simulated weeks: precision {p:.3}, recall {r:.3}");
        assert!(p >= 0.9, "precision {p}");
        assert!(r >= 0.9, "recall {r}");
    }

    #[test]
    fn a_clean_seasonal_week_raises_nothing() {
        for seed in 10..15 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut d = Detector::new(sensitivity_k("medium").unwrap());
            let flags = (0..7 * DAY)
                .filter(|i| d.observe(seasonal(*i, &mut rng)).anomalous)
                .count();
            assert_eq!(flags, 0, "seed {seed}");
        }
    }

    #[test]
    fn band_and_sensitivity() {
        assert!(sensitivity_k("extreme").is_err());
        assert_eq!(sensitivity_k("2.5").unwrap(), 2.5);
        let mut d = Detector::new(4.0);
        assert!(d.band().is_none());
        for i in 0..100 {
            d.observe(10.0 + (i % 3) as f64);
        }
        let (lo, hi) = d.band().unwrap();
        assert!(lo < 10.0 && hi > 12.0, "{lo} {hi}");
        assert!(d.observe(100.0).anomalous);
        // A flat series does not alert on tiny wiggles.
        let mut flat = Detector::new(4.0);
        for _ in 0..100 {
            flat.observe(5.0);
        }
        assert!(!flat.observe(5.000_001).anomalous);
    }
}
