//! Maglev table build time (`weft_model::maglev::maglev_table`), as the agent builds one per
//! service whose backends change.

use weft_model::config::DEFAULT_MAGLEV_HASH_SEED;

use crate::stats::{Summary, time_ms};

/// Build time in ms of a table of `size` slots for `backends` backends, `repeat` builds.
pub fn build_time(size: u32, backends: u32, repeat: u32) -> anyhow::Result<Summary> {
    let keys: Vec<String> = (0..backends)
        .map(|i| format!("10.42.{}.{}:8080/TCP", i / 256, i % 256))
        .collect();
    time_ms(repeat, || {
        weft_model::maglev::maglev_table(&keys, size, DEFAULT_MAGLEV_HASH_SEED.as_bytes())
            .map_err(anyhow::Error::from)
    })
}
