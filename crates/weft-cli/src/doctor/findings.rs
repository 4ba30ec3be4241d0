//! What `weft doctor` concludes from what it read on a node: rule sets, attached programs,
//! MTUs, the agent's status. Pure functions of their text and numbers.
//!
//! The seed's lesson (seed 000, Parts 8 and 10): the datapath must be the only thing handling
//! service traffic. kube-proxy's chains DNAT service traffic before Weft sees it; k3s's
//! ServiceLB (svclb, through kube-router's chains) DNATs node addresses to its own pods and
//! masquerades pod-to-pod traffic, so backends lose the client's address — it "works at first"
//! and drifts as connections age. Each finding says what was found, why it matters, and what
//! to do.

use serde::Serialize;
use weft_api::{Degraded, DegradedCause, LbStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Something else handles service traffic, or traffic cannot fit: fix it.
    Problem,
    /// Could not be checked.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What was found, with the evidence.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

fn problem(what: String, fix: &str) -> Finding {
    Finding {
        severity: Severity::Problem,
        what,
        fix: fix.to_string(),
    }
}

/// The chains an `iptables-save` dump declares (`:NAME POLICY [..]` lines).
fn chains(dump: &str) -> impl Iterator<Item = &str> {
    dump.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
}

/// kube-proxy's and kube-router's (svclb's) chains, and masquerading of pod-to-pod traffic, in
/// an `iptables-save` dump of one backend (`nft` or `legacy`).
pub fn iptables_findings(dump: &str, backend: &str, pod_cidr: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let count = |prefix: &str| chains(dump).filter(|c| c.starts_with(prefix)).count();
    let (services, endpoints) = (count("KUBE-SVC-"), count("KUBE-SEP-"));
    if chains(dump).any(|c| c == "KUBE-SERVICES") {
        out.push(problem(
            format!(
                "kube-proxy's iptables rules ({backend} backend): KUBE-SERVICES, {services} \
                 KUBE-SVC and {endpoints} KUBE-SEP chains DNAT service traffic before Weft sees it"
            ),
            "stop kube-proxy (k3s: `disable-kube-proxy: true`), then remove its rules \
             (`kube-proxy --cleanup`)",
        ));
    }
    let router = count("KUBE-ROUTER-");
    if router > 0 {
        out.push(problem(
            format!(
                "kube-router's chains ({backend} backend): {router} KUBE-ROUTER-* chains, as \
                 k3s's ServiceLB (svclb) and network policy install them: they DNAT node \
                 addresses to svclb pods and masquerade, so backends lose the client's address"
            ),
            "disable them (k3s: `disable: [servicelb]` and `disable-network-policy: true`), \
             then flush the KUBE-ROUTER-* chains",
        ));
    }
    for rule in pod_to_pod_masquerade(dump, pod_cidr) {
        out.push(problem(
            format!("a rule masquerades pod-to-pod traffic ({backend} backend): `{rule}`"),
            "remove it: pods must see each other's own addresses, and the backends of a \
             service the client's",
        ));
    }
    out
}

/// The `-A` rules that MASQUERADE traffic whose source and destination are both `pod_cidr`.
fn pod_to_pod_masquerade<'a>(dump: &'a str, pod_cidr: &str) -> Vec<&'a str> {
    dump.lines()
        .filter(|l| l.starts_with("-A ") && l.contains("-j MASQUERADE"))
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // A flag's value, unless the match is negated (`! -d 10.42.0.0/16`).
            let value = |flag: &str| {
                let at = words.iter().position(|w| *w == flag)?;
                let negated = at > 0 && words[at - 1] == "!";
                words.get(at + 1).copied().filter(|_| !negated)
            };
            value("-s") == Some(pod_cidr) && value("-d") == Some(pod_cidr)
        })
        .collect()
}

/// kube-proxy's nftables tables in an `nft list ruleset` dump.
pub fn nftables_findings(ruleset: &str) -> Vec<Finding> {
    let tables: Vec<&str> = ruleset
        .lines()
        .filter(|l| l.starts_with("table "))
        .filter(|l| l.contains(" kube-proxy"))
        .map(|l| l.trim_end_matches(" {").trim())
        .collect();
    tables
        .into_iter()
        .map(|table| {
            problem(
                format!(
                    "kube-proxy's nftables rules: `{table}` DNATs service traffic before Weft \
                     sees it"
                ),
                "stop kube-proxy (k3s: `disable-kube-proxy: true`), then delete the table \
                 (`nft delete table ip kube-proxy`)",
            )
        })
        .collect()
}

