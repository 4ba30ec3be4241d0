//! The BPF object built from `weft-ebpf` by this crate's build script.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{CgroupSockAddr, Program, ProgramError, SchedClassifier, Xdp},
};

/// The ELF object holding every Weft program.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

/// How a hook's program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    Tcx(aya::programs::TcAttachType),
    Xdp,
}

/// The program in the object for a hook, and how it is attached; `None` for hooks that have no
/// program yet.
pub fn program_for(hook: weft_common::Hook) -> Option<(&'static str, AttachKind)> {
    use aya::programs::TcAttachType;
    use weft_common::{Hook, programs};
    match hook {
        Hook::FromContainer => Some((
            programs::FROM_CONTAINER,
            AttachKind::Tcx(TcAttachType::Ingress),
        )),
        Hook::ToContainer => Some((
            programs::TO_CONTAINER,
            AttachKind::Tcx(TcAttachType::Egress),
        )),
        Hook::FromNetdev => Some((
            programs::FROM_NETDEV,
            AttachKind::Tcx(TcAttachType::Ingress),
        )),
        Hook::ToNetdev => Some((programs::TO_NETDEV, AttachKind::Tcx(TcAttachType::Egress))),
        Hook::Xdp => Some((programs::XDP_ENTRY, AttachKind::Xdp)),
    }
}

/// The programs of the object and how each is attached.
fn programs() -> impl Iterator<Item = (&'static str, AttachKind)> {
    weft_common::Hook::ALL.into_iter().filter_map(program_for)
}

/// A program of `ebpf` as its concrete type.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut Program: TryInto<&'a mut T, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the BPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not of the expected type"))
}

/// Loads (verifies) every program the hooks and socket LB use.
pub(crate) fn load_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for (name, kind) in programs() {
        match kind {
            AttachKind::Tcx(_) => program::<SchedClassifier>(ebpf, name)?.load(),
            AttachKind::Xdp => program::<Xdp>(ebpf, name)?.load(),
        }
        .with_context(|| format!("verifying program {name}"))?;
    }
    for name in weft_common::programs::SOCKET_LB {
        program::<CgroupSockAddr>(ebpf, name)?
            .load()
            .with_context(|| format!("verifying program {name}"))?;
    }
    Ok(())
}
