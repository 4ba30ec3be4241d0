//! What a stage decided for a packet: the action the hook returns, the reason it is counted
//! under, and the source identity when known (for the event).

use weft_common::{
    Reason,
    net::{TC_ACT_OK, TC_ACT_SHOT},
};

/// tc return code of a successful `bpf_redirect*`.
pub const TC_ACT_REDIRECT: i32 = 7;

#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: i32,
    pub reason: Reason,
    pub identity: u32,
}

impl Verdict {
    /// Hand the packet to the kernel's stack unchanged in direction.
    #[inline(always)]
    pub const fn pass() -> Verdict {
        Verdict {
            action: TC_ACT_OK,
            reason: Reason::Forwarded,
            identity: 0,
        }
    }

    /// Sent back out of the device it came in on (XDP_TX).
    #[inline(always)]
    pub const fn transmitted() -> Verdict {
        Verdict {
            action: TC_ACT_OK,
            reason: Reason::Transmitted,
            identity: 0,
        }
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Verdict {
        Verdict {
            action: TC_ACT_SHOT,
            reason,
            identity: 0,
        }
    }

    /// The verdict of a `bpf_redirect*` call: redirected, or dropped as `RedirectFailed`.
    #[inline(always)]
    pub fn redirected(ret: i64) -> Verdict {
        if ret as i32 == TC_ACT_REDIRECT {
            Verdict {
                action: TC_ACT_REDIRECT,
                reason: Reason::Forwarded,
                identity: 0,
            }
        } else {
            Verdict::drop(Reason::RedirectFailed)
        }
    }

    /// The same action, counted and reported under `reason` (a packet answered in place
    /// instead of forwarded).
    #[inline(always)]
    pub const fn with_reason(mut self, reason: Reason) -> Verdict {
        self.reason = reason;
        self
    }

    #[inline(always)]
    pub const fn with_identity(mut self, identity: u32) -> Verdict {
        self.identity = identity;
        self
    }
}

/// A stage either finishes the packet with a verdict or fails with a drop reason.
pub type StageResult = Result<Verdict, Reason>;

#[inline(always)]
pub fn settle(result: StageResult) -> Verdict {
    match result {
        Ok(v) => v,
        Err(reason) => Verdict::drop(reason),
    }
}
