//! The suite's report: a Markdown table of the faults and checks, and an SVG plot of
//! throughput and latency over time with each fault marked.

use std::fmt::Write;

use crate::checker::Check;
use crate::scenario::Outcome;
use crate::workload::Attempt;

#[derive(Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Checks by when they ran (label, one per running node).
    pub checks: Vec<(String, Vec<Check>)>,
    pub attempts: Vec<Attempt>,
    pub acked_points: u64,
    pub uncertain_points: u64,
    /// When a check failed: the tail of every node's log at that moment, by file name
    /// (`<check>-node<i>.log`), so the run can be diagnosed after its nodes are gone.
    pub failed_logs: Vec<(String, String)>,
}

fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|(_, c)| c.iter().all(Check::ok))
    }

    /// Failover times of the faults that took a leader away, sorted.
    pub fn failovers(&self) -> Vec<f64> {
        let mut f: Vec<f64> = self.outcomes.iter().filter_map(|o| o.failover_ms).collect();
        f.sort_by(f64::total_cmp);
        f
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| # | fault | victim | leaders re-elected | failover (first write) | available during | points/s before / during / after |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (i, o) in self.outcomes.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} % over {:.1} s | {:.0} / {:.0} / {:.0} |",
                i + 1,
                o.fault,
                o.victim.map_or("-".into(), |v| format!(
                    "node {v} (led {} shards)",
                    o.victim_led
                )),
                o.reelected_ms.map_or("-".into(), |f| format!("{f:.0} ms")),
                o.failover_ms.map_or("-".into(), |f| format!("{f:.0} ms")),
                o.availability * 100.0,
                o.healed_at - o.fault_at,
                o.throughput[0],
                o.throughput[1],
                o.throughput[2],
            );
        }
        let f = self.failovers();
        if !f.is_empty() {
            let _ = writeln!(
                s,
                "\nFailover (fault → first acknowledged write sent after it) over {} leader faults: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms.",
                f.len(),
                pick(&f, 0.5),
                pick(&f, 0.99),
                f.last().copied().unwrap_or(f64::NAN)
            );
        }
        let mut lat: Vec<f64> = self
            .attempts
            .iter()
            .filter(|a| a.ok)
            .map(|a| a.latency_ms)
            .collect();
        lat.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "\nWorkload: {} points acknowledged, {} in batches given up (each there once or not at all); acknowledged request latency p50 {:.0} ms, p99 {:.0} ms.",
            self.acked_points,
            self.uncertain_points,
            pick(&lat, 0.5),
            pick(&lat, 0.99)
        );
        let _ = writeln!(s, "\nChecks (every acknowledged point exactly once, nothing never sent, 1 s sums match the points; every acknowledged dashboard there, none twice):\n");
        for (label, checks) in &self.checks {
            let verdict = if checks.iter().all(Check::ok) {
                "ok"
            } else {
                "FAILED"
            };
            let _ = writeln!(s, "- {label}: {verdict}");
            for c in checks {
                let _ = writeln!(s, "  - {c}");
            }
        }
        s
    }

    /// Throughput (acknowledged points per second) and p99 latency per second, faults shaded.
    pub fn svg(&self) -> String {
        let end = self
            .attempts
            .iter()
            .map(|a| a.at + a.latency_ms / 1000.0)
            .fold(1.0, f64::max)
            .ceil();
        let secs = end as usize + 1;
        let mut points = vec![0.0f64; secs];
        let mut lats: Vec<Vec<f64>> = vec![Vec::new(); secs];
        for a in &self.attempts {
            let done = a.at + a.latency_ms / 1000.0;
            let i = (done as usize).min(secs - 1);
            if a.ok {
                points[i] += f64::from(a.points);
            }
            lats[i].push(a.latency_ms);
        }
        let p99: Vec<f64> = lats
            .iter_mut()
            .map(|l| {
                l.sort_by(f64::total_cmp);
                if l.is_empty() {
                    0.0
                } else {
                    pick(l, 0.99)
                }
            })
            .collect();
        let (w, h, left, top, panel) = (1000.0, 420.0, 70.0, 20.0, 160.0);
        let x = |t: f64| left + t / end * (w - left - 20.0);
        let max_tp = points.iter().copied().fold(1.0, f64::max);
        let max_lat = p99.iter().copied().fold(1.0, f64::max);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        for (i, o) in self.outcomes.iter().enumerate() {
            let (a, b) = (x(o.fault_at), x(o.healed_at.max(o.fault_at + 0.2)));
            let _ = writeln!(
                s,
                r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.7"><title>{}</title></rect><text x="{a:.1}" y="{:.1}" fill="#a33">{}</text>"##,
                b - a,
                2.0 * panel + 30.0,
                o.fault,
                top + 2.0 * panel + 45.0,
                i + 1
            );
        }
        for (k, (series, max, label)) in [
            (&points, max_tp, "acknowledged points/s"),
            (&p99, max_lat, "p99 request latency, ms"),
        ]
        .into_iter()
        .enumerate()
        {
            let base = top + panel * (k as f64 + 1.0) + 15.0 * k as f64;
            let y = |v: f64| base - v / max * (panel - 10.0);
            let line: Vec<String> = series
                .iter()
                .enumerate()
                .map(|(t, v)| format!("{:.1},{:.1}", x(t as f64), y(*v)))
                .collect();
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="#888"/><text x="4" y="{:.1}">{max:.0}</text><text x="4" y="{base}">0</text><text x="{:.1}" y="{:.1}">{label}</text>"##,
                w - 20.0,
                y(max) + 4.0,
                left + 6.0,
                y(max) + 12.0
            );
            let _ = writeln!(
                s,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"##,
                if k == 0 { "#1a73e8" } else { "#e8710a" },
                line.join(" ")
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">seconds: 0 … {end:.0}; shaded = fault held until every shard had a running leader again</text>"#,
            left,
            h - 8.0
        );
        s.push_str("</svg>\n");
        s
    }
}
