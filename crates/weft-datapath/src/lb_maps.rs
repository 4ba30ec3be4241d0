//! Typed handles on the service load-balancer and conntrack maps, taken from a freshly loaded
//! object or opened from a node's pin directory. Maglev tables are inner arrays of
//! `weft_lb4_maglev`, created here at the length the table has.

use std::path::Path;

use anyhow::Context as _;
use anyhow::anyhow;
use aya::{
    Ebpf,
    maps::{Array, HashMap, HashOfMaps, Map, MapData},
};
use weft_common::{
    CtEntry4, CtKey4, Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service,
    maps as names,
};
use weft_model::lb_capacity::LbCapacity;

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
    /// Read from the kernel when the maps are opened (a map's size never changes).
    capacity: LbCapacity,
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
        let (services, backends) = (get(names::LB4_SERVICES)?, get(names::LB4_BACKENDS)?);
        let (revnat, maglev) = (get(names::LB4_REVNAT)?, get(names::LB4_MAGLEV)?);
        let capacity = LbCapacity {
            services: max_entries(&services, names::LB4_SERVICES)?,
            backends: max_entries(&backends, names::LB4_BACKENDS)?,
            revnat: max_entries(&revnat, names::LB4_REVNAT)?,
            maglev: max_entries(&maglev, names::LB4_MAGLEV)?,
        };
        Ok(LbMaps {
            services: HashMap::try_from(services).context(names::LB4_SERVICES)?,
            backends: HashMap::try_from(backends).context(names::LB4_BACKENDS)?,
            revnat: Array::try_from(revnat).context(names::LB4_REVNAT)?,
            affinity: HashMap::try_from(get(names::LB4_AFFINITY)?).context(names::LB4_AFFINITY)?,
            ct: HashMap::try_from(get(names::CT4)?).context(names::CT4)?,
            maglev: HashOfMaps::try_from(maglev).context(names::LB4_MAGLEV)?,
            capacity,
        })
    }

    /// The maps' sizes, as the kernel reported them when they were opened.
    pub fn capacity(&self) -> LbCapacity {
        self.capacity
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

/// `max_entries` of a map, from the kernel (`BPF_OBJ_GET_INFO_BY_FD`).
fn max_entries(map: &Map, name: &str) -> anyhow::Result<u32> {
    let data = match map {
        Map::HashMap(data) | Map::Array(data) | Map::HashOfMaps(data) => data,
        _ => return Err(anyhow!("{name} is not of the expected type")),
    };
    let info = data
        .info()
        .with_context(|| format!("reading the size of {name}"))?;
    Ok(info.max_entries())
}

fn read_all<K, V>(
    entries: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    map: &str,
) -> anyhow::Result<Vec<(K, V)>> {
    entries
        .map(|e| e.with_context(|| format!("reading {map}")))
        .collect()
}

#[cfg(test)]
mod root_tests {
    use weft_model::lb_capacity::LbMap;

    use super::*;
    use crate::{Datapath, NodeDatapath, bpffs::TempPinDir, running_as_root};

    fn backend(n: u8) -> Lb4Backend {
        Lb4Backend {
            address: [10, 42, 0, n],
            port: 8080,
            proto: 6,
            flags: 0,
        }
    }

    #[test]
    fn lb_maps_are_created_with_the_asked_size_and_pinned_ones_keep_theirs() {
        let test = "lb_maps_are_created_with_the_asked_size_and_pinned_ones_keep_theirs";
        if !running_as_root(test) {
            return;
        }
        let pins = TempPinDir::new("weft-test").unwrap();
        let asked = LbCapacity::for_lb_map_max(16);
        let mut dp = NodeDatapath::open_sized(pins.path(), 16, &asked).unwrap();
        assert_eq!(dp.lb_capacity().unwrap(), asked);
        for id in 1..=16u32 {
            dp.put_lb_backend(id, backend(id as u8)).unwrap();
        }
        let err = dp.put_lb_backend(17, backend(17)).unwrap_err();
        assert!(
            format!("{err:#}").contains("Argument list too long"),
            "a full map refuses a new key with E2BIG: {err:#}"
        );
        dp.set_lb_revnat(15, Lb4RevNat::default()).unwrap();
        assert!(
            dp.set_lb_revnat(16, Lb4RevNat::default()).is_err(),
            "index 16 is past the end of a 16-entry array"
        );
        for id in 1..=16u16 {
            dp.put_maglev_table(id, &[1]).unwrap();
        }
        assert!(dp.put_maglev_table(17, &[1]).is_err());

        // A restarted agent asking for other sizes adopts the pinned maps as they are.
        drop(dp);
        let dp =
            NodeDatapath::open_sized(pins.path(), 1000, &LbCapacity::for_lb_map_max(1000)).unwrap();
        assert_eq!(dp.lb_capacity().unwrap(), asked);
        assert_eq!(dp.lb_backends().unwrap().len(), 16);
        let from_pins = LbMaps::from_pins(pins.path()).unwrap().capacity();
        assert_eq!(from_pins.max_entries(LbMap::Services), 16);
    }
}