/// Programs on a device that are not Weft's (`hook` names the attach point).
pub fn foreign_programs(ifname: &str, hook: &str, programs: &[String], ours: &str) -> Vec<Finding> {
    programs
        .iter()
        .filter(|p| p.as_str() != ours)
        .map(|p| {
            problem(
                format!("{ifname} {hook} carries `{p}`, which is not Weft's"),
                "find what attached it (`bpftool net show`) and remove it: only one datapath \
                 may handle this device's traffic",
            )
        })
        .collect()
}

/// Whether pods' packets fit the underlay once encapsulated: `overhead` bytes of Geneve (and
/// the DSR option) on top of the pods' MTU.
pub fn mtu_findings(underlay_mtu: u32, pod_mtu: u32, overhead: u32) -> Vec<Finding> {
    if pod_mtu + overhead <= underlay_mtu {
        return Vec::new();
    }
    vec![problem(
        format!(
            "pods' MTU {pod_mtu} plus {overhead} bytes of encapsulation exceeds the underlay's \
             MTU {underlay_mtu}: full-size packets between nodes are dropped"
        ),
        "lower the pods' MTU (restart the agent after changing the underlay's) or raise the \
         underlay's",
    )]
}

/// Services the load-balancer maps have no room for, and maps whose size is not the one
/// `bpf.lbMapMax` asks for, in an agent's status.
pub fn lb_map_findings(lb: &LbStatus) -> Vec<Finding> {
    let mut out = Vec::new();
    if lb.refused > 0 {
        let short: Vec<String> = (lb.maps.iter())
            .filter(|m| m.wanted > m.room)
            .map(|m| {
                format!(
                    "{} has room for {} {}, the Services need {}",
                    m.map, m.room, m.unit, m.wanted
                )
            })
            .collect();
        let why = if short.is_empty() {
            String::new()
        } else {
            format!(": {}", short.join("; "))
        };
        let fix = match lb.lb_map_max_needed {
            Some(needed) => format!(
                "raise `bpf.lbMapMax` (Cilium's key) to at least {needed} in values.yaml, then \
                 recreate the node's datapath so that the maps get the new size: pinned maps \
                 keep theirs (lab: `weft lab down`, then `weft lab up --config values.yaml`)"
            ),
            None => "the Services need more than 65,535 service ids, more than any \
                     `bpf.lbMapMax` gives: spread them over fewer frontends"
                .to_string(),
        };
        out.push(problem(
            format!(
                "{} of {} Services are not programmed: none of their entries is written, so \
                 their addresses do not answer{why}",
                lb.refused,
                lb.services + lb.refused
            ),
            &fix,
        ));
    }
    let resized: Vec<String> = (lb.maps.iter())
        .filter(|m| m.differs_from_config())
        .map(|m| format!("{} has {} entries", m.map, m.max_entries))
        .collect();
    if !resized.is_empty() {
        out.push(problem(
            format!(
                "bpf.lbMapMax {} is not in force: {} (the pinned maps keep the size they were \
                 created with)",
                lb.lb_map_max,
                resized.join(", ")
            ),
            "recreate the node's datapath so that the maps are created anew (lab: `weft lab \
             down`, then `weft lab up --config values.yaml`)",
        ));
    }
    out
}

