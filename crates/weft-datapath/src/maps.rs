//! Typed handles on the datapath's maps, taken from a freshly loaded object or opened from a
//! node's pin directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use weft_common::{
    DatapathConfig, EndpointInfo, EndpointKey, Event, IpcacheEntry, MetricsKey, MetricsValue,
    NatEntry4, NatKey4, NodeConfig, PrefilterEntry, maps as names, prefilter::PREFILTER_DENY,
};
use weft_model::Ipv4Cidr;

use crate::events::decode_event;

pub struct DatapathMaps {
    events: RingBuf<MapData>,
    metrics: PerCpuArray<MapData, MetricsValue>,
    config: Array<MapData, DatapathConfig>,
    node: Array<MapData, NodeConfig>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    ipcache: LpmTrie<MapData, [u8; 4], IpcacheEntry>,
    /// An LRU hash in the kernel; aya reads it through its `HashMap` type.
    snat: HashMap<MapData, NatKey4, NatEntry4>,
    prefilter: LpmTrie<MapData, [u8; 4], PrefilterEntry>,
}

/// The maps of a node, untyped, in the order [`DatapathMaps::from_maps`] takes them.
struct RawMaps {
    events: Map,
    metrics: Map,
    config: Map,
    node: Map,
    endpoints: Map,
    ipcache: Map,
    snat: Map,
    prefilter: Map,
}

impl RawMaps {
    fn collect(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<RawMaps> {
        Ok(RawMaps {
            events: get(names::EVENTS)?,
            metrics: get(names::METRICS)?,
            config: get(names::CONFIG)?,
            node: get(names::NODE)?,
            endpoints: get(names::ENDPOINTS)?,
            ipcache: get(names::IPCACHE4)?,
            snat: get(names::SNAT4)?,
            prefilter: get(names::PREFILTER4)?,
        })
    }
}

impl DatapathMaps {
    /// Opens the maps a node's datapath pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<DatapathMaps> {
        DatapathMaps::from_maps(RawMaps::collect(|name| pinned_map(pin_dir, name))?)
    }

    /// Takes the maps out of a loaded object (its programs keep their own references).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<DatapathMaps> {
        DatapathMaps::from_maps(RawMaps::collect(|name| taken_map(ebpf, name))?)
    }

    fn from_maps(raw: RawMaps) -> anyhow::Result<DatapathMaps> {
        Ok(DatapathMaps {
            events: RingBuf::try_from(raw.events).context(names::EVENTS)?,
            metrics: PerCpuArray::try_from(raw.metrics).context(names::METRICS)?,
            config: Array::try_from(raw.config).context(names::CONFIG)?,
            node: Array::try_from(raw.node).context(names::NODE)?,
            endpoints: HashMap::try_from(raw.endpoints).context(names::ENDPOINTS)?,
            ipcache: LpmTrie::try_from(raw.ipcache).context(names::IPCACHE4)?,
            snat: HashMap::try_from(raw.snat).context(names::SNAT4)?,
            prefilter: LpmTrie::try_from(raw.prefilter).context(names::PREFILTER4)?,
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

    pub fn node(&self) -> anyhow::Result<NodeConfig> {
        self.node.get(&0, 0).context("reading weft_node")
    }

    pub fn set_node(&mut self, node: NodeConfig) -> anyhow::Result<()> {
        self.node.set(0, node, 0).context("writing weft_node")
    }

    pub fn endpoints(&self) -> anyhow::Result<BTreeMap<EndpointKey, EndpointInfo>> {
        self.endpoints
            .iter()
            .map(|entry| entry.context("reading weft_endpoints"))
            .collect()
    }

    pub fn put_endpoint(&mut self, key: EndpointKey, info: EndpointInfo) -> anyhow::Result<()> {
        self.endpoints
            .insert(key, info, 0)
            .with_context(|| format!("writing weft_endpoints[{}]", Ipv4Addr::from(key.addr)))
    }

    /// Deleting an absent key succeeds.
    pub fn delete_endpoint(&mut self, key: EndpointKey) -> anyhow::Result<()> {
        ignore_absent(self.endpoints.remove(&key))
            .with_context(|| format!("deleting weft_endpoints[{}]", Ipv4Addr::from(key.addr)))
    }

    /// Every ipcache entry. A key with host bits set cannot have been written by Weft (its
    /// prefixes are canonical) and is reported as an error rather than hidden.
    pub fn ipcache(&self) -> anyhow::Result<BTreeMap<Ipv4Cidr, IpcacheEntry>> {
        let mut out = BTreeMap::new();
        for entry in self.ipcache.iter() {
            let (key, value) = entry.context("reading weft_ipcache4")?;
            out.insert(cidr_of_key(&key)?, value);
        }
        Ok(out)
    }

    pub fn put_ipcache(&mut self, cidr: Ipv4Cidr, entry: IpcacheEntry) -> anyhow::Result<()> {
        self.ipcache
            .insert(&lpm_key(cidr), entry, 0)
            .with_context(|| format!("writing weft_ipcache4[{cidr}]"))
    }

    /// Deleting an absent prefix succeeds.
    pub fn delete_ipcache(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        ignore_absent(self.ipcache.remove(&lpm_key(cidr)))
            .with_context(|| format!("deleting weft_ipcache4[{cidr}]"))
    }

    /// The denied prefixes of `weft_prefilter4`.
    pub fn prefilter(&self) -> anyhow::Result<BTreeSet<Ipv4Cidr>> {
        let mut out = BTreeSet::new();
        for entry in self.prefilter.keys() {
            out.insert(cidr_of_key(&entry.context("reading weft_prefilter4")?)?);
        }
        Ok(out)
    }

    /// Denies the packets from `cidr` on the external device.
    pub fn put_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        let entry = PrefilterEntry {
            action: PREFILTER_DENY,
        };
        self.prefilter
            .insert(&lpm_key(cidr), entry, 0)
            .with_context(|| format!("writing weft_prefilter4[{cidr}]"))
    }

    /// Deleting an absent prefix succeeds.
    pub fn delete_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        ignore_absent(self.prefilter.remove(&lpm_key(cidr)))
            .with_context(|| format!("deleting weft_prefilter4[{cidr}]"))
    }

    /// Writes a masquerade entry (the datapath makes them; tests and repairs may too).
    pub fn put_snat(&mut self, key: NatKey4, entry: NatEntry4) -> anyhow::Result<()> {
        self.snat
            .insert(key, entry, 0)
            .context("writing weft_snat4")
    }

    /// Deleting an absent entry succeeds.
    pub fn delete_snat(&mut self, key: NatKey4) -> anyhow::Result<()> {
        ignore_absent(self.snat.remove(&key)).context("deleting from weft_snat4")
    }

    /// Every masquerade entry, for listing.
    pub fn snat(&self) -> anyhow::Result<Vec<(NatKey4, NatEntry4)>> {
        self.snat
            .iter()
            .map(|entry| entry.context("reading weft_snat4"))
            .collect()
    }
}

