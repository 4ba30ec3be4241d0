//! Helpers shared by the datapath's fixture files.

use std::net::Ipv4Addr;

use weft_common::{CtEntry4, CtKey4, net::IPPROTO_TCP};
use weft_datapath::{monotonic_ns, testrun::TestHarness};

/// The conntrack key of a TCP flow.
pub fn ct_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, kind: u8) -> CtKey4 {
    CtKey4 {
        saddr: saddr.octets(),
        daddr: daddr.octets(),
        sport,
        dport,
        proto: IPPROTO_TCP,
        kind,
        _pad: [0; 2],
    }
}

/// The conntrack entry under `key`, if any.
pub fn ct_entry(h: &TestHarness, key: &CtKey4) -> Option<CtEntry4> {
    h.lb.ct()
        .expect("ct")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn monotonic_s() -> u32 {
    (monotonic_ns().expect("CLOCK_MONOTONIC") / 1_000_000_000) as u32
}

/// The entry's remaining lifetime is `lifetime_s` (give or take the second the run took).
pub fn assert_lifetime(entry: &CtEntry4, lifetime_s: u32, what: &str) {
    let left = entry.expires_s.saturating_sub(monotonic_s());
    assert!(
        left + 2 >= lifetime_s && left <= lifetime_s,
        "{what}: {left} s left, expected {lifetime_s}"
    );
}
