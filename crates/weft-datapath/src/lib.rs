//! The user side of Weft's eBPF datapath: the embedded BPF object, loading it for a node with its
//! maps pinned in the node's pin directory, attaching programs with tcx and pinning the links so
//! the datapath outlives the process, reading counters and events, and running programs under
//! BPF_PROG_TEST_RUN.
//!
//! Everything that changes the kernel goes through the [`Datapath`] trait; [`FakeDatapath`]
//! implements it in memory so reconcile logic is tested without root.

pub mod bpffs;
pub mod cgroup;
pub mod events;
pub mod fake;
pub mod lb_maps;
pub mod maps;
pub mod node;
pub mod object;
pub mod socket_lb;
pub mod testrun;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
pub use fake::FakeDatapath;
pub use lb_maps::LbMaps;
pub use maps::DatapathMaps;
pub use node::NodeDatapath;
use weft_common::{
    CtEntry4, CtKey4, DatapathConfig, EndpointInfo, EndpointKey, IpcacheEntry, Lb4AffinityEntry,
    Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NatEntry4, NatKey4, NodeConfig,
};
use weft_model::{
    Ipv4Cidr,
    desired::{
        Attachment, AttachmentChanges, Endpoint, ExternalDevice, attachment_changes,
        desired_attachments,
    },
    lb_capacity::LbCapacity,
};

/// The seam between Weft's logic and the kernel.
pub trait Datapath {
    /// Attaches the program of `attachment.hook` to `attachment.ifname`, durably.
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()>;
    /// Removes an attachment made by [`Datapath::attach`].
    fn detach(&mut self, attachment: &Attachment) -> anyhow::Result<()>;
    /// The attachments in place now.
    fn attachments(&self) -> anyhow::Result<BTreeSet<Attachment>>;
    fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()>;

    /// Writes the `weft_node` record.
    fn set_node(&mut self, node: NodeConfig) -> anyhow::Result<()>;
    fn node(&self) -> anyhow::Result<NodeConfig>;

    /// The local pods the datapath knows (`weft_endpoints`).
    fn endpoints(&self) -> anyhow::Result<BTreeMap<EndpointKey, EndpointInfo>>;
    fn put_endpoint(&mut self, key: EndpointKey, info: EndpointInfo) -> anyhow::Result<()>;
    /// Deleting an absent key succeeds.
    fn delete_endpoint(&mut self, key: EndpointKey) -> anyhow::Result<()>;

