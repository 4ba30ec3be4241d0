//! A node's datapath in the kernel: the object loaded with its maps pinned in the node's pin
//! directory, programs attached with tcx, each link pinned under `links/` so attachments outlive
//! the process that made them and are found again by the next one.
//!
//! Interface names are resolved in the calling thread's network namespace: callers run these
//! methods from a thread that has entered the node's namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        LinkOrder, ProgramInfo, SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        loaded_programs,
        tc::TcAttachOptions,
    },
};
use weft_common::lb::LB4_AFFINITY_MAX;
use weft_common::{
    CtEntry4, CtKey4, DatapathConfig, Hook, Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key,
    Lb4RevNat, Lb4Service, NatEntry4, NatKey4, maps as names,
};
use weft_model::{
    desired::Attachment,
    lb_capacity::{LbCapacity, LbMap},
};

use crate::{
    Datapath, DatapathMaps, LbMaps,
    object::{AttachKind, BPF_OBJECT, load_programs, program, program_for},
};

pub struct NodeDatapath {
    pin_dir: PathBuf,
    ebpf: Ebpf,
    /// Opened once: the agent writes thousands of service entries in one pass.
    lb: LbMaps,
}

impl NodeDatapath {
    /// Loads the programs, creating the node's maps in `pin_dir` or adopting those already
    /// pinned there; the load-balancer maps it creates have the object's sizes.
    pub fn open(pin_dir: &Path) -> anyhow::Result<NodeDatapath> {
        NodeDatapath::open_sized(pin_dir, LB4_AFFINITY_MAX, &LbCapacity::default())
    }

