//! Typed handles on the service load-balancer and conntrack maps, taken from a freshly loaded
//! object or opened from a node's pin directory. Maglev tables are inner arrays of
//! `weft_lb4_maglev`, created here at the length the table has.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, HashOfMaps, Map, MapData},
};
use weft_common::{
    CtEntry4, CtKey4, Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service,
    maps as names,
};

use crate::maps::{ignore_absent, pinned_map, taken_map};

const BPF_F_INNER_MAP: u32 = 0x1000;

pub struct LbMaps {
    services: HashMap<MapData, Lb4Key, Lb4Service>,
    backends: HashMap<MapData, u32, Lb4Backend>,
    revnat: Array<MapData, Lb4RevNat>,
    /// LRU hashes in the kernel; aya reads them through its `HashMap` type.
    affinity: HashMap<MapData, Lb4AffinityKey, Lb4AffinityEntry>,
    ct: HashMap<MapData, CtKey4, CtEntry4>,
    maglev: HashOfMaps<MapData, u32, Array<MapData, u32>>,
}

impl LbMaps {
    /// Opens the maps a node's datapath pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<LbMaps> {
        LbMaps::collect(|name| pinned_map(pin_dir, name))
    }

    /// Takes the maps out of a loaded object (its programs keep their own references).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<LbMaps> {
        LbMaps::collect(|name| taken_map(ebpf, name))
    }

    fn collect(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<LbMaps> {
        Ok(LbMaps {
            services: HashMap::try_from(get(names::LB4_SERVICES)?).context(names::LB4_SERVICES)?,
            backends: HashMap::try_from(get(names::LB4_BACKENDS)?).context(names::LB4_BACKENDS)?,
            revnat: Array::try_from(get(names::LB4_REVNAT)?).context(names::LB4_REVNAT)?,
            affinity: HashMap::try_from(get(names::LB4_AFFINITY)?).context(names::LB4_AFFINITY)?,
            ct: HashMap::try_from(get(names::CT4)?).context(names::CT4)?,
            maglev: HashOfMaps::try_from(get(names::LB4_MAGLEV)?).context(names::LB4_MAGLEV)?,
        })
    }

    pub fn put_service(&mut self, key: Lb4Key, value: Lb4Service) -> anyhow::Result<()> {
        self.services
            .insert(key, value, 0)
            .with_context(|| format!("writing weft_lb4_services[{key:?}]"))
    }

    /// Deleting an absent key succeeds.
    pub fn delete_service(&mut self, key: Lb4Key) -> anyhow::Result<()> {
        ignore_absent(self.services.remove(&key))
            .with_context(|| format!("deleting weft_lb4_services[{key:?}]"))
    }

    pub fn services(&self) -> anyhow::Result<Vec<(Lb4Key, Lb4Service)>> {
        read_all(self.services.iter(), names::LB4_SERVICES)
    }

    pub fn put_backend(&mut self, id: u32, backend: Lb4Backend) -> anyhow::Result<()> {
        self.backends
            .insert(id, backend, 0)
            .with_context(|| format!("writing weft_lb4_backends[{id}]"))
    }

    /// Deleting an absent id succeeds.
    pub fn delete_backend(&mut self, id: u32) -> anyhow::Result<()> {
        ignore_absent(self.backends.remove(&id))
            .with_context(|| format!("deleting weft_lb4_backends[{id}]"))
    }

    pub fn backends(&self) -> anyhow::Result<Vec<(u32, Lb4Backend)>> {
        read_all(self.backends.iter(), names::LB4_BACKENDS)
    }

    pub fn set_revnat(&mut self, index: u16, frontend: Lb4RevNat) -> anyhow::Result<()> {
        self.revnat
            .set(u32::from(index), frontend, 0)
            .with_context(|| format!("writing weft_lb4_revnat[{index}]"))
    }

    pub fn revnat(&self, index: u16) -> anyhow::Result<Lb4RevNat> {
        self.revnat
            .get(&u32::from(index), 0)
            .with_context(|| format!("reading weft_lb4_revnat[{index}]"))
    }

    /// Installs a service's Maglev table (backend id per slot), replacing any previous one at
    /// once: the datapath sees either the old table or the new one, never a partial one.
    pub fn put_maglev(&mut self, service_id: u16, table: &[u32]) -> anyhow::Result<()> {
        let len = u32::try_from(table.len()).context("Maglev table length")?;
        // The kernel takes an inner map only when its flags equal the template's, and the
        // template carries BPF_F_INNER_MAP so that the length may differ from its own.
        let mut inner = Array::<MapData, u32>::create(len, BPF_F_INNER_MAP)
            .with_context(|| format!("creating a Maglev table of {len} slots"))?;
        for (slot, id) in (0u32..).zip(table) {
            inner
                .set(slot, id, 0)
                .with_context(|| format!("writing Maglev slot {slot}"))?;
        }
        self.maglev
            .insert(u32::from(service_id), &inner, 0)
            .with_context(|| format!("writing weft_lb4_maglev[{service_id}]"))
    }

    /// Deleting an absent table succeeds.
    pub fn delete_maglev(&mut self, service_id: u16) -> anyhow::Result<()> {
        ignore_absent(self.maglev.remove(&u32::from(service_id)))
            .with_context(|| format!("deleting weft_lb4_maglev[{service_id}]"))
    }

    /// A service's Maglev table, or `None` when it has none.
    pub fn maglev(&self, service_id: u16) -> anyhow::Result<Option<Vec<u32>>> {
        let inner = match self.maglev.get(&u32::from(service_id), 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading weft_lb4_maglev[{service_id}]"));
            }
        };
        let table: Result<Vec<u32>, _> = inner.iter().collect();
        Ok(Some(table.with_context(|| {
            format!("reading the Maglev table of service {service_id}")
        })?))
    }

    /// Deleting an absent entry succeeds.
    pub fn delete_affinity(&mut self, key: Lb4AffinityKey) -> anyhow::Result<()> {
        ignore_absent(self.affinity.remove(&key))
            .with_context(|| format!("deleting weft_lb4_affinity[{key:?}]"))
    }

    pub fn affinity(&self) -> anyhow::Result<Vec<(Lb4AffinityKey, Lb4AffinityEntry)>> {
        read_all(self.affinity.iter(), names::LB4_AFFINITY)
    }

    pub fn ct(&self) -> anyhow::Result<Vec<(CtKey4, CtEntry4)>> {
        read_all(self.ct.iter(), names::CT4)
    }

    /// Deleting an absent entry succeeds.
    pub fn delete_ct(&mut self, key: CtKey4) -> anyhow::Result<()> {
        ignore_absent(self.ct.remove(&key)).with_context(|| format!("deleting weft_ct4[{key:?}]"))
    }
}

fn read_all<K, V>(
    entries: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    map: &str,
) -> anyhow::Result<Vec<(K, V)>> {
    entries
        .map(|e| e.with_context(|| format!("reading {map}")))
        .collect()
}
