//! Latency histograms and the reports `send` prints and writes.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, LATENCY_MAX_US));
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                mean_us: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub seed: u64,
    pub target: String,
    pub mode: String,
    pub connections: usize,
    pub shards: usize,
    pub elapsed_s: f64,
    /// Transactions attempted (MAIL sent).
    pub messages_attempted: u64,
    /// Transactions that ended with a 2xx after the content.
    pub messages_accepted: u64,
    /// Transactions that ended otherwise (refused or broken off).
    pub messages_failed: u64,
    pub recipients_accepted: u64,
    pub bytes_sent: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub connect: Percentiles,
    pub message: Percentiles,
    pub session: Percentiles,
    /// Every reply received, by code.
    pub replies: BTreeMap<u16, u64>,
    /// Errors that are not replies: refused connections, timeouts, resets.
    pub errors: BTreeMap<String, u64>,
}

impl SendReport {
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadgen send: {} ({}), {} connections on {} shards, seed {}",
            self.target, self.mode, self.connections, self.shards, self.seed
        );
        let _ = writeln!(
            s,
            "  messages: {} accepted, {} failed, {} attempted in {:.2}s; {} recipients accepted",
            self.messages_accepted,
            self.messages_failed,
            self.messages_attempted,
            self.elapsed_s,
            self.recipients_accepted
        );
        let _ = writeln!(
            s,
            "  throughput: {:.0} msgs/s, {:.2} MB/s ({} bytes)",
            self.msgs_per_s, self.mb_per_s, self.bytes_sent
        );
        for (name, p) in [
            ("connect", &self.connect),
            ("message", &self.message),
            ("session", &self.session),
        ] {
            if p.count > 0 {
                let _ = writeln!(
                    s,
                    "  {name:<8} latency (us): p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
                    p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us, p.count
                );
            }
        }
        let replies: Vec<String> = self
            .replies
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(s, "  replies: {}", replies.join(", "));
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(e, n)| format!("{e}: {n}"))
                .collect();
            let _ = writeln!(s, "  errors: {}", errors.join(", "));
        }
        s
    }
}

/// The histogram in HdrHistogram's percentile-distribution text format (.hgrm), values in
/// milliseconds as the plotters expect.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value_ms = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value_ms:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value_ms:>12.3} {q:>14.12} {total:>10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_hgrm() {
        let mut h = histogram();
        for v in 1..=1000 {
            record(&mut h, v);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50_us));
        assert!((985..=995).contains(&p.p99_us));
        assert_eq!(p.max_us, 1000);
        let text = hgrm(&h);
        assert!(text.contains("Total count    =         1000"));
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .count()
                > 10
        );
    }
}