    /// [`NodeDatapath::open`], creating the load-balancer maps with `lb` entries each and the
    /// affinity map with `affinity` (`bpf.lbMapMax`).
    ///
    /// A map already pinned is adopted as it is, whatever its size: the kernel cannot resize
    /// a map, and the attached programs use the pinned ones, so replacing them would take the
    /// node's services away until every program is attached again. [`Datapath::lb_capacity`]
    /// says the size in force; a new size takes effect when the node's pins are removed
    /// (README.md, "Capacity").
    pub fn open_sized(
        pin_dir: &Path,
        affinity: u32,
        lb: &LbCapacity,
    ) -> anyhow::Result<NodeDatapath> {
        check_pinned_layouts(pin_dir)?;
        let links = links_dir(pin_dir);
        fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
        let mut loader = EbpfLoader::new();
        for name in names::ALL {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        for map in LbMap::ALL {
            loader.map_max_entries(map.name(), lb.max_entries(map));
        }
        loader.map_max_entries(names::LB4_AFFINITY, affinity);
        let mut ebpf = loader.load(BPF_OBJECT).with_context(|| {
            format!("loading the BPF object with maps in {}", pin_dir.display())
        })?;
        load_programs(&mut ebpf)?;
        let lb = LbMaps::from_pins(pin_dir)?;
        Ok(NodeDatapath {
            pin_dir: pin_dir.to_path_buf(),
            ebpf,
            lb,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn link_pin(&self, attachment: &Attachment) -> PathBuf {
        links_dir(&self.pin_dir).join(link_pin_name(attachment))
    }
}

/// Refuses to adopt a map pinned in `pin_dir` whose key or value size differs from the one
/// this build's programs use: the pin of another Weft version (an older agent's `weft_snat4`
/// has 16-byte values, this one's 24). The loader would otherwise hand the old map to the new
/// programs, which the verifier refuses (or which would read the old values wrongly). Nothing
/// is changed: the node's datapath keeps running as it is until it is removed.
pub fn check_pinned_layouts(pin_dir: &Path) -> anyhow::Result<()> {
    let object = aya_obj::Object::parse(BPF_OBJECT).context("parsing the BPF object")?;
    for name in names::ALL {
        let pin = pin_dir.join(name);
        let Some(want) = object.maps.get(name) else {
            continue;
        };
        if !pin.exists() {
            continue;
        }
        let have = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading the map pinned at {}", pin.display()))?;
        let sizes = |key: u32, value: u32| format!("{key}-byte keys and {value}-byte values");
        let (pinned, expected) = (
            sizes(have.key_size(), have.value_size()),
            sizes(want.key_size(), want.value_size()),
        );
        if pinned != expected {
            bail!(
                "the map {name} pinned at {} has {pinned}, this Weft's programs use {expected}: \
                 it was made by another Weft version. Refusing to adopt it (the running \
                 datapath is left as it is); remove the node's datapath (its programs' links \
                 under {} and the pins in {}; `weft lab down` in a lab) and start again",
                pin.display(),
                links_dir(pin_dir).display(),
                pin_dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// bpffs refuses '.' in names; hook names carry no '@', interface names may not.
fn link_pin_name(attachment: &Attachment) -> String {
    format!("{}@{}", attachment.hook.name(), attachment.ifname)
}

fn parse_link_pin_name(name: &str) -> Option<Attachment> {
    let (hook, ifname) = name.split_once('@')?;
    Some(Attachment {
        ifname: ifname.to_string(),
        hook: Hook::from_name(hook)?,
    })
}

/// Detaches the link pinned at `pin` by removing its pin.
pub(crate) fn unpin_link(pin: &Path) -> anyhow::Result<()> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            // Unpinning drops the last reference once `link` goes out of scope: the kernel
            // detaches.
            link.unpin()
                .with_context(|| format!("unpinning {}", pin.display()))?;
        }
        // A link whose interface (or cgroup) vanished may no longer open as a link; the pin is
        // all that is left of it, and removing it is the whole detach.
        Err(open_error) if pin.exists() => fs::remove_file(pin).with_context(|| {
            format!(
                "removing pin {} (it does not open: {open_error})",
                pin.display()
            )
        })?,
        Err(e) => {
            return Err(e).with_context(|| format!("opening pinned link {}", pin.display()));
        }
    }
    Ok(())
}

/// Attachments recorded in a node's pin directory, without loading anything.
pub fn pinned_attachments(pin_dir: &Path) -> anyhow::Result<BTreeSet<Attachment>> {
    let dir = links_dir(pin_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = BTreeSet::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(attachment) = entry.file_name().to_str().and_then(parse_link_pin_name) {
            out.insert(attachment);
        }
    }
    Ok(out)
}

/// Names of the programs the kernel runs at a hook of an interface, in order, asking the
/// kernel (tcx query; for XDP, the interface's XDP program id).
pub fn attached_programs(ifname: &str, hook: Hook) -> anyhow::Result<Vec<String>> {
    let (_, kind) = program_for(hook).ok_or_else(|| anyhow!("{} has no program", hook.name()))?;
    match kind {
        AttachKind::Tcx(attach_type) => {
            let (_, programs) = SchedClassifier::query_tcx(ifname, attach_type)
                .with_context(|| format!("querying tcx {} of {ifname}", hook.name()))?;
            Ok(programs.iter().map(program_name).collect())
        }
        AttachKind::Xdp => {
            let Some(id) = xdp_program_id(ifname)? else {
                return Ok(Vec::new());
            };
            let info = loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .ok_or_else(|| anyhow!("XDP program {id} of {ifname} is gone"))?;
            Ok(vec![program_name(&info)])
        }
    }
}

fn program_name(info: &ProgramInfo) -> String {
    info.name_as_str().unwrap_or("?").to_string()
}

/// The id of the XDP program on `ifname`, from rtnetlink (via `ip -json`).
fn xdp_program_id(ifname: &str) -> anyhow::Result<Option<u32>> {
    let out = std::process::Command::new("ip")
        .args(["-json", "-details", "link", "show", "dev", ifname])
        .output()
        .context("running ip link show")?;
    if !out.status.success() {
        bail!(
            "ip link show dev {ifname}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("ip -json output")?;
    Ok(links
        .get(0)
        .and_then(|l| l.get("xdp"))
        .and_then(|x| x.get("prog"))
        .and_then(|p| p.get("id"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|id| u32::try_from(id).ok()))
}

impl Datapath for NodeDatapath {
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        let (name, kind) = program_for(attachment.hook)
            .ok_or_else(|| anyhow!("{} has no program", attachment.hook.name()))?;
        let pin = self.link_pin(attachment);
        if pin.exists() {
            bail!("{} already carries {name}", attachment.ifname);
        }
        let ifname = attachment.ifname.as_str();
        let link: FdLink = match kind {
            AttachKind::Tcx(attach_type) => {
                let program = program::<SchedClassifier>(&mut self.ebpf, name)?;
                let order = TcAttachOptions::TcxOrder(LinkOrder::default());
                let id = program
                    .attach_with_options(ifname, attach_type, order)
                    .with_context(|| format!("tcx attach of {name} to {ifname}"))?;
                program
                    .take_link(id)?
                    .try_into()
                    .context("a tcx link is an fd link")?
            }
            AttachKind::Xdp => {
                let program = program::<Xdp>(&mut self.ebpf, name)?;
                let id = program
                    .attach(ifname, XdpMode::Driver)
                    .with_context(|| format!("native XDP attach of {name} to {ifname}"))?;
                program
                    .take_link(id)?
                    .try_into()
                    .context("an XDP link is an fd link")?
            }
        };
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    fn detach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        unpin_link(&self.link_pin(attachment))
    }

    fn attachments(&self) -> anyhow::Result<BTreeSet<Attachment>> {
        pinned_attachments(&self.pin_dir)
    }

    fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.set_config(config)
    }

    fn set_node(&mut self, node: weft_common::NodeConfig) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.set_node(node)
    }

    fn node(&self) -> anyhow::Result<weft_common::NodeConfig> {
        DatapathMaps::from_pins(&self.pin_dir)?.node()
    }

    fn endpoints(
        &self,
    ) -> anyhow::Result<
        std::collections::BTreeMap<weft_common::EndpointKey, weft_common::EndpointInfo>,
    > {
        DatapathMaps::from_pins(&self.pin_dir)?.endpoints()
    }

    fn put_endpoint(
        &mut self,
        key: weft_common::EndpointKey,
        info: weft_common::EndpointInfo,
    ) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.put_endpoint(key, info)
    }

    fn delete_endpoint(&mut self, key: weft_common::EndpointKey) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.delete_endpoint(key)
    }

    fn ipcache(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<weft_model::Ipv4Cidr, weft_common::IpcacheEntry>>
    {
        DatapathMaps::from_pins(&self.pin_dir)?.ipcache()
    }

    fn put_ipcache(
        &mut self,
        cidr: weft_model::Ipv4Cidr,
        entry: weft_common::IpcacheEntry,
    ) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.put_ipcache(cidr, entry)
    }

    fn delete_ipcache(&mut self, cidr: weft_model::Ipv4Cidr) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.delete_ipcache(cidr)
    }

    fn prefilter(&self) -> anyhow::Result<std::collections::BTreeSet<weft_model::Ipv4Cidr>> {
        DatapathMaps::from_pins(&self.pin_dir)?.prefilter()
    }

    fn put_prefilter(&mut self, cidr: weft_model::Ipv4Cidr) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.put_prefilter(cidr)
    }

    fn delete_prefilter(&mut self, cidr: weft_model::Ipv4Cidr) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.delete_prefilter(cidr)
    }

