//! An in-memory [`Datapath`] for tests without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::bail;
use weft_common::{
    CtEntry4, CtKey4, DatapathConfig, EndpointInfo, EndpointKey, Hook, IpcacheEntry,
    Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NatEntry4,
    NatKey4, NodeConfig, maps as names,
};
use weft_model::{Ipv4Cidr, desired::Attachment, lb_capacity::LbCapacity};

use crate::Datapath;

/// Behaves like the kernel where it matters to callers: attaching to an interface that does not
/// exist fails, attaching twice fails, detaching what is not attached fails, deleting an absent
/// map key succeeds, ipcache keys are canonical prefixes (an [`Ipv4Cidr`] cannot have host bits),
/// a load-balancer map refuses a new entry when it is full, and the reverse-NAT array an index
/// past its end, with E2BIG as the kernel does.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    /// The sizes of the load-balancer maps.
    pub lb_capacity: LbCapacity,
    pub interfaces: BTreeSet<String>,
    pub attached: BTreeSet<Attachment>,
    pub config: DatapathConfig,
    pub node: NodeConfig,
    pub endpoints: BTreeMap<EndpointKey, EndpointInfo>,
    pub ipcache: BTreeMap<Ipv4Cidr, IpcacheEntry>,
    pub lb_services: BTreeMap<Lb4Key, Lb4Service>,
    pub lb_backends: BTreeMap<u32, Lb4Backend>,
    /// The reverse-NAT array's entries that are not all-zero.
    pub lb_revnat: BTreeMap<u16, Lb4RevNat>,
    pub maglev: BTreeMap<u16, Vec<u32>>,
    pub ct: BTreeMap<CtKey4, CtEntry4>,
    pub affinity: BTreeMap<Lb4AffinityKey, Lb4AffinityEntry>,
    pub snat: BTreeMap<NatKey4, NatEntry4>,
    pub prefilter: BTreeSet<Ipv4Cidr>,
    /// Interfaces whose driver has no native XDP: attaching `xdp_entry` to them fails.
    pub without_native_xdp: BTreeSet<String>,
    /// Cgroups that exist: socket LB attaches only to these.
    pub cgroups: BTreeSet<PathBuf>,
    /// The cgroup socket LB is attached to.
    pub socket_lb: Option<PathBuf>,
    /// Every call that changed state, in order, for assertions.
    pub log: Vec<String>,
}

impl FakeDatapath {
    pub fn with_interfaces<'a>(names: impl IntoIterator<Item = &'a str>) -> FakeDatapath {
        FakeDatapath {
            interfaces: names.into_iter().map(str::to_string).collect(),
            ..FakeDatapath::default()
        }
    }
}

