//! The BPF object built from `weft-ebpf` by this crate's build script.

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
        Hook::Xdp => Some((programs::XDP_ENTRY, AttachKind::Xdp)),
        Hook::FromNetdev | Hook::ToNetdev => None,
    }
}

/// Every hook that has a program.
pub fn hooks_with_programs() -> impl Iterator<Item = (weft_common::Hook, &'static str, AttachKind)>
{
    weft_common::Hook::ALL
        .into_iter()
        .filter_map(|hook| program_for(hook).map(|(name, kind)| (hook, name, kind)))
}