    /// The prefixes of `weft_ipcache4`.
    fn ipcache(&self) -> anyhow::Result<BTreeMap<Ipv4Cidr, IpcacheEntry>>;
    fn put_ipcache(&mut self, cidr: Ipv4Cidr, entry: IpcacheEntry) -> anyhow::Result<()>;
    /// Deleting an absent prefix succeeds.
    fn delete_ipcache(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()>;

    /// The sizes of the service load-balancer maps, as the kernel has them.
    fn lb_capacity(&self) -> anyhow::Result<LbCapacity>;
    /// `weft_lb4_services`: service entries and their backend slots.
    fn lb_services(&self) -> anyhow::Result<BTreeMap<Lb4Key, Lb4Service>>;
    fn put_lb_service(&mut self, key: Lb4Key, value: Lb4Service) -> anyhow::Result<()>;
    /// Deleting an absent key succeeds (as for every delete below).
    fn delete_lb_service(&mut self, key: Lb4Key) -> anyhow::Result<()>;
    /// `weft_lb4_backends`, by backend id.
    fn lb_backends(&self) -> anyhow::Result<BTreeMap<u32, Lb4Backend>>;
    fn put_lb_backend(&mut self, id: u32, backend: Lb4Backend) -> anyhow::Result<()>;
    fn delete_lb_backend(&mut self, id: u32) -> anyhow::Result<()>;
    /// `weft_lb4_revnat[id]` (an array: every id has an entry, all-zero when unused).
    fn lb_revnat(&self, id: u16) -> anyhow::Result<Lb4RevNat>;
    fn set_lb_revnat(&mut self, id: u16, entry: Lb4RevNat) -> anyhow::Result<()>;
    /// The Maglev table of service `id`, `None` when it has none.
    fn maglev_table(&self, id: u16) -> anyhow::Result<Option<Vec<u32>>>;
    /// Replaces service `id`'s table at once.
    fn put_maglev_table(&mut self, id: u16, table: &[u32]) -> anyhow::Result<()>;
    fn delete_maglev_table(&mut self, id: u16) -> anyhow::Result<()>;
    /// `weft_ct4`.
    fn ct_entries(&self) -> anyhow::Result<Vec<(CtKey4, CtEntry4)>>;
    fn delete_ct(&mut self, key: CtKey4) -> anyhow::Result<()>;
    /// `weft_lb4_affinity`.
    fn affinity_entries(&self) -> anyhow::Result<Vec<(Lb4AffinityKey, Lb4AffinityEntry)>>;
    fn delete_affinity(&mut self, key: Lb4AffinityKey) -> anyhow::Result<()>;
    /// `weft_snat4`.
    fn snat_entries(&self) -> anyhow::Result<Vec<(NatKey4, NatEntry4)>>;
    fn delete_snat(&mut self, key: NatKey4) -> anyhow::Result<()>;
    /// The denied source prefixes of `weft_prefilter4`.
    fn prefilter(&self) -> anyhow::Result<BTreeSet<Ipv4Cidr>>;
    fn put_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()>;
    /// Deleting an absent prefix succeeds.
    fn delete_prefilter(&mut self, cidr: Ipv4Cidr) -> anyhow::Result<()>;
    /// The cgroup whose sockets socket LB translates, if it is attached.
    fn socket_lb(&self) -> anyhow::Result<Option<PathBuf>>;
    /// Attaches socket LB to `cgroup` (moving it from any other cgroup), or detaches it with
    /// `None`. Calling it again with the same cgroup changes nothing.
    fn set_socket_lb(&mut self, cgroup: Option<&Path>) -> anyhow::Result<()>;
}

/// What [`reconcile_attachments`] did: the changes made, and the ones that failed.
#[derive(Debug, Default)]
pub struct AttachmentOutcome {
    pub applied: AttachmentChanges,
    /// One line per change that failed, naming the hook and the interface.
    pub failures: Vec<String>,
}

impl AttachmentOutcome {
    /// The changes made, or an error listing every failure.
    pub fn into_result(self) -> anyhow::Result<AttachmentChanges> {
        if self.failures.is_empty() {
            Ok(self.applied)
        } else {
            anyhow::bail!("{}", self.failures.join("; "))
        }
    }
}

/// Brings the attachments of a node to what its external device and endpoints need: detaches
/// what is no longer wanted, attaches what is missing, touches nothing else. One failing change
/// (a pod whose veth vanished) does not hold up the others; failures are in the outcome, and
/// the next pass retries them (level-triggered). Fails only when the current attachments
/// cannot be listed.
pub fn reconcile_attachments(
    datapath: &mut dyn Datapath,
    external_device: &ExternalDevice,
    endpoints: &[Endpoint],
) -> anyhow::Result<AttachmentOutcome> {
    let current = datapath.attachments().context("listing attachments")?;
    let changes = attachment_changes(&desired_attachments(external_device, endpoints), &current);
    let mut outcome = AttachmentOutcome::default();
    for a in changes.detach {
        match datapath.detach(&a) {
            Ok(()) => outcome.applied.detach.push(a),
            Err(e) => (outcome.failures).push(format!(
                "detaching {} from {}: {e:#}",
                a.hook.name(),
                a.ifname
            )),
        }
    }
    for a in changes.attach {
        match datapath.attach(&a) {
            Ok(()) => outcome.applied.attach.push(a),
            Err(e) => (outcome.failures).push(format!(
                "attaching {} to {}: {e:#}",
                a.hook.name(),
                a.ifname
            )),
        }
    }
    Ok(outcome)
}

/// Whether the process runs as root; prints why a test is skipped when it does not.
pub fn running_as_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED (needs root): {test}");
    }
    root
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if ret != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}
