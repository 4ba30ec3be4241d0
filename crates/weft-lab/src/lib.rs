//! The netns lab: a Weft cluster (an "internet" router, a client, nodes `vps1..N` and their pods)
//! built out of network namespaces on one machine, with real kernel links and real packets.
//!
//! [`plan`] computes the whole topology without any I/O; [`up`] builds it (root), [`down`]
//! removes everything a lab of that name left on the machine, whatever state it is in.
//! Namespaces are entered with `setns` only (never `ip netns exec`, which remounts /sys and hides
//! bpffs and cgroup2).

pub mod apply;
pub mod capture;
mod cluster_ip;
pub mod containerd;
pub mod datapath;
pub mod exec;
mod host;
mod ip;
pub mod lifecycle;
pub mod netns;
mod north_south;
pub mod oci;
pub mod runtime;
pub mod seed;
pub mod selftest;
pub mod slices;
pub mod spec;
pub mod supervise;
#[cfg(test)]
mod temp_dir;
pub mod testing;
pub mod topology;
pub mod traffic;
pub mod wiring;
mod xdp_peer;

pub use exec::{command_in, exec};
pub use lifecycle::{DownReport, down, leftovers, load, state_file, up};
pub use spec::{LabSpec, SpecError};
pub use topology::{Host, NodeSpec, PodSpec, Target, Topology, plan};
