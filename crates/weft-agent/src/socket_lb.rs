//! Socket LB in the agent: its programs attached to the node's cgroup when `socketLB.enabled`,
//! detached when not, and its part of the `weft_node` record (`socketLB.hostNamespaceOnly` and
//! the cookie of the node's network namespace).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weft_common::node::NODE_SOCKET_LB_HOST_NS_ONLY_FLAG;
use weft_datapath::{Datapath, cgroup};
use weft_model::config::SocketLbConfig;

use crate::{agent::ReconcileReport, log};

/// Where socket LB applies on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketLbSite {
    /// The cgroup whose sockets are translated (the node's: its pods' processes are in it).
    /// `None`: the agent attaches socket LB nowhere.
    pub cgroup: Option<PathBuf>,
    /// The cookie of the node's network namespace, for `socketLB.hostNamespaceOnly`.
    pub netns_cookie: u64,
}

impl SocketLbSite {
    /// The site of an agent started in the node's netns: `cgroup` if given, else the agent's
    /// own cgroup2 directory; never the root of the hierarchy.
    pub fn of_this_process(cgroup: Option<PathBuf>) -> anyhow::Result<SocketLbSite> {
        let cgroup = match cgroup {
            Some(cgroup) => cgroup,
            None => cgroup::own_cgroup().context("finding the agent's cgroup")?,
        };
        cgroup::refuse_root(&cgroup).context("socket LB would apply to the whole host")?;
        let netns_cookie = weft_datapath::socket_lb::current_netns_cookie()?;
        Ok(SocketLbSite {
            cgroup: Some(cgroup),
            netns_cookie,
        })
    }
}

/// The `weft_node` flags socket LB sets.
pub fn node_flags(config: &SocketLbConfig) -> u32 {
    if config.host_namespace_only {
        NODE_SOCKET_LB_HOST_NS_ONLY_FLAG
    } else {
        0
    }
}

/// The cgroup socket LB should be attached to.
fn desired_cgroup<'a>(site: &'a SocketLbSite, config: &SocketLbConfig) -> Option<&'a Path> {
    site.cgroup.as_deref().filter(|_| config.enabled)
}

/// Attaches or detaches socket LB as the configuration says. Applied on every pass: the
/// datapath completes an attachment an earlier agent left half done.
pub fn reconcile(
    datapath: &mut dyn Datapath,
    site: &SocketLbSite,
    config: &SocketLbConfig,
    report: &mut ReconcileReport,
) -> anyhow::Result<()> {
    let desired = desired_cgroup(site, config);
    let current = datapath.socket_lb()?;
    datapath.set_socket_lb(desired)?;
    if current.as_deref() == desired {
        return Ok(());
    }
    if let Some(old) = current {
        log!("socket LB: detached from {}", old.display());
        report.detached.push(format!("socket-lb@{}", old.display()));
    }
    if let Some(new) = desired {
        log!("socket LB: attached to {}", new.display());
        report.attached.push(format!("socket-lb@{}", new.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_datapath::FakeDatapath;

    use super::*;

    fn config(enabled: bool) -> SocketLbConfig {
        SocketLbConfig {
            enabled,
            host_namespace_only: false,
        }
    }

    #[test]
    fn attaches_when_enabled_detaches_when_disabled_and_repeats_nothing() {
        let cg = PathBuf::from("/sys/fs/cgroup/unified/weft-ab/vps1");
        let site = SocketLbSite {
            cgroup: Some(cg.clone()),
            netns_cookie: 4096,
        };
        let mut dp = FakeDatapath::default();
        dp.cgroups.insert(cg.clone());
        let mut report = ReconcileReport::default();
        reconcile(&mut dp, &site, &config(true), &mut report).unwrap();
        reconcile(&mut dp, &site, &config(true), &mut report).unwrap();
        assert_eq!(dp.socket_lb, Some(cg.clone()));
        assert_eq!(report.attached, [format!("socket-lb@{}", cg.display())]);
        reconcile(&mut dp, &site, &config(false), &mut report).unwrap();
        assert_eq!(dp.socket_lb, None);
        assert_eq!(report.detached.len(), 1);
        assert_eq!(dp.log.len(), 2, "{:?}", dp.log);
    }

    #[test]
    fn without_a_cgroup_nothing_is_attached_even_when_enabled() {
        let mut dp = FakeDatapath::default();
        let mut report = ReconcileReport::default();
        reconcile(
            &mut dp,
            &SocketLbSite::default(),
            &config(true),
            &mut report,
        )
        .unwrap();
        assert_eq!(dp.socket_lb, None);
        assert!(!report.changed());
    }

    #[test]
    fn host_namespace_only_is_a_node_flag() {
        let mut c = config(true);
        assert_eq!(node_flags(&c), 0);
        c.host_namespace_only = true;
        assert_eq!(node_flags(&c), NODE_SOCKET_LB_HOST_NS_ONLY_FLAG);
    }
}