    fn lb_capacity(&self) -> anyhow::Result<LbCapacity> {
        Ok(self.lb.capacity())
    }

    fn lb_services(&self) -> anyhow::Result<BTreeMap<Lb4Key, Lb4Service>> {
        Ok(self.lb.services()?.into_iter().collect())
    }

    fn put_lb_service(&mut self, key: Lb4Key, value: Lb4Service) -> anyhow::Result<()> {
        self.lb.put_service(key, value)
    }

    fn delete_lb_service(&mut self, key: Lb4Key) -> anyhow::Result<()> {
        self.lb.delete_service(key)
    }

    fn lb_backends(&self) -> anyhow::Result<BTreeMap<u32, Lb4Backend>> {
        Ok(self.lb.backends()?.into_iter().collect())
    }

    fn put_lb_backend(&mut self, id: u32, backend: Lb4Backend) -> anyhow::Result<()> {
        self.lb.put_backend(id, backend)
    }

    fn delete_lb_backend(&mut self, id: u32) -> anyhow::Result<()> {
        self.lb.delete_backend(id)
    }

    fn lb_revnat(&self, id: u16) -> anyhow::Result<Lb4RevNat> {
        self.lb.revnat(id)
    }

    fn set_lb_revnat(&mut self, id: u16, entry: Lb4RevNat) -> anyhow::Result<()> {
        self.lb.set_revnat(id, entry)
    }

