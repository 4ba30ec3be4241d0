//! The router's side of each node's underlay veth gets a two-instruction XDP program that passes
//! everything. A frame a node's XDP program sends back out (`XDP_TX`, the accelerated
//! north-south path) lands in the veth peer's ring, and the kernel only schedules the peer's
//! NAPI for it when the peer has an XDP program of its own (`veth_xdp_flush`); without one the
//! frame waits for unrelated traffic. A real NIC has no such condition.
//!
//! And the client computes its checksums itself (`ethtool -K eth0 tx off` in its namespace): a
//! veth hands a peer a packet whose TCP checksum is only the pseudo-header's, marked
//! CHECKSUM_PARTIAL, a mark an XDP frame does not carry, so a frame forwarded by XDP would
//! reach the backend with a wrong checksum. A client on a real wire always sends complete ones.
//!
//! The program is loaded with the raw `bpf(2)` syscall, pinned under the lab's bpffs directory
//! just long enough for `ip link set ... xdp pinned` to attach it, then unpinned: the device
//! keeps it, and it goes with the device when the lab is taken down.

use std::{ffi::CString, path::Path};

use anyhow::{Context as _, bail};

use crate::topology::{ETH0, Topology};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `r0 = XDP_PASS; exit`.
const PASS: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded union bpf_attr of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// Loads the pass-through program and pins it at `pin`.
fn load_and_pin(pin: &Path) -> anyhow::Result<()> {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(PASS.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the pass program")? as i32;
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).context("pin path")?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&fd.to_ne_bytes());
    let pinned = bpf(BPF_OBJ_PIN, &mut attr);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    pinned.with_context(|| format!("pinning the pass program at {}", pin.display()))?;
    Ok(())
}

/// Runs `args` in the network namespace `netns` (`nsenter --net` rather than `ip -n`: the
/// latter remounts /sys, hiding bpffs pins).
fn run_in_netns(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let netns = format!("--net=/run/netns/{netns}");
    let status = std::process::Command::new("nsenter")
        .arg(&netns)
        .args(args)
        .status()
        .context("running nsenter")?;
    anyhow::ensure!(
        status.success(),
        "nsenter {netns} {}: {status}",
        args.join(" ")
    );
    Ok(())
}

/// The client sends complete checksums.
pub fn client_checksums_in_software(t: &Topology) -> anyhow::Result<()> {
    run_in_netns(&t.client.netns, &["ethtool", "-K", ETH0, "tx", "off"])
}

/// Attaches the pass-through program to the router's port of every node.
pub fn attach_to_router_ports(t: &Topology) -> anyhow::Result<()> {
    let pin = t.pin_root().join("router_xdp_pass");
    crate::host::create_dir_all(&t.pin_root())?;
    load_and_pin(&pin)?;
    let attached = t.nodes.iter().try_for_each(|node| {
        let pin = pin.display().to_string();
        let args = [
            "ip", "link", "set", "dev", &node.name, "xdpdrv", "pinned", &pin,
        ];
        run_in_netns(&t.router_netns, &args)
    });
    let unpinned = std::fs::remove_file(&pin);
    attached.context("attaching the pass program to the router's ports")?;
    if let Err(e) = unpinned {
        bail!("unpinning {}: {e}", pin.display());
    }
    Ok(())
}