impl Datapath for FakeDatapath {
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        if !self.interfaces.contains(&attachment.ifname) {
            bail!("no interface {}", attachment.ifname);
        }
        if attachment.hook == Hook::Xdp && self.without_native_xdp.contains(&attachment.ifname) {
            bail!("{} has no native XDP", attachment.ifname);
        }
        if !self.attached.insert(attachment.clone()) {
            bail!(
                "{} already has {}",
                attachment.ifname,
                attachment.hook.name()
            );
        }
        self.log.push(format!(
            "attach {} {}",
            attachment.hook.name(),
            attachment.ifname
        ));
        Ok(())
    }

    fn detach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        if !self.attached.remove(attachment) {
            bail!("{} has no {}", attachment.ifname, attachment.hook.name());
        }
        self.log.push(format!(
            "detach {} {}",
            attachment.hook.name(),
            attachment.ifname
        ));
        Ok(())
    }

    fn attachments(&self) -> anyhow::Result<BTreeSet<Attachment>> {
        Ok(self.attached.clone())
    }

    fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.config = config;
        self.log.push(format!("config flags={:#x}", config.flags));
        Ok(())
    }

    fn set_node(&mut self, node: NodeConfig) -> anyhow::Result<()> {
        self.node = node;
        self.log.push(format!(
            "node ipv4={} ifindex={} flags={:#x}",
            std::net::Ipv4Addr::from(node.ipv4),
            node.external_ifindex,
            node.flags
        ));
        Ok(())
    }

    fn node(&self) -> anyhow::Result<NodeConfig> {
        Ok(self.node)
    }

    fn endpoints(&self) -> anyhow::Result<BTreeMap<EndpointKey, EndpointInfo>> {
        Ok(self.endpoints.clone())
    }

    fn put_endpoint(&mut self, key: EndpointKey, info: EndpointInfo) -> anyhow::Result<()> {
        if !self.endpoints.contains_key(&key)
            && self.endpoints.len() >= weft_common::endpoint::ENDPOINTS_MAX as usize
        {
            bail!("weft_endpoints is full");
        }
        self.endpoints.insert(key, info);
        self.log.push(format!(
            "put endpoint {} ifindex={} identity={}",
            std::net::Ipv4Addr::from(key.addr),
            info.ifindex,
            info.identity
        ));
        Ok(())
    }

    fn delete_endpoint(&mut self, key: EndpointKey) -> anyhow::Result<()> {
        if self.endpoints.remove(&key).is_some() {
            self.log.push(format!(
                "delete endpoint {}",
                std::net::Ipv4Addr::from(key.addr)
            ));
        }
        Ok(())
    }

    fn ipcache(&self) -> anyhow::Result<BTreeMap<Ipv4Cidr, IpcacheEntry>> {
        Ok(self.ipcache.clone())
    }

    fn put_ipcache(&mut self, cidr: Ipv4Cidr, entry: IpcacheEntry) -> anyhow::Result<()> {
        if !self.ipcache.contains_key(&cidr)
            && self.ipcache.len() >= weft_common::ipcache::IPCACHE_MAX as usize
        {
            bail!("weft_ipcache4 is full");
        }
        self.ipcache.insert(cidr, entry);
        self.log.push(format!(
            "put ipcache {cidr} identity={} tunnel={}",
            entry.identity,
            std::net::Ipv4Addr::from(entry.tunnel_endpoint)
        ));
        Ok(())
    }

    fn prefilter(&self) -> anyhow::Result<BTreeSet<Ipv4Cidr>> {
        Ok(self.prefilter.clone())
    }

    fn put_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        if !self.prefilter.contains(&cidr)
            && self.prefilter.len() >= weft_common::prefilter::PREFILTER_MAX as usize
        {
            bail!("weft_prefilter4 is full");
        }
        self.prefilter.insert(cidr);
        self.log.push(format!("put prefilter {cidr}"));
        Ok(())
    }

    fn delete_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        if self.prefilter.remove(&cidr) {
            self.log.push(format!("delete prefilter {cidr}"));
        }
        Ok(())
    }

    fn delete_ipcache(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()> {
        if self.ipcache.remove(&cidr).is_some() {
            self.log.push(format!("delete ipcache {cidr}"));
        }
        Ok(())
    }

    fn lb_services(&self) -> anyhow::Result<BTreeMap<Lb4Key, Lb4Service>> {
        Ok(self.lb_services.clone())
    }

    fn lb_capacity(&self) -> anyhow::Result<LbCapacity> {
        Ok(self.lb_capacity)
    }

    fn put_lb_service(&mut self, key: Lb4Key, value: Lb4Service) -> anyhow::Result<()> {
        let max = self.lb_capacity.services;
        put_bounded(&mut self.lb_services, key, value, max)
            .map_err(|e| e.context(format!("writing {}[{key:?}]", names::LB4_SERVICES)))?;
        self.log.push(format!("put service {key:?}"));
        Ok(())
    }

    fn delete_lb_service(&mut self, key: Lb4Key) -> anyhow::Result<()> {
        if self.lb_services.remove(&key).is_some() {
            self.log.push(format!("delete service {key:?}"));
        }
        Ok(())
    }

    fn lb_backends(&self) -> anyhow::Result<BTreeMap<u32, Lb4Backend>> {
        Ok(self.lb_backends.clone())
    }

    fn put_lb_backend(&mut self, id: u32, backend: Lb4Backend) -> anyhow::Result<()> {
        let max = self.lb_capacity.backends;
        put_bounded(&mut self.lb_backends, id, backend, max)
            .map_err(|e| e.context(format!("writing {}[{id}]", names::LB4_BACKENDS)))?;
        self.log.push(format!("put backend {id}"));
        Ok(())
    }

    fn delete_lb_backend(&mut self, id: u32) -> anyhow::Result<()> {
        if self.lb_backends.remove(&id).is_some() {
            self.log.push(format!("delete backend {id}"));
        }
        Ok(())
    }

    fn lb_revnat(&self, id: u16) -> anyhow::Result<Lb4RevNat> {
        Ok(self.lb_revnat.get(&id).copied().unwrap_or_default())
    }

    fn set_lb_revnat(&mut self, id: u16, entry: Lb4RevNat) -> anyhow::Result<()> {
        if u32::from(id) >= self.lb_capacity.revnat {
            return Err(e2big().context(format!("writing {}[{id}]", names::LB4_REVNAT)));
        }
        if entry == Lb4RevNat::default() {
            self.lb_revnat.remove(&id);
        } else {
            self.lb_revnat.insert(id, entry);
        }
        self.log.push(format!("set revnat {id}"));
        Ok(())
    }

    fn maglev_table(&self, id: u16) -> anyhow::Result<Option<Vec<u32>>> {
        Ok(self.maglev.get(&id).cloned())
    }

    fn put_maglev_table(&mut self, id: u16, table: &[u32]) -> anyhow::Result<()> {
        let max = self.lb_capacity.maglev;
        put_bounded(&mut self.maglev, id, table.to_vec(), max)
            .map_err(|e| e.context(format!("writing {}[{id}]", names::LB4_MAGLEV)))?;
        self.log.push(format!("put maglev {id}"));
        Ok(())
    }

    fn delete_maglev_table(&mut self, id: u16) -> anyhow::Result<()> {
        if self.maglev.remove(&id).is_some() {
            self.log.push(format!("delete maglev {id}"));
        }
        Ok(())
    }

    fn ct_entries(&self) -> anyhow::Result<Vec<(CtKey4, CtEntry4)>> {
        Ok(self.ct.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn delete_ct(&mut self, key: CtKey4) -> anyhow::Result<()> {
        self.ct.remove(&key);
        Ok(())
    }

    fn affinity_entries(&self) -> anyhow::Result<Vec<(Lb4AffinityKey, Lb4AffinityEntry)>> {
        Ok(self.affinity.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn delete_affinity(&mut self, key: Lb4AffinityKey) -> anyhow::Result<()> {
        self.affinity.remove(&key);
        Ok(())
    }

    fn snat_entries(&self) -> anyhow::Result<Vec<(NatKey4, NatEntry4)>> {
        Ok(self.snat.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn delete_snat(&mut self, key: NatKey4) -> anyhow::Result<()> {
        self.snat.remove(&key);
        Ok(())
    }

    fn socket_lb(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.socket_lb.clone())
    }

    fn set_socket_lb(&mut self, cgroup: Option<&Path>) -> anyhow::Result<()> {
        if self.socket_lb.as_deref() == cgroup {
            return Ok(());
        }
        if let Some(cgroup) = cgroup
            && !self.cgroups.contains(cgroup)
        {
            bail!("no cgroup {}", cgroup.display());
        }
        if let Some(old) = self.socket_lb.take() {
            self.log.push(format!("detach socket-lb {}", old.display()));
        }
        if let Some(cgroup) = cgroup {
            self.log
                .push(format!("attach socket-lb {}", cgroup.display()));
            self.socket_lb = Some(cgroup.to_path_buf());
        }
        Ok(())
    }
}

/// Inserts as a kernel hash map of `max` entries would: a new key fails with E2BIG when it is
/// full.
fn put_bounded<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    max: u32,
) -> anyhow::Result<()> {
    if !map.contains_key(&key) && map.len() >= max as usize {
        return Err(e2big());
    }
    map.insert(key, value);
    Ok(())
}

/// The kernel's answer to a write into a full map: "Argument list too long".
fn e2big() -> anyhow::Error {
    std::io::Error::from_raw_os_error(libc::E2BIG).into()
}

#[cfg(test)]
mod tests {
    use weft_model::{
        Acceleration,
        desired::{Endpoint, ExternalDevice},
    };

    use super::*;
    use crate::{AttachmentOutcome, reconcile_attachments};

    fn eth0() -> ExternalDevice {
        ExternalDevice::new("eth0", Acceleration::Native)
    }

    fn ep(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            host_ifname: format!("lxc{name}"),
        }
    }

    #[test]
    fn reconcile_attaches_both_programs_per_endpoint_then_is_a_no_op() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca", "lxcb"]);
        let changes = reconcile_attachments(&mut dp, &eth0(), &[ep("a"), ep("b")])
            .and_then(AttachmentOutcome::into_result)
            .expect("reconciles");
        assert_eq!(changes.attach.len(), 7);
        assert_eq!(
            dp.log,
            [
                "attach from-netdev eth0",
                "attach to-netdev eth0",
                "attach xdp eth0",
                "attach from-container lxca",
                "attach to-container lxca",
                "attach from-container lxcb",
                "attach to-container lxcb"
            ]
        );
        let again = reconcile_attachments(&mut dp, &eth0(), &[ep("a"), ep("b")])
            .and_then(AttachmentOutcome::into_result)
            .expect("reconciles");
        assert!(again.is_empty());
        assert_eq!(dp.log.len(), 7, "a second pass changes nothing");
    }

    #[test]
    fn reconcile_detaches_only_removed_endpoints() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca", "lxcb"]);
        reconcile_attachments(&mut dp, &eth0(), &[ep("a"), ep("b")])
            .and_then(AttachmentOutcome::into_result)
            .expect("reconciles");
        dp.log.clear();
        reconcile_attachments(&mut dp, &eth0(), &[ep("b")])
            .and_then(AttachmentOutcome::into_result)
            .expect("reconciles");
        assert_eq!(
            dp.log,
            ["detach from-container lxca", "detach to-container lxca"]
        );
    }

    #[test]
    fn map_operations_round_trip_and_deleting_the_absent_is_ok() {
        let mut dp = FakeDatapath::default();
        let key = EndpointKey {
            addr: [10, 42, 1, 10],
        };
        let info = EndpointInfo {
            ifindex: 7,
            identity: 300,
            ..EndpointInfo::default()
        };
        dp.put_endpoint(key, info).unwrap();
        assert_eq!(dp.endpoints().unwrap().get(&key), Some(&info));
        dp.delete_endpoint(key).unwrap();
        dp.delete_endpoint(key).unwrap();
        assert!(dp.endpoints().unwrap().is_empty());

        let cidr: Ipv4Cidr = "10.42.2.0/24".parse().unwrap();
        let entry = IpcacheEntry {
            identity: 3,
            tunnel_endpoint: [198, 51, 100, 2],
        };
        dp.put_ipcache(cidr, entry).unwrap();
        assert_eq!(dp.ipcache().unwrap().get(&cidr), Some(&entry));
        dp.delete_ipcache(cidr).unwrap();
        dp.delete_ipcache(cidr).unwrap();
        assert!(dp.ipcache().unwrap().is_empty());

        let node = NodeConfig {
            external_ifindex: 2,
            ..NodeConfig::default()
        };
        dp.set_node(node).unwrap();
        assert!(dp.node().unwrap().is_configured());
    }

    #[test]
    fn full_load_balancer_maps_refuse_new_entries_as_the_kernel_does() {
        let mut dp = FakeDatapath {
            lb_capacity: LbCapacity::for_lb_map_max(16),
            ..FakeDatapath::default()
        };
        for id in 1..=16 {
            dp.put_lb_backend(id, Lb4Backend::default()).unwrap();
            dp.put_maglev_table(id as u16, &[id]).unwrap();
        }
        let err = dp.put_lb_backend(17, Lb4Backend::default()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "writing weft_lb4_backends[17]: Argument list too long (os error 7)"
        );
        dp.put_lb_backend(16, Lb4Backend::default())
            .expect("replacing an entry needs no room");
        assert!(dp.put_maglev_table(17, &[1]).is_err());
        dp.set_lb_revnat(15, Lb4RevNat::default()).unwrap();
        let err = dp.set_lb_revnat(16, Lb4RevNat::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("Argument list too long"),
            "{err:#}"
        );
        dp.delete_lb_backend(1).unwrap();
        dp.put_lb_backend(17, Lb4Backend::default())
            .expect("a deletion makes room");
        assert_eq!(dp.lb_capacity().unwrap().services, 16);
    }

    #[test]
    fn a_failed_attach_is_reported_with_the_interface_and_leaves_others_applied() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca"]);
        let err = reconcile_attachments(&mut dp, &eth0(), &[ep("a"), ep("zz")])
            .and_then(AttachmentOutcome::into_result)
            .expect_err("lxczz is missing");
        assert!(format!("{err:#}").contains("lxczz"), "{err:#}");
        assert_eq!(dp.attached.len(), 5, "eth0's and lxca's attachments stay");
        // Level-triggered: once the interface exists, the next pass completes the work.
        dp.interfaces.insert("lxczz".into());
        let changes = reconcile_attachments(&mut dp, &eth0(), &[ep("a"), ep("zz")])
            .and_then(AttachmentOutcome::into_result)
            .expect("reconciles");
        assert_eq!(changes.attach.len(), 2);
    }
}
