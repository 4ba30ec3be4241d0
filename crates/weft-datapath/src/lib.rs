//! The user side of Weft's eBPF datapath: the embedded BPF object, loading it for a node with its
//! maps pinned in the node's pin directory, attaching programs with tcx and pinning the links so
//! the datapath outlives the process, reading counters and events, and running programs under
//! BPF_PROG_TEST_RUN.
//!
//! Everything that changes the kernel goes through the [`Datapath`] trait; [`FakeDatapath`]
//! implements it in memory so reconcile logic is tested without root.

pub mod events;
pub mod fake;
pub mod maps;
pub mod node;
pub mod object;
pub mod testrun;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Context as _;
pub use fake::FakeDatapath;
pub use maps::DatapathMaps;
pub use node::NodeDatapath;
use weft_common::{
    DatapathConfig, EndpointInfo, EndpointKey, IpcacheEntry, NatEntry4, NatKey4, NodeConfig,
    nat::NAT_DIR_INGRESS, net::l4_proto_name,
};
use weft_model::{
    Ipv4Cidr,
    desired::{Attachment, AttachmentChanges, Endpoint, attachment_changes, desired_attachments},
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
}

/// One masquerade entry as a line of `weft bpf nat list`, e.g.
/// `egress TCP 10.42.1.10:40000 -> 203.0.113.4:80 => 198.51.100.1:33000`: the tuple of the key,
/// then the address and port the entry translates to.
pub fn nat_line(key: &NatKey4, entry: &NatEntry4) -> String {
    let direction = if key.direction == NAT_DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    };
    format!(
        "{direction} {} {}:{} -> {}:{} => {}:{}",
        l4_proto_name(key.proto),
        Ipv4Addr::from(key.saddr),
        key.sport,
        Ipv4Addr::from(key.daddr),
        key.dport,
        Ipv4Addr::from(entry.addr),
        entry.port
    )
}

/// Brings the attachments of a node to what its external device and endpoints need: detaches
/// what is no longer wanted, attaches what is missing, touches nothing else. Returns what it
/// changed.
pub fn reconcile_attachments(
    datapath: &mut dyn Datapath,
    external_device: &str,
    endpoints: &[Endpoint],
) -> anyhow::Result<AttachmentChanges> {
    let current = datapath.attachments().context("listing attachments")?;
    let changes = attachment_changes(&desired_attachments(external_device, endpoints), &current);
    for attachment in &changes.detach {
        datapath.detach(attachment).with_context(|| {
            format!(
                "detaching {} from {}",
                attachment.hook.name(),
                attachment.ifname
            )
        })?;
    }
    for attachment in &changes.attach {
        datapath.attach(attachment).with_context(|| {
            format!(
                "attaching {} to {}",
                attachment.hook.name(),
                attachment.ifname
            )
        })?;
    }
    Ok(changes)
}

/// bpffs for tests and tools that need a pin directory.
pub mod bpffs {
    use std::{
        ffi::CString,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU64, Ordering},
    };

    use anyhow::{Context as _, bail};

    pub const ROOT: &str = "/sys/fs/bpf";
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

    /// Mounts bpffs at /sys/fs/bpf unless it is there already (a fresh machine has none).
    pub fn ensure_mounted() -> anyhow::Result<()> {
        let root = CString::new(ROOT).context("path")?;
        // SAFETY: `root` is a valid C string and `stat` a properly sized out-parameter.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(root.as_ptr(), &mut stat) } != 0 {
            bail!("statfs {ROOT}: {}", std::io::Error::last_os_error());
        }
        // f_type is i64 on x86_64 glibc but narrower elsewhere.
        #[allow(clippy::useless_conversion)]
        let f_type = i64::from(stat.f_type);
        if f_type == BPF_FS_MAGIC {
            return Ok(());
        }
        let bpf = CString::new("bpf").context("fs type")?;
        // SAFETY: valid C strings; no data argument.
        let rc = unsafe {
            libc::mount(
                bpf.as_ptr(),
                root.as_ptr(),
                bpf.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mount -t bpf bpf {ROOT}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// A unique pin directory `/sys/fs/bpf/<prefix>-<pid>-<n>`, removed with everything pinned
    /// in it when dropped (also when a test panics).
    pub struct TempPinDir(PathBuf);

    impl TempPinDir {
        pub fn new(prefix: &str) -> anyhow::Result<TempPinDir> {
            static N: AtomicU64 = AtomicU64::new(0);
            ensure_mounted()?;
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = Path::new(ROOT).join(format!("{prefix}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(TempPinDir(dir))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPinDir {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                eprintln!("removing {}: {e}", self.0.display());
            }
        }
    }
}

/// Whether the process runs as root; prints why a test is skipped when it does not.
pub fn running_as_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: needs root: {test}");
    }
    root
}

#[cfg(test)]
mod tests {
    use weft_common::{
        nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS},
        net::{IPPROTO_TCP, IPPROTO_UDP},
    };

    use super::*;

    #[test]
    fn nat_entries_render_as_one_line_per_direction() {
        let egress = NatKey4 {
            saddr: [10, 42, 1, 10],
            daddr: [203, 0, 113, 4],
            sport: 40000,
            dport: 80,
            proto: IPPROTO_TCP,
            direction: NAT_DIR_EGRESS,
            _pad: [0; 2],
        };
        let to_node = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: 33000,
            ..NatEntry4::default()
        };
        assert_eq!(
            nat_line(&egress, &to_node),
            "egress TCP 10.42.1.10:40000 -> 203.0.113.4:80 => 198.51.100.1:33000"
        );
        let ingress = NatKey4 {
            saddr: [203, 0, 113, 4],
            daddr: [198, 51, 100, 1],
            sport: 53,
            dport: 33001,
            proto: IPPROTO_UDP,
            direction: NAT_DIR_INGRESS,
            _pad: [0; 2],
        };
        let to_pod = NatEntry4 {
            addr: [10, 42, 1, 10],
            port: 40001,
            ..NatEntry4::default()
        };
        assert_eq!(
            nat_line(&ingress, &to_pod),
            "ingress UDP 203.0.113.4:53 -> 198.51.100.1:33001 => 10.42.1.10:40001"
        );
    }
}