/// The map `name` pinned in `pin_dir`.
pub(crate) fn pinned_map(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

/// The map `name` taken out of a loaded object.
pub(crate) fn taken_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the BPF object has no map {name}"))
}

/// The trie key of a prefix: the prefix length and the network address in network order.
pub fn lpm_key(cidr: Ipv4Cidr) -> Key<[u8; 4]> {
    Key::new(u32::from(cidr.prefix_len()), cidr.network().octets())
}

fn cidr_of_key(key: &Key<[u8; 4]>) -> anyhow::Result<Ipv4Cidr> {
    let prefix_len = u8::try_from(key.prefix_len())
        .map_err(|_| anyhow!("LPM key with prefix length {}", key.prefix_len()))?;
    Ipv4Cidr::new(Ipv4Addr::from(key.data()), prefix_len).context("LPM key")
}

pub(crate) fn ignore_absent(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod root_tests {
    use weft_common::ipcache::identity::REMOTE_NODE;

    use super::*;
    use crate::{Datapath, NodeDatapath, bpffs::TempPinDir, running_as_root};

    #[test]
    fn node_endpoints_and_ipcache_round_trip_through_the_kernel_maps() {
        if !running_as_root("node_endpoints_and_ipcache_round_trip_through_the_kernel_maps") {
            return;
        }
        let pins = TempPinDir::new("weft-test").unwrap();
        let mut dp = NodeDatapath::open(pins.path()).unwrap();

        assert!(!dp.node().unwrap().is_configured());
        let node = NodeConfig {
            ipv4: [198, 51, 100, 1],
            external_ifindex: 2,
            vni: 2,
            snat_port_min: 32768,
            snat_port_max: 65535,
            flags: 1,
            _pad: 0,
            netns_cookie: 0,
        };
        dp.set_node(node).unwrap();
        assert_eq!(dp.node().unwrap(), node);

        let key = EndpointKey {
            addr: [10, 42, 0, 10],
        };
        let info = EndpointInfo {
            ifindex: 9,
            identity: 4242,
            mac: [2, 0, 0, 0, 0, 1],
            host_mac: [2, 0, 0, 0, 0, 2],
            _pad: 0,
        };
        dp.put_endpoint(key, info).unwrap();
        assert_eq!(dp.endpoints().unwrap(), BTreeMap::from([(key, info)]));
        dp.delete_endpoint(key).unwrap();
        dp.delete_endpoint(key).unwrap();
        assert!(dp.endpoints().unwrap().is_empty());

        let subnet: Ipv4Cidr = "10.42.1.0/24".parse().unwrap();
        let host: Ipv4Cidr = "10.42.1.10/32".parse().unwrap();
        let via_vps2 = IpcacheEntry {
            identity: REMOTE_NODE,
            tunnel_endpoint: [198, 51, 100, 2],
        };
        let pod = IpcacheEntry {
            identity: 5000,
            tunnel_endpoint: [198, 51, 100, 2],
        };
        dp.put_ipcache(subnet, via_vps2).unwrap();
        dp.put_ipcache(host, pod).unwrap();
        assert_eq!(
            dp.ipcache().unwrap(),
            BTreeMap::from([(subnet, via_vps2), (host, pod)])
        );
        // Longest prefix match in the kernel: the /32 wins for its address, the /24 elsewhere.
        let maps = DatapathMaps::from_pins(pins.path()).unwrap();
        let lookup = |addr: [u8; 4]| maps.ipcache.get(&Key::new(32, addr), 0).ok();
        assert_eq!(lookup([10, 42, 1, 10]), Some(pod));
        assert_eq!(lookup([10, 42, 1, 77]), Some(via_vps2));
        assert_eq!(lookup([10, 42, 2, 1]), None);
        dp.delete_ipcache(host).unwrap();
        dp.delete_ipcache(host).unwrap();
        assert_eq!(dp.ipcache().unwrap(), BTreeMap::from([(subnet, via_vps2)]));
        assert!(maps.snat().unwrap().is_empty());

        // A second opener (a restarted agent) adopts the pinned maps with their contents.
        drop(dp);
        let adopted = NodeDatapath::open(pins.path()).unwrap();
        assert_eq!(adopted.node().unwrap(), node);
        assert_eq!(adopted.ipcache().unwrap().len(), 1);
    }
}
