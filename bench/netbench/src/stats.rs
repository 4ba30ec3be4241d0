//! Rates and latency percentiles of a run, and their JSON.

use std::time::Duration;

/// What one run measured: how many transactions in how long, and their latency.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub elapsed: Duration,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

impl Summary {
    /// Summarises per-transaction latencies in nanoseconds; `None` when there are none.
    pub fn from_nanos(mut samples: Vec<u64>, elapsed: Duration) -> Option<Self> {
        samples.sort_unstable();
        let micros = |p| percentile(&samples, p).map(|n| nanos_to_micros(n as f64));
        Some(Self {
            count: samples.len(),
            elapsed,
            mean_us: nanos_to_micros(mean(&samples)?),
            p50_us: micros(50.0)?,
            p90_us: micros(90.0)?,
            p99_us: micros(99.0)?,
        })
    }

    /// Transactions per second over the whole run.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.count as f64 / seconds
        } else {
            0.0
        }
    }

    /// The JSON fields common to both clients, after the client's own leading fields.
    fn json_fields(&self, count_key: &str, rate_key: &str) -> String {
        format!(
            "\"{count_key}\":{},\"seconds\":{:.3},\"{rate_key}\":{:.1},\"mean_us\":{:.1},\
             \"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1}",
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.mean_us,
            self.p50_us,
            self.p90_us,
            self.p99_us,
        )
    }
}

/// The result of `rr`.
#[derive(Debug)]
pub struct RrReport {
    pub size: u32,
    pub summary: Summary,
}

impl RrReport {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"mode\":\"rr\",\"size\":{},{}}}",
            self.size,
            self.summary
                .json_fields("transactions", "transactions_per_second")
        )
    }
}

/// The result of `crr`.
#[derive(Debug)]
pub struct CrrReport {
    pub parallel: u16,
    pub summary: Summary,
}

impl CrrReport {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"mode\":\"crr\",\"parallel\":{},{}}}",
            self.parallel,
            self.summary
                .json_fields("connections", "connections_per_second")
        )
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of ascending `sorted`: the smallest sample
/// that at least p% of the samples do not exceed.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn mean(samples: &[u64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let total: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    Some(total as f64 / samples.len() as f64)
}

fn nanos_to_micros(nanos: f64) -> f64 {
    nanos / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 90.0), Some(90));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 99.5), Some(100));
        assert_eq!(percentile(&hundred, 100.0), Some(100));
        assert_eq!(percentile(&hundred, 0.1), Some(1));

        let four = [10, 20, 30, 40];
        assert_eq!(percentile(&four, 50.0), Some(20));
        assert_eq!(percentile(&four, 51.0), Some(30));
        assert_eq!(percentile(&four, 99.0), Some(40));

        assert_eq!(percentile(&[7], 1.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
    }

    #[test]
    fn percentile_of_nothing_or_out_of_range_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2], 0.0), None);
        assert_eq!(percentile(&[1, 2], 100.1), None);
        assert_eq!(percentile(&[1, 2], f64::NAN), None);
    }

    #[test]
    fn summary_sorts_and_converts_to_micros() {
        let samples = vec![30_000, 10_000, 20_000, 40_000];
        let s = Summary::from_nanos(samples, Duration::from_secs(2)).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.mean_us, 25.0);
        assert_eq!(s.p50_us, 20.0);
        assert_eq!(s.p90_us, 40.0);
        assert_eq!(s.p99_us, 40.0);
        assert_eq!(s.rate(), 2.0);
    }

    #[test]
    fn summary_of_no_samples_is_none() {
        assert_eq!(
            Summary::from_nanos(Vec::new(), Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn mean_does_not_overflow() {
        assert_eq!(mean(&[u64::MAX, u64::MAX]), Some(u64::MAX as f64));
    }

    #[test]
    fn json_of_both_reports() {
        let summary = Summary {
            count: 3,
            elapsed: Duration::from_millis(1500),
            mean_us: 12.345,
            p50_us: 11.0,
            p90_us: 15.04,
            p99_us: 20.0,
        };
        let rr = RrReport {
            size: 1,
            summary: summary.clone(),
        };
        assert_eq!(
            rr.to_json(),
            "{\"mode\":\"rr\",\"size\":1,\"transactions\":3,\"seconds\":1.500,\
             \"transactions_per_second\":2.0,\"mean_us\":12.3,\"p50_us\":11.0,\
             \"p90_us\":15.0,\"p99_us\":20.0}"
        );
        let crr = CrrReport {
            parallel: 2,
            summary,
        };
        assert_eq!(
            crr.to_json(),
            "{\"mode\":\"crr\",\"parallel\":2,\"connections\":3,\"seconds\":1.500,\
             \"connections_per_second\":2.0,\"mean_us\":12.3,\"p50_us\":11.0,\
             \"p90_us\":15.0,\"p99_us\":20.0}"
        );
    }
}
