//! Typed handles on the datapath's maps, taken from a freshly loaded object or opened from a
//! node's pin directory.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
};
use weft_common::{DatapathConfig, Event, MetricsKey, MetricsValue, maps as names};

use crate::events::decode_event;

pub struct DatapathMaps {
    events: RingBuf<MapData>,
    metrics: PerCpuArray<MapData, MetricsValue>,
    config: Array<MapData, DatapathConfig>,
}

impl DatapathMaps {
    /// Opens the maps a node's datapath pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<DatapathMaps> {
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
        };
        DatapathMaps::from_maps(
            open(names::EVENTS)?,
            open(names::METRICS)?,
            open(names::CONFIG)?,
        )
    }

    /// Takes the maps out of a loaded object (its programs keep their own references).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<DatapathMaps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the BPF object has no map {name}"))
        };
        DatapathMaps::from_maps(
            take(names::EVENTS)?,
            take(names::METRICS)?,
            take(names::CONFIG)?,
        )
    }

    fn from_maps(events: Map, metrics: Map, config: Map) -> anyhow::Result<DatapathMaps> {
        Ok(DatapathMaps {
            events: RingBuf::try_from(events).context(names::EVENTS)?,
            metrics: PerCpuArray::try_from(metrics).context(names::METRICS)?,
            config: Array::try_from(config).context(names::CONFIG)?,
        })
    }

    /// Every non-zero counter, summed over CPUs.
    pub fn metrics(&self) -> anyhow::Result<BTreeMap<MetricsKey, MetricsValue>> {
        let mut out = BTreeMap::new();
        for index in 0..MetricsKey::ENTRIES {
            let Some(key) = MetricsKey::from_index(index) else {
                continue;
            };
            let per_cpu = self
                .metrics
                .get(&index, 0)
                .with_context(|| format!("reading metrics slot {index}"))?;
            let total = per_cpu
                .iter()
                .fold(MetricsValue::default(), |acc, v| MetricsValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                });
            if total.packets != 0 {
                out.insert(key, total);
            }
        }
        Ok(out)
    }

    /// The events waiting in the ring buffer, oldest first; they are consumed.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(event) = decode_event(&item) {
                out.push(event);
            }
        }
        out
    }

    pub fn config(&self) -> anyhow::Result<DatapathConfig> {
        self.config.get(&0, 0).context("reading weft_config")
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.config.set(0, config, 0).context("writing weft_config")
    }
}
