//! Medians and percentiles of samples.

use std::time::Duration;

/// Summary of a set of samples (any unit).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` when there are no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (!sorted.is_empty()).then(|| Summary {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median": self.median, "p10": self.p10, "p90": self.p90,
            "min": self.min, "max": self.max,
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f` `repeat` times and summarises its wall-clock time in milliseconds.
pub fn time_ms<T>(
    repeat: u32,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Summary> {
    let mut samples = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = std::time::Instant::now();
        std::hint::black_box(f()?);
        samples.push(ms(start.elapsed()));
    }
    Summary::of(&samples).ok_or_else(|| anyhow::anyhow!("no samples"))
}