/// Steps of the agent's last reconcile pass that failed.
pub fn reconcile_findings(degraded: &[Degraded]) -> Vec<Finding> {
    degraded
        .iter()
        .filter(|d| d.cause == DegradedCause::Reconcile)
        .map(|d| {
            problem(
                format!("the agent is degraded: {}", d.reason),
                "see `weft status` and the agent's log",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use weft_api::LbMapStatus;

    use super::*;

    const KUBE_PROXY: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
COMMIT
";

    /// The seed's svclb rules (Part 8.5).
    const SVCLB: &str = "\
*nat
:KUBE-ROUTER-PREROUTING - [0:0]
:KUBE-ROUTER-POSTROUTING - [0:0]
-A PREROUTING -j KUBE-ROUTER-PREROUTING
-A KUBE-ROUTER-PREROUTING -d 51.83.41.177/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.42.2.106:443
-A KUBE-ROUTER-POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -j MASQUERADE
-A POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -j MASQUERADE
COMMIT
";

    #[test]
    fn kube_proxy_chains_are_found_and_counted() {
        let found = iptables_findings(KUBE_PROXY, "nft", "10.42.0.0/16");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].what.contains("1 KUBE-SVC and 2 KUBE-SEP"),
            "{}",
            found[0].what
        );
        assert!(found[0].fix.contains("disable-kube-proxy"));
    }

    #[test]
    fn the_seeds_svclb_rules_are_found_with_the_masquerade_of_pod_to_pod_traffic() {
        let found = iptables_findings(SVCLB, "legacy", "10.42.0.0/16");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].what.contains("2 KUBE-ROUTER-* chains"));
        assert!(found[0].fix.contains("servicelb"));
        assert!(
            found[1].what.contains(
                "-A KUBE-ROUTER-POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -j MASQUERADE"
            ),
            "{}",
            found[1].what
        );
    }

    #[test]
    fn a_clean_dump_and_masquerade_to_the_world_are_not_findings() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -j MASQUERADE\nCOMMIT\n";
        assert!(iptables_findings(clean, "nft", "10.42.0.0/16").is_empty());
        assert!(iptables_findings("", "nft", "10.42.0.0/16").is_empty());
    }

    #[test]
    fn kube_proxys_nftables_table_is_found() {
        let ruleset = "table ip kube-proxy {\n\tchain services {\n\t}\n}\ntable ip filter {\n}\n";
        let found = nftables_findings(ruleset);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].what.contains("`table ip kube-proxy`"),
            "{}",
            found[0].what
        );
        assert!(nftables_findings("table ip filter {\n}\n").is_empty());
    }

    #[test]
    fn programs_other_than_weft_s_are_found() {
        let programs = vec!["from_netdev".to_string(), "cil_from_netdev".to_string()];
        let found = foreign_programs("eth0", "tcx ingress", &programs, "from_netdev");
        assert_eq!(found.len(), 1);
        assert!(found[0].what.contains("`cil_from_netdev`"));
    }

    #[test]
    fn the_mtu_must_carry_the_encapsulation() {
        assert!(mtu_findings(1500, 1442, 58).is_empty());
        let found = mtu_findings(1500, 1500, 58);
        assert_eq!(found.len(), 1);
        assert!(found[0].what.contains("1500 plus 58"));
    }

    fn lb_status(configured: u32) -> LbStatus {
        let map = |name: &str, used, wanted| LbMapStatus {
            map: name.into(),
            unit: "entries".into(),
            used,
            room: 300,
            max_entries: 300,
            configured,
            wanted,
            refused: 0,
        };
        LbStatus {
            services: 280,
            frontends: 280,
            refused: 120,
            refused_first: Vec::new(),
            lb_map_max: configured,
            lb_map_max_needed: Some(800),
            maps: vec![
                map("weft_lb4_services", 299, 800),
                map("weft_lb4_backends", 280, 280),
            ],
        }
    }

    #[test]
    fn refused_services_are_named_with_the_lb_map_max_that_holds_them() {
        let found = lb_map_findings(&lb_status(300));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].what.contains(
                "120 of 400 Services are not programmed: none of their entries is written, so \
                 their addresses do not answer: weft_lb4_services has room for 300 entries, the \
                 Services need 800"
            ),
            "{}",
            found[0].what
        );
        assert!(
            found[0]
                .fix
                .starts_with("raise `bpf.lbMapMax` (Cilium's key) to at least 800"),
            "{}",
            found[0].fix
        );
        let mut fine = lb_status(300);
        fine.refused = 0;
        assert!(lb_map_findings(&fine).is_empty());
    }

    #[test]
    fn a_lb_map_max_the_pinned_maps_do_not_have_is_found() {
        let mut lb = lb_status(1000);
        lb.refused = 0;
        let found = lb_map_findings(&lb);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].what.starts_with(
                "bpf.lbMapMax 1000 is not in force: weft_lb4_services has 300 entries, \
                 weft_lb4_backends has 300 entries"
            ),
            "{}",
            found[0].what
        );
    }

    #[test]
    fn failed_reconcile_steps_are_findings_and_full_maps_are_not_twice() {
        let degraded = [
            Degraded {
                cause: DegradedCause::LbMapsFull,
                reason: "120 of 400 Services".into(),
            },
            Degraded {
                cause: DegradedCause::Reconcile,
                reason: "health port 30080: address in use".into(),
            },
        ];
        let found = reconcile_findings(&degraded);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].what,
            "the agent is degraded: health port 30080: address in use"
        );
    }
}
