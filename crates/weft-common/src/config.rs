//! The `weft_config` array (one entry): knobs the agent sets at run time.

/// Emit a trace event for every packet a program forwards (drops are always reported).
pub const CONFIG_TRACE_FLAG: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    pub flags: u32,
    pub _pad: u32,
}

impl DatapathConfig {
    pub const fn trace_enabled(&self) -> bool {
        self.flags & CONFIG_TRACE_FLAG != 0
    }
}

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 8);
