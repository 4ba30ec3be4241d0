//! The BPF object built from `weft-ebpf` by this crate's build script.

/// The ELF object holding every Weft program.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

/// The program name in the object for a hook, and how it is attached.
pub fn program_for(hook: weft_common::Hook) -> Option<(&'static str, aya::programs::TcAttachType)> {
    use aya::programs::TcAttachType;
    use weft_common::{Hook, programs};
    match hook {
        Hook::FromContainer => Some((programs::FROM_CONTAINER, TcAttachType::Ingress)),
        Hook::ToContainer => Some((programs::TO_CONTAINER, TcAttachType::Egress)),
        Hook::FromNetdev | Hook::ToNetdev | Hook::Xdp => None,
    }
}