    fn maglev_table(&self, id: u16) -> anyhow::Result<Option<Vec<u32>>> {
        self.lb.maglev(id)
    }

    fn put_maglev_table(&mut self, id: u16, table: &[u32]) -> anyhow::Result<()> {
        self.lb.put_maglev(id, table)
    }

    fn delete_maglev_table(&mut self, id: u16) -> anyhow::Result<()> {
        self.lb.delete_maglev(id)
    }

    fn ct_entries(&self) -> anyhow::Result<Vec<(CtKey4, CtEntry4)>> {
        self.lb.ct()
    }

    fn delete_ct(&mut self, key: CtKey4) -> anyhow::Result<()> {
        self.lb.delete_ct(key)
    }

    fn affinity_entries(&self) -> anyhow::Result<Vec<(Lb4AffinityKey, Lb4AffinityEntry)>> {
        self.lb.affinity()
    }

    fn delete_affinity(&mut self, key: Lb4AffinityKey) -> anyhow::Result<()> {
        self.lb.delete_affinity(key)
    }

    fn snat_entries(&self) -> anyhow::Result<Vec<(NatKey4, NatEntry4)>> {
        DatapathMaps::from_pins(&self.pin_dir)?.snat()
    }

    fn delete_snat(&mut self, key: NatKey4) -> anyhow::Result<()> {
        DatapathMaps::from_pins(&self.pin_dir)?.delete_snat(key)
    }

    fn socket_lb(&self) -> anyhow::Result<Option<PathBuf>> {
        crate::socket_lb::attached_cgroup(&self.pin_dir)
    }

    fn set_socket_lb(&mut self, cgroup: Option<&Path>) -> anyhow::Result<()> {
        crate::socket_lb::set_socket_lb(&mut self.ebpf, &self.pin_dir, cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_pinned_with_another_layout_is_refused_and_left_alone() {
        if !crate::running_as_root("a_map_pinned_with_another_layout_is_refused_and_left_alone") {
            return;
        }
        let pins = crate::bpffs::TempPinDir::new("weft-test").unwrap();
        // `weft_snat4` as an agent from before the masquerade entries carried state made it.
        let old =
            aya::maps::HashMap::<aya::maps::MapData, [u8; 16], [u8; 16]>::create(16, 0).unwrap();
        let pin = pins.path().join(names::SNAT4);
        old.pin(&pin).unwrap();
        let err = NodeDatapath::open(pins.path())
            .err()
            .expect("an old layout is refused");
        let text = format!("{err:#}");
        assert!(text.contains("weft_snat4"), "{text}");
        assert!(
            text.contains("16-byte keys and 16-byte values")
                && text.contains("16-byte keys and 24-byte values"),
            "{text}"
        );
        assert!(pin.exists(), "the old map stays pinned");
        let others: Vec<_> = fs::read_dir(pins.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(others, [names::SNAT4], "nothing else was created");
        // The layouts of a fresh node are its own.
        let fresh = crate::bpffs::TempPinDir::new("weft-test").unwrap();
        NodeDatapath::open(fresh.path()).unwrap();
        check_pinned_layouts(fresh.path()).unwrap();
    }

    #[test]
    fn link_pin_names_round_trip_and_foreign_names_are_ignored() {
        let a = Attachment {
            ifname: "lxcpod1".into(),
            hook: Hook::ToContainer,
        };
        assert_eq!(link_pin_name(&a), "to-container@lxcpod1");
        assert_eq!(parse_link_pin_name(&link_pin_name(&a)), Some(a));
        assert_eq!(parse_link_pin_name("something-else"), None);
        assert_eq!(parse_link_pin_name("bogus@lxc1"), None);
    }
}
